//! OpenAI's media endpoints, deterministic like the rest of the mock:
//!
//! - `POST /v1/images/generations {model?, prompt, n?, size?, response_format?}` →
//!   `{"created", "data": [{"url": "http://mock.invalid/img/<n>-<i>.png"} | {"b64_json": <a
//!   1×1 PNG>}]}` with `n` items (1..=[`MAX_IMAGES`], default 1; `<n>` is the request's number,
//!   `<i>` the item's index). `response_format` defaults to `url`, or `b64_json` for
//!   `gpt-image-*` models (which only return base64, as OpenAI's do); `dall-e-3` items carry a
//!   `revised_prompt`. No `usage`. The requested size (default `1024x1024`) is echoed in the
//!   `x-mock-size` response header; any size is accepted.
//! - `POST /v1/audio/speech {model, input, voice?, response_format?}` → raw audio bytes: the
//!   format's magic bytes then a fixed pattern, `1000 + 10 × characters of input` bytes in all,
//!   streamed in [`SPEECH_CHUNK`]-byte chunks (chunked transfer encoding). Content types:
//!   mp3 `audio/mpeg` (default), opus `audio/opus`, aac `audio/aac`, flac `audio/flac`, wav
//!   `audio/wav`, pcm `audio/pcm`. 400 without `model` or `input`, for an empty input or one
//!   over [`MAX_SPEECH_CHARS`] characters, or an unknown format; `voice` is not checked.
//! - `POST /v1/audio/transcriptions` (multipart/form-data: `file`, `model`, optional
//!   `response_format`, `language`, `prompt`, ...) → `{"text": "mock transcription of N bytes",
//!   "usage": {"type": "duration", "seconds": S}}` where N is the file's size and
//!   S = ceil(N / 16000): the mock pretends audio is 16 kB per second. `verbose_json` adds
//!   `task`/`language`/`duration`/`segments`; `text`, `srt` and `vtt` answer plain text without
//!   usage. 400 (OpenAI-shaped) for a body that is not multipart or does not parse (see
//!   [`super::multipart`] for its limits), a missing `file` or `model`, an empty file; 413 for a
//!   file over [`MAX_AUDIO_BYTES`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::multipart;
use super::openai::{bad_json, to_vec, ApiError};

/// Most images one request may ask for (`n`).
pub const MAX_IMAGES: u32 = 10;
/// A valid 1×1 transparent PNG.
pub const TINY_PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAAC0lEQVR42mNgAAIAAAUAAen63NgAAAAASUVORK5CYII=";
/// The speech body is written in chunks of this many bytes.
pub const SPEECH_CHUNK: usize = 512;
/// OpenAI's limit on `input` for speech.
pub const MAX_SPEECH_CHARS: usize = 4096;
/// Audio bytes the mock pretends make one second.
pub const AUDIO_BYTES_PER_SECOND: u64 = 16_000;
/// OpenAI's 25 MB upload limit for transcriptions.
pub const MAX_AUDIO_BYTES: usize = 25 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Images

#[derive(Deserialize)]
struct RawImages {
    model: Option<String>,
    prompt: Option<String>,
    n: Option<i64>,
    size: Option<String>,
    response_format: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImagesRequest {
    pub model: String,
    pub prompt: String,
    pub n: u32,
    pub size: String,
    pub b64: bool,
}

pub fn parse_images(body: &[u8]) -> Result<ImagesRequest, ApiError> {
    let raw: RawImages = serde_json::from_slice(body).map_err(bad_json)?;
    let prompt = raw
        .prompt
        .ok_or_else(|| ApiError::invalid("Missing required parameter: 'prompt'.", Some("prompt")))?;
    let n = raw.n.unwrap_or(1);
    if !(1..=i64::from(MAX_IMAGES)).contains(&n) {
        return Err(ApiError::invalid(
            format!("{n} is not valid for 'n': it must be between 1 and {MAX_IMAGES}."),
            Some("n"),
        ));
    }
    let model = raw.model.unwrap_or_else(|| "dall-e-2".into());
    let b64 = match raw.response_format.as_deref() {
        Some("b64_json") => true,
        Some("url") => false,
        None => model.starts_with("gpt-image"),
        Some(other) => {
            return Err(ApiError::invalid(
                format!("Invalid value: '{other}'. Supported values are: 'url' and 'b64_json'."),
                Some("response_format"),
            ))
        }
    };
    Ok(ImagesRequest {
        model,
        prompt,
        n: n as u32,
        size: raw.size.unwrap_or_else(|| "1024x1024".into()),
        b64,
    })
}

/// The images response; `number` is the request's number, for unique URLs.
pub fn images_json(req: &ImagesRequest, created: u64, number: u64) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body {
        created: u64,
        data: Vec<Value>,
    }
    let revised = req.model.starts_with("dall-e-3");
    let data = (0..req.n)
        .map(|i| {
            let mut item = if req.b64 {
                json!({ "b64_json": TINY_PNG_B64 })
            } else {
                json!({ "url": format!("http://mock.invalid/img/{number}-{i}.png") })
            };
            if revised {
                item["revised_prompt"] = Value::String(req.prompt.clone());
            }
            item
        })
        .collect();
    to_vec(&Body { created, data })
}

// ---------------------------------------------------------------------------------------------
// Speech

#[derive(Deserialize)]
struct RawSpeech {
    model: Option<String>,
    input: Option<String>,
    response_format: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpeechRequest {
    pub model: String,
    /// Characters (not bytes) of `input`.
    pub chars: usize,
    pub format: &'static str,
    pub content_type: &'static str,
}

pub fn parse_speech(body: &[u8]) -> Result<SpeechRequest, ApiError> {
    let raw: RawSpeech = serde_json::from_slice(body).map_err(bad_json)?;
    let model = raw
        .model
        .ok_or_else(|| ApiError::invalid("you must provide a model parameter", Some("model")))?;
    let input = raw
        .input
        .ok_or_else(|| ApiError::invalid("Missing required parameter: 'input'.", Some("input")))?;
    let chars = input.chars().count();
    if chars == 0 || chars > MAX_SPEECH_CHARS {
        return Err(ApiError::invalid(
            format!("'input' must be 1..={MAX_SPEECH_CHARS} characters long, got {chars}."),
            Some("input"),
        ));
    }
    let (format, content_type) = match raw.response_format.as_deref().unwrap_or("mp3") {
        "mp3" => ("mp3", "audio/mpeg"),
        "opus" => ("opus", "audio/opus"),
        "aac" => ("aac", "audio/aac"),
        "flac" => ("flac", "audio/flac"),
        "wav" => ("wav", "audio/wav"),
        "pcm" => ("pcm", "audio/pcm"),
        other => {
            return Err(ApiError::invalid(
                format!(
                    "Invalid value: '{other}'. Supported values are: 'mp3', 'opus', 'aac', \
                     'flac', 'wav', and 'pcm'."
                ),
                Some("response_format"),
            ))
        }
    };
    Ok(SpeechRequest {
        model,
        chars,
        format,
        content_type,
    })
}

/// `1000 + 10 × chars` bytes: the format's magic bytes, then `(i × 31 + 17) mod 251`.
pub fn speech_bytes(req: &SpeechRequest) -> Vec<u8> {
    let len = 1000 + 10 * req.chars;
    let magic: &[u8] = match req.format {
        "mp3" => b"ID3\x04\x00\x00\x00\x00\x00\x00",
        "opus" => b"OggS\x00\x02",
        "aac" => b"\xff\xf1",
        "flac" => b"fLaC",
        "wav" => b"RIFF\x00\x00\x00\x00WAVE",
        _ => b"",
    };
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(magic);
    out.extend((magic.len()..len).map(|i| ((i * 31 + 17) % 251) as u8));
    out
}

/// The audio in the chunks it is written in (at least 2: the shortest reply is 1000 bytes).
pub fn speech_chunks(req: &SpeechRequest) -> Vec<Bytes> {
    let all = Bytes::from(speech_bytes(req));
    (0..all.len())
        .step_by(SPEECH_CHUNK)
        .map(|start| all.slice(start..(start + SPEECH_CHUNK).min(all.len())))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Transcriptions

/// A transcription answer: its content type and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcription {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// `content_type` is the request's `Content-Type` header.
pub fn transcribe(content_type: Option<&str>, body: &Bytes) -> Result<Transcription, ApiError> {
    let bad = |msg: String| ApiError::invalid(msg, None);
    let boundary = multipart::boundary(content_type.unwrap_or("(none)")).map_err(bad)?;
    let parts = multipart::parse(body, &boundary)
        .map_err(|e| bad(format!("Could not parse multipart form: {e}")))?;
    let field = |name: &str| parts.iter().find(|p| p.name == name);
    let text = |name: &str| field(name).map(multipart::Part::text);
    let file = field("file")
        .ok_or_else(|| ApiError::invalid("Missing required parameter: 'file'.", Some("file")))?;
    let model = text("model").filter(|m| !m.trim().is_empty());
    if model.is_none() {
        return Err(ApiError::invalid(
            "you must provide a model parameter",
            Some("model"),
        ));
    }
    let bytes = file.data.len();
    if bytes > MAX_AUDIO_BYTES {
        return Err(ApiError::for_status(
            413,
            format!("Maximum content size limit ({MAX_AUDIO_BYTES}) exceeded ({bytes} bytes read)"),
        ));
    }
    if bytes == 0 {
        return Err(ApiError {
            code: Some("audio_too_short"),
            ..ApiError::invalid(
                "Audio file is too short. Minimum audio length is 0.1 seconds.",
                Some("file"),
            )
        });
    }
    let seconds = (bytes as u64).div_ceil(AUDIO_BYTES_PER_SECOND);
    let said = format!("mock transcription of {bytes} bytes");
    let usage = json!({"type": "duration", "seconds": seconds});
    let json_body = |v: Value| Transcription {
        content_type: "application/json",
        body: to_vec(&v),
    };
    let plain = |s: String| Transcription {
        content_type: "text/plain; charset=utf-8",
        body: s.into_bytes(),
    };
    let format = text("response_format").unwrap_or_else(|| "json".into());
    Ok(match format.as_str() {
        "json" => json_body(json!({"text": said, "usage": usage})),
        "verbose_json" => json_body(json!({
            "task": "transcribe",
            "language": text("language").unwrap_or_else(|| "english".into()),
            "duration": seconds as f64,
            "text": said,
            "segments": [{
                "id": 0, "seek": 0, "start": 0.0, "end": seconds as f64,
                "text": format!(" {said}"), "tokens": [], "temperature": 0.0,
                "avg_logprob": 0.0, "compression_ratio": 1.0, "no_speech_prob": 0.0,
            }],
            "usage": usage,
        })),
        "text" => plain(format!("{said}\n")),
        "srt" => plain(format!(
            "1\n00:00:00,000 --> {},000\n{said}\n\n",
            clock(seconds)
        )),
        "vtt" => plain(format!(
            "WEBVTT\n\n00:00:00.000 --> {}.000\n{said}\n\n",
            clock(seconds)
        )),
        other => {
            return Err(ApiError::invalid(
                format!(
                    "Invalid value: '{other}'. Supported values are: 'json', 'text', 'srt', \
                     'verbose_json', and 'vtt'."
                ),
                Some("response_format"),
            ))
        }
    })
}

fn clock(seconds: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for b in bytes {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn tiny_png_is_valid() {
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(TINY_PNG_B64)
            .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let mut at = 8;
        let mut types = Vec::new();
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let typed = &png[at + 4..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc32(typed), crc, "chunk {:?}", &typed[..4]);
            types.push(String::from_utf8(typed[..4].to_vec()).unwrap());
            at += 12 + len;
        }
        assert_eq!(types, ["IHDR", "IDAT", "IEND"]);
    }

    #[test]
    fn images_n_size_and_format() {
        let req = parse_images(br#"{"model":"dall-e-2","prompt":"a cat","n":3,"size":"256x256"}"#)
            .unwrap();
        assert_eq!((req.n, req.size.as_str(), req.b64), (3, "256x256", false));
        let v: Value = serde_json::from_slice(&images_json(&req, 7, 42)).unwrap();
        assert_eq!(v["created"], 7);
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        assert_eq!(data[2]["url"], "http://mock.invalid/img/42-2.png");
        assert!(v.get("usage").is_none());

        let req = parse_images(br#"{"prompt":"x","response_format":"b64_json"}"#).unwrap();
        assert_eq!((req.n, req.size.as_str(), req.b64), (1, "1024x1024", true));
        let v: Value = serde_json::from_slice(&images_json(&req, 1, 1)).unwrap();
        assert_eq!(v["data"][0]["b64_json"], TINY_PNG_B64);
        assert!(v["data"][0].get("url").is_none());

        let gpt = parse_images(br#"{"model":"gpt-image-1","prompt":"x"}"#).unwrap();
        assert!(gpt.b64);
        let d3 = parse_images(br#"{"model":"dall-e-3","prompt":"a dog"}"#).unwrap();
        let v: Value = serde_json::from_slice(&images_json(&d3, 1, 1)).unwrap();
        assert_eq!(v["data"][0]["revised_prompt"], "a dog");

        assert!(parse_images(br#"{"prompt":"x","n":10}"#).is_ok());
        for bad in [
            &br#"{"prompt":"x","n":11}"#[..],
            br#"{"prompt":"x","n":0}"#,
            br#"{"model":"m"}"#,
            br#"{"prompt":"x","response_format":"png"}"#,
            b"nope",
        ] {
            assert_eq!(parse_images(bad).unwrap_err().status, 400);
        }
        assert_eq!(
            parse_images(br#"{"prompt":"x","n":11}"#).unwrap_err().param,
            Some("n")
        );
    }

    #[test]
    fn speech_length_and_chunks() {
        let req = parse_speech(r#"{"model":"tts-1","input":"héllo","voice":"alloy"}"#.as_bytes())
            .unwrap();
        assert_eq!((req.chars, req.content_type), (5, "audio/mpeg"));
        let bytes = speech_bytes(&req);
        assert_eq!(bytes.len(), 1000 + 50);
        assert!(bytes.starts_with(b"ID3"));
        assert_eq!(bytes, speech_bytes(&req), "deterministic");
        let chunks = speech_chunks(&req);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.concat(), bytes);

        let wav = parse_speech(br#"{"model":"m","input":"x","response_format":"wav"}"#).unwrap();
        assert_eq!(wav.content_type, "audio/wav");
        assert!(speech_bytes(&wav).starts_with(b"RIFF"));
        assert_eq!(speech_bytes(&wav).len(), 1010);
        let pcm = parse_speech(br#"{"model":"m","input":"x","response_format":"pcm"}"#).unwrap();
        assert_eq!(speech_bytes(&pcm).len(), 1010);

        let missing = parse_speech(br#"{"model":"m","voice":"alloy"}"#).unwrap_err();
        assert_eq!((missing.status, missing.param), (400, Some("input")));
        assert!(parse_speech(br#"{"model":"m","input":""}"#).is_err());
        assert!(parse_speech(br#"{"input":"x"}"#).is_err());
        assert!(parse_speech(br#"{"model":"m","input":"x","response_format":"ogg"}"#).is_err());
        let long = format!(r#"{{"model":"m","input":"{}"}}"#, "a".repeat(MAX_SPEECH_CHARS + 1));
        assert!(parse_speech(long.as_bytes()).is_err());
    }

    fn form(fields: &[(&str, &[u8], bool)]) -> (String, Bytes) {
        let b = "XyZ";
        let mut out = Vec::new();
        for (name, data, file) in fields {
            out.extend_from_slice(format!("--{b}\r\n").as_bytes());
            let fname = if *file { "; filename=\"a.wav\"" } else { "" };
            out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"{fname}\r\n\r\n")
                    .as_bytes(),
            );
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{b}--\r\n").as_bytes());
        (format!("multipart/form-data; boundary={b}"), out.into())
    }

    #[test]
    fn transcriptions() {
        let mut audio = vec![0u8; 48_001];
        audio[100..104].copy_from_slice(b"\r\n--");
        let (ct, body) = form(&[("model", b"whisper-1", false), ("file", &audio, true)]);
        let t = transcribe(Some(&ct), &body).unwrap();
        assert_eq!(t.content_type, "application/json");
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["text"], "mock transcription of 48001 bytes");
        assert_eq!(v["usage"], json!({"type": "duration", "seconds": 4}));

        let (ct, body) = form(&[
            ("file", b"abc", true),
            ("model", b"m", false),
            ("response_format", b"verbose_json", false),
            ("language", b"fr", false),
        ]);
        let v: Value = serde_json::from_slice(&transcribe(Some(&ct), &body).unwrap().body).unwrap();
        assert_eq!((v["language"].as_str(), v["duration"].as_f64()), (Some("fr"), Some(1.0)));
        assert_eq!(v["usage"]["seconds"], 1);
        let (ct, body) = form(&[("file", b"abc", true), ("model", b"m", false), ("response_format", b"srt", false)]);
        let t = transcribe(Some(&ct), &body).unwrap();
        assert!(t.content_type.starts_with("text/plain"));
        assert_eq!(
            String::from_utf8(t.body).unwrap(),
            "1\n00:00:00,000 --> 00:00:01,000\nmock transcription of 3 bytes\n\n"
        );

        let (ct, body) = form(&[("model", b"m", false)]);
        assert_eq!(transcribe(Some(&ct), &body).unwrap_err().param, Some("file"));
        let (ct, body) = form(&[("file", b"abc", true)]);
        assert_eq!(transcribe(Some(&ct), &body).unwrap_err().param, Some("model"));
        let (ct, body) = form(&[("file", b"", true), ("model", b"m", false)]);
        assert_eq!(transcribe(Some(&ct), &body).unwrap_err().code, Some("audio_too_short"));
        let (ct, body) = form(&[("file", b"a", true), ("model", b"m", false), ("response_format", b"x", false)]);
        assert_eq!(transcribe(Some(&ct), &body).unwrap_err().param, Some("response_format"));
        assert_eq!(transcribe(Some("application/json"), &Bytes::from_static(b"{}")).unwrap_err().status, 400);
        assert_eq!(transcribe(None, &body).unwrap_err().status, 400);
    }
}
