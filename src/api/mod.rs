//! Routes answered by the gateway itself, without an upstream: the catalog, credits and
//! generations, self-service accounts (auth, me, keys, usage, BYOK), administration and
//! health. Plus the route table for every path.
//!
//! Handlers are plain functions from a parsed request to a [`Reply`]; the proxy writes the
//! reply from `request_filter`, so these routes never touch Pingora's upstream machinery.

pub mod account;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod byok;
pub mod catalog;
pub mod error;
pub mod keys;
pub mod me;
pub mod password;
pub mod usage;

use bytes::Bytes;
use error::ApiError;
use http::Method;

/// An inference endpoint forwarded to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Images,
    Speech,
    Transcriptions,
}

impl Endpoint {
    /// The path appended to the provider's `base_url` (OpenAI wire format).
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Images => "/images/generations",
            Endpoint::Speech => "/audio/speech",
            Endpoint::Transcriptions => "/audio/transcriptions",
        }
    }

    /// The name models list in `endpoints`; also the metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Images => "images",
            Endpoint::Speech => "speech",
            Endpoint::Transcriptions => "transcriptions",
        }
    }

    /// Largest request body, in bytes, before the configured `max_body_bytes` applies.
    pub fn body_limit(self, configured: u64) -> u64 {
        match self {
            // OpenAI's own limit for audio uploads.
            Endpoint::Transcriptions => 25 * 1024 * 1024,
            _ => configured,
        }
    }

    fn from_path(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/chat/completions" => Endpoint::ChatCompletions,
            "/completions" => Endpoint::Completions,
            "/embeddings" => Endpoint::Embeddings,
            "/images/generations" => Endpoint::Images,
            "/audio/speech" => Endpoint::Speech,
            "/audio/transcriptions" => Endpoint::Transcriptions,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Inference(Endpoint),
    Models,
    Model(String),
    Generation,
    Credits,
    /// `POST /auth/register`
    AuthRegister,
    /// `POST /auth/login`
    AuthLogin,
    /// `GET /me`
    Me,
    /// `GET /usage`
    Usage,
    /// `GET /keys`
    KeysList,
    /// `POST /keys`
    KeysCreate,
    /// `PATCH /keys/{id}`
    KeyUpdate(u64),
    /// `DELETE /keys/{id}`
    KeyRevoke(u64),
    /// `GET /keys/byok`
    ByokList,
    /// `PUT /keys/byok/{provider}`
    ByokPut(String),
    /// `DELETE /keys/byok/{provider}`
    ByokDelete(String),
    /// `POST /admin/accounts`
    AdminAccounts,
    /// `GET /admin/accounts?q=&limit=&offset=`
    AdminAccountList,
    /// `GET /admin/accounts/{id}`
    AdminAccount(u64),
    /// `PATCH /admin/accounts/{id}`
    AdminAccountUpdate(u64),
    AdminCredits(u64),
    AdminKeys(u64),
    /// `GET /admin/audit`
    AdminAudit,
    /// `POST /admin/recompute-tiers`
    AdminRecomputeTiers,
    /// `GET /admin/routes`: every model's routes and their health.
    AdminRoutes,
    /// `POST /admin/backup`: a consistent copy of the store to a file.
    AdminBackup,
    Healthz,
    Readyz,
    NotFound,
    MethodNotAllowed(&'static str),
}

impl Route {
    /// A fixed word for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Inference(e) => e.label(),
            Route::Models | Route::Model(_) => "models",
            Route::Generation => "generation",
            Route::Credits => "credits",
            Route::AuthRegister | Route::AuthLogin => "auth",
            Route::Me | Route::Usage => "account",
            Route::KeysList | Route::KeysCreate | Route::KeyUpdate(_) | Route::KeyRevoke(_) => "keys",
            Route::ByokList | Route::ByokPut(_) | Route::ByokDelete(_) => "byok",
            Route::AdminAccounts
            | Route::AdminAccountList
            | Route::AdminAccount(_)
            | Route::AdminAccountUpdate(_)
            | Route::AdminCredits(_)
            | Route::AdminKeys(_)
            | Route::AdminAudit
            | Route::AdminRecomputeTiers
            | Route::AdminRoutes
            | Route::AdminBackup => "admin",
            Route::Healthz | Route::Readyz => "health",
            Route::NotFound | Route::MethodNotAllowed(_) => "not_found",
        }
    }
}

/// Map a method and path to a route. Every API route lives under both `/v1` and `/api/v1`.
pub fn route(method: &Method, path: &str) -> Route {
    match path {
        "/healthz" => return only(method, Method::GET, Route::Healthz, "GET"),
        "/readyz" => return only(method, Method::GET, Route::Readyz, "GET"),
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/api/v1").or_else(|| path.strip_prefix("/v1")) else {
        return Route::NotFound;
    };
    let rest = if rest.len() > 1 { rest.trim_end_matches('/') } else { rest };
    match rest {
        p if Endpoint::from_path(p).is_some() => {
            let endpoint = Endpoint::from_path(p).unwrap_or(Endpoint::ChatCompletions);
            only(method, Method::POST, Route::Inference(endpoint), "POST")
        }
        "/models" => only(method, Method::GET, Route::Models, "GET"),
        "/generation" => only(method, Method::GET, Route::Generation, "GET"),
        "/credits" => only(method, Method::GET, Route::Credits, "GET"),
        "/auth/register" => only(method, Method::POST, Route::AuthRegister, "POST"),
        "/auth/login" => only(method, Method::POST, Route::AuthLogin, "POST"),
        "/me" => only(method, Method::GET, Route::Me, "GET"),
        "/usage" => only(method, Method::GET, Route::Usage, "GET"),
        "/keys" => either(method, [(Method::GET, Route::KeysList), (Method::POST, Route::KeysCreate)], "GET, POST"),
        "/keys/byok" => only(method, Method::GET, Route::ByokList, "GET"),
        "/admin/accounts" => either(
            method,
            [(Method::GET, Route::AdminAccountList), (Method::POST, Route::AdminAccounts)],
            "GET, POST",
        ),
        "/admin/audit" => only(method, Method::GET, Route::AdminAudit, "GET"),
        "/admin/recompute-tiers" => only(method, Method::POST, Route::AdminRecomputeTiers, "POST"),
        "/admin/routes" => only(method, Method::GET, Route::AdminRoutes, "GET"),
        "/admin/backup" => only(method, Method::POST, Route::AdminBackup, "POST"),
        _ => {
            if let Some(provider) = rest.strip_prefix("/keys/byok/") {
                if provider.is_empty() || provider.contains('/') {
                    return Route::NotFound;
                }
                let p = || provider.to_string();
                return either(method, [(Method::PUT, Route::ByokPut(p())), (Method::DELETE, Route::ByokDelete(p()))], "PUT, DELETE");
            }
            if let Some(id) = rest.strip_prefix("/keys/") {
                let Ok(id) = id.parse::<u64>() else { return Route::NotFound };
                return either(method, [(Method::PATCH, Route::KeyUpdate(id)), (Method::DELETE, Route::KeyRevoke(id))], "PATCH, DELETE");
            }
            if let Some(slug) = rest.strip_prefix("/models/") {
                if slug.is_empty() {
                    return Route::NotFound;
                }
                // SDKs that encode path parameters (openai-node's `models.retrieve`) send the
                // slug's slash as %2F: `/models/anthropic%2Fclaude-sonnet-4-5`.
                return only(method, Method::GET, Route::Model(percent_decode(slug, false)), "GET");
            }
            if let Some(tail) = rest.strip_prefix("/admin/accounts/") {
                return admin_route(method, tail);
            }
            Route::NotFound
        }
    }
}

fn admin_route(method: &Method, tail: &str) -> Route {
    let mut parts = tail.splitn(2, '/');
    let Some(id) = parts.next().and_then(|s| s.parse::<u64>().ok()) else {
        return Route::NotFound;
    };
    match parts.next() {
        None => either(
            method,
            [(Method::GET, Route::AdminAccount(id)), (Method::PATCH, Route::AdminAccountUpdate(id))],
            "GET, PATCH",
        ),
        Some("credits") => only(method, Method::POST, Route::AdminCredits(id), "POST"),
        Some("keys") => only(method, Method::POST, Route::AdminKeys(id), "POST"),
        Some(_) => Route::NotFound,
    }
}

fn only(method: &Method, want: Method, route: Route, allow: &'static str) -> Route {
    if *method == want {
        route
    } else {
        Route::MethodNotAllowed(allow)
    }
}

/// A path served for several methods, one route each.
fn either<const N: usize>(method: &Method, routes: [(Method, Route); N], allow: &'static str) -> Route {
    routes
        .into_iter()
        .find(|(m, _)| m == method)
        .map(|(_, r)| r)
        .unwrap_or(Route::MethodNotAllowed(allow))
}

/// A complete response produced without an upstream.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// Set when this reply is an error, for the access log and metrics.
    pub error: Option<ApiError>,
}

impl Reply {
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            body: Bytes::from(value.to_string()),
            content_type: "application/json",
            headers: Vec::new(),
            error: None,
        }
    }

    pub fn error(e: &ApiError) -> Reply {
        let mut r = Reply::json(e.status, &e.to_json());
        r.error = Some(e.clone());
        if let Some(secs) = e.retry_after {
            r.headers.push(("retry-after", secs.to_string()));
        }
        r
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        Reply::error(&e)
    }
}

/// Parse a JSON request body for a local route, with the contract's 400 on failure.
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid_request("request body is empty; JSON expected"));
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::invalid_request("request body must be a JSON object"));
    }
    Ok(v)
}

/// The value of one query parameter, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v, true))
    })
}

/// `%XX` decoded; `+` is a space only in a query (`form`), a plus sign in a path.
fn percent_decode(s: &str, form: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if form => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_prefixes_route() {
        for p in ["/v1", "/api/v1"] {
            assert_eq!(route(&Method::POST, &format!("{p}/chat/completions")), Route::Inference(Endpoint::ChatCompletions));
            assert_eq!(route(&Method::GET, &format!("{p}/models/openai/gpt-4o")), Route::Model("openai/gpt-4o".into()));
            assert_eq!(route(&Method::GET, &format!("{p}/models/openai%2Fgpt-4o")), Route::Model("openai/gpt-4o".into()));
            assert_eq!(route(&Method::GET, &format!("{p}/models/a/b+c")), Route::Model("a/b+c".into()));
            assert_eq!(route(&Method::POST, &format!("{p}/admin/accounts/7/credits")), Route::AdminCredits(7));
        }
        assert_eq!(route(&Method::GET, "/v1/chat/completions"), Route::MethodNotAllowed("POST"));
        assert_eq!(route(&Method::GET, "/v2/models"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/healthz"), Route::Healthz);
    }

    #[test]
    fn account_routes() {
        let r = |m: Method, p: &str| route(&m, p);
        assert_eq!(r(Method::POST, "/v1/auth/register"), Route::AuthRegister);
        assert_eq!(r(Method::POST, "/api/v1/auth/login"), Route::AuthLogin);
        assert_eq!(r(Method::GET, "/v1/me"), Route::Me);
        assert_eq!(r(Method::GET, "/v1/keys"), Route::KeysList);
        assert_eq!(r(Method::POST, "/v1/keys/"), Route::KeysCreate);
        assert_eq!(r(Method::PUT, "/v1/keys"), Route::MethodNotAllowed("GET, POST"));
        assert_eq!(r(Method::PATCH, "/v1/keys/12"), Route::KeyUpdate(12));
        assert_eq!(r(Method::DELETE, "/v1/keys/12"), Route::KeyRevoke(12));
        assert_eq!(r(Method::GET, "/v1/keys/12"), Route::MethodNotAllowed("PATCH, DELETE"));
        assert_eq!(r(Method::DELETE, "/v1/keys/x"), Route::NotFound);
        assert_eq!(r(Method::GET, "/v1/keys/byok"), Route::ByokList);
        assert_eq!(r(Method::PUT, "/v1/keys/byok/openai"), Route::ByokPut("openai".into()));
        assert_eq!(r(Method::DELETE, "/v1/keys/byok/openai"), Route::ByokDelete("openai".into()));
        assert_eq!(r(Method::GET, "/v1/usage"), Route::Usage);
        assert_eq!(r(Method::GET, "/v1/admin/accounts"), Route::AdminAccountList);
        assert_eq!(r(Method::POST, "/v1/admin/accounts"), Route::AdminAccounts);
        assert_eq!(r(Method::PATCH, "/v1/admin/accounts/3"), Route::AdminAccountUpdate(3));
        assert_eq!(r(Method::GET, "/v1/admin/audit"), Route::AdminAudit);
        assert_eq!(r(Method::POST, "/v1/admin/recompute-tiers"), Route::AdminRecomputeTiers);
        assert_eq!(r(Method::GET, "/api/v1/admin/routes"), Route::AdminRoutes);
        assert_eq!(r(Method::POST, "/v1/admin/backup"), Route::AdminBackup);
        assert_eq!(r(Method::GET, "/v1/admin/backup"), Route::MethodNotAllowed("POST"));
    }

    #[test]
    fn query_params_decode() {
        assert_eq!(query_param(Some("a=1&id=gen-x%2Fy"), "id").as_deref(), Some("gen-x/y"));
        assert_eq!(query_param(Some("id=%zz"), "id").as_deref(), Some("%zz"));
        assert_eq!(query_param(Some("id=%4"), "id").as_deref(), Some("%4"));
        assert_eq!(query_param(None, "id"), None);
    }
}
