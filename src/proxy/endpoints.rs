//! What each inference endpoint's request says about routing and money: the model slug, and
//! the units a worst-case reservation must cover.
//!
//! Parsing here is validation plus the few fields the gateway needs; the body itself is sent
//! on (rewritten or translated) by `wire.rs`.

use crate::api::error::ApiError;
use crate::api::Endpoint;
use crate::billing::pricing::Units;
use crate::config::Model;
use crate::metering::{estimate, usage::Usage};
use crate::providers::{multipart, openai};
use serde::Deserialize;
use serde_json::Value;

/// The routing and billing facts of one inference request.
#[derive(Debug, Default)]
pub struct RequestInfo {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// Choices (chat, completions) or images requested.
    pub n: u64,
    pub max_tokens: Option<u64>,
    /// Bytes of the body that can become prompt tokens.
    pub prompt_bytes: usize,
    /// Images: the requested size.
    pub size: String,
    /// Speech: input characters.
    pub chars: u64,
    /// Transcriptions: the audio file's size in bytes.
    pub audio_bytes: usize,
}

fn invalid(e: openai::RequestError) -> ApiError {
    let mut err = ApiError::invalid_request(e.message);
    err.param = e.param;
    err
}

fn bad_json(e: serde_json::Error) -> ApiError {
    ApiError::invalid_request(format!("request body is not valid JSON for this endpoint: {e}"))
}

pub fn parse(endpoint: Endpoint, body: &[u8], content_type: &str) -> Result<RequestInfo, ApiError> {
    match endpoint {
        Endpoint::ChatCompletions => {
            let c = openai::parse_chat_request(body).map_err(invalid)?;
            Ok(RequestInfo {
                model: c.model,
                stream: c.stream,
                include_usage: c.include_usage,
                n: c.n.max(1),
                max_tokens: c.max_tokens,
                prompt_bytes: body.len(),
                ..Default::default()
            })
        }
        Endpoint::Completions => {
            #[derive(Deserialize)]
            struct Req {
                model: String,
                prompt: Value,
                #[serde(default)]
                stream: Option<bool>,
                #[serde(default)]
                stream_options: Option<StreamOptions>,
                #[serde(default)]
                max_tokens: Option<u64>,
                #[serde(default)]
                n: Option<u64>,
            }
            #[derive(Deserialize)]
            struct StreamOptions {
                #[serde(default)]
                include_usage: Option<bool>,
            }
            let r: Req = serde_json::from_slice(body).map_err(bad_json)?;
            if !(r.prompt.is_string() || r.prompt.is_array()) {
                return Err(ApiError::invalid_request("'prompt' must be a string or an array").with_param("prompt"));
            }
            Ok(RequestInfo {
                model: r.model,
                stream: r.stream.unwrap_or(false),
                include_usage: r.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
                n: r.n.unwrap_or(1).max(1),
                // OpenAI's legacy default is 16 tokens.
                max_tokens: Some(r.max_tokens.unwrap_or(16)),
                prompt_bytes: body.len(),
                ..Default::default()
            })
        }
        Endpoint::Embeddings => {
            #[derive(Deserialize)]
            struct Req {
                model: String,
                input: Value,
            }
            let r: Req = serde_json::from_slice(body).map_err(bad_json)?;
            let ok = match &r.input {
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                _ => false,
            };
            if !ok {
                return Err(ApiError::invalid_request("'input' must be a non-empty string or array").with_param("input"));
            }
            Ok(RequestInfo { model: r.model, n: 1, prompt_bytes: body.len(), ..Default::default() })
        }
        Endpoint::Images => {
            #[derive(Deserialize)]
            struct Req {
                model: String,
                prompt: String,
                #[serde(default)]
                n: Option<u64>,
                #[serde(default)]
                size: Option<String>,
            }
            let r: Req = serde_json::from_slice(body).map_err(bad_json)?;
            let n = r.n.unwrap_or(1);
            if n == 0 || n > 10 {
                return Err(ApiError::invalid_request("'n' must be between 1 and 10").with_param("n"));
            }
            if r.prompt.is_empty() {
                return Err(ApiError::invalid_request("'prompt' must not be empty").with_param("prompt"));
            }
            Ok(RequestInfo {
                model: r.model,
                n,
                size: r.size.unwrap_or_else(|| "1024x1024".to_string()),
                ..Default::default()
            })
        }
        Endpoint::Speech => {
            #[derive(Deserialize)]
            struct Req {
                model: String,
                input: String,
            }
            let r: Req = serde_json::from_slice(body).map_err(bad_json)?;
            if r.input.is_empty() {
                return Err(ApiError::invalid_request("'input' must not be empty").with_param("input"));
            }
            Ok(RequestInfo { model: r.model, n: 1, chars: r.input.chars().count() as u64, ..Default::default() })
        }
        Endpoint::Transcriptions => {
            let boundary = multipart::boundary(content_type).ok_or_else(|| {
                ApiError::invalid_request("expected multipart/form-data with a boundary")
            })?;
            let form = multipart::Form::parse(body, &boundary)
                .map_err(|e| ApiError::invalid_request(format!("malformed multipart body: {e}")))?;
            let model = form
                .text(body, "model")
                .ok_or_else(|| ApiError::invalid_request("missing form field 'model'").with_param("model"))?;
            let audio_bytes = form
                .field(body, "file")
                .map(|f| f.len())
                .ok_or_else(|| ApiError::invalid_request("missing form field 'file'").with_param("file"))?;
            Ok(RequestInfo { model, n: 1, audio_bytes, ..Default::default() })
        }
    }
}

/// The most this request can cost, in the model's units. Prompt tokens are bounded by the
/// body's bytes (a byte-level BPE token covers at least one byte) and the context length;
/// completions by max_tokens (or the model's cap) per choice.
pub fn worst_units(endpoint: Endpoint, info: &RequestInfo, model: &Model) -> Result<Units, ApiError> {
    let prompt = estimate::prompt_upper_bound(info.prompt_bytes, model.context_length);
    Ok(match endpoint {
        Endpoint::ChatCompletions | Endpoint::Completions => Units::Tokens(Usage {
            prompt_tokens: prompt,
            completion_tokens: info.max_tokens.unwrap_or(model.max_output_tokens).saturating_mul(info.n),
            ..Default::default()
        }),
        Endpoint::Embeddings => Units::Tokens(Usage { prompt_tokens: prompt, ..Default::default() }),
        Endpoint::Images => Units::Images {
            count: info.n,
            unit_price: model.image_price(&info.size).ok_or_else(|| {
                ApiError::invalid_request(format!("size '{}' is not offered by {}", info.size, model.slug)).with_param("size")
            })?,
        },
        Endpoint::Speech => Units::Chars(info.chars),
        Endpoint::Transcriptions => match model.audio_per_minute {
            // 8 kbit/s is below any usable speech codec, so bytes / 1000 bounds the seconds.
            Some(_) => Units::AudioMillis((info.audio_bytes as u64).div_ceil(1000).max(1) * 1000),
            // Token-priced transcription: the audio's tokens are bounded like a prompt's.
            None => Units::Tokens(Usage {
                prompt_tokens: estimate::prompt_upper_bound(info.audio_bytes, model.context_length),
                completion_tokens: model.max_output_tokens,
                ..Default::default()
            }),
        },
    })
}
