//! Which wire format a request speaks upstream, chosen once per request from the provider's
//! kind and the endpoint. The translators themselves are pure and live in `providers/`; this
//! is the one place the proxy phases pick between them.

use super::endpoints::RequestInfo;
use crate::api::error::ApiError;
use crate::api::Endpoint;
use crate::billing::pricing::Units;
use crate::config::{Model, ProviderKind};
use crate::metering::{estimate, usage::Usage, OpenAiStreamMeter, StreamMeter};
use crate::providers::{anthropic, completions, gemini, gemini_embed, json_scan, multipart, openai};

/// The upstream request body and the path to append to the provider's `base_url`.
pub struct UpstreamRequest {
    pub body: Vec<u8>,
    pub path: String,
    /// Anthropic has no JSON mode: the translator asks for JSON in the system prompt and strips
    /// code fences from the answer.
    pub json_mode: bool,
    /// The request was turned into a chat request (legacy completions on a chat-only
    /// provider): the answer is turned back.
    pub via_chat: bool,
    /// Multipart bodies keep their own content type (boundary included).
    pub content_type: Option<String>,
}

fn invalid(e: openai::RequestError) -> ApiError {
    let mut err = ApiError::invalid_request(e.message);
    err.param = e.param;
    err
}

/// The answer for a provider kind that cannot serve an endpoint.
pub fn not_offered(kind: ProviderKind, endpoint: Endpoint) -> ApiError {
    ApiError::invalid_request(format!(
        "providers of kind {} do not offer /{}",
        kind.as_str(),
        endpoint.upstream_path().trim_start_matches('/')
    ))
}

/// Whether providers of `kind` can serve `endpoint` at all (what [`request`] translates).
pub fn offers(kind: ProviderKind, endpoint: Endpoint) -> bool {
    match kind {
        ProviderKind::OpenAi | ProviderKind::Mock => true,
        ProviderKind::Anthropic => matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions),
        ProviderKind::Gemini => {
            matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings)
        }
    }
}

pub fn request(
    kind: ProviderKind,
    endpoint: Endpoint,
    body: &[u8],
    info: &RequestInfo,
    model: &Model,
    content_type: &str,
) -> Result<UpstreamRequest, ApiError> {
    let plain = |body: Vec<u8>, path: &str| UpstreamRequest {
        body,
        path: path.to_string(),
        json_mode: false,
        via_chat: false,
        content_type: None,
    };
    let openai_like = matches!(kind, ProviderKind::OpenAi | ProviderKind::Mock);
    match endpoint {
        Endpoint::ChatCompletions => chat_request(kind, body, info.stream, info.include_usage, model),
        Endpoint::Completions if openai_like => {
            let add_usage = info.stream && !info.include_usage;
            Ok(plain(openai::rewrite_chat_request(body, &model.upstream_model, add_usage), "/completions"))
        }
        Endpoint::Completions => {
            // Translated through chat for providers that have no legacy endpoint.
            let chat = completions::to_chat_request(body)?;
            let mut up = chat_request(kind, &chat, info.stream, info.include_usage, model)?;
            up.via_chat = true;
            Ok(up)
        }
        Endpoint::Embeddings if openai_like => {
            Ok(plain(openai::rewrite_chat_request(body, &model.upstream_model, false), "/embeddings"))
        }
        Endpoint::Embeddings if kind == ProviderKind::Gemini => {
            let (body, path) = gemini_embed::embed_request(body, &model.upstream_model).map_err(invalid)?;
            Ok(plain(body, &path))
        }
        Endpoint::Images | Endpoint::Speech if openai_like => {
            Ok(plain(openai::rewrite_chat_request(body, &model.upstream_model, false), endpoint.upstream_path()))
        }
        Endpoint::Transcriptions if openai_like => {
            let boundary = multipart::boundary(content_type).unwrap_or_default();
            let form = multipart::Form::parse(body, &boundary)
                .map_err(|e| ApiError::invalid_request(format!("malformed multipart body: {e}")))?;
            let mut up = plain(form.replace(body, "model", &model.upstream_model), endpoint.upstream_path());
            up.content_type = Some(content_type.to_string());
            Ok(up)
        }
        _ => Err(not_offered(kind, endpoint)),
    }
}

fn chat_request(
    kind: ProviderKind,
    body: &[u8],
    stream: bool,
    include_usage: bool,
    model: &Model,
) -> Result<UpstreamRequest, ApiError> {
    let up = |body, path: String, json_mode| UpstreamRequest { body, path, json_mode, via_chat: false, content_type: None };
    Ok(match kind {
        ProviderKind::OpenAi | ProviderKind::Mock => {
            // Usage is metered from the stream itself: ask for it when the client did not.
            let add_usage = stream && !include_usage;
            up(openai::rewrite_chat_request(body, &model.upstream_model, add_usage), "/chat/completions".into(), false)
        }
        ProviderKind::Anthropic => up(
            anthropic::translate_request(body, &model.upstream_model, model.max_output_tokens).map_err(invalid)?,
            "/messages".into(),
            anthropic::json_mode(body),
        ),
        ProviderKind::Gemini => up(
            gemini::translate_request(body, Some(model.max_output_tokens)).map_err(invalid)?,
            gemini::upstream_path(&model.upstream_model, stream),
            false,
        ),
    })
}

/// The `id` a chat or legacy completion (whole or streamed) carries to the client: the
/// generation's id behind OpenAI's prefix for the object (`store::client_response_id`).
/// Through chat, the chat id is made and then turned into a legacy one by `completions`.
pub fn client_id(endpoint: Endpoint, via_chat: bool, generation_id: &str) -> String {
    crate::store::client_response_id(generation_id, endpoint == Endpoint::Completions && !via_chat)
}

/// The handler that turns the provider's stream into OpenAI chunks for the client; every
/// chunk carries `client_id` (see [`client_id`]).
pub fn stream_meter(
    kind: ProviderKind,
    slug: &str,
    client_wants_usage: bool,
    via_chat: bool,
    client_id: &str,
) -> Box<dyn StreamMeter> {
    let meter: Box<dyn StreamMeter> = match kind {
        // The usage-only chunk is stripped only when the gateway asked for it itself.
        ProviderKind::OpenAi | ProviderKind::Mock => {
            Box::new(OpenAiStreamMeter::new(slug, !client_wants_usage).with_client_id(client_id))
        }
        ProviderKind::Anthropic => {
            Box::new(anthropic::AnthropicStream::new(slug, client_wants_usage).with_client_id(client_id))
        }
        ProviderKind::Gemini => Box::new(gemini::GeminiStream::new(slug, client_wants_usage).with_client_id(client_id)),
    };
    if via_chat {
        Box::new(completions::ChatToCompletionStream::new(meter))
    } else {
        meter
    }
}

/// A whole (non-streamed) answer in OpenAI's shape: body, billable units if reported, and
/// the provider's id for it (recorded; the body itself carries the gateway's, see
/// [`client_id`]).
pub struct Answer {
    pub body: Vec<u8>,
    pub units: Option<Units>,
    /// Whether the body carries an id (then the client's, see [`client_id`]).
    pub carries_id: bool,
    /// The provider's own id for the answer, as it sent it (see `GenerationRecord::upstream_id`).
    pub upstream_id: Option<String>,
}

impl Answer {
    /// An answer whose body carries no completion id (embeddings, images, audio).
    fn without_id(body: Vec<u8>, units: Option<Units>) -> Answer {
        Answer { body, units, carries_id: false, upstream_id: None }
    }
}

pub fn response(
    kind: ProviderKind,
    endpoint: Endpoint,
    body: &[u8],
    slug: &str,
    model: &Model,
    info: &RequestInfo,
    json_mode: bool,
    via_chat: bool,
    client_id: &str,
) -> Result<Answer, ApiError> {
    let bad = |message: String| ApiError::upstream_error(format!("the provider's answer could not be read: {message}"));
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Completions => {
            let mut answer = chat_response(kind, body, slug, json_mode, client_id).map_err(|e| bad(e.message))?;
            if via_chat {
                answer.body = completions::chat_to_completion(&answer.body);
            }
            Ok(answer)
        }
        Endpoint::Embeddings if kind == ProviderKind::Gemini => {
            let out = gemini_embed::embed_response(body, slug).map_err(|e| bad(e.message))?;
            // Gemini reports no tokens for embeddings: estimated from the input by the caller.
            Ok(Answer::without_id(out, None))
        }
        Endpoint::Embeddings => {
            let (out, usage) = openai::rewrite_chat_response(body, slug);
            Ok(Answer::without_id(out, usage.map(Units::Tokens)))
        }
        Endpoint::Images => {
            let count = json_scan::find_member(body, "data")
                .ok()
                .flatten()
                .and_then(|m| serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(m.value(body)).ok())
                .map(|d| d.len() as u64)
                .ok_or_else(|| bad("no 'data' array".into()))?;
            let unit_price = model.image_price(&info.size).unwrap_or(0);
            Ok(Answer::without_id(body.to_vec(), Some(Units::Images { count, unit_price })))
        }
        Endpoint::Speech => Ok(Answer::without_id(body.to_vec(), Some(Units::Chars(info.chars)))),
        Endpoint::Transcriptions => {
            let units = transcription_units(body);
            Ok(Answer::without_id(body.to_vec(), units))
        }
    }
}

fn chat_response(
    kind: ProviderKind,
    body: &[u8],
    slug: &str,
    json_mode: bool,
    client_id: &str,
) -> Result<Answer, TranslateFailure> {
    match kind {
        ProviderKind::OpenAi | ProviderKind::Mock => {
            // The id is replaced in the same pass as the model; the one returned is the
            // provider's, and the body carries `client_id` where it had one.
            let (out, usage, id) = openai::rewrite_chat_response_as(body, slug, Some(client_id));
            Ok(Answer { body: out, units: usage.map(Units::Tokens), carries_id: id.is_some(), upstream_id: id })
        }
        ProviderKind::Anthropic => {
            let t = anthropic::translate_message(body, slug, json_mode).map_err(|e| TranslateFailure { message: e.message })?;
            let out = openai::with_response_id(&t.body, client_id);
            let upstream_id = anthropic::upstream_id(&t.id).map(str::to_string);
            Ok(Answer { body: out, units: t.usage.map(Units::Tokens), carries_id: true, upstream_id })
        }
        ProviderKind::Gemini => {
            let (out, usage, upstream_id) =
                gemini::translate_response_and_id(body, slug).map_err(|e| TranslateFailure { message: e.message })?;
            // The translation always names the completion; the client sees the gateway's id.
            let out = openai::with_response_id(&out, client_id);
            // Gemini without usageMetadata reports zeros: treat as unreported, so it is estimated.
            let usage = (usage.prompt_tokens > 0 || usage.completion_tokens > 0).then_some(usage);
            Ok(Answer { body: out, units: usage.map(Units::Tokens), carries_id: true, upstream_id })
        }
    }
}

struct TranslateFailure {
    message: String,
}

/// A transcription's `usage`: `{"type":"duration","seconds":S}` or
/// `{"type":"tokens","input_tokens":I,"output_tokens":O}`.
fn transcription_units(body: &[u8]) -> Option<Units> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let u = v.get("usage")?;
    match u.get("type").and_then(|t| t.as_str()) {
        Some("duration") => {
            let seconds = u.get("seconds")?.as_f64()?;
            (seconds.is_finite() && seconds >= 0.0).then(|| Units::AudioMillis((seconds * 1000.0).ceil() as u64))
        }
        Some("tokens") => Some(Units::Tokens(Usage {
            prompt_tokens: u.get("input_tokens")?.as_u64()?,
            completion_tokens: u.get("output_tokens").and_then(|o| o.as_u64()).unwrap_or(0),
            ..Default::default()
        })),
        _ => None,
    }
}

/// Units for an answer that reported none: counted from what can be seen, marked estimated.
pub fn estimated_units(endpoint: Endpoint, info: &RequestInfo, request_bytes: usize, answer: &[u8]) -> Units {
    match endpoint {
        Endpoint::Embeddings => Units::Tokens(Usage {
            prompt_tokens: estimate::tokens_from_chars(request_bytes as u64),
            ..Default::default()
        }),
        // About 2.5 spoken words per second, about 6 characters per word.
        Endpoint::Transcriptions => Units::AudioMillis((answer.len() as u64).div_ceil(15).max(1) * 1000),
        Endpoint::Speech => Units::Chars(info.chars),
        _ => Units::Tokens(Usage {
            prompt_tokens: estimate::tokens_from_chars(request_bytes as u64),
            completion_tokens: estimate::tokens_from_chars(answer.len() as u64),
            ..Default::default()
        }),
    }
}
