//! A prompt is read once and then shared: `Arc<str>` fields read from JSON with a
//! single copy out of the request body (serde's own `Arc<str>` reads a `String`
//! first and copies it again), and written as a plain JSON string.

use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;
use std::fmt;
use std::sync::Arc;

struct Shared;

impl Visitor<'_> for Shared {
    type Value = Arc<str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Arc<str>, E> {
        Ok(Arc::from(v))
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    d.deserialize_str(Shared)
}

pub fn serialize<S: Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    #[derive(serde::Deserialize, serde::Serialize)]
    struct T {
        #[serde(with = "super")]
        p: Arc<str>,
    }

    #[test]
    fn reads_plain_and_escaped_strings_and_writes_them_back() {
        let t: T = serde_json::from_str(r#"{"p":"a \"quoted\"\nline"}"#).unwrap();
        assert_eq!(&*t.p, "a \"quoted\"\nline");
        let t: T = serde_json::from_slice(br#"{"p":"plain"}"#).unwrap();
        assert_eq!(&*t.p, "plain");
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"p":"plain"}"#);
        assert!(serde_json::from_str::<T>(r#"{"p":3}"#).is_err());
    }
}
