//! The YAML the documents are written as, readable the same way by YAML 1.1 readers.

/// YAML 1.1 readers (PyYAML, and so schemathesis) take a bare `no`, `yes`, `on` or `off`
/// for a boolean where YAML 1.2 (our writer) means the string: quote such scalars so
/// every reader sees the string (`X-Accel-Buffering: no` was read as `false`).
pub(super) fn quote_yaml11_booleans(text: &str) -> String {
    const WORDS: [&str; 12] = [
        "no", "No", "NO", "yes", "Yes", "YES", "on", "On", "ON", "off", "Off", "OFF",
    ];
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        let quoted = ["- ", ": "].iter().find_map(|sep| {
            let (head, word) = line.rsplit_once(sep)?;
            WORDS
                .contains(&word)
                .then(|| format!("{head}{sep}'{word}'"))
        });
        out.push_str(quoted.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}
