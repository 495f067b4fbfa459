//! The OpenAPI documents: committed = generated, structurally valid OpenAPI 3.1,
//! every example valid against its schema, served as committed, and the
//! capabilities' api_version tied to info.version.

mod common;
use common::*;
use serde_json::Value;
use std::path::PathBuf;

fn committed(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../openapi")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn documents_regenerate_byte_identical() {
    let (data, control) = docs();
    let hint = "run `cargo run -p orch-api --example regen-openapi` and commit";
    assert!(
        orch_api::openapi::to_yaml(&data) == committed("data.yaml"),
        "data.yaml is stale: {hint}"
    );
    assert!(
        orch_api::openapi::to_yaml(&control) == committed("control.yaml"),
        "control.yaml is stale: {hint}"
    );
}

fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    doc.pointer(r.strip_prefix('#')?)
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn documents_are_valid_openapi_3_1_with_the_required_extensions() {
    let (data, control) = docs();
    for doc in [&data, &control] {
        let parsed: Value = serde_norway::from_str(&orch_api::openapi::to_yaml(doc)).unwrap();
        assert_eq!(&parsed, doc, "YAML round-trips");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(doc["info"]["version"], orch_domain::control::API_VERSION);
        assert!(doc["info"]["title"].is_string());
        let mut all = Vec::new();
        refs(doc, &mut all);
        for r in &all {
            assert!(resolve(doc, r).is_some(), "unresolved $ref {r}");
        }
        let mut ids = std::collections::HashSet::new();
        for (path, method, op) in operations(doc) {
            let id = op["operationId"].as_str().unwrap().to_string();
            assert!(ids.insert(id.clone()), "duplicate operationId {id}");
            assert!(op["x-req-id"].is_string(), "{method} {path}: x-req-id");
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty());
            // spec §3: every operation documents 405, 500 and the connection limit's 503
            for status in ["405", "500", "503"] {
                assert!(responses.contains_key(status), "{id}: {status} documented");
            }
            for (status, resp) in responses {
                // a shared response (405, 500, the connection limit's 503) by reference
                let resp = match resp["$ref"].as_str() {
                    Some(r) => resolve(doc, r).unwrap(),
                    None => resp,
                };
                let h = &resp["headers"];
                assert!(
                    h["X-Correlation-Id"].is_object(),
                    "{id} {status}: X-Correlation-Id"
                );
                if status == "429" || status == "503" {
                    assert!(
                        h["Retry-After"].is_object() && h["X-Backoff-Ms"].is_object(),
                        "{id} {status}"
                    );
                }
                if status == "405" {
                    assert!(h["Allow"].is_object(), "{id} 405: Allow");
                }
                let code: u16 = status.parse().unwrap();
                if code >= 400 {
                    let s = &resp["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        s, "#/components/schemas/ErrorEnvelope",
                        "{id} {status} body"
                    );
                }
            }
        }
    }
    let (_, _, create) = operations(&data)
        .into_iter()
        .find(|o| o.2["operationId"] == "createTask")
        .unwrap();
    assert!(create["responses"]["202"]["headers"]["Location"].is_object());
    assert_eq!(create["responses"]["429"]["x-req-id"], "ORCH-2007");
    assert_eq!(
        data["components"]["schemas"]["ErrorEnvelope"]["x-req-id"],
        "ORCH-2006"
    );
    let (_, _, stream) = operations(&data)
        .into_iter()
        .find(|o| o.2["operationId"] == "streamTask")
        .unwrap();
    for ev in ["started", "token", "metrics", "end", "error"] {
        assert!(
            stream["x-sse-events"][ev]["$ref"].is_string(),
            "x-sse-events.{ev}"
        );
    }
}

#[test]
fn every_example_validates_against_its_schema() {
    let (data, control) = docs();
    let mut checked = 0;
    let mut names = Vec::new();
    for doc in [&data, &control] {
        for (_, _, op) in operations(doc) {
            let Some(examples) = op["x-examples"].as_object() else {
                continue;
            };
            for (name, ex) in examples {
                names.push(name.clone());
                let value = &ex["value"];
                match ex["kind"].as_str().unwrap() {
                    "request" => {
                        let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                        assert_valid(doc, schema, value, name);
                    }
                    "request_invalid" => {
                        // schema-valid JSON that the server's rules reject (documented 400)
                        let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                        assert_valid(doc, schema, value, name);
                        assert!(op["responses"]["400"].is_object());
                    }
                    "response" => {
                        let status = ex["status"].as_str().unwrap();
                        let schema =
                            &op["responses"][status]["content"]["application/json"]["schema"];
                        assert!(!schema.is_null(), "{name}: status {status} documented");
                        assert_valid(doc, schema, value, name);
                    }
                    "sse" => {
                        for frame in value.as_array().unwrap() {
                            let ev = frame["event"].as_str().unwrap();
                            assert_valid(doc, &op["x-sse-events"][ev], &frame["data"], name);
                        }
                    }
                    other => panic!("unknown example kind {other}"),
                }
                checked += 1;
            }
        }
    }
    for want in [
        "good_request",
        "invalid_request",
        "accepted_202",
        "backpressure_429",
        "sse_transcript",
        "drain_request",
        "reload_request",
        "capabilities",
    ] {
        assert!(names.iter().any(|n| n == want), "x-examples has {want}");
    }
    assert!(checked >= 8);
    // the checker can fail: a wrong type is rejected
    let bad = serde_json::json!({"task_id": 5});
    let create = operations(&data)
        .into_iter()
        .find(|o| o.2["operationId"] == "createTask")
        .unwrap()
        .2;
    let v = validator(
        &data,
        &create["responses"]["202"]["content"]["application/json"]["schema"],
    );
    assert!(!v.is_valid(&bad));
}

#[tokio::test]
async fn served_documents_equal_the_committed_files_and_capabilities_version() {
    let l = live(MOCK).await;
    let http = reqwest::Client::new();
    for name in ["data.yaml", "control.yaml"] {
        let text = http
            .get(format!("{}/openapi/{name}", l.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text == committed(name),
            "served {name} differs from the committed file"
        );
    }
    let caps: Value = http
        .get(format!("{}/v1/capabilities", l.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (data, control) = docs();
    assert_eq!(caps["api_version"], data["info"]["version"]);
    assert_eq!(caps["api_version"], control["info"]["version"]);
}

#[test]
fn the_202_response_links_to_the_task_operations() {
    let (data, _) = docs();
    let ops = operations(&data);
    let create = ops
        .iter()
        .find(|o| o.2["operationId"] == "createTask")
        .expect("createTask");
    let links = create.2["responses"]["202"]["links"]
        .as_object()
        .expect("202 has links");
    for target in ["getTask", "streamTask", "cancelTask"] {
        let link = links
            .values()
            .find(|l| l["operationId"] == target)
            .unwrap_or_else(|| panic!("a link to {target}"));
        assert_eq!(link["parameters"]["id"], "$response.body#/task_id");
        let op = ops
            .iter()
            .find(|o| o.2["operationId"] == target)
            .unwrap_or_else(|| panic!("{target} exists"));
        assert!(op.0.contains("{id}"), "{target} takes the id in its path");
    }
}

/// YAML 1.1 readers (PyYAML, so schemathesis) read a bare `no`/`yes`/`on`/`off` as a
/// boolean: the committed documents quote every such scalar (`X-Accel-Buffering`'s
/// `no` was read as `false`).
#[test]
fn no_scalar_reads_as_a_boolean_in_yaml_1_1() {
    for name in ["data.yaml", "control.yaml"] {
        let path = format!("{}/../openapi/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let t = line.trim_start();
            let value = t
                .strip_prefix("- ")
                .or_else(|| t.split_once(": ").map(|(_, v)| v))
                .unwrap_or("");
            let bare = [
                "no", "yes", "on", "off", "No", "Yes", "On", "Off", "NO", "YES", "ON", "OFF",
            ]
            .contains(&value);
            assert!(!bare, "{name}: bare YAML 1.1 boolean in {line:?}");
        }
        if name == "data.yaml" {
            assert!(text.contains("- 'no'"), "{name} quotes it");
        }
    }
}
