//! A token's claims, kept as the token's own JSON and read in place.
//!
//! One pass over the payload checks that it is a JSON object and records where each claim's name
//! and value sit; a value is parsed only when something reads it. A GitHub Actions token carries
//! about thirty claims and a request reads fewer than ten, so parsing them all into a map (a
//! string per name and per value) was most of the cost of reading a token's claims.
//!
//! Reads answer exactly what a `serde_json::Map` of the same payload would: a name given twice
//! means its last value (serde_json's rule, and RFC 7519 4's "lexically last"), names written with
//! escapes are found by their decoded text. One difference, on the safe side: a value serde_json
//! cannot hold (a number beyond `f64`) no longer makes the whole payload unreadable; that claim
//! reads as unreadable instead (`get` is `None` though `contains` is true), which every reader
//! treats as a refusal.

use serde::Deserialize;
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// The claims of one token (see the module doc).
#[derive(Clone, Default)]
pub struct ClaimSet {
    payload: String,
    claims: Vec<Claim>,
}

#[derive(Clone)]
struct Claim {
    name: Name,
    /// The value's JSON text in the payload.
    value: Range<usize>,
}

#[derive(Clone)]
enum Name {
    /// Where the name sits in the payload (it has no escapes).
    At(Range<usize>),
    /// A name written with escapes, decoded.
    Decoded(Box<str>),
}

impl ClaimSet {
    /// The claims of a JSON object (`None` for anything else, or trailing text).
    pub fn parse(payload: String) -> Option<Self> {
        let claims = {
            let mut reader = serde_json::Deserializer::from_str(&payload);
            let claims = reader.deserialize_map(ClaimsVisitor { payload: &payload }).ok()?;
            reader.end().ok()?;
            claims
        };
        Some(Self { payload, claims })
    }

    /// The claims of a JSON object value (tests and tools that hold claims as JSON).
    pub fn from_json(claims: &Value) -> Option<Self> {
        claims.is_object().then(|| Self::parse(claims.to_string())).flatten()
    }

    /// The JSON text of a claim's value, as the token has it (the last one of that name).
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.claims
            .iter()
            .rev()
            .find(|claim| self.name_of(claim) == name)
            .map(|claim| &self.payload[claim.value.clone()])
    }

    pub fn contains(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }

    /// A claim's value, parsed now: `None` when absent, or present but beyond what JSON values
    /// hold here (see the module doc).
    pub fn get(&self, name: &str) -> Option<Value> {
        serde_json::from_str(self.raw(name)?).ok()
    }

    /// A string claim's text: what `get(name)` would hold as `Value::String`, borrowed from the
    /// token unless it was written with escapes.
    pub fn get_str(&self, name: &str) -> Option<Cow<'_, str>> {
        let raw = self.raw(name)?;
        let text = raw.strip_prefix('"')?.strip_suffix('"')?;
        if text.bytes().any(|b| b == b'\\' || b < 0x20) {
            return serde_json::from_str::<String>(raw).ok().map(Cow::Owned);
        }
        Some(Cow::Borrowed(text))
    }

    /// Every claim as a JSON map (for conditions, which see them all): `None` when some value is
    /// unreadable.
    pub fn to_map(&self) -> Option<Map<String, Value>> {
        serde_json::from_str(&self.payload).ok()
    }

    fn name_of<'a>(&'a self, claim: &'a Claim) -> &'a str {
        match &claim.name {
            Name::At(range) => &self.payload[range.clone()],
            Name::Decoded(name) => name,
        }
    }
}

impl fmt::Debug for ClaimSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.claims
                    .iter()
                    .map(|claim| (self.name_of(claim), &self.payload[claim.value.clone()])),
            )
            .finish()
    }
}

/// Reads the top-level object, recording positions in `payload` (the text being read).
struct ClaimsVisitor<'p> {
    payload: &'p str,
}

impl<'de> Visitor<'de> for ClaimsVisitor<'de> {
    type Value = Vec<Claim>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Claim>, A::Error> {
        // Reading from a `&str`, serde_json lends names without escapes and raw values as slices
        // of it; a slice from anywhere else would be a bug, refused rather than mis-indexed.
        let base = self.payload.as_ptr() as usize;
        let span = |text: &str| -> Result<Range<usize>, A::Error> {
            let start = (text.as_ptr() as usize)
                .checked_sub(base)
                .filter(|start| start + text.len() <= self.payload.len())
                .ok_or_else(|| serde::de::Error::custom("claim outside the payload"))?;
            Ok(start..start + text.len())
        };
        let mut claims = Vec::with_capacity(32);
        while let Some(name) = map.next_key::<NameText<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            let name = match name {
                NameText::Lent(text) => Name::At(span(text)?),
                NameText::Decoded(text) => Name::Decoded(text.into_boxed_str()),
            };
            claims.push(Claim {
                name,
                value: span(value.get())?,
            });
        }
        Ok(claims)
    }
}

/// A claim name as serde_json hands it over: lent from the payload, or decoded (escapes).
enum NameText<'de> {
    Lent(&'de str),
    Decoded(String),
}

impl<'de> Deserialize<'de> for NameText<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = NameText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(NameText::Lent(text))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(NameText::Decoded(text.to_owned()))
            }
            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(NameText::Decoded(text))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn set(text: &str) -> ClaimSet {
        ClaimSet::parse(text.to_string()).unwrap()
    }

    #[test]
    fn only_a_json_object_is_a_claim_set() {
        for refused in [
            "",
            "[]",
            "\"sub\"",
            "1",
            "null",
            "{",
            "{\"a\":1} x",
            "{\"a\":1}{}",
            "{\"a\":}",
            "{a:1}",
        ] {
            assert!(ClaimSet::parse(refused.into()).is_none(), "{refused:?}");
        }
        assert!(ClaimSet::parse(" {\"a\" : 1 } \n".into()).is_some());
        assert!(ClaimSet::parse("{}".into()).is_some_and(|c| c.to_map() == Some(Map::new())));
    }

    #[test]
    fn reads_answer_what_a_map_of_the_same_payload_holds() {
        let text = r#"{"sub":"repo:o/r","aud":["a","b"],"exp":1800000000,"fork":false,"n":null,
            "q":"say \"hi\"\n","ref\u005fname":"main","sub":"repo:o/last","obj":{"k":[1,2]},"f":1.5}"#;
        let claims = set(text);
        let map: Map<String, Value> = serde_json::from_str(text).unwrap();
        for (name, value) in &map {
            assert_eq!(claims.get(name).as_ref(), Some(value), "{name}");
            assert_eq!(claims.get_str(name).as_deref(), value.as_str(), "{name}");
            assert!(claims.contains(name));
        }
        // A name given twice means its last value; an escaped name is found by its text.
        assert_eq!(claims.get_str("sub").as_deref(), Some("repo:o/last"));
        assert_eq!(claims.get_str("ref_name").as_deref(), Some("main"));
        assert!(matches!(claims.get_str("ref_name"), Some(Cow::Borrowed(_))));
        assert!(matches!(claims.get_str("q"), Some(Cow::Owned(s)) if s == "say \"hi\"\n"));
        assert_eq!(claims.get_str("exp"), None, "a number is not a string claim");
        assert_eq!(claims.raw("obj"), Some(r#"{"k":[1,2]}"#));
        assert!(!claims.contains("missing") && claims.get("missing").is_none());
        assert_eq!(claims.to_map(), Some(map));
        assert_eq!(
            ClaimSet::from_json(&json!({"a": "b"})).unwrap().get_str("a").as_deref(),
            Some("b")
        );
        assert!(ClaimSet::from_json(&json!(["a"])).is_none());
    }

    #[test]
    fn a_value_beyond_json_values_is_unreadable_not_absent() {
        let claims = set(r#"{"exp":1e400,"sub":"s"}"#);
        assert!(claims.contains("exp"));
        assert_eq!(claims.get("exp"), None);
        assert_eq!(claims.to_map(), None, "conditions see no claims rather than some");
        assert_eq!(claims.get_str("sub").as_deref(), Some("s"));
    }

    #[test]
    fn debug_shows_the_claims() {
        assert_eq!(
            format!("{:?}", set(r#"{"a":1,"b":"x"}"#)),
            r#"{"a": "1", "b": "\"x\""}"#
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[a-z\\\\\"/\\n\\t ]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..4)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_object_reads_as_its_map(
            entries in prop::collection::vec((prop_oneof![any::<String>(), "[a-z_\"\\\\]{1,6}"], json_value()), 0..12),
        ) {
            let text = Value::Object(entries.into_iter().collect()).to_string();
            // The reference is the map serde_json reads from the same text (a float's last digit
            // is the parser's, whichever reads it).
            let map: Map<String, Value> = serde_json::from_str(&text).unwrap();
            let claims = ClaimSet::parse(text).unwrap();
            for (name, value) in &map {
                prop_assert_eq!(claims.get(name), Some(value.clone()));
                prop_assert_eq!(claims.get_str(name).map(Cow::into_owned), value.as_str().map(str::to_string));
            }
            prop_assert_eq!(claims.to_map(), Some(map));
        }
    }
}
