//! Anchored globs for subjects and claim values.
//!
//! Syntax: every character stands for itself except `*`, which matches any run (possibly empty)
//! of characters other than the segment separators `/` and `:`, and `**`, which matches any run
//! at all. There is no escape, no `?`, no character class. A pattern matches the whole text.
//!
//! Matching simulates the pattern as a set of positions (no backtracking): time is bounded by
//! text length x pattern length whatever the input, so an attacker-chosen `sub` cannot make
//! matching slow.

/// Characters that end a segment: `*` never matches across them.
pub const SEPARATORS: &[u8] = b"/:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `*`: any run within one segment.
    Star,
    /// `**`: any run.
    AnyStar,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
    /// Bytes before the first wildcard: every match starts with them.
    literal_prefix_len: usize,
    source: String,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        let bytes = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'*' {
                // Any number of consecutive stars beyond two means the same as two.
                let run = bytes[i..].iter().take_while(|b| **b == b'*').count();
                tokens.push(if run >= 2 { Token::AnyStar } else { Token::Star });
                i += run;
            } else {
                tokens.push(Token::Byte(bytes[i]));
                i += 1;
            }
        }
        let literal_prefix_len = tokens.iter().take_while(|t| matches!(t, Token::Byte(_))).count();
        Self {
            tokens,
            literal_prefix_len,
            source: pattern.to_string(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The literal text every match starts with.
    pub fn literal_prefix(&self) -> &str {
        // Wildcards are ASCII, so the prefix ends on a character boundary.
        &self.source[..self.literal_prefix_len]
    }

    pub fn has_wildcard(&self) -> bool {
        self.literal_prefix_len < self.tokens.len()
    }

    /// Whole segments (text ended by a separator) in the literal prefix.
    pub fn literal_segments(&self) -> usize {
        self.literal_prefix().bytes().filter(|b| SEPARATORS.contains(b)).count()
    }

    pub fn matches(&self, text: &str) -> bool {
        let text = text.as_bytes();
        let prefix = &self.tokens[..self.literal_prefix_len];
        if text.len() < prefix.len() || !prefix.iter().zip(text).all(|(t, b)| *t == Token::Byte(*b)) {
            return false;
        }
        let tokens = &self.tokens[self.literal_prefix_len..];
        let text = &text[self.literal_prefix_len..];
        // active[i]: the pattern has consumed tokens[..i] for the text read so far.
        let mut active = vec![false; tokens.len() + 1];
        let mut next = vec![false; tokens.len() + 1];
        active[0] = true;
        close(tokens, &mut active);
        for &byte in text {
            next.iter_mut().for_each(|n| *n = false);
            let mut any = false;
            for (i, token) in tokens.iter().enumerate() {
                if !active[i] {
                    continue;
                }
                match *token {
                    Token::Byte(b) if b == byte => next[i + 1] = true,
                    Token::Byte(_) => continue,
                    Token::Star if SEPARATORS.contains(&byte) => continue,
                    Token::Star | Token::AnyStar => next[i] = true,
                }
                any = true;
            }
            if !any {
                return false;
            }
            close(tokens, &mut next);
            std::mem::swap(&mut active, &mut next);
        }
        active[tokens.len()]
    }
}

/// A wildcard may match nothing: where one is active, so is the position after it.
fn close(tokens: &[Token], active: &mut [bool]) {
    for i in 0..tokens.len() {
        if active[i] && !matches!(tokens[i], Token::Byte(_)) {
            active[i + 1] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn star_stays_within_a_segment_and_double_star_crosses() {
        let g = Glob::new("repo:example-org/*:ref:refs/heads/main");
        assert!(g.matches("repo:example-org/app:ref:refs/heads/main"));
        assert!(!g.matches("repo:example-org/app:ref:refs/heads/main2"));
        assert!(!g.matches("repo:example-org/a/b:ref:refs/heads/main"));
        assert!(!g.matches("repo:example-org-evil/app:ref:refs/heads/main"));
        let k = Glob::new("system:serviceaccount:payments-*:deployer");
        assert!(k.matches("system:serviceaccount:payments-eu:deployer"));
        assert!(k.matches("system:serviceaccount:payments-:deployer"));
        assert!(!k.matches("system:serviceaccount:payments-eu:x:deployer"));
        let any = Glob::new("repo:example-org/app:**");
        assert!(any.matches("repo:example-org/app:ref:refs/heads/feature/x"));
        assert!(any.matches("repo:example-org/app:"));
        assert!(!any.matches("repo:example-org/app"));
        assert_eq!(any.literal_prefix(), "repo:example-org/app:");
        assert_eq!(any.literal_segments(), 3);
    }

    #[test]
    fn pathological_patterns_stay_linear() {
        let g = Glob::new(&format!("a{}b", "*a".repeat(200)));
        let text = "a".repeat(1024);
        let started = std::time::Instant::now();
        assert!(!g.matches(&text));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    proptest! {
        /// Without wildcards a pattern is an exact match.
        #[test]
        fn without_wildcards_a_pattern_is_an_exact_match(p in "[a-z:/.-]{0,12}", t in "[a-z:/.-]{0,12}") {
            let g = Glob::new(&p);
            prop_assert!(!g.has_wildcard());
            prop_assert_eq!(g.matches(&t), p == t);
            prop_assert!(g.matches(&p));
        }

        /// Whatever follows, nothing matches that does not start with the literal prefix.
        #[test]
        fn a_match_never_crosses_the_literal_prefix(
            prefix in "[a-z:/-]{1,10}", rest in "[a-z*:/-]{0,10}", text in "[a-z:/-]{0,24}"
        ) {
            let g = Glob::new(&format!("{prefix}*{rest}"));
            if g.matches(&text) {
                prop_assert!(text.starts_with(g.literal_prefix()));
                prop_assert!(text.starts_with(&prefix));
            }
        }

        /// `*` never matches a separator; `**` may.
        #[test]
        fn single_star_never_spans_a_separator(seg in "[a-z]{0,6}", sep in "[:/]", tail in "[a-z]{0,6}") {
            let text = format!("x{seg}{sep}{tail}y");
            prop_assert!(!Glob::new("x*y").matches(&text));
            prop_assert!(Glob::new("x**y").matches(&text));
        }
    }
}
