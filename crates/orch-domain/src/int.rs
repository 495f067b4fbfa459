//! Integer fields as JSON Schema counts them: `1.0` is the integer 1 (a number with a
//! zero fractional part is an `integer` in JSON Schema 2020-12), so a body valid by the
//! published schema is not refused because a client's JSON writer printed `1.0`.
//! Fractions and out-of-range values are still refused with serde's own message.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

struct Int<T>(std::marker::PhantomData<T>);

impl<T: TryFrom<i128>> Visitor<'_> for Int<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "an integer in the range of {}",
            std::any::type_name::<T>()
        )
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(i128::from(v)).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(i128::from(v)).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // integral and inside i64's range (the widest field here), then the type's own
        let whole = v.fract() == 0.0 && v.abs() < 9.223_372_036_854_775e18;
        whole
            .then(|| T::try_from(v as i128).ok())
            .flatten()
            .ok_or_else(|| E::invalid_value(de::Unexpected::Float(v), &self))
    }
}

fn int<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(Int(std::marker::PhantomData))
}

pub(crate) fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    int(d)
}

struct OptInt<T>(std::marker::PhantomData<T>);

impl<'de, T: TryFrom<i128>> Visitor<'de> for OptInt<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "null or an integer")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        int(d).map(Some)
    }
}

fn opt<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<Option<T>, D::Error> {
    d.deserialize_option(OptInt(std::marker::PhantomData))
}

pub(crate) fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    opt(d)
}

pub(crate) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    opt(d)
}

pub(crate) fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    opt(d)
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    struct T {
        #[serde(deserialize_with = "super::u32")]
        n: u32,
        #[serde(default, deserialize_with = "super::opt_i64")]
        s: Option<i64>,
    }

    fn parse(j: &str) -> Result<T, String> {
        serde_json::from_str(j).map_err(|e| e.to_string())
    }

    #[test]
    fn integral_numbers_are_integers_and_fractions_are_not() {
        assert_eq!(parse(r#"{"n": 1.0}"#).map(|t| t.n), Ok(1));
        assert_eq!(parse(r#"{"n": 7}"#).map(|t| t.n), Ok(7));
        assert_eq!(parse(r#"{"n": 1, "s": -2.0}"#).map(|t| t.s), Ok(Some(-2)));
        assert_eq!(parse(r#"{"n": 1, "s": null}"#).map(|t| t.s), Ok(None));
        assert_eq!(parse(r#"{"n": 1}"#).map(|t| t.s), Ok(None));
        assert!(parse(r#"{"n": 1.5}"#).is_err());
        assert!(parse(r#"{"n": -1}"#).is_err());
        assert!(parse(r#"{"n": 4294967296}"#).is_err());
        assert!(parse(r#"{"n": 1e300}"#).is_err());
        assert!(parse(r#"{"n": "1"}"#).is_err());
    }
}
