//! Property-based fuzzing of the config parser: the bundled examples, mutated line by
//! line (lines dropped, duplicated, values replaced by arbitrary ones, junk inserted),
//! and arbitrary text, always parse to a config or a typed error; a config that parses
//! has its problems listed, never a panic.

use orchestratord::Config;
use proptest::prelude::*;

const EXAMPLES: [&str; 3] = [
    include_str!("../../../examples/quickstart.toml"),
    include_str!("../../../examples/tenants.toml"),
    include_str!("../../../examples/mock.toml"),
];

#[derive(Debug, Clone)]
enum Edit {
    Drop(usize),
    Duplicate(usize),
    Value(usize, String),
    Insert(usize, String),
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("\"\"".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        "\"\\PC{0,16}\"",
        "\\PC{0,16}",
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Drop),
        any::<usize>().prop_map(Edit::Duplicate),
        (any::<usize>(), value()).prop_map(|(i, v)| Edit::Value(i, v)),
        (
            any::<usize>(),
            prop_oneof![
                Just("[server]".to_string()),
                Just("[[pools]]".to_string()),
                Just("[pools.mock]".to_string()),
                Just("[tenants.x]".to_string()),
                "[a-z_]{1,12} = \\PC{0,12}",
                "\\PC{0,24}",
            ]
        )
            .prop_map(|(i, l)| Edit::Insert(i, l)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::Drop(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Edit::Duplicate(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Edit::Value(i, v) if !lines.is_empty() => {
                let l = &mut lines[i % n];
                if let Some((k, _)) = l.split_once('=') {
                    *l = format!("{k}= {v}");
                }
            }
            Edit::Insert(i, l) => lines.insert(i % (lines.len() + 1), l.clone()),
            _ => {}
        }
    }
    lines.join("\n")
}

fn check(text: &str) {
    let checked = Config::parse(text);
    match Config::parse_unchecked(text) {
        Ok(cfg) => {
            let problems = cfg.problems();
            for p in &problems {
                assert!(p.contains(": "), "a problem names its place: {p}");
            }
            // the checked parse refuses exactly the files with problems
            assert_eq!(checked.is_ok(), problems.is_empty(), "{problems:?}");
        }
        Err(_) => assert!(checked.is_err()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn mutated_example_configs_parse_or_fail_typed(which in 0..EXAMPLES.len(), edits in prop::collection::vec(edit(), 1..6)) {
        check(&apply(EXAMPLES[which], &edits));
    }

    #[test]
    fn arbitrary_text_parses_or_fails_typed(text in "\\PC{0,200}") {
        check(&text);
    }
}
