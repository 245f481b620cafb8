//! Which URLs the broker may call (JWKS, rotation hooks, webhooks) and accept as issuers.

/// HTTPS with a host, or plain HTTP to loopback (local runs and tests).
pub fn is_allowed_url(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match parsed.scheme() {
        "https" => parsed.host_str().is_some(),
        "http" => loopback,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn https_anywhere_http_only_to_loopback() {
        assert!(super::is_allowed_url("https://token.actions.githubusercontent.com"));
        assert!(super::is_allowed_url("http://127.0.0.1:8080/jwks"));
        assert!(super::is_allowed_url("http://[::1]:8080/jwks"));
        assert!(!super::is_allowed_url("http://example.com/jwks"));
        assert!(!super::is_allowed_url("ftp://127.0.0.1/x"));
        assert!(!super::is_allowed_url("not a url"));
    }
}
