//! Typed claim conditions. A claim of another shape than its condition expects (missing, an
//! array where a string is expected, a fraction where an integer is) never satisfies it.

use super::glob::Glob;
use crate::domain::ClaimCondition;
use crate::exchange::claim_set::ClaimSet;
use serde_json::Value;

/// A claim condition ready to evaluate (globs parsed once).
#[derive(Debug, Clone)]
pub enum CompiledCondition {
    OneOf(Vec<String>),
    Glob(Glob),
    Contains(String),
    Is(bool),
    Range { min: Option<i64>, max: Option<i64> },
}

impl From<&ClaimCondition> for CompiledCondition {
    fn from(condition: &ClaimCondition) -> Self {
        match condition {
            ClaimCondition::OneOf(values) => Self::OneOf(values.clone()),
            ClaimCondition::Glob(pattern) => Self::Glob(Glob::new(pattern)),
            ClaimCondition::Contains(value) => Self::Contains(value.clone()),
            ClaimCondition::Is(b) => Self::Is(*b),
            ClaimCondition::Range { min, max } => Self::Range { min: *min, max: *max },
        }
    }
}

impl CompiledCondition {
    /// `holds` for the claim `name` of a token: a string condition reads the claim in place.
    pub fn holds_in(&self, claims: &ClaimSet, name: &str) -> bool {
        match self {
            Self::OneOf(values) => claims
                .get_str(name)
                .is_some_and(|v| values.iter().any(|a| a == v.as_ref())),
            Self::Glob(glob) => claims.get_str(name).is_some_and(|v| glob.matches(&v)),
            _ => self.holds(claims.get(name).as_ref()),
        }
    }

    pub fn holds(&self, claim: Option<&Value>) -> bool {
        let Some(claim) = claim else { return false };
        match self {
            Self::OneOf(values) => claim.as_str().is_some_and(|v| values.iter().any(|a| a == v)),
            Self::Glob(glob) => claim.as_str().is_some_and(|v| glob.matches(v)),
            Self::Contains(value) => claim
                .as_array()
                .is_some_and(|items| items.iter().any(|i| i.as_str() == Some(value))),
            Self::Is(b) => claim.as_bool() == Some(*b),
            Self::Range { min, max } => {
                integer(claim).is_some_and(|v| min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m))
            }
        }
    }
}

/// A JSON integer, or a string of ASCII decimal digits with an optional leading `-` (GitHub's
/// numeric claims are strings); anything else (fractions, exponents, `+1`, spaces) is not one.
fn integer(claim: &Value) -> Option<i64> {
    match claim {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let digits = s.strip_prefix('-').unwrap_or(s);
            if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Whether the condition holds for this claim, asserting that reading it in place from a
    /// token's claims answers the same, and that a missing claim never satisfies it.
    fn holds(condition: ClaimCondition, claim: Value) -> bool {
        let compiled = CompiledCondition::from(&condition);
        let answer = compiled.holds(Some(&claim));
        let claims = ClaimSet::from_json(&json!({ "c": claim })).unwrap();
        assert_eq!(compiled.holds_in(&claims, "c"), answer, "{condition:?} of {claim}");
        assert!(!compiled.holds_in(&claims, "absent") && !compiled.holds(None));
        answer
    }

    #[test]
    fn each_condition_holds_only_for_its_shape() {
        let one_of = || ClaimCondition::OneOf(vec!["a".into(), "b".into()]);
        assert!(holds(one_of(), json!("b")));
        assert!(!holds(one_of(), json!("c")));
        assert!(!holds(one_of(), json!(["a"])));
        assert!(holds(
            ClaimCondition::Glob("refs/tags/v*".into()),
            json!("refs/tags/v1.2")
        ));
        assert!(!holds(
            ClaimCondition::Glob("refs/tags/v*".into()),
            json!("refs/tags/v1/x")
        ));
        assert!(holds(ClaimCondition::Contains("ops".into()), json!(["dev", "ops"])));
        assert!(!holds(ClaimCondition::Contains("ops".into()), json!("ops")));
        assert!(!holds(ClaimCondition::Contains("1".into()), json!([1])));
        assert!(holds(ClaimCondition::Is(true), json!(true)));
        assert!(!holds(ClaimCondition::Is(true), json!("true")));
        assert!(!holds(ClaimCondition::Is(false), json!(null)));
        let range = || ClaimCondition::Range {
            min: Some(1),
            max: Some(3),
        };
        assert!(holds(range(), json!(2)));
        assert!(holds(range(), json!("3")));
        assert!(!holds(range(), json!(4)));
        assert!(!holds(range(), json!(2.5)));
        assert!(!holds(range(), json!("+2")));
        assert!(!holds(range(), json!("2 ")));
        assert!(!holds(range(), json!(true)));
        assert!(!CompiledCondition::from(&range()).holds(None));
    }
}
