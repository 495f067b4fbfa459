//! OpenAI request bodies → OrchQueue task requests. Every field is either mapped,
//! accepted with its neutral value only (`n: 1`, `logprobs: false`, penalties 0, …),
//! or refused with a 400 naming it: nothing is silently ignored.

use super::error::OpenAiError;
use orch_domain::{ChatMessage, Priority, TaskRequest};
use serde_json::{Map, Value};

/// What the response needs besides the task.
#[derive(Debug, Clone)]
pub struct Options {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
}

type Obj = Map<String, Value>;

/// Fields accepted only with a value that changes nothing.
fn neutral(key: &str, v: &Value) -> Result<(), OpenAiError> {
    let ok = match key {
        "n" | "best_of" => v.is_null() || v.as_u64() == Some(1),
        "logprobs" => v.is_null() || v == &Value::Bool(false),
        "echo" | "parallel_tool_calls" | "store" => v.is_null() || v == &Value::Bool(false),
        "presence_penalty" | "frequency_penalty" => v.is_null() || v.as_f64() == Some(0.0),
        "suffix" | "top_logprobs" | "logit_bias" | "tool_choice" => v.is_null(),
        "response_format" => v.is_null() || v.get("type").and_then(Value::as_str) == Some("text"),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(OpenAiError::unsupported(
            key,
            "only its default value is accepted",
        ))
    }
}

fn check_keys(o: &Obj, mapped: &[&str], neutral_ok: &[&str]) -> Result<(), OpenAiError> {
    for (k, v) in o {
        if mapped.contains(&k.as_str()) {
            continue;
        }
        if neutral_ok.contains(&k.as_str()) {
            neutral(k, v)?;
            continue;
        }
        return Err(OpenAiError::unsupported(
            k,
            "this server serves text generation only (no tools, audio, logprobs or multiple choices)",
        ));
    }
    Ok(())
}

fn string(o: &Obj, key: &str) -> Result<Option<String>, OpenAiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(OpenAiError::invalid(
            key,
            format!("'{key}' must be a string"),
        )),
    }
}

fn uint(o: &Obj, key: &str) -> Result<Option<u32>, OpenAiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or_else(|| OpenAiError::invalid(key, format!("'{key}' must be an integer ≥ 1"))),
    }
}

fn float(o: &Obj, key: &str) -> Result<Option<f64>, OpenAiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| OpenAiError::invalid(key, format!("'{key}' must be a number"))),
    }
}

fn boolean(o: &Obj, key: &str) -> Result<bool, OpenAiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(OpenAiError::invalid(
            key,
            format!("'{key}' must be a boolean"),
        )),
    }
}

fn stop(o: &Obj) -> Result<Option<Vec<String>>, OpenAiError> {
    match o.get("stop") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| {
                OpenAiError::invalid("stop", "'stop' must be a string or an array of strings")
            }),
        Some(_) => Err(OpenAiError::invalid(
            "stop",
            "'stop' must be a string or an array of strings",
        )),
    }
}

fn include_usage(o: &Obj) -> Result<bool, OpenAiError> {
    match o.get("stream_options") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(so)) => {
            if let Some(k) = so.keys().find(|k| *k != "include_usage") {
                return Err(OpenAiError::unsupported(
                    &format!("stream_options.{k}"),
                    "only include_usage is supported",
                ));
            }
            boolean(so, "include_usage")
        }
        Some(_) => Err(OpenAiError::invalid(
            "stream_options",
            "'stream_options' must be an object",
        )),
    }
}

fn seed(o: &Obj) -> Result<Option<i64>, OpenAiError> {
    match o.get("seed") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| OpenAiError::invalid("seed", "'seed' must be an integer")),
    }
}

fn object(body: Value) -> Result<Obj, OpenAiError> {
    match body {
        Value::Object(o) => Ok(o),
        _ => Err(OpenAiError::invalid(
            "body",
            "the body must be a JSON object",
        )),
    }
}

/// The text of a message's `content`: a string, or an array of `{"type": "text"}` parts.
fn content(v: &Value, i: usize) -> Result<String, OpenAiError> {
    let param = format!("messages[{i}].content");
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(OpenAiError::unsupported(
                            &param,
                            "only text content parts are supported",
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(OpenAiError::invalid(
            &param,
            "content must be a string or an array of text parts",
        )),
    }
}

fn messages(o: &Obj) -> Result<Vec<ChatMessage>, OpenAiError> {
    let arr = o.get("messages").and_then(Value::as_array).ok_or_else(|| {
        OpenAiError::invalid(
            "messages",
            "'messages' is required: an array of {role, content}",
        )
    })?;
    if arr.is_empty() {
        return Err(OpenAiError::invalid(
            "messages",
            "'messages' must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(arr.len());
    for (i, m) in arr.iter().enumerate() {
        let m = m.as_object().ok_or_else(|| {
            OpenAiError::invalid(&format!("messages[{i}]"), "each message must be an object")
        })?;
        if let Some(k) = m
            .keys()
            .find(|k| !matches!(k.as_str(), "role" | "content" | "name"))
        {
            return Err(OpenAiError::unsupported(
                &format!("messages[{i}].{k}"),
                "messages carry role, content and name only (no tool calls)",
            ));
        }
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        if !matches!(role, "system" | "developer" | "user" | "assistant") {
            return Err(OpenAiError::invalid(
                &format!("messages[{i}].role"),
                "role must be system, developer, user or assistant",
            ));
        }
        out.push(ChatMessage {
            role: role.to_string(),
            content: content(m.get("content").unwrap_or(&Value::Null), i)?,
        });
    }
    Ok(out)
}

fn base(model: String, prompt: String, max_tokens: u32, priority: Priority) -> TaskRequest {
    TaskRequest::completion(&model, &prompt, max_tokens, priority)
}

/// `POST /v1/chat/completions`. `default_max_tokens` gives the largest output that
/// fits when the request names none.
pub fn chat(
    body: Value,
    priority: Priority,
    default_max_tokens: impl Fn(&str, &str) -> u32,
) -> Result<(TaskRequest, Options), OpenAiError> {
    let o = object(body)?;
    check_keys(
        &o,
        &[
            "model",
            "messages",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "seed",
            "stop",
            "stream",
            "stream_options",
            "user",
        ],
        &[
            "n",
            "logprobs",
            "top_logprobs",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "response_format",
            "tool_choice",
            "parallel_tool_calls",
            "store",
        ],
    )?;
    let model =
        string(&o, "model")?.ok_or_else(|| OpenAiError::invalid("model", "'model' is required"))?;
    // `user` identifies the end user to the provider; it changes no output
    string(&o, "user")?;
    let chat = messages(&o)?;
    // the messages' text bounds the size and estimates the length
    let text: String = chat
        .iter()
        .map(|m| format!("{}: {}", m.role, m.content))
        .collect::<Vec<_>>()
        .join("\n");
    let max = match (uint(&o, "max_completion_tokens")?, uint(&o, "max_tokens")?) {
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => default_max_tokens(&model, &text),
    };
    let mut t = base(model.clone(), text, max, priority);
    t.chat = Some(chat);
    sampling(&o, model, t)
}

/// The sampling fields both endpoints share, and the response options.
fn sampling(
    o: &Obj,
    model: String,
    mut t: TaskRequest,
) -> Result<(TaskRequest, Options), OpenAiError> {
    t.temperature = float(o, "temperature")?;
    t.top_p = float(o, "top_p")?;
    t.seed = seed(o)?;
    t.stop = stop(o)?;
    let opts = Options {
        model,
        stream: boolean(o, "stream")?,
        include_usage: include_usage(o)?,
    };
    Ok((t, opts))
}

/// `POST /v1/completions` (`max_tokens` defaults to 16, as OpenAI's does).
pub fn completion(body: Value, priority: Priority) -> Result<(TaskRequest, Options), OpenAiError> {
    let o = object(body)?;
    check_keys(
        &o,
        &[
            "model",
            "prompt",
            "max_tokens",
            "temperature",
            "top_p",
            "seed",
            "stop",
            "stream",
            "stream_options",
            "user",
        ],
        &[
            "n",
            "best_of",
            "logprobs",
            "echo",
            "suffix",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
        ],
    )?;
    let model =
        string(&o, "model")?.ok_or_else(|| OpenAiError::invalid("model", "'model' is required"))?;
    string(&o, "user")?;
    let prompt = match o.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(_)) => {
            return Err(OpenAiError::unsupported(
                "prompt",
                "one prompt per request (a batch of prompts is not served)",
            ))
        }
        _ => {
            return Err(OpenAiError::invalid(
                "prompt",
                "'prompt' is required: a string",
            ))
        }
    };
    let t = base(
        model.clone(),
        prompt,
        uint(&o, "max_tokens")?.unwrap_or(16),
        priority,
    );
    sampling(&o, model, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat_req(extra: Value) -> Result<(TaskRequest, Options), OpenAiError> {
        let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        chat(b, Priority::Interactive, |_, _| 77)
    }

    #[test]
    fn maps_the_supported_fields() {
        let (t, o) = chat_req(
            json!({"max_completion_tokens": 9, "temperature": 0.5, "stop": "x",
            "seed": 3, "stream": true, "stream_options": {"include_usage": true}, "n": 1}),
        )
        .unwrap();
        assert_eq!(t.max_tokens, 9);
        assert_eq!(t.stop, Some(vec!["x".to_string()]));
        assert_eq!(t.seed, Some(3));
        assert!(o.stream && o.include_usage);
        assert_eq!(t.chat.unwrap()[0].content, "hi");
        let (t, _) = chat_req(json!({})).unwrap();
        assert_eq!(t.max_tokens, 77, "the default fills what fits");
    }

    #[test]
    fn refuses_what_it_does_not_serve_by_name() {
        for (extra, param) in [
            (json!({"n": 2}), "n"),
            (json!({"tools": []}), "tools"),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"temprature": 1}), "temprature"),
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
        ] {
            let e = chat_req(extra).unwrap_err();
            assert_eq!(e.status_code(), 400);
            assert_eq!(e.param.as_deref(), Some(param));
        }
        let e = chat(
            json!({"model": "m", "messages": []}),
            Priority::Batch,
            |_, _| 1,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
    }

    #[test]
    fn completions_default_to_sixteen_tokens() {
        let (t, _) = completion(json!({"model": "m", "prompt": "p"}), Priority::Batch).unwrap();
        assert_eq!(t.max_tokens, 16);
        assert!(completion(json!({"model": "m", "prompt": ["a", "b"]}), Priority::Batch).is_err());
    }
}
