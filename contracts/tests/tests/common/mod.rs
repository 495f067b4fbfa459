//! Shared helpers: a live server on an ephemeral loopback port, and JSON Schema
//! validation against the generated OpenAPI documents.
#![allow(dead_code)]

use serde_json::{json, Value};

pub struct Live {
    pub base: String,
    pub server: orchestratord::Server,
}

pub const MOCK: &str = r#"
[server]
keepalive_ms = 200
body_read_timeout_ms = 500
[[pools]]
id = "mockpool"
engine = "mock"
model = "mock-model"
queue_capacity = 1
[pools.mock]
slots = 1
tokens_per_sec = 50.0
ttft_ms = 5
tokens = 6
seed = 7
"#;

pub async fn live(toml: &str) -> Live {
    serve(orchestratord::Config::parse(toml).unwrap()).await
}

/// A server started from a config file (so it can re-read it).
pub async fn live_file(path: &std::path::Path) -> Live {
    serve(orchestratord::Config::load(path).unwrap()).await
}

async fn serve(cfg: orchestratord::Config) -> Live {
    let cfg = cfg.with_temp_state();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = orchestratord::StartOptions {
        skip_self_test: true,
    };
    let server = orchestratord::start_with(cfg, l, orchestratord::telemetry::metrics(), opts)
        .await
        .unwrap();
    Live {
        base: format!("http://{}", server.addr),
        server,
    }
}

pub fn docs() -> (Value, Value) {
    (
        orch_api::openapi::data_document(),
        orch_api::openapi::control_document(),
    )
}

/// A validator for `schema` (a fragment of `doc`), resolving `#/components/...`.
pub fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = match schema {
        Value::Object(m) => Value::Object(m.clone()),
        Value::Bool(b) => json!({"allOf": [b]}),
        _ => json!({}),
    };
    root["components"] = doc["components"].clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    jsonschema::validator_for(&root).expect("schema compiles")
}

pub fn assert_valid(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    let v = validator(doc, schema);
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{what}: {errors:?}\ninstance: {instance}"
    );
}

/// Every operation of a document: (path, method, operation object).
pub fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("operationId").is_some() {
                out.push((path.clone(), method.clone(), op.clone()));
            }
        }
    }
    out
}
