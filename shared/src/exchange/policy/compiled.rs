//! Grants ready to evaluate, and the index that finds the pattern grants a subject can match
//! without looking at the others.

use super::claims::CompiledCondition;
use super::expression::Condition;
use super::glob::Glob;
use crate::domain::{Grant, SubjectMatch};
use std::collections::HashMap;
use std::sync::Arc;

/// A grant with its subject pattern, claim conditions and CEL condition compiled once.
#[derive(Debug)]
pub struct CompiledGrant {
    pub grant: Grant,
    pub(super) subject: SubjectMatcher,
    pub(super) claims: Vec<(String, CompiledCondition)>,
    /// A stored condition that no longer compiles (written by hand, or by another version) never
    /// holds: `Err` keeps the grant visible to explain, denied.
    pub(super) condition: Option<Result<Condition, String>>,
}

#[derive(Debug)]
pub(super) enum SubjectMatcher {
    Exact(String),
    Pattern(Glob),
}

impl CompiledGrant {
    pub fn new(grant: Grant) -> Self {
        let subject = match &grant.subject {
            SubjectMatch::Exact(s) => SubjectMatcher::Exact(s.clone()),
            SubjectMatch::Pattern(p) => SubjectMatcher::Pattern(Glob::new(p)),
        };
        let claims = grant
            .claims
            .iter()
            .map(|(name, condition)| (name.clone(), CompiledCondition::from(condition)))
            .collect();
        let condition = grant.condition.as_deref().map(Condition::compile);
        Self {
            grant,
            subject,
            claims,
            condition,
        }
    }

    pub fn subject_matches(&self, sub: &str) -> bool {
        match &self.subject {
            SubjectMatcher::Exact(s) => s == sub,
            SubjectMatcher::Pattern(g) => g.matches(sub),
        }
    }
}

/// An issuer's pattern grants, indexed by the literal prefix of their pattern: a subject is
/// matched only against patterns whose prefix it starts with (one hash lookup per distinct
/// prefix length), so the cost of a lookup does not grow with the number of grants.
#[derive(Debug, Default)]
pub struct PatternIndex {
    grants: Vec<Arc<CompiledGrant>>,
    by_prefix: HashMap<Box<[u8]>, Vec<usize>>,
    /// Distinct prefix lengths, ascending.
    prefix_lengths: Vec<usize>,
}

impl PatternIndex {
    pub fn new(grants: impl IntoIterator<Item = Grant>) -> Self {
        let mut index = Self::default();
        for grant in grants {
            let compiled = CompiledGrant::new(grant);
            let SubjectMatcher::Pattern(glob) = &compiled.subject else {
                continue;
            };
            let prefix: Box<[u8]> = glob.literal_prefix().as_bytes().into();
            index.by_prefix.entry(prefix).or_default().push(index.grants.len());
            index.grants.push(Arc::new(compiled));
        }
        let mut lengths: Vec<usize> = index.by_prefix.keys().map(|k| k.len()).collect();
        lengths.sort_unstable();
        lengths.dedup();
        index.prefix_lengths = lengths;
        index
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// The pattern grants whose pattern matches `sub`.
    pub fn matching<'a>(&'a self, sub: &'a str) -> impl Iterator<Item = &'a Arc<CompiledGrant>> + 'a {
        let bytes = sub.as_bytes();
        self.prefix_lengths
            .iter()
            .take_while(move |len| **len <= bytes.len())
            .filter_map(move |len| self.by_prefix.get(&bytes[..*len]))
            .flatten()
            .map(|i| &self.grants[*i])
            .filter(move |g| g.subject_matches(sub))
    }
}
