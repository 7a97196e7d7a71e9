//! OpenAI `/embeddings` on Gemini's `embedContent` / `batchEmbedContents`.
//!
//! Gemini reports no token usage for embeddings, so the proxy estimates it from the input.

use super::openai::RequestError;
use serde_json::{json, Value};

fn texts(input: &Value) -> Result<Vec<String>, RequestError> {
    let bad = || RequestError { message: "'input' must be a string or an array of strings".into(), param: Some("input".into()) };
    match input {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) if !a.is_empty() => a.iter().map(|x| x.as_str().map(str::to_string).ok_or_else(bad)).collect(),
        _ => Err(bad()),
    }
}

/// The Gemini body and path for an OpenAI embeddings request.
pub fn embed_request(body: &[u8], upstream_model: &str) -> Result<(Vec<u8>, String), RequestError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| RequestError { message: format!("request body is not valid JSON: {e}"), param: None })?;
    let texts = texts(v.get("input").unwrap_or(&Value::Null))?;
    let dims = v.get("dimensions").and_then(|d| d.as_u64());
    let content = |t: &str| json!({"parts": [{"text": t}]});
    let model = if upstream_model.contains('/') { upstream_model.to_string() } else { format!("models/{upstream_model}") };
    let req = |t: &str| {
        let mut r = json!({"model": model, "content": content(t)});
        if let Some(d) = dims {
            r["outputDimensionality"] = json!(d);
        }
        r
    };
    let (body, method) = if texts.len() == 1 {
        let mut r = req(&texts[0]);
        r.as_object_mut().map(|o| o.remove("model"));
        (r, "embedContent")
    } else {
        (json!({"requests": texts.iter().map(|t| req(t)).collect::<Vec<_>>()}), "batchEmbedContents")
    };
    Ok((body.to_string().into_bytes(), format!("/{model}:{method}")))
}

/// Gemini's embeddings as OpenAI's list.
pub fn embed_response(body: &[u8], slug: &str) -> Result<Vec<u8>, super::gemini::TranslateError> {
    let fail = |m: &str| super::gemini::TranslateError { message: m.to_string() };
    let v: Value = serde_json::from_slice(body).map_err(|_| fail("embeddings answer is not JSON"))?;
    let vectors: Vec<&Value> = if let Some(one) = v.get("embedding") {
        vec![one]
    } else if let Some(Value::Array(many)) = v.get("embeddings") {
        many.iter().collect()
    } else {
        return Err(fail("no 'embedding' or 'embeddings' in the answer"));
    };
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e.get("values").cloned().unwrap_or(json!([]))}))
        .collect();
    Ok(json!({"object": "list", "data": data, "model": slug}).to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_and_many_inputs() {
        let (b, p) = embed_request(br#"{"model":"x","input":"hi"}"#, "text-embedding-004").unwrap();
        assert_eq!(p, "/models/text-embedding-004:embedContent");
        assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["content"]["parts"][0]["text"], "hi");
        let (b, p) = embed_request(br#"{"model":"x","input":["a","b"]}"#, "text-embedding-004").unwrap();
        assert_eq!(p, "/models/text-embedding-004:batchEmbedContents");
        assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["requests"].as_array().unwrap().len(), 2);
        assert!(embed_request(br#"{"model":"x","input":[1,2]}"#, "m").is_err());
        let out = embed_response(br#"{"embeddings":[{"values":[0.1]},{"values":[0.2]}]}"#, "g/e").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["model"], "g/e");
        assert!(embed_response(b"{}", "s").is_err());
    }
}
