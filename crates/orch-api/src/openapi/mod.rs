//! The OpenAPI documents, generated from the handlers' `#[utoipa::path]` annotations
//! and the domain types' schemas, then decorated in one place with what every
//! operation shares: `x-req-id`, the `X-Correlation-Id` / `Retry-After` /
//! `X-Backoff-Ms` / `Location` headers, `x-sse-events` and named `x-examples`.
//! `contracts/openapi/{data,control}.yaml` are these documents, byte for byte
//! (`cargo run -p orch-api --example regen-openapi`; a test fails when they differ).

mod shape;
mod yaml;

use crate::{control, data, ops};
use orch_domain::control::API_VERSION;
use serde_json::{json, Map, Value};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "OrchQueue v1 — data plane",
        description = "Submit tasks, stream their tokens over SSE, cancel, sessions, usage."
    ),
    paths(
        data::create_task,
        data::stream_task,
        data::cancel_task,
        data::task_status,
        data::get_session,
        data::delete_session,
        crate::accounts::usage
    ),
    components(schemas(
        orch_domain::StartedFrame,
        orch_domain::TokenFrame,
        orch_domain::MetricsFrame,
        orch_domain::Migrated,
        orch_domain::EndFrame,
        orch_domain::ErrorFrame,
        orch_domain::ErrorCode,
    ))
)]
struct DataApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "OrchQueue v1 — control plane",
        description = "Pools, health, drain, reload, replica sets, capabilities, API keys, probes and metrics."
    ),
    paths(
        control::list_pools,
        control::pool_health,
        control::drain_pool,
        control::reload_pool,
        control::replica_sets,
        control::capabilities,
        crate::admin::list_replicas,
        crate::admin::add_replica,
        crate::admin::remove_replica,
        crate::admin::reload_config,
        crate::accounts::create_key,
        crate::accounts::list_keys,
        crate::accounts::revoke_key,
        crate::console::snapshot,
        ops::livez,
        ops::readyz,
        ops::metrics
    )
)]
struct ControlApi;

/// Requirement ids of the plan, per operation.
fn req_id(op: &str) -> Option<&'static str> {
    Some(match op {
        "createTask" => "ORCH-2001",
        "streamTask" => "ORCH-2002",
        "cancelTask" => "ORCH-2003",
        "getTask" => "ORCH-2001",
        "getSession" => "ORCH-2004",
        "deleteSession" => "ORCH-2005",
        "drainPool" => "ORCH-2101",
        "reloadPool" => "ORCH-2102",
        "poolHealth" => "ORCH-2103",
        "listReplicaSets" => "ORCH-2104",
        "listPools" => "ORCH-2104",
        "getCapabilities" => "OC-CTRL-2060",
        "livez" | "readyz" | "metrics" => "ORCH-2103",
        "listReplicas" | "addReplica" | "removeReplica" => "ORCH-2105",
        "reloadConfig" => "ORCH-2106",
        "createKey" | "listKeys" | "revokeKey" => "ORCH-2107",
        "getUsage" => "ORCH-2108",
        "getConsole" => "ORCH-2109",
        _ => return None,
    })
}

fn header(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "schema": schema})
}

fn examples(op: &str) -> Option<Value> {
    let task = json!({
        "workload": "completion", "model_ref": "gemma-3-270m", "priority": "interactive",
        "prompt": "Name three lighthouses of the Atlantic coast:",
        "max_tokens": 8, "temperature": 0.0
    });
    let id = "7d1a3f52-0c7e-4c9a-9a51-2d1f0e8b6c11";
    Some(match op {
        "createTask" => json!({
            "good_request": {"kind": "request", "value": task},
            "invalid_request": {"kind": "request_invalid", "value": {"workload": "completion", "model_ref": "no-such-model", "priority": "interactive", "prompt": "Hello", "max_tokens": 8}},
            "accepted_202": {"kind": "response", "status": "202", "value": {
                "task_id": id, "queue_position": 0, "predicted_start_ms": 0, "backoff_ms": 0,
                "streams": {"sse": format!("/v1/tasks/{id}/stream")}}},
            "backpressure_429": {"kind": "response", "status": "429", "value": {
                "code": "ADMISSION_REJECT", "message": "queue of pool gemma is full (capacity 64)", "retriable": true,
                "retry_after_ms": 1000, "policy_label": "reject", "engine": "llamacpp", "pool_id": "gemma",
                "correlation_id": "b9f0c2de-5d4f-4c55-8d0e-3f3c2a1b0a99"}},
            "invalid_400": {"kind": "response", "status": "400", "value": {
                "code": "INVALID_PARAMS", "message": "prompt: must not be empty", "retriable": false,
                "correlation_id": "b9f0c2de-5d4f-4c55-8d0e-3f3c2a1b0a99"}}
        }),
        "streamTask" => json!({
            "sse_transcript": {"kind": "sse", "value": [
                {"event": "started", "id": 1, "data": {"queue_position": 0, "predicted_start_ms": 0, "engine": "llamacpp",
                  "engine_version": "b11434-pypi", "model": "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                  "pool_id": "gemma", "replica_id": "gemma-r0", "sampler_profile_version": "v1", "seed": 42}},
                {"event": "token", "id": 2, "data": {"t": " 4", "i": 0}},
                {"event": "token", "id": 3, "data": {"t": "821", "i": 1}},
                {"event": "end", "id": 4, "data": {"tokens_in": 20, "tokens_out": 2, "decode_time_ms": 95, "ttft_ms": 120, "finish_reason": "length"}}
            ]}
        }),
        "drainPool" => json!({
            "drain_request": {"kind": "request", "value": {"deadline_ms": 5000}},
            "drain_202": {"kind": "response", "status": "202", "value": {"pool_id": "gemma", "draining": true, "deadline_ms": 5000, "in_flight": 2, "queued_ended": 1}}
        }),
        "reloadPool" => json!({
            "reload_request": {"kind": "request", "value": {"model_ref": "gemma-3-270m", "sampler_profile_version": "v2"}},
            "reload_202": {"kind": "response", "status": "202", "value": {"pool_id": "gemma",
                "model_digest": "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                "engine_version": "b11434-pypi", "sampler_profile_version": "v2", "replicas": ["gemma-g1-r0"]}},
            "reload_409": {"kind": "response", "status": "409", "value": {"code": "CONFLICT",
                "message": "reload rolled back: replica gemma-g1-r0 exited while loading", "retriable": false,
                "pool_id": "gemma", "correlation_id": "b9f0c2de-5d4f-4c55-8d0e-3f3c2a1b0a99"}}
        }),
        "getCapabilities" => json!({
            "capabilities": {"kind": "response", "status": "200", "value": {
                "api_version": API_VERSION,
                "engines": [{"pool_id": "gemma", "engine": "llamacpp", "engine_version": "b11434-pypi",
                  "sampler_profile_version": "v1", "model": "gemma-3-270m",
                  "model_digest": "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                  "ctx_max": 2048, "max_tokens_out": 512, "workloads": ["completion"], "concurrency": 2,
                  "queue": {"capacity": 64, "policy": "reject"}, "ready": true}],
                "rate_limits": {"prompt_max_chars": 262144, "prompt_max_bytes": 262144, "body_max_bytes": 1114112},
                "features": orch_domain::control::FEATURES}}
        }),
        _ => return None,
    })
}

/// Operations that never need a key (`/metrics` may: see [`security`]).
fn is_open(op: &str) -> bool {
    matches!(op, "livez" | "readyz")
}

/// `Retry-After` and `X-Backoff-Ms`, on every 429 and 503.
fn backoff_headers(h: &mut Map<String, Value>) {
    h.insert(
        "Retry-After".into(),
        header(
            "Seconds to wait before retrying (>= 1)",
            json!({"type": "integer", "minimum": 1}),
        ),
    );
    h.insert(
        "X-Backoff-Ms".into(),
        header(
            "Milliseconds to wait before retrying",
            json!({"type": "integer", "minimum": 0}),
        ),
    );
}

/// The headers of the responses every operation shares (`components.responses`).
fn shared_response_headers(doc: &mut Value) {
    let Some(shared) = doc
        .pointer_mut("/components/responses")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for (name, resp) in shared.iter_mut() {
        let mut h = Map::new();
        h.insert(
            "X-Correlation-Id".into(),
            header(
                "Echoed from the request when valid, else generated",
                json!({"type": "string"}),
            ),
        );
        match name.as_str() {
            "MethodNotAllowed" => {
                h.insert(
                    "Allow".into(),
                    header("The methods this path serves", json!({"type": "string"})),
                );
            }
            "Overloaded" => backoff_headers(&mut h),
            _ => {}
        }
        resp["headers"] = Value::Object(h);
    }
}

/// The connection limit's answer, which any operation can get.
const OVERLOADED: &str = "The server is at its connection limit (code OVERLOADED): answered before the request is read, with a fresh X-Correlation-Id, Retry-After and X-Backoff-Ms, and the connection is closed";

/// API keys: the schemes, the document-wide requirement, and per operation the
/// 401/403 responses (open probes carry an empty requirement; `/metrics` an optional
/// one, since it is open unless configured admin-only).
fn security(mut doc: Value) -> Value {
    let envelope =
        json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}});
    if let Some(c) = doc.get_mut("components").and_then(Value::as_object_mut) {
        // every route answers a method it does not serve with this
        c.insert(
            "responses".into(),
            json!({
                "MethodNotAllowed": {
                    "description": "This path sent with a method it does not serve answers 405 with code METHOD_NOT_ALLOWED and an `Allow` header",
                    "content": envelope.clone()},
                "Internal": {
                    "description": "A bug (code INTERNAL), logged with the correlation id; a handler that panics answers this too",
                    "content": envelope.clone()},
                "Overloaded": {
                    "description": OVERLOADED,
                    "content": envelope.clone()},
            }),
        );
        c.insert(
            "securitySchemes".into(),
            json!({
                "bearerAuth": {"type": "http", "scheme": "bearer",
                    "description": "An API key as a bearer token (`orchestratord keys new`)"},
                "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                    "description": "The same API key in the X-API-Key header"}
            }),
        );
    }
    doc["security"] = json!([{"bearerAuth": []}, {"apiKeyAuth": []}]);
    // what a web page could send is refused before anything else (browser.rs)
    const BROWSER: &str = "A request from a page of another site (its Origin is not this server's or a listed one), or through a name that is not this server's (its Host: DNS rebinding), is refused (code FORBIDDEN)";
    each_operation(&mut doc, |method, op, id| {
        if let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) {
            r.insert(
                "403".into(),
                json!({"description": BROWSER, "content": envelope}),
            );
            every_operations_errors(r);
            if !matches!(method, "get" | "head" | "options") {
                r.entry("415").or_insert_with(|| json!({
                        "description": "A body (or Content-Type) that is not application/json: what a form post or a text/plain fetch would send (code INVALID_PARAMS)",
                        "content": envelope}));
            }
        }
        if is_open(id) {
            op.insert("security".into(), json!([]));
            return;
        }
        if id == "metrics" {
            op.insert(
                "security".into(),
                json!([{}, {"bearerAuth": []}, {"apiKeyAuth": []}]),
            );
        }
        let admin = matches!(
            id,
            "listPools"
                | "poolHealth"
                | "drainPool"
                | "reloadPool"
                | "listReplicaSets"
                | "metrics"
                | "listReplicas"
                | "addReplica"
                | "removeReplica"
                | "reloadConfig"
        );
        let has_body = op.contains_key("requestBody");
        if let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) {
            if has_body {
                r.insert("408".into(), json!({
                        "description": "The request body did not arrive whole within the server's body read timeout (code REQUEST_TIMEOUT)",
                        "content": envelope}));
            }
            r.insert("401".into(), json!({
                    "description": "No API key, or a key that is not valid (code UNAUTHENTICATED); carries WWW-Authenticate: Bearer",
                    "content": envelope}));
            // tasks and sessions of other tenants answer 404, like unknown ids
            let why = admin.then_some(
                "The key's role is client; this operation needs an admin key (code FORBIDDEN)",
            );
            if let Some(why) = why {
                r.insert(
                    "403".into(),
                    json!({"description": format!("{why}. {BROWSER}"), "content": envelope}),
                );
            }
        }
    });
    doc
}

/// What any operation can answer: 405 (another method on its path), 500 (a bug) and
/// the connection limit's 503 (added to an operation's own 503, if it has one).
fn every_operations_errors(r: &mut Map<String, Value>) {
    r.insert(
        "405".into(),
        json!({"$ref": "#/components/responses/MethodNotAllowed"}),
    );
    r.insert(
        "500".into(),
        json!({"$ref": "#/components/responses/Internal"}),
    );
    match r.get_mut("503").and_then(Value::as_object_mut) {
        Some(own) => {
            let d = own
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let d = format!("{d}. Or: {OVERLOADED}");
            own.insert("description".into(), json!(d));
        }
        None => {
            r.insert(
                "503".into(),
                json!({"$ref": "#/components/responses/Overloaded"}),
            );
        }
    }
}

/// Call `f` with each operation of `doc`: its method, its object and its operationId.
fn each_operation(doc: &mut Value, mut f: impl FnMut(&str, &mut Map<String, Value>, &str)) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut().filter_map(Value::as_object_mut) {
        for (method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            let id = op
                .get("operationId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            f(method, op, &id);
        }
    }
}

/// Add the shared headers and extensions to every operation.
fn decorate(mut doc: Value) -> Value {
    doc["info"]["version"] = json!(API_VERSION);
    doc["info"]["license"] = json!({"name": "Apache-2.0", "identifier": "Apache-2.0"});
    doc = security(doc);
    shared_response_headers(&mut doc);
    each_operation(&mut doc, |_, op, id| {
        if let Some(r) = req_id(id) {
            op.insert("x-req-id".into(), json!(r));
        }
        if let Some(ex) = examples(id) {
            op.insert("x-examples".into(), ex);
        }
        if id == "streamTask" {
            // every frame kind, with the schema of its data
            let events: serde_json::Map<String, Value> = orch_domain::EventKind::ALL
                .into_iter()
                .map(|k| {
                    let schema = match k {
                        orch_domain::EventKind::Started => "StartedFrame",
                        orch_domain::EventKind::Token => "TokenFrame",
                        orch_domain::EventKind::Metrics => "MetricsFrame",
                        orch_domain::EventKind::End => "EndFrame",
                        orch_domain::EventKind::Error => "ErrorFrame",
                    };
                    let r = json!({"$ref": format!("#/components/schemas/{schema}")});
                    (k.as_str().to_string(), r)
                })
                .collect();
            shape::set_event_schema(op, &events);
            op.insert("x-sse-events".into(), Value::Object(events));
        }
        let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
            return;
        };
        for (status, resp) in responses.iter_mut() {
            // shared responses get their headers where they are defined (below)
            let Some(resp) = resp.as_object_mut().filter(|r| !r.contains_key("$ref")) else {
                continue;
            };
            let headers = resp
                .entry("headers")
                .or_insert_with(|| Value::Object(Map::new()));
            let Some(h) = headers.as_object_mut() else {
                continue;
            };
            h.insert(
                "X-Correlation-Id".into(),
                header(
                    "Echoed from the request when valid, else generated",
                    json!({"type": "string"}),
                ),
            );
            if status == "429" {
                resp.insert("x-req-id".into(), json!("ORCH-2007"));
            }
            if status == "202" && id == "createTask" {
                // generic tools (schemathesis' stateful runs) follow a task from here
                let by_id = json!({"id": "$response.body#/task_id"});
                resp.insert(
                    "links".into(),
                    json!({
                        "GetTask": {"operationId": "getTask", "parameters": by_id,
                            "description": "The task's state"},
                        "StreamTask": {"operationId": "streamTask", "parameters": by_id,
                            "description": "The task's event stream"},
                        "CancelTask": {"operationId": "cancelTask", "parameters": by_id,
                            "description": "Cancel the task"},
                    }),
                );
            }
            let Some(h) = resp.get_mut("headers").and_then(Value::as_object_mut) else {
                continue;
            };
            if status == "429" || status == "503" {
                backoff_headers(h);
            }
            if status == "202" && id == "createTask" {
                h.insert(
                    "Location".into(),
                    header("The task's status URL", json!({"type": "string"})),
                );
            }
            if status == "200" && id == "streamTask" {
                h.insert(
                    "Cache-Control".into(),
                    header(
                        "Always `no-cache`",
                        json!({"type": "string", "enum": ["no-cache"]}),
                    ),
                );
                h.insert(
                    "X-Accel-Buffering".into(),
                    header(
                        "Always `no`: proxies must not buffer the stream",
                        json!({"type": "string", "enum": ["no"]}),
                    ),
                );
            }
        }
    });
    doc
}

/// The envelope schema carries its requirement id too.
fn tag_envelope(mut doc: Value) -> Value {
    if let Some(env) = doc
        .pointer_mut("/components/schemas/ErrorEnvelope")
        .and_then(Value::as_object_mut)
    {
        env.insert("x-req-id".into(), json!("ORCH-2006"));
    }
    doc
}

fn to_value(api: utoipa::openapi::OpenApi) -> Value {
    serde_json::to_value(api).unwrap_or(Value::Null)
}

/// The data-plane document.
pub fn data_document() -> Value {
    shape::bounds(tag_envelope(decorate(to_value(DataApi::openapi()))))
}

/// The control-plane document.
pub fn control_document() -> Value {
    tag_envelope(decorate(to_value(ControlApi::openapi())))
}

/// YAML text of a document (stable key order).
pub fn to_yaml(doc: &Value) -> String {
    let text = serde_norway::to_string(doc).unwrap_or_default();
    yaml::quote_yaml11_booleans(&text)
}

pub async fn serve_data() -> axum::response::Response {
    yaml_response(to_yaml(&data_document()))
}

pub async fn serve_control() -> axum::response::Response {
    yaml_response(to_yaml(&control_document()))
}

fn yaml_response(text: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut r = text.into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/yaml"),
    );
    r
}
