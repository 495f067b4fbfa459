//! What the document says that the derive cannot: the stream's per-event schema and
//! the request bounds `TaskRequest::validate` enforces beyond the derived ones.

use serde_json::{json, Map, Value};

/// The stream's 200 `text/event-stream` schema describes one event (as OpenAPI 3.2's
/// `itemSchema` does, and as schemathesis reads `schema` for an event stream): its
/// `event` names the frame, `id` is its sequence, and `data` is one line of JSON whose
/// schema is that frame's (`contentMediaType` + `contentSchema`). Comments (keep-alives)
/// are not events.
pub(super) fn set_event_schema(op: &mut Map<String, Value>, events: &Map<String, Value>) {
    let names: Vec<&String> = events.keys().collect();
    let one_of: Vec<Value> = events
        .iter()
        .map(|(name, schema)| {
            json!({"properties": {
                "event": {"const": name},
                "data": {"type": "string", "contentMediaType": "application/json",
                         "contentSchema": schema},
            }})
        })
        .collect();
    let schema = json!({
        "description": "One event of the stream (a frame); `data` is the frame named by `event`, as one line of JSON",
        "type": "object",
        "required": ["event", "id", "data"],
        "properties": {
            "event": {"type": "string", "enum": names},
            "id": {"type": "string", "pattern": "^[1-9][0-9]*$"},
            "data": {"type": "string", "contentMediaType": "application/json"},
        },
        "oneOf": one_of,
    });
    if let Some(c) = op
        .get_mut("responses")
        .and_then(|r| r.pointer_mut("/200/content/text~1event-stream"))
        .and_then(Value::as_object_mut)
    {
        c.insert("schema".into(), schema);
    }
}

/// Bounds the derive cannot say, set to exactly what `TaskRequest::validate` enforces
/// (so a request valid by the document is never refused for its shape): each stop
/// string's length, the task ids a client may name (version 8 is reserved for ids
/// derived from an `Idempotency-Key`), and the `Idempotency-Key` header's alphabet.
pub(super) fn bounds(mut doc: Value) -> Value {
    if let Some(props) = doc
        .pointer_mut("/components/schemas/TaskRequest/properties")
        .and_then(Value::as_object_mut)
    {
        if let Some(stop) = props.get_mut("stop").and_then(Value::as_object_mut) {
            stop.insert(
                "items".into(),
                json!({"type": "string", "minLength": 1,
                       "maxLength": orch_domain::STOP_MAX_CHARS}),
            );
        }
        props.insert(
            "task_id".into(),
            json!({"oneOf": [{"type": "null"}, {
                "type": "string", "format": "uuid",
                // any version but 8, in the hyphenated form
                "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-79a-fA-F][0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
                "description": "The client's id for the task (a UUID; absent: the server picks one). Version-8 UUIDs are reserved for ids derived from an `Idempotency-Key`.",
            }]}),
        );
    }
    if let Some(params) = doc
        .pointer_mut("/paths/~1v1~1tasks/post/parameters")
        .and_then(Value::as_array_mut)
    {
        for p in params.iter_mut() {
            if p["name"] == "Idempotency-Key" {
                p["schema"] = json!({"type": "string", "minLength": 1, "maxLength": 255,
                                     "pattern": "^[!-~]+$"});
            }
        }
    }
    doc
}
