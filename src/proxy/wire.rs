//! Which wire format a request speaks upstream, chosen once per request from the provider's
//! kind. The translators themselves are pure and live in `providers/`; this is the one place
//! the proxy phases pick between them.

use crate::api::error::ApiError;
use crate::config::{Model, ProviderKind};
use crate::metering::{usage::Usage, OpenAiStreamMeter, StreamMeter};
use crate::providers::openai::ChatRequestInfo;
use crate::providers::{anthropic, gemini, openai};

/// The upstream request body and the path to append to the provider's `base_url`.
pub struct UpstreamRequest {
    pub body: Vec<u8>,
    pub path: String,
    /// Anthropic has no JSON mode: the translator asks for JSON in the system prompt and strips
    /// code fences from the answer.
    pub json_mode: bool,
}

pub fn chat_request(
    kind: ProviderKind,
    body: &[u8],
    info: &ChatRequestInfo,
    model: &Model,
) -> Result<UpstreamRequest, ApiError> {
    let invalid = |e: openai::RequestError| {
        let mut err = ApiError::invalid_request(e.message);
        err.param = e.param;
        err
    };
    Ok(match kind {
        ProviderKind::OpenAi | ProviderKind::Mock => {
            // Usage is metered from the stream itself: ask for it when the client did not.
            let add_usage = info.stream && !info.include_usage;
            UpstreamRequest {
                body: openai::rewrite_chat_request(body, &model.upstream_model, add_usage),
                path: "/chat/completions".to_string(),
                json_mode: false,
            }
        }
        ProviderKind::Anthropic => UpstreamRequest {
            body: anthropic::translate_request(body, &model.upstream_model, model.max_output_tokens)
                .map_err(invalid)?,
            path: "/messages".to_string(),
            json_mode: anthropic::json_mode(body),
        },
        ProviderKind::Gemini => UpstreamRequest {
            body: gemini::translate_request(body, Some(model.max_output_tokens)).map_err(invalid)?,
            path: gemini::upstream_path(&model.upstream_model, info.stream),
            json_mode: false,
        },
    })
}

/// The handler that turns the provider's stream into OpenAI chunks for the client.
pub fn stream_meter(kind: ProviderKind, slug: &str, client_wants_usage: bool) -> Box<dyn StreamMeter> {
    match kind {
        // The usage-only chunk is stripped only when the gateway asked for it itself.
        ProviderKind::OpenAi | ProviderKind::Mock => {
            Box::new(OpenAiStreamMeter::new(slug, !client_wants_usage))
        }
        ProviderKind::Anthropic => Box::new(anthropic::AnthropicStream::new(slug, client_wants_usage)),
        ProviderKind::Gemini => Box::new(gemini::GeminiStream::new(slug, client_wants_usage)),
    }
}

/// A whole (non-streamed) completion in OpenAI's shape: body, usage if reported, body id.
pub struct Completion {
    pub body: Vec<u8>,
    pub usage: Option<Usage>,
    pub id: Option<String>,
}

pub fn chat_response(kind: ProviderKind, body: &[u8], slug: &str, json_mode: bool) -> Result<Completion, ApiError> {
    let bad = |message: String| ApiError::upstream_error(format!("the provider's answer could not be read: {message}"));
    match kind {
        ProviderKind::OpenAi | ProviderKind::Mock => {
            let (out, usage) = openai::rewrite_chat_response(body, slug);
            let id = openai::response_id(&out);
            Ok(Completion { body: out, usage, id })
        }
        ProviderKind::Anthropic => {
            let t = anthropic::translate_message(body, slug, json_mode).map_err(|e| bad(e.message))?;
            Ok(Completion { body: t.body, usage: t.usage, id: Some(t.id) })
        }
        ProviderKind::Gemini => {
            let (out, usage) = gemini::translate_response(body, slug).map_err(|e| bad(e.message))?;
            let id = openai::response_id(&out);
            // Gemini without usageMetadata reports zeros: treat as unreported, so it is estimated.
            let usage = (usage.prompt_tokens > 0 || usage.completion_tokens > 0).then_some(usage);
            Ok(Completion { body: out, usage, id })
        }
    }
}
