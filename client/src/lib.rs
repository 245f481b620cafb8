//! `nhi`: the client side of nhi-broker, as a library others can embed and the `nhi` binary.
//!
//! A workload proves who it is with the OIDC token its platform gives it ([`identity`]), exchanges
//! it at the broker for a short-lived credential ([`broker`]) and hands that credential to what
//! needs it: stdout, a file written atomically with mode 0600 ([`files`]), an AWS
//! `credential_process` answer ([`output`]), a child process's environment ([`exec`]), or files a
//! sidecar keeps fresh ([`agent`]). Destinations verify the Security Event Tokens the broker pushes
//! with [`set`] and act on them with [`events`].
//!
//! Credentials are held in [`Secret`] from the moment they arrive: never in `Debug`, errors or
//! logs, zeroed when dropped. The only place a credential is written is the output the user asked
//! for.

pub mod agent;
pub mod broker;
pub mod error;
pub mod events;
pub mod exec;
pub mod files;
pub mod identity;
pub mod output;
pub mod set;

pub use broker::{Broker, ExchangeRequest, Issued, TokenType};
pub use error::{Error, Result};
pub use identity::IdentitySource;

use std::fmt;
use zeroize::Zeroizing;

/// A credential: printed nowhere, zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value itself, for the one place it is meant to go.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A URL a credential may be sent to: https anywhere, plain http only to loopback (local stacks).
pub fn is_allowed_url(raw: &str) -> bool {
    let Ok(parsed) = url::Url::parse(raw) else {
        return false;
    };
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match parsed.scheme() {
        "https" => parsed.host_str().is_some_and(|h| !h.is_empty()),
        "http" => loopback,
        _ => false,
    }
}

/// Uniform-ish random fraction in [0, 1) for jitter (not for anything secret).
pub(crate) fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_debug_output() {
        let secret = Secret::new("hunter2-very-secret".into());
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn credentials_go_over_https_or_to_loopback_only() {
        assert!(is_allowed_url("https://broker.example.com"));
        assert!(is_allowed_url("http://127.0.0.1:8787"));
        assert!(is_allowed_url("http://localhost:8787/x"));
        assert!(!is_allowed_url("http://broker.example.com"));
        assert!(!is_allowed_url("file:///etc/passwd"));
        assert!(!is_allowed_url("broker.example.com"));
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let f = jitter_fraction();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
