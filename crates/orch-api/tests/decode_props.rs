//! Property-based fuzzing of the request decoders: whatever the bytes or the JSON,
//! OrchQueue's task decoder and the OpenAI door's request mapping answer with a typed
//! error (or a valid request), never a panic.

use orch_api::body::decode;
use orch_api::openai::request;
use orch_domain::{ErrorCode, Priority, TaskRequest};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Mostly the fields the decoders know, sometimes anything.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "workload",
            "model_ref",
            "priority",
            "prompt",
            "max_tokens",
            "task_id",
            "session_id",
            "deadline_ms",
            "expected_tokens",
            "seed",
            "temperature",
            "top_p",
            "stop",
            "chat",
            "placement",
            "kv_hint",
            "model",
            "messages",
            "role",
            "content",
            "n",
            "stream",
            "stream_options",
            "include_usage",
            "max_completion_tokens",
            "user",
            "logprobs",
        ])
        .prop_map(String::from),
        "[a-z_]{1,10}",
    ]
}

/// A valid task with some of its fields replaced by arbitrary values.
fn mutated_task() -> impl Strategy<Value = Value> {
    (prop::collection::vec((key(), any_json()), 0..4)).prop_map(|edits| {
        let mut t = json!({"workload": "completion", "model_ref": "m", "priority": "batch",
            "prompt": "hello", "max_tokens": 8});
        for (k, v) in edits {
            t[k] = v;
        }
        t
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_decode_to_a_task_or_an_invalid_params_error(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = decode::<TaskRequest>(&bytes) {
            prop_assert_eq!(e.code, ErrorCode::InvalidParams);
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn arbitrary_json_decodes_and_validates_without_panicking(v in prop_oneof![any_json(), mutated_task()]) {
        let bytes = serde_json::to_vec(&v).unwrap();
        match decode::<TaskRequest>(&bytes) {
            Ok(t) => {
                if let Err(e) = t.validate() {
                    prop_assert!(matches!(e.code, ErrorCode::InvalidParams | ErrorCode::DeadlineUnmet), "{e:?}");
                }
            }
            Err(e) => prop_assert_eq!(e.code, ErrorCode::InvalidParams),
        }
    }

    #[test]
    fn the_openai_door_maps_arbitrary_json_to_a_task_or_a_400(v in any_json(), chat in any::<bool>()) {
        let r = if chat {
            request::chat(v, Priority::Interactive, |_, _| 64)
        } else {
            request::completion(v, Priority::Interactive)
        };
        match r {
            Ok((t, _)) => {
                // what the door builds is itself a task the core accepts or refuses typed
                if let Err(e) = t.validate() {
                    prop_assert!(matches!(e.code, ErrorCode::InvalidParams | ErrorCode::DeadlineUnmet), "{e:?}");
                }
            }
            Err(e) => prop_assert_eq!(e.status.as_u16(), 400, "{:?}", e),
        }
    }
}
