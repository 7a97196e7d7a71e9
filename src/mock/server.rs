//! The Pingora side of the mock: one [`HttpServerApp`] that reads a request, applies faults and
//! writes the reply, streamed events one write (and one flush) at a time.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{header, Method};
use log::{debug, info};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;

use super::faults::{FaultConfig, Faults, HANG_LIMIT};
use super::openai::{self, ApiError, Event, EventKind, Meta, Usage};
use super::tools::{self, Plan};
use super::{anthropic, gemini, media, multipart};
use super::{LoggedRequest, MockState};

/// Request bodies above this get a 413: far above any real prompt, low enough to stay safe.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

const JSON: &str = "application/json";

/// The mock provider as a Pingora HTTP application.
pub struct MockApp {
    state: Arc<MockState>,
    options: HttpServerOptions,
}

impl MockApp {
    pub fn new(state: Arc<MockState>) -> Self {
        let mut options = HttpServerOptions::default();
        // Plain-text HTTP/2 too, so the gateway's h2 upstream path can be tested.
        options.h2c = true;
        MockApp { state, options }
    }

    pub fn state(&self) -> &Arc<MockState> {
        &self.state
    }
}

/// A listening service for `listen` (e.g. "127.0.0.1:18080"), to add to any Pingora `Server`.
pub fn mock_service(listen: &str, state: Arc<MockState>) -> Service<MockApp> {
    let mut service = Service::new("mock-upstream".to_string(), MockApp::new(state));
    service.add_tcp(listen);
    service
}

/// `tollgate mock-upstream --listen ADDR`: serve forever with no expected key.
pub fn run_standalone(listen: &str) {
    run_standalone_with(listen, Arc::new(MockState::default()))
}

/// Serve forever in this process with the given state (e.g. an expected key).
pub fn run_standalone_with(listen: &str, state: Arc<MockState>) -> ! {
    run_standalone_tls(listen, None, state)
}

/// [`run_standalone_with`], plus HTTPS on `tls = (address, cert file, key file)` with ALPN
/// h2 and http/1.1 (for the gateway's HTTP/2 and CA-bundle upstream paths).
pub fn run_standalone_tls(listen: &str, tls: Option<(String, String, String)>, state: Arc<MockState>) -> ! {
    // Build the conf ourselves so Pingora never parses this process's argv, and keep shutdown
    // quick: a test or `make run` stopping the mock should not wait out Pingora's 5-minute grace.
    let conf = ServerConf {
        threads: 2,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = mock_service(listen, state);
    if let Some((addr, cert, key)) = &tls {
        let settings = pingora::listeners::tls::TlsSettings::intermediate(cert, key).and_then(|mut t| {
            t.set_certificate_chain_file(cert)?;
            t.set_private_key_file(key)?;
            t.enable_h2();
            Ok(t)
        });
        match settings {
            Ok(t) => service.add_tls_with_settings(addr, None, t),
            Err(e) => {
                log::error!("mock: TLS on {addr}: {e}");
                std::process::exit(1);
            }
        }
        info!("mock upstream listening on https://{addr}");
    }
    server.add_service(service);
    info!("mock upstream listening on {listen}");
    server.run_forever()
}

/// Run the mock on its own thread and tokio runtime, outside any Pingora `Server` (for tests
/// and tools in this crate). Returns once `listen` accepts connections, or after 5 s.
pub fn spawn_background(listen: &str, state: Arc<MockState>) -> std::thread::JoinHandle<()> {
    let mut service = mock_service(listen, state);
    let handle = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            // The sender lives as long as the service, so it never sees a shutdown.
            let (_keep, shutdown) = tokio::sync::watch::channel(false);
            pingora::services::Service::start_service(&mut service, None, shutdown, 1).await;
        });
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(listen).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    handle
}

/// What to do with the connection once a request is handled.
enum Next {
    /// The response is complete: keep the connection if HTTP allows it.
    Reuse,
    /// Drop the connection now (I/O error, injected cut or hang).
    Close,
}

#[async_trait]
impl HttpServerApp for MockApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            // A keep-alive connection the client closed: normal.
            Ok(false) => return None,
            Err(e) => {
                debug!("mock: bad request head: {e}");
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        match handle(&self.state, &mut session).await {
            Next::Close => None,
            Next::Reuse => {
                let settings = HttpPersistentSettings::for_session(&session);
                match session.finish().await {
                    Ok(stream) => {
                        stream.map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
                    }
                    Err(e) => {
                        debug!("mock: finish failed: {e}");
                        None
                    }
                }
            }
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

// ---------------------------------------------------------------------------------------------
// Routing

#[derive(Debug, Clone, PartialEq)]
enum Route {
    Chat,
    Completions,
    Embeddings,
    Models,
    Model(String),
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Anthropic `POST /v1/messages/count_tokens`.
    CountTokens,
    /// Gemini `POST /v1beta/models/{model}:generateContent` or `:streamGenerateContent`.
    Gemini {
        model: String,
        stream: bool,
    },
    /// Gemini `POST /v1beta/models/{model}:embedContent` or `:batchEmbedContents`.
    GeminiEmbed {
        model: String,
        batch: bool,
    },
    /// OpenAI `POST /v1/images/generations`.
    Images,
    /// OpenAI `POST /v1/audio/speech`.
    Speech,
    /// OpenAI `POST /v1/audio/transcriptions`.
    Transcriptions,
    Health,
    Requests,
    LastRequest,
    Faults,
    /// A known path with the wrong method.
    BadMethod,
    NotFound,
}

/// Whose wire format a route speaks: decides the auth header and the error shape.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Route {
    fn parse(method: &Method, path: &str) -> Route {
        let path = match path.trim_end_matches('/') {
            "" => "/",
            p => p,
        };
        // Accept both `/v1/x` and `/x`.
        let path = path
            .strip_prefix("/v1")
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or(path);
        let (get, post, delete) = (
            method == Method::GET,
            method == Method::POST,
            method == Method::DELETE,
        );
        let allowed = |ok: bool, route: Route| if ok { route } else { Route::BadMethod };
        match path {
            "/chat/completions" => allowed(post, Route::Chat),
            "/completions" => allowed(post, Route::Completions),
            "/embeddings" => allowed(post, Route::Embeddings),
            "/models" => allowed(get, Route::Models),
            "/messages" => allowed(post, Route::Messages),
            "/messages/count_tokens" => allowed(post, Route::CountTokens),
            "/images/generations" => allowed(post, Route::Images),
            "/audio/speech" => allowed(post, Route::Speech),
            "/audio/transcriptions" => allowed(post, Route::Transcriptions),
            "/_mock/health" => allowed(get, Route::Health),
            "/_mock/requests" => allowed(get || delete, Route::Requests),
            "/_mock/requests/last" => allowed(get, Route::LastRequest),
            "/_mock/faults" => allowed(get || post || delete, Route::Faults),
            _ => {
                let Some(rest) = path
                    .strip_prefix("/models/")
                    .or_else(|| path.strip_prefix("/v1beta/models/"))
                    .filter(|rest| !rest.is_empty())
                else {
                    return Route::NotFound;
                };
                match rest.rsplit_once(':') {
                    Some((model, "generateContent")) => Route::Gemini {
                        model: model.to_string(),
                        stream: false,
                    },
                    Some((model, "streamGenerateContent")) => Route::Gemini {
                        model: model.to_string(),
                        stream: true,
                    },
                    Some((model, "embedContent")) => Route::GeminiEmbed {
                        model: model.to_string(),
                        batch: false,
                    },
                    Some((model, "batchEmbedContents")) => Route::GeminiEmbed {
                        model: model.to_string(),
                        batch: true,
                    },
                    Some(_) => Route::NotFound,
                    None => allowed(get, Route::Model(rest.to_string())),
                }
            }
        }
        .only_post_for_gemini(post)
    }

    fn only_post_for_gemini(self, post: bool) -> Route {
        match self {
            Route::Gemini { .. } | Route::GeminiEmbed { .. } if !post => Route::BadMethod,
            route => route,
        }
    }

    fn is_control(&self) -> bool {
        matches!(
            self,
            Route::Health | Route::Requests | Route::LastRequest | Route::Faults
        )
    }

    fn dialect(&self) -> Dialect {
        match self {
            Route::Messages | Route::CountTokens => Dialect::Anthropic,
            Route::Gemini { .. } | Route::GeminiEmbed { .. } => Dialect::Gemini,
            _ => Dialect::OpenAi,
        }
    }
}

impl Dialect {
    fn error_json(self, err: &ApiError) -> Vec<u8> {
        match self {
            Dialect::OpenAi => err.to_json(),
            Dialect::Anthropic => anthropic::error_json(err),
            Dialect::Gemini => gemini::error_json(err),
        }
    }

    fn error_event(self, err: &ApiError) -> Bytes {
        match self {
            Dialect::OpenAi => err.to_sse(),
            Dialect::Anthropic => anthropic::error_sse(err),
            Dialect::Gemini => gemini::error_sse(err),
        }
    }

    /// Each provider's own way of carrying the key, and its answer when it is wrong.
    fn check_auth(self, req: &RequestHeader, key: &str) -> Result<(), ApiError> {
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        match self {
            Dialect::OpenAi => {
                let Some(value) = header("authorization") else {
                    return Err(ApiError::for_status(
                        401,
                        "You didn't provide an API key. You need to provide your API key in an \
                         Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    ));
                };
                match value.strip_prefix("Bearer ").map(str::trim) {
                    Some(k) if crate::api::admin::constant_time_eq(k.as_bytes(), key.as_bytes()) => Ok(()),
                    _ => Err(ApiError::for_status(401, "Incorrect API key provided.")),
                }
            }
            Dialect::Anthropic => match header("x-api-key") {
                Some(k) if crate::api::admin::constant_time_eq(k.as_bytes(), key.as_bytes()) => Ok(()),
                Some(_) => Err(ApiError::for_status(401, "invalid x-api-key")),
                None => Err(ApiError::for_status(401, "x-api-key header is required")),
            },
            Dialect::Gemini => {
                let from_query = req
                    .uri
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("key=")));
                // Like Google: no key is a 403, a wrong key a 400.
                match header("x-goog-api-key").or(from_query) {
                    Some(k) if crate::api::admin::constant_time_eq(k.as_bytes(), key.as_bytes()) => Ok(()),
                    Some(_) => Err(ApiError::for_status(
                        400,
                        "API key not valid. Please pass a valid API key.",
                    )),
                    None => Err(ApiError::for_status(
                        403,
                        "Method doesn't allow unregistered callers (callers without established \
                         identity). Please use API Key or other form of API consumer identity \
                         to call this API.",
                    )),
                }
            }
        }
    }
}

/// What a provider route answers, before faults decide how it is delivered.
enum Answer {
    Json(Vec<u8>),
    /// A complete body with its own content type and extra response headers.
    Body {
        content_type: &'static str,
        body: Vec<u8>,
        headers: Vec<(&'static str, String)>,
    },
    Sse(Vec<Event>),
    /// Raw bytes written chunk by chunk (speech audio).
    Chunks {
        content_type: &'static str,
        chunks: Vec<Bytes>,
    },
    Error(ApiError),
}

async fn handle(state: &MockState, session: &mut ServerSession) -> Next {
    let req = session.req_header();
    let method = req.method.clone();
    let route = Route::parse(&method, req.uri.path());
    let dialect = route.dialect();

    // curl (and others) wait for "100 Continue" before sending a large body.
    let expects_continue = req
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && !session.is_http2() && session.write_continue_response().await.is_err() {
        return Next::Close;
    }

    let body = match read_body(session).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            // Don't drain what is left of a huge body just to keep the connection.
            session.set_keepalive(None);
            let err = ApiError::for_status(413, format!("request body over {MAX_BODY} bytes"));
            return respond_error(session, dialect, &err, None).await;
        }
        Err(BodyError::Io) => return Next::Close,
    };

    if route.is_control() {
        return control(state, session, &method, &route, body).await;
    }

    let req = session.req_header();
    let content_type = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if state.log_enabled() {
        // Multipart bodies are summarized (fields, file sizes) so the log shows their `model`.
        let form = content_type
            .as_deref()
            .filter(|ct| ct.trim_start().to_ascii_lowercase().starts_with("multipart/"))
            .map(|ct| multipart::log_summary(ct, &body));
        state.record(LoggedRequest {
            http_version: if session.is_http2() { "HTTP/2" } else { "HTTP/1.1" },
            method: method.to_string(),
            path: req
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            headers: req.headers.clone(),
            body_len: body.len(),
            body: body.clone(),
            form,
        });
    }

    let status_only = match &route {
        Route::NotFound => Some(404),
        Route::BadMethod => Some(405),
        _ => None,
    };
    if let Some(status) = status_only {
        let msg = format!("Invalid URL ({} {})", method, req.uri.path());
        return respond_error(session, dialect, &ApiError::for_status(status, msg), None).await;
    }

    if let Some(key) = state.expected_key() {
        if let Err(err) = dialect.check_auth(req, key) {
            return respond_error(session, dialect, &err, None).await;
        }
    }

    let req_faults = match FaultConfig::from_headers(&req.headers) {
        Ok(f) => f,
        Err(msg) => {
            return respond_error(session, dialect, &ApiError::invalid(msg, None), None).await
        }
    };
    let sse_requested = req
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
    let (global, rolled_failure) = state.faults_for_request();
    let faults = global.overlay(&req_faults);

    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    if faults.hang {
        // Wait for the client to leave (or the limit), then close without an answer.
        let _ = tokio::time::timeout(HANG_LIMIT, session.read_body_or_idle(true)).await;
        return Next::Close;
    }
    if let Some(status) = faults.status.or(rolled_failure.then_some(500)) {
        let err = ApiError::for_status(status, format!("injected fault: status {status}"));
        let retry_after = (status == 429).then_some(faults.retry_after);
        return respond_error(session, dialect, &err, retry_after).await;
    }

    let id = state.next_id();
    let answer = match route {
        Route::Chat => chat(id, &body, &faults),
        Route::Completions => completions(id, &body, &faults),
        Route::Embeddings => match openai::parse_embedding(&body) {
            Ok(req) => Answer::Json(openai::embeddings(&req.model, &req)),
            Err(err) => Answer::Error(err),
        },
        Route::Models => Answer::Json(openai::models_list()),
        Route::Model(model) => Answer::Json(openai::model_object(&model)),
        Route::Messages => messages(id, &body, &faults),
        Route::CountTokens => match anthropic::parse_messages(&body) {
            Ok(req) => Answer::Json(anthropic::count_tokens_json(req.input_tokens)),
            Err(err) => Answer::Error(err),
        },
        Route::Gemini { model, stream } => {
            generate(id, &model, stream, sse_requested, &body, &faults)
        }
        Route::GeminiEmbed { model, batch } => {
            let json = if batch {
                gemini::parse_batch_embed(&body, &model).map(|v| gemini::batch_embed_json(&v))
            } else {
                gemini::parse_embed(&body).map(|i| gemini::embed_json(&i))
            };
            json.map_or_else(Answer::Error, Answer::Json)
        }
        Route::Images => match media::parse_images(&body) {
            Ok(req) => Answer::Body {
                content_type: JSON,
                body: media::images_json(&req, unix_now(), id),
                headers: vec![("x-mock-size", req.size)],
            },
            Err(err) => Answer::Error(err),
        },
        Route::Speech => match media::parse_speech(&body) {
            Ok(req) => Answer::Chunks {
                content_type: req.content_type,
                chunks: media::speech_chunks(&req),
            },
            Err(err) => Answer::Error(err),
        },
        Route::Transcriptions => match media::transcribe(content_type.as_deref(), &body) {
            Ok(t) => Answer::Body {
                content_type: t.content_type,
                body: t.body,
                headers: Vec::new(),
            },
            Err(err) => Answer::Error(err),
        },
        // Answered above.
        _ => Answer::Error(ApiError::for_status(404, "Invalid URL")),
    };
    match answer {
        Answer::Json(body) => respond(session, 200, JSON, body).await,
        Answer::Body {
            content_type,
            body,
            headers,
        } => write_full(session, 200, content_type, body, &headers).await,
        Answer::Sse(events) => {
            stream(session, "text/event-stream", Some(dialect), events, &faults).await
        }
        Answer::Chunks {
            content_type,
            chunks,
        } => {
            // The last chunk counts as the finish, so a cut or error fault always fires.
            let last = chunks.len().saturating_sub(1);
            let events = chunks
                .into_iter()
                .enumerate()
                .map(|(i, bytes)| Event {
                    kind: if i == last {
                        EventKind::Finish
                    } else {
                        EventKind::Content
                    },
                    bytes,
                })
                .collect();
            stream(session, content_type, None, events, &faults).await
        }
        Answer::Error(err) => respond_error(session, dialect, &err, None).await,
    }
}

/// `x-mock-no-usage` wins over whatever the client asked for.
fn usage_if<T>(wanted: bool, faults: &Faults, usage: T) -> Option<T> {
    (wanted && !faults.no_usage).then_some(usage)
}

fn chat(id: u64, body: &[u8], faults: &Faults) -> Answer {
    let req = match openai::parse_chat(body) {
        Ok(req) => req,
        Err(err) => return Answer::Error(err),
    };
    let plan = tools::plan(
        req.turn,
        req.json_mode,
        req.message_count,
        faults.words,
        req.max_tokens,
    );
    let chat_id = format!("chatcmpl-mock-{id}");
    let meta = Meta {
        id: &chat_id,
        created: unix_now(),
        model: &req.model,
    };
    let reply = match plan {
        Plan::Reply(reply) => reply,
        Plan::Call(call) => {
            let usage = Usage::new(
                req.prompt_tokens,
                call.completion_tokens() * u64::from(req.n),
            );
            let call_id = format!("call_mock_{id}");
            return if req.stream {
                let usage = usage_if(req.include_usage, faults, usage);
                Answer::Sse(openai::chat_tool_stream(meta, &call, &call_id, req.n, usage))
            } else {
                let usage = usage_if(true, faults, usage);
                Answer::Json(openai::chat_tool_completion(
                    meta, &call, &call_id, req.n, usage,
                ))
            };
        }
    };
    // Every choice is the same reply, so each one costs its words.
    let usage = Usage::new(
        req.prompt_tokens,
        reply.completion_tokens() * u64::from(req.n),
    );
    if req.stream {
        let usage = usage_if(req.include_usage, faults, usage);
        Answer::Sse(openai::chat_stream(meta, &reply, req.n, usage))
    } else {
        let usage = usage_if(true, faults, usage);
        Answer::Json(openai::chat_completion(meta, &reply, req.n, usage))
    }
}

fn completions(id: u64, body: &[u8], faults: &Faults) -> Answer {
    let req = match openai::parse_completion(body) {
        Ok(req) => req,
        Err(err) => return Answer::Error(err),
    };
    let reply = openai::build_reply(req.prompt_count, faults.words, req.max_tokens);
    let usage = Usage::new(req.prompt_tokens, reply.completion_tokens());
    let id = format!("cmpl-mock-{id}");
    let meta = Meta {
        id: &id,
        created: unix_now(),
        model: &req.model,
    };
    if req.stream {
        let usage = usage_if(req.include_usage, faults, usage);
        Answer::Sse(openai::completion_stream(meta, &reply, usage))
    } else {
        Answer::Json(openai::text_completion(
            meta,
            &reply,
            usage_if(true, faults, usage),
        ))
    }
}

fn messages(id: u64, body: &[u8], faults: &Faults) -> Answer {
    let req = match anthropic::parse_messages(body) {
        Ok(req) => req,
        Err(err) => return Answer::Error(err),
    };
    let Some(max_tokens) = req.max_tokens else {
        let err = ApiError::invalid("max_tokens: Field required", Some("max_tokens"));
        return Answer::Error(err);
    };
    let plan = tools::plan(
        req.turn,
        req.json_mode,
        req.message_count,
        faults.words,
        Some(max_tokens),
    );
    let msg_id = format!("msg_mock_{id}");
    match plan {
        Plan::Call(call) => {
            let usage = anthropic::Usage::new(req.input_tokens, call.completion_tokens());
            let usage = usage_if(true, faults, usage);
            let tool_id = format!("toolu_mock_{id}");
            if req.stream {
                Answer::Sse(anthropic::message_tool_stream(
                    &msg_id, &req.model, &tool_id, &call, usage,
                ))
            } else {
                Answer::Json(anthropic::message_tool_json(
                    &msg_id, &req.model, &tool_id, &call, usage,
                ))
            }
        }
        Plan::Reply(reply) => {
            let usage = anthropic::Usage::new(req.input_tokens, reply.completion_tokens());
            let usage = usage_if(true, faults, usage);
            if req.stream {
                Answer::Sse(anthropic::message_stream(&msg_id, &req.model, &reply, usage))
            } else {
                Answer::Json(anthropic::message_json(&msg_id, &req.model, &reply, usage))
            }
        }
    }
}

fn generate(id: u64, model: &str, stream: bool, sse: bool, body: &[u8], faults: &Faults) -> Answer {
    let req = match gemini::parse_generate(body) {
        Ok(req) => req,
        Err(err) => return Answer::Error(err),
    };
    let plan = tools::plan(
        req.turn,
        req.json_mode,
        req.content_count,
        faults.words,
        req.max_output_tokens,
    );
    let id = format!("mock-{id}");
    match plan {
        Plan::Call(call) => {
            let usage = gemini::UsageMetadata::new(req.prompt_tokens, call.completion_tokens());
            let usage = usage_if(true, faults, usage);
            match (stream, sse) {
                (true, true) => Answer::Sse(gemini::generate_call_stream(&id, model, &call, usage)),
                (true, false) => {
                    Answer::Json(gemini::generate_call_array(&id, model, &call, usage))
                }
                (false, _) => Answer::Json(gemini::generate_call_json(&id, model, &call, usage)),
            }
        }
        Plan::Reply(reply) => {
            let usage = gemini::UsageMetadata::new(req.prompt_tokens, reply.completion_tokens());
            let usage = usage_if(true, faults, usage);
            match (stream, sse) {
                (true, true) => Answer::Sse(gemini::generate_stream(&id, model, &reply, usage)),
                (true, false) => Answer::Json(gemini::generate_array(&id, model, &reply, usage)),
                (false, _) => Answer::Json(gemini::generate_json(&id, model, &reply, usage)),
            }
        }
    }
}

/// The `/_mock/...` routes: never logged, never faulted, never authenticated.
async fn control(
    state: &MockState,
    session: &mut ServerSession,
    method: &Method,
    route: &Route,
    body: Bytes,
) -> Next {
    let to_json = |v: &serde_json::Value| serde_json::to_vec(v).unwrap_or_default();
    let answer = match (route, method) {
        (Route::Requests, &Method::DELETE) => {
            state.clear_requests();
            Answer::Json(br#"{"ok":true}"#.to_vec())
        }
        (Route::Requests, _) => {
            let list: Vec<_> = state
                .requests()
                .iter()
                .map(LoggedRequest::to_json)
                .collect();
            Answer::Json(to_json(&serde_json::json!({ "requests": list })))
        }
        (Route::LastRequest, _) => match state.last_request() {
            Some(r) => Answer::Json(to_json(&r.to_json())),
            None => Answer::Error(ApiError::for_status(404, "no request logged yet")),
        },
        (Route::Faults, &Method::DELETE) => {
            state.clear_faults();
            Answer::Json(br#"{"ok":true}"#.to_vec())
        }
        (Route::Faults, &Method::POST) => {
            let set = serde_json::from_slice::<FaultConfig>(&body)
                .map_err(|e| e.to_string())
                .and_then(|cfg| state.set_faults(cfg));
            match set {
                Ok(()) => Answer::Json(serde_json::to_vec(&state.faults()).unwrap_or_default()),
                Err(msg) => Answer::Error(ApiError::invalid(msg, None)),
            }
        }
        (Route::Faults, _) => Answer::Json(serde_json::to_vec(&state.faults()).unwrap_or_default()),
        _ => Answer::Json(br#"{"ok":true}"#.to_vec()),
    };
    match answer {
        Answer::Error(err) => respond_error(session, Dialect::OpenAi, &err, None).await,
        Answer::Json(body) => respond(session, 200, JSON, body).await,
        _ => Next::Close,
    }
}

// ---------------------------------------------------------------------------------------------
// I/O helpers

enum BodyError {
    TooLarge,
    Io,
}

/// The whole request body, content-length or chunked (h1) or DATA frames (h2).
async fn read_body(session: &mut ServerSession) -> Result<Bytes, BodyError> {
    let declared = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(BodyError::TooLarge);
    }
    // Most bodies arrive as one piece: keep it as is and only copy once there is a second.
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                let so_far = first.as_ref().map_or(0, Bytes::len) + rest.len();
                if so_far + chunk.len() > MAX_BODY {
                    return Err(BodyError::TooLarge);
                }
                match &first {
                    None => first = Some(chunk),
                    Some(head) => {
                        if rest.is_empty() {
                            rest.reserve(declared.unwrap_or(0).max(head.len() + chunk.len()));
                            rest.extend_from_slice(head);
                        }
                        rest.extend_from_slice(&chunk);
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                debug!("mock: reading request body: {e}");
                return Err(BodyError::Io);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}

fn response_header(status: u16, content_type: &'static str) -> Option<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(4)).ok()?;
    h.insert_header(header::CONTENT_TYPE, content_type).ok()?;
    Some(h)
}

/// A complete (content-length) response.
async fn respond(
    session: &mut ServerSession,
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
) -> Next {
    write_full(session, status, content_type, body, &[]).await
}

async fn respond_error(
    session: &mut ServerSession,
    dialect: Dialect,
    err: &ApiError,
    retry_after: Option<u64>,
) -> Next {
    let body = dialect.error_json(err);
    let headers: &[(&'static str, String)] = match retry_after {
        Some(secs) => &[("retry-after", secs.to_string())],
        None => &[],
    };
    write_full(session, err.status, JSON, body, headers).await
}

async fn write_full(
    session: &mut ServerSession,
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
) -> Next {
    let Some(mut h) = response_header(status, content_type) else {
        return Next::Close;
    };
    if h.insert_header(header::CONTENT_LENGTH, body.len()).is_err() {
        return Next::Close;
    }
    for (name, value) in headers {
        if h.insert_header(*name, value.as_str()).is_err() {
            return Next::Close;
        }
    }
    if session.write_response_header(Box::new(h)).await.is_err() {
        return Next::Close;
    }
    match session.write_response_body(body.into(), true).await {
        Ok(()) => Next::Reuse,
        Err(_) => Next::Close,
    }
}

/// A streamed response (SSE, or raw audio bytes), one event per write so each one reaches the
/// client as it is produced.
///
/// `cut_after` / `stream_error_after` count content events; if the reply is shorter than the
/// limit they fire before the finish event, so a test that sets one always sees it happen.
/// `errors: None` (a raw byte stream, which has no way to carry an error) turns
/// `stream_error_after` into a cut.
async fn stream(
    session: &mut ServerSession,
    content_type: &'static str,
    errors: Option<Dialect>,
    events: Vec<Event>,
    faults: &Faults,
) -> Next {
    let Some(mut h) = response_header(200, content_type) else {
        return Next::Close;
    };
    let mut ok = h.insert_header(header::CACHE_CONTROL, "no-cache").is_ok();
    if !session.is_http2() {
        // Without a length Pingora would frame the body by closing the connection.
        ok &= h
            .insert_header(header::TRANSFER_ENCODING, "chunked")
            .is_ok();
    }
    if !ok || session.write_response_header(Box::new(h)).await.is_err() {
        return Next::Close;
    }

    let mut content_sent = 0u32;
    let total = events.len();
    for (i, event) in events.into_iter().enumerate() {
        if i > 0 && !faults.chunk_delay.is_zero() {
            tokio::time::sleep(faults.chunk_delay).await;
        }
        let due = |limit: Option<u32>| {
            limit.is_some_and(|n| match event.kind {
                EventKind::Content => content_sent >= n,
                EventKind::Finish => true,
                _ => false,
            })
        };
        let error_due = due(faults.stream_error_after);
        if due(faults.cut_after) || (error_due && errors.is_none()) {
            // Abrupt: no terminating chunk (h1) / RST_STREAM (h2), no usage, no [DONE].
            if session.is_http2() {
                // The reset discards DATA frames h2 has queued but not sent yet; give the
                // connection task a moment so the client gets the chunks before the cut.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return Next::Close;
        }
        if let Some(dialect) = errors.filter(|_| error_due) {
            let err = ApiError::for_status(500, "injected fault: stream error");
            return match session
                .write_response_body(dialect.error_event(&err), true)
                .await
            {
                Ok(()) => Next::Reuse,
                Err(_) => Next::Close,
            };
        }
        let end = i + 1 == total;
        if event.kind == EventKind::Content {
            content_sent += 1;
        }
        if session.write_response_body(event.bytes, end).await.is_err() {
            return Next::Close;
        }
    }
    if total == 0
        && session
            .write_response_body(Bytes::new(), true)
            .await
            .is_err()
    {
        return Next::Close;
    }
    Next::Reuse
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    #[test]
    fn routes() {
        let r = |m: Method, p: &str| Route::parse(&m, p);
        assert_eq!(r(Method::POST, "/v1/chat/completions"), Route::Chat);
        assert_eq!(r(Method::POST, "/chat/completions/"), Route::Chat);
        assert_eq!(r(Method::GET, "/v1/chat/completions"), Route::BadMethod);
        assert_eq!(r(Method::POST, "/v1/completions"), Route::Completions);
        assert_eq!(r(Method::POST, "/embeddings"), Route::Embeddings);
        assert_eq!(r(Method::GET, "/v1/models"), Route::Models);
        assert_eq!(
            r(Method::GET, "/v1/models/org/m-1"),
            Route::Model("org/m-1".into())
        );
        assert_eq!(r(Method::GET, "/v1/models/"), Route::Models);
        assert_eq!(r(Method::DELETE, "/_mock/requests"), Route::Requests);
        assert_eq!(r(Method::PUT, "/_mock/faults"), Route::BadMethod);
        assert_eq!(r(Method::GET, "/v1x/models"), Route::NotFound);
        assert_eq!(r(Method::GET, "/"), Route::NotFound);
        assert_eq!(r(Method::GET, "/v1"), Route::NotFound);
    }

    #[test]
    fn gemini_and_anthropic_routes() {
        let r = |m: Method, p: &str| Route::parse(&m, p);
        let gem = |model: &str, stream| Route::Gemini {
            model: model.into(),
            stream,
        };
        assert_eq!(r(Method::POST, "/v1/messages"), Route::Messages);
        assert_eq!(
            r(Method::POST, "/v1/messages/count_tokens"),
            Route::CountTokens
        );
        assert_eq!(
            r(
                Method::POST,
                "/v1beta/models/gemini-2.0-flash:generateContent"
            ),
            gem("gemini-2.0-flash", false)
        );
        assert_eq!(
            r(Method::POST, "/v1/models/g:streamGenerateContent"),
            gem("g", true)
        );
        assert_eq!(
            r(Method::GET, "/v1beta/models/g:generateContent"),
            Route::BadMethod
        );
        assert_eq!(
            r(Method::POST, "/v1beta/models/g:embedContent"),
            Route::GeminiEmbed {
                model: "g".into(),
                batch: false
            }
        );
        assert_eq!(
            r(Method::POST, "/v1beta/models/text-embedding-004:batchEmbedContents"),
            Route::GeminiEmbed {
                model: "text-embedding-004".into(),
                batch: true
            }
        );
        assert_eq!(
            r(Method::GET, "/v1beta/models/g:batchEmbedContents"),
            Route::BadMethod
        );
        assert_eq!(
            r(Method::POST, "/v1beta/models/g:countTokens"),
            Route::NotFound
        );
        assert_eq!(r(Method::POST, "/v1/images/generations"), Route::Images);
        assert_eq!(r(Method::POST, "/audio/speech"), Route::Speech);
        assert_eq!(
            r(Method::POST, "/v1/audio/transcriptions"),
            Route::Transcriptions
        );
        assert_eq!(r(Method::GET, "/v1/audio/speech"), Route::BadMethod);
        assert_eq!(
            r(Method::POST, "/v1beta/models/g:embedContent").dialect(),
            Dialect::Gemini
        );
        assert_eq!(
            r(Method::POST, "/v1/messages").dialect(),
            Dialect::Anthropic
        );
    }

    #[test]
    fn auth() {
        let req = |uri: &str, headers: &[(&'static str, &'static str)]| {
            let mut h = RequestHeader::build("POST", uri.as_bytes(), None).unwrap();
            for (k, v) in headers {
                h.insert_header(*k, *v).unwrap();
            }
            h
        };
        let check = |d: Dialect, r: &RequestHeader| d.check_auth(r, "k1").map_err(|e| e.status);
        let open_ai = Dialect::OpenAi;
        assert_eq!(
            check(open_ai, &req("/", &[("authorization", "Bearer k1")])),
            Ok(())
        );
        assert_eq!(
            check(open_ai, &req("/", &[("authorization", "Bearer k2")])),
            Err(401)
        );
        assert_eq!(
            check(open_ai, &req("/", &[("authorization", "k1")])),
            Err(401)
        );
        assert_eq!(check(open_ai, &req("/", &[])), Err(401));
        let anth = Dialect::Anthropic;
        assert_eq!(check(anth, &req("/", &[("x-api-key", "k1")])), Ok(()));
        assert_eq!(
            check(anth, &req("/", &[("authorization", "Bearer k1")])),
            Err(401)
        );
        let gem = Dialect::Gemini;
        assert_eq!(check(gem, &req("/", &[("x-goog-api-key", "k1")])), Ok(()));
        assert_eq!(
            check(gem, &req("/m:generateContent?alt=sse&key=k1", &[])),
            Ok(())
        );
        assert_eq!(check(gem, &req("/?key=no", &[])), Err(400));
        assert_eq!(check(gem, &req("/", &[])), Err(403));
    }

    fn free_addr() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    fn start(state: MockState) -> (String, Arc<MockState>) {
        let addr = free_addr();
        let state = Arc::new(state);
        spawn_background(&addr, state.clone());
        (addr, state)
    }

    /// A minimal HTTP/1.1 client so tests can see framing and timing exactly.
    struct Conn {
        reader: BufReader<TcpStream>,
    }

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        /// (time since the request was sent, bytes) per body chunk.
        chunks: Vec<(Duration, Vec<u8>)>,
        complete: bool,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    impl Conn {
        fn open(addr: &str) -> Conn {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Conn {
                reader: BufReader::new(s),
            }
        }

        fn send(
            &mut self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: &[u8],
        ) -> Resp {
            let mut req = format!("{method} {path} HTTP/1.1\r\nHost: mock\r\n");
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
            {
                req.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            req.push_str("\r\n");
            let s = self.reader.get_mut();
            s.write_all(req.as_bytes()).unwrap();
            s.write_all(body).unwrap();
            self.read_response(Instant::now())
        }

        fn line(&mut self) -> Option<String> {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(line.trim_end().to_string()),
            }
        }

        fn read_response(&mut self, sent: Instant) -> Resp {
            let status_line = self.line().unwrap();
            let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
            let mut headers = Vec::new();
            while let Some(l) = self.line().filter(|l| !l.is_empty()) {
                let (k, v) = l.split_once(':').unwrap();
                headers.push((k.trim().to_lowercase(), v.trim().to_string()));
            }
            let mut resp = Resp {
                status,
                headers,
                body: Vec::new(),
                chunks: Vec::new(),
                complete: false,
            };
            if resp.header("transfer-encoding") == Some("chunked") {
                loop {
                    let Some(size) = self.line() else { return resp };
                    let Ok(size) = usize::from_str_radix(&size, 16) else {
                        return resp;
                    };
                    let mut chunk = vec![0; size + 2];
                    if self.reader.read_exact(&mut chunk).is_err() {
                        return resp;
                    }
                    chunk.truncate(size);
                    if size == 0 {
                        resp.complete = true;
                        return resp;
                    }
                    resp.body.extend_from_slice(&chunk);
                    resp.chunks.push((sent.elapsed(), chunk));
                }
            }
            let len: usize = resp.header("content-length").unwrap().parse().unwrap();
            resp.body = vec![0; len];
            self.reader.read_exact(&mut resp.body).unwrap();
            resp.complete = true;
            resp
        }
    }

    fn chat_body(stream: bool) -> String {
        serde_json::json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hello there"}],
            "stream": stream,
            "stream_options": {"include_usage": true},
        })
        .to_string()
    }

    #[test]
    fn live_stream_arrives_chunk_by_chunk() {
        let (addr, _) = start(MockState::default());
        let mut conn = Conn::open(&addr);
        let resp = conn.send(
            "POST",
            "/v1/chat/completions",
            &[("x-mock-chunk-delay-ms", "60"), ("x-mock-words", "4")],
            chat_body(true).as_bytes(),
        );
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some("text/event-stream"));
        assert!(resp.complete);
        // head + 4 words + finish + usage + [DONE], each its own chunked-encoding chunk.
        assert_eq!(resp.chunks.len(), 8);
        for (_, c) in &resp.chunks {
            assert!(c.starts_with(b"data: ") && c.ends_with(b"\n\n"));
        }
        let (first, last) = (resp.chunks[0].0, resp.chunks[7].0);
        assert!(
            last - first >= Duration::from_millis(300),
            "{first:?} .. {last:?}"
        );
        let usage: serde_json::Value = serde_json::from_slice(&resp.chunks[6].1[6..]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 4);
        assert_eq!(usage["usage"]["prompt_tokens"], 3 + 3);
        assert_eq!(resp.chunks[7].1, b"data: [DONE]\n\n");

        // Same connection, kept alive: a plain completion.
        let resp = conn.send(
            "POST",
            "/chat/completions",
            &[],
            chat_body(false).as_bytes(),
        );
        assert_eq!(resp.status, 200);
        let v = resp.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["usage"]["completion_tokens"], 9);
    }

    #[test]
    fn live_cut_and_stream_error() {
        let (addr, _) = start(MockState::default());
        let resp = Conn::open(&addr).send(
            "POST",
            "/v1/chat/completions",
            &[("x-mock-cut-after", "2")],
            chat_body(true).as_bytes(),
        );
        assert!(!resp.complete, "no terminating chunk after a cut");
        assert_eq!(resp.chunks.len(), 3); // head + 2 words
        assert!(!String::from_utf8_lossy(&resp.body).contains("[DONE]"));

        let mut conn = Conn::open(&addr);
        let resp = conn.send(
            "POST",
            "/v1/chat/completions",
            &[("x-mock-stream-error-after", "1")],
            chat_body(true).as_bytes(),
        );
        assert!(resp.complete);
        let last = &resp.chunks.last().unwrap().1;
        assert!(last.starts_with(b"data: {\"error\""));
        // The connection is still usable after a clean error event.
        let resp = conn.send("GET", "/v1/models", &[], b"");
        assert_eq!(resp.status, 200);
    }

    #[test]
    fn live_auth_faults_and_log() {
        let (addr, state) = start(MockState::new(Some("sk-up".into())));
        let mut conn = Conn::open(&addr);
        let resp = conn.send(
            "POST",
            "/v1/chat/completions",
            &[],
            chat_body(false).as_bytes(),
        );
        assert_eq!(resp.status, 401);
        assert_eq!(resp.json()["error"]["code"], "invalid_api_key");

        let auth = ("Authorization", "Bearer sk-up");
        let resp = conn.send(
            "POST",
            "/v1/chat/completions",
            &[auth, ("x-mock-status", "429")],
            b"{}",
        );
        assert_eq!(resp.status, 429);
        assert_eq!(resp.header("retry-after"), Some("1"));
        assert_eq!(resp.json()["error"]["type"], "requests");

        let resp = conn.send("POST", "/v1/chat/completions", &[auth], b"{not json");
        assert_eq!(resp.status, 400);
        let resp = conn.send("POST", "/v1/nope", &[auth], b"");
        assert_eq!(resp.status, 404);
        let resp = conn.send(
            "POST",
            "/v1/chat/completions",
            &[auth, ("x-mock-words", "x")],
            b"",
        );
        assert_eq!(resp.status, 400);

        // Global faults: the next request fails, then they clear themselves.
        let resp = conn.send(
            "POST",
            "/_mock/faults",
            &[],
            br#"{"status":503,"remaining":1}"#,
        );
        assert_eq!(resp.status, 200);
        let body = chat_body(false);
        let resp = conn.send("POST", "/v1/chat/completions", &[auth], body.as_bytes());
        assert_eq!(resp.status, 503);
        let resp = conn.send("POST", "/v1/chat/completions", &[auth], body.as_bytes());
        assert_eq!(resp.status, 200);
        let resp = conn.send("POST", "/_mock/faults", &[], br#"{"stauts":503}"#);
        assert_eq!(resp.status, 400);

        // A chunked multi-MB request body, logged in full as the newest entry.
        let big = serde_json::json!({
            "model": "m",
            "messages": [{"role": "user", "content": "y".repeat(3 << 20)}],
        })
        .to_string();
        let mut chunked = Vec::new();
        for part in big.as_bytes().chunks(100_000) {
            chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            chunked.extend_from_slice(part);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let te = ("Transfer-Encoding", "chunked");
        let resp = conn.send("POST", "/v1/chat/completions", &[auth, te], &chunked);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["usage"]["prompt_tokens"], (3 << 20) / 4 + 3);

        let resp = conn.send("GET", "/_mock/requests/last", &[], b"");
        let last = resp.json();
        assert_eq!(last["body_len"], big.len());
        assert_eq!(last["json"]["model"], "m");
        assert_eq!(last["headers"]["authorization"], "Bearer sk-up");
        let resp = conn.send("GET", "/_mock/requests", &[], b"");
        // Control routes are not logged: 8 provider requests so far.
        assert_eq!(resp.json()["requests"].as_array().unwrap().len(), 8);
        assert_eq!(state.requests().len(), 8);
        conn.send("DELETE", "/_mock/requests", &[], b"");
        assert!(state.requests().is_empty());
    }

    #[test]
    fn live_anthropic_and_gemini() {
        let (addr, _) = start(MockState::new(Some("sk".into())));
        let mut conn = Conn::open(&addr);
        let body = br#"{"model":"claude-x","max_tokens":2,"stream":true,
                        "messages":[{"role":"user","content":"hi"}]}"#;
        let resp = conn.send(
            "POST",
            "/v1/messages",
            &[("authorization", "Bearer sk")],
            body,
        );
        assert_eq!(resp.status, 401);
        assert_eq!(resp.json()["error"]["type"], "authentication_error");
        let resp = conn.send("POST", "/v1/messages", &[("x-api-key", "sk")], body);
        assert_eq!(resp.status, 200);
        let names: Vec<String> = resp
            .chunks
            .iter()
            .map(|(_, c)| {
                String::from_utf8_lossy(c)
                    .lines()
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(names.len(), 8); // start, block start, ping, 2 deltas, stop, delta, stop
        assert_eq!(names[7], "event: message_stop");

        let path = "/v1beta/models/gemini-x:streamGenerateContent?alt=sse&key=sk";
        let body = br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
        let resp = conn.send("POST", path, &[("x-mock-words", "3")], body);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.chunks.len(), 4);
        let last = &resp.chunks[3].1;
        let v: serde_json::Value = serde_json::from_slice(&last[6..]).unwrap();
        assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 3);
        assert_eq!(v["modelVersion"], "gemini-x");
        let resp = conn.send("POST", "/v1beta/models/g:generateContent", &[], body);
        assert_eq!(resp.status, 403);
        assert_eq!(resp.json()["error"]["status"], "PERMISSION_DENIED");
    }

    #[test]
    fn live_hang_closes_when_client_leaves() {
        let (addr, state) = start(MockState::default());
        let mut conn = Conn::open(&addr);
        let req = "POST /v1/chat/completions HTTP/1.1\r\nHost: m\r\nx-mock-hang: 1\r\nContent-Length: 2\r\n\r\n{}";
        conn.reader.get_mut().write_all(req.as_bytes()).unwrap();
        conn.reader
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 16];
        // Nothing comes back while we wait.
        assert!(conn.reader.read(&mut buf).is_err());
        drop(conn);
        // The server is still fine afterwards.
        let resp = Conn::open(&addr).send("GET", "/_mock/health", &[], b"");
        assert_eq!(resp.status, 200);
        assert_eq!(state.requests().len(), 1);
    }

    #[test]
    fn live_tool_calls_in_three_formats() {
        let (addr, _) = start(MockState::default());
        let mut conn = Conn::open(&addr);
        let tool = serde_json::json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                           "required": ["location"]}}});
        let body = serde_json::json!({"model": "m", "stream": true,
            "stream_options": {"include_usage": true}, "tools": [tool],
            "messages": [{"role": "user", "content": "weather?"}]});
        let resp = conn.send("POST", "/v1/chat/completions", &[], body.to_string().as_bytes());
        assert_eq!(resp.status, 200);
        let chunks: Vec<serde_json::Value> = resp
            .chunks
            .iter()
            .filter(|(_, c)| !c.starts_with(b"data: [DONE]"))
            .map(|(_, c)| serde_json::from_slice(&c[6..]).unwrap())
            .collect();
        let head = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
        assert!(head["id"].as_str().unwrap().starts_with("call_mock_"));
        let args: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
            .collect();
        assert_eq!(args, r#"{"location":"mock"}"#);
        let last = chunks.last().unwrap();
        assert_eq!(last["usage"]["completion_tokens"], 5);
        assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "tool_calls");

        let body = br#"{"model":"c","max_tokens":50,"tools":[{"name":"f","input_schema":{"type":"object","required":["q"],"properties":{"q":{"type":"string"}}}}],
                        "messages":[{"role":"user","content":"hi"}]}"#;
        let v = conn.send("POST", "/v1/messages", &[], body).json();
        assert_eq!(v["stop_reason"], "tool_use");
        assert!(v["content"][0]["id"].as_str().unwrap().starts_with("toolu_mock_"));
        assert_eq!(v["content"][0]["input"], serde_json::json!({"q": "mock"}));

        let body = br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],
                        "tools":[{"functionDeclarations":[{"name":"g"}]}]}"#;
        let path = "/v1beta/models/gem:streamGenerateContent?alt=sse";
        let resp = conn.send("POST", path, &[], body);
        assert_eq!(resp.chunks.len(), 1);
        let v: serde_json::Value = serde_json::from_slice(&resp.chunks[0].1[6..]).unwrap();
        assert_eq!(v["candidates"][0]["content"]["parts"][0]["functionCall"]["name"], "g");
        assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    }

    fn multipart_body(audio: &[u8]) -> (String, Vec<u8>) {
        let b = "mockB0undary";
        let mut body = Vec::new();
        body.extend_from_slice(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n").as_bytes(),
        );
        body.extend_from_slice(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(audio);
        body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
        (format!("multipart/form-data; boundary={b}"), body)
    }

    #[test]
    fn live_media_and_embeddings() {
        let (addr, state) = start(MockState::default());
        let mut conn = Conn::open(&addr);
        let resp = conn.send(
            "POST",
            "/v1/images/generations",
            &[],
            br#"{"model":"dall-e-2","prompt":"a cat","n":2,"size":"512x512"}"#,
        );
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-mock-size"), Some("512x512"));
        assert_eq!(resp.json()["data"].as_array().unwrap().len(), 2);
        let resp = conn.send("POST", "/v1/images/generations", &[], br#"{"prompt":"a","n":11}"#);
        assert_eq!(resp.status, 400);
        assert_eq!(resp.json()["error"]["param"], "n");

        let input = "Hello from Tollgate."; // 20 characters
        let body = serde_json::json!({"model": "tts-1", "input": input, "voice": "alloy"});
        let resp = conn.send("POST", "/v1/audio/speech", &[], body.to_string().as_bytes());
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some("audio/mpeg"));
        assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
        assert!(resp.complete);
        assert_eq!(resp.body.len(), 1000 + 10 * 20);
        assert_eq!(resp.chunks.len(), 3);
        let resp = conn.send("POST", "/v1/audio/speech", &[], br#"{"model":"tts-1","voice":"a"}"#);
        assert_eq!(resp.status, 400);

        let mut audio = vec![0xffu8; 48_000];
        audio[10..16].copy_from_slice(b"\r\n--mo");
        let (ct, body) = multipart_body(&audio);
        let resp = conn.send("POST", "/v1/audio/transcriptions", &[("Content-Type", &ct)], &body);
        assert_eq!(resp.status, 200);
        let v = resp.json();
        assert_eq!(v["text"], "mock transcription of 48000 bytes");
        assert_eq!(v["usage"]["seconds"], 3);
        let logged = state.last_request().unwrap().to_json();
        assert_eq!(logged["model"], "whisper-1");
        assert_eq!(logged["form"]["files"][0]["bytes"], 48_000);
        let resp = conn.send("POST", "/v1/audio/transcriptions", &[("Content-Type", JSON)], b"{}");
        assert_eq!(resp.status, 400);
        assert_eq!(resp.json()["error"]["type"], "invalid_request_error");

        let resp = conn.send(
            "POST",
            "/v1beta/models/text-embedding-004:batchEmbedContents",
            &[],
            br#"{"requests":[{"model":"models/text-embedding-004","content":{"parts":[{"text":"a"}]}},
                            {"model":"models/text-embedding-004","content":{"parts":[{"text":"b"}]}}]}"#,
        );
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["embeddings"].as_array().unwrap().len(), 2);
        let resp = conn.send(
            "POST",
            "/v1beta/models/e:embedContent",
            &[],
            br#"{"content":{"parts":[{"text":"a"}]}}"#,
        );
        assert_eq!(resp.json()["embedding"]["values"].as_array().unwrap().len(), 8);
    }

    #[test]
    fn live_faults_on_new_routes() {
        let (addr, _) = start(MockState::new(Some("k".into())));
        let mut conn = Conn::open(&addr);
        let bearer = ("Authorization", "Bearer k");
        let (ct, form) = multipart_body(b"abc");
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>);
        let cases: [Case; 4] = [
            ("/v1/images/generations", vec![bearer], br#"{"prompt":"x"}"#.to_vec()),
            ("/v1/audio/speech", vec![bearer], br#"{"model":"m","input":"x"}"#.to_vec()),
            ("/v1/audio/transcriptions", vec![bearer, ("Content-Type", &ct)], form),
            ("/v1beta/models/e:embedContent", vec![("x-goog-api-key", "k")],
             br#"{"content":{"parts":[{"text":"a"}]}}"#.to_vec()),
        ];
        for (path, headers, body) in &cases {
            let ok = conn.send("POST", path, headers, body);
            assert_eq!(ok.status, 200, "{path}");
            let no_auth: Vec<(&str, &str)> = headers
                .iter()
                .filter(|(k, _)| *k == "Content-Type")
                .copied()
                .collect();
            let resp = conn.send("POST", path, &no_auth, body);
            assert!(matches!(resp.status, 401 | 403), "{path}: {}", resp.status);
            let mut faulted = headers.clone();
            faulted.push(("x-mock-status", "503"));
            let resp = conn.send("POST", path, &faulted, body);
            assert_eq!(resp.status, 503, "{path}");
            let mut slow = headers.clone();
            slow.push(("x-mock-delay-ms", "50"));
            let t = Instant::now();
            assert_eq!(conn.send("POST", path, &slow, body).status, 200);
            assert!(t.elapsed() >= Duration::from_millis(50));
        }
        assert_eq!(
            conn.send("POST", "/v1beta/models/e:embedContent", &[("x-goog-api-key", "k"), ("x-mock-status", "429")], b"{}")
                .json()["error"]["status"],
            "RESOURCE_EXHAUSTED"
        );

        // A cut speech stream ends without the terminating chunk.
        let resp = Conn::open(&addr).send(
            "POST",
            "/v1/audio/speech",
            &[bearer, ("x-mock-cut-after", "1")],
            br#"{"model":"m","input":"x"}"#,
        );
        assert!(!resp.complete);
        assert_eq!(resp.body.len(), media::SPEECH_CHUNK);
    }

}
