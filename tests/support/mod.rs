//! Test harness: the real exchange API wired to moto (through `AWS_ENDPOINT_URL`, as provisioned
//! by `make test` from template.yaml), a demo issuer whose JWKS is served over loopback HTTP, and
//! a log capture that lets tests prove no secret reaches a log line.

pub mod fanout;
pub mod faults;
pub mod rotation;

use aws_sdk_dynamodb::types::AttributeValue;
use jsonwebtoken::jwk::JwkSet;
use lambda_http::{Body, Request};
use nhi_broker::aws::dynamo::{DynamoRegistry, Item};
use nhi_broker::config::Config;
use nhi_broker::domain::{Grant, GrantStatus, Issuer, JwksSource, Target, TargetKind};
use nhi_broker::http::BrokerApi;
use nhi_broker::testing::demo_issuer::DemoIssuer;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const AUDIENCE: &str = "nhi-broker";

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Config from the environment `make test` exports; a clear failure when run outside it.
pub fn config() -> Config {
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        panic!("integration tests need the moto stack: run `make test` (it starts moto and exports the environment)");
    }
    Config::from_env().expect("environment written by infra/local/provision.py")
}

pub struct Harness {
    pub config: Config,
    pub api: BrokerApi,
    pub dynamo: aws_sdk_dynamodb::Client,
    pub registry: DynamoRegistry,
    pub issuer: Arc<DemoIssuer>,
    /// Unique per harness so tests sharing the tables never see each other's records.
    pub id: String,
    pub subject: String,
    pub target: String,
    pub staging_target: String,
    pub grant_id: String,
    _stop_issuer: watch::Sender<bool>,
}

impl Harness {
    /// A registered issuer (JWKS over loopback HTTP), a prod target, a staging target, and a prod
    /// grant for `subject` listing both targets.
    pub async fn new() -> Self {
        let config = config();
        let sdk = nhi_broker::aws::sdk_config().await;
        let api = nhi_broker::wiring::broker_api(&config, &sdk).expect("api");
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
        let registry = DynamoRegistry::new(dynamo.clone(), &config.registry_table);

        let listener = nhi_local::bind_loopback(0).await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let issuer_url = format!("http://127.0.0.1:{port}");
        let issuer = Arc::new(DemoIssuer::generate(&issuer_url).unwrap());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(nhi_local::serve_demo_issuer(issuer.clone(), listener, stopped));

        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let h = Self {
            subject: format!("repo:org/app-{id}:ref:refs/heads/main"),
            target: format!("https://api-{id}.prod.test"),
            staging_target: format!("https://api-{id}.staging.test"),
            grant_id: format!("grant-{id}"),
            config,
            api,
            dynamo,
            registry,
            issuer,
            id,
            _stop_issuer: stop,
        };
        h.registry.put_issuer(&h.issuer_record()).await.unwrap();
        for (target, env) in [(&h.target, "prod"), (&h.staging_target, "staging")] {
            h.registry
                .put_target(&Target {
                    id: target.clone(),
                    kind: TargetKind::Jwt,
                    environment: env.into(),
                    owner: "team".into(),
                    enabled: true,
                })
                .await
                .unwrap();
        }
        let grant = h.grant(&h.grant_id, &h.subject, now() + 86_400);
        h.registry.put_grant(&grant).await.unwrap();
        h
    }

    /// Serve the exchange API from `config` instead (e.g. another signing-key ring).
    pub async fn use_config(&mut self, config: Config) {
        let sdk = nhi_broker::aws::sdk_config().await;
        self.api = nhi_broker::wiring::broker_api(&config, &sdk).expect("api");
        self.config = config;
    }

    /// Caches kept for a minute, as a warm function keeps them between requests: tests counting a
    /// warm request's AWS calls must not see a refresh because a loaded machine took 5 s between two
    /// requests (the policy catalog's default lifetime).
    pub async fn keep_caches_warm(&mut self) {
        let mut config = self.config.clone();
        config.policy_cache = std::time::Duration::from_secs(60);
        config.signing_keys_cache = std::time::Duration::from_secs(60);
        self.use_config(config).await;
    }

    /// The ledger as operators (brokerctl) and fanout use it: revocations, fences, lease reads.
    pub fn ledger(&self) -> nhi_broker::aws::dynamo::DynamoLedger {
        nhi_broker::aws::dynamo::DynamoLedger::new(
            self.dynamo.clone(),
            &self.config.leases_table,
            &self.config.audit_table,
            &self.config.revocations_table,
        )
        .with_registry_guard(&self.config.registry_table)
    }

    /// An operator's revocation, as brokerctl records it (record and audit event in one write).
    pub async fn revoke(
        &self,
        kind: nhi_broker::domain::RevocationTarget,
        id: &str,
        reason: &str,
        at: i64,
    ) -> nhi_broker::domain::Revocation {
        use nhi_broker::domain::{AuditAction, AuditEvent, AuditOutcome, Revocation};
        let revocation = Revocation {
            revocation_id: uuid::Uuid::now_v7().to_string(),
            target_kind: kind,
            target_id: id.into(),
            actor: "operator:alice".into(),
            reason: reason.into(),
            at,
        };
        let event = AuditEvent {
            actor_subject: Some("operator:alice".into()),
            target: Some(format!("{}:{id}", kind.as_str())),
            reason: Some(reason.into()),
            ..AuditEvent::new(AuditAction::Revoke, AuditOutcome::Revoked, at)
        };
        self.ledger().record_revocation(&revocation, &event).await.unwrap();
        revocation
    }

    /// The registration of this harness' issuer (JWKS served over loopback HTTP).
    pub fn issuer_record(&self) -> Issuer {
        Issuer {
            issuer: self.issuer.issuer.clone(),
            name: "test-issuer".into(),
            audiences: vec![AUDIENCE.into()],
            jwks: JwksSource::Url {
                url: format!("{}/jwks.json", self.issuer.issuer),
            },
            algorithms: vec!["ES256".into(), "RS256".into()],
            enabled: true,
            one_time_jti: false,
            pattern_prefix_segments: 1,
        }
    }

    pub fn grant(&self, id: &str, subject: &str, approval_expires_at: i64) -> Grant {
        Grant {
            id: id.into(),
            issuers: vec![self.issuer.issuer.clone()],
            subject: nhi_broker::domain::SubjectMatch::Exact(subject.into()),
            claims: Default::default(),
            condition: None,
            environment: "prod".into(),
            targets: vec![self.target.clone(), self.staging_target.clone()],
            scopes: vec!["read".into(), "deploy".into()],
            max_ttl_seconds: 600,
            session_policy: None,
            approval_expires_at,
            owner: "team".into(),
            justification: "tests".into(),
            status: GrantStatus::Active,
            created_at: now(),
            delivers_to: None,
        }
    }

    /// A registered AWS role target `arn:aws:iam::123456789012:role/nhi-broker/<name>-<id>` (prod).
    pub async fn aws_role(&self, name: &str) -> String {
        let arn = format!("arn:aws:iam::123456789012:role/nhi-broker/{name}-{}", self.id);
        self.registry
            .put_target(&Target {
                id: arn.clone(),
                kind: TargetKind::AwsRole,
                environment: "prod".into(),
                owner: "team".into(),
                enabled: true,
            })
            .await
            .unwrap();
        arn
    }

    /// A workload token for a separate subject holding a grant on the introspection endpoint.
    pub async fn introspection_caller(&self) -> String {
        let caller = format!("repo:org/gateway-{}:ref:refs/heads/main", self.id);
        let mut grant = self.grant(&format!("introspect-{}", self.id), &caller, now() + 3600);
        grant.targets = vec![nhi_broker::domain::INTROSPECTION_TARGET.into()];
        self.registry.put_grant(&grant).await.unwrap();
        let mut claims = self.claims();
        claims["sub"] = caller.into();
        self.token(&claims)
    }

    pub fn claims(&self) -> serde_json::Value {
        self.issuer.workload_claims(&self.subject, AUDIENCE, now(), 300)
    }

    pub fn token(&self, claims: &serde_json::Value) -> String {
        self.issuer.mint(claims).unwrap().expose().to_string()
    }

    pub fn form(&self, subject_token: &str, target: &str) -> Vec<(String, String)> {
        vec![
            ("grant_type".into(), GRANT_TYPE.into()),
            ("subject_token_type".into(), JWT_TYPE.into()),
            ("subject_token".into(), subject_token.into()),
            ("audience".into(), target.into()),
        ]
    }

    /// POST /token through the same handler the Lambda runs.
    pub async fn post_token(&self, form: &[(String, String)]) -> (u16, serde_json::Value) {
        let body = serde_urlencoded::to_string(form).unwrap();
        self.call(post_form("/token", body)).await
    }

    pub async fn call(&self, request: Request) -> (u16, serde_json::Value) {
        let response = self.api.handle(request).await;
        let status = response.status().as_u16();
        let body = match response.body() {
            Body::Text(t) => serde_json::from_str(t).unwrap_or(serde_json::Value::Null),
            _ => serde_json::Value::Null,
        };
        (status, body)
    }

    pub async fn broker_jwks(&self) -> JwkSet {
        let request = http::Request::builder()
            .method("GET")
            .uri("/.well-known/jwks.json")
            .body(Body::Empty)
            .unwrap();
        let (status, body) = self.call(request).await;
        assert_eq!(status, 200);
        serde_json::from_value(body).unwrap()
    }

    /// Every lease for this harness' targets or subject (a scan: tests only).
    pub async fn leases(&self) -> Vec<Item> {
        self.scan(
            &self.config.leases_table,
            "target = :t OR target = :s OR subject = :sub",
            &[
                (":t", &self.target),
                (":s", &self.staging_target),
                (":sub", &self.subject),
            ],
        )
        .await
    }

    pub async fn audit_events(&self) -> Vec<Item> {
        self.scan(
            &self.config.audit_table,
            "target = :t OR target = :s OR actor_subject = :sub",
            &[
                (":t", &self.target),
                (":s", &self.staging_target),
                (":sub", &self.subject),
            ],
        )
        .await
    }

    pub async fn scan(&self, table: &str, filter: &str, values: &[(&str, &str)]) -> Vec<Item> {
        let mut request = self.dynamo.scan().table_name(table).filter_expression(filter);
        for (k, v) in values {
            request = request.expression_attribute_values(*k, AttributeValue::S(v.to_string()));
        }
        let mut items = Vec::new();
        let mut pages = request.into_paginator().items().send();
        while let Some(item) = pages.next().await {
            items.push(item.expect("scan"));
        }
        items
    }
}

pub fn post_form(path: &str, body: String) -> Request {
    http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::Text(body))
        .unwrap()
}

/// A form POST, optionally with the caller's workload token as Bearer (introspection).
pub fn form_request(path: &str, pairs: &[(&str, &str)], bearer: Option<&str>) -> Request {
    let mut request = post_form(path, serde_urlencoded::to_string(pairs).unwrap());
    if let Some(token) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

pub fn attr<'a>(item: &'a Item, name: &str) -> &'a str {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .unwrap_or_default()
}

/// Every log line the test process writes, at TRACE for all targets (the AWS SDK and HTTP clients
/// included). Installed once as the global default: per-thread subscribers miss events when
/// parallel tests race on tracing's callsite interest cache.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn global() -> LogCapture {
        static CAPTURE: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let capture = LogCapture::default();
                let sink = capture.clone();
                let subscriber = tracing_subscriber::fmt()
                    .json()
                    .with_max_level(tracing::Level::TRACE)
                    .with_writer(move || sink.clone())
                    .finish();
                tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber in tests");
                capture
            })
            .clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Proof the capture works for this test: its subject token's fingerprint was logged.
    pub fn assert_saw_subject_token(&self, token: &str) {
        let field = format!(
            "\"subject_token\":\"{}\"",
            nhi_broker::redact::fingerprint(token.as_bytes())
        );
        assert!(
            self.text().contains(&field),
            "the capture saw this test's requests, by fingerprint"
        );
    }

    /// Fail if any secret, or its signature segment alone, appears in the captured logs, as it
    /// is or in one of the encodings the SDK and KMS carry bytes in (base64 at any offset, hex in
    /// either case).
    pub fn assert_free_of(&self, secrets: &[String]) {
        let logs = self.text();
        if let Some(leak) = leak_in(&logs, secrets) {
            panic!("{leak}");
        }
    }

    /// Fail if the fingerprint of any of these values was logged. Tokens are logged by
    /// fingerprint; a secret value must not be: 64 bits of its unsalted SHA-256 would let anyone
    /// who reads the logs test guesses of a weak secret offline.
    ///
    /// Any form counts: the leading 64 bits of the digest in hex (which a `sha256:` fingerprint
    /// and a full hex digest both contain, in either case) or the digest in base64.
    pub fn assert_no_fingerprint_of(&self, values: &[String]) {
        let logs = self.text();
        let lowercase_logs = logs.to_ascii_lowercase();
        for value in values {
            let digest = nhi_broker::crypto::sha256(value.as_bytes());
            assert!(
                !lowercase_logs.contains(&hex(&digest)[..16]),
                "a secret value's digest reached the logs (hex)"
            );
            assert!(
                !base64_forms(&digest).iter().any(|form| logs.contains(form.as_str())),
                "a secret value's digest reached the logs (base64)"
            );
        }
    }
}

/// What `assert_free_of` finds of `secrets` in `logs`: a description naming the secret by its
/// fingerprint only, or `None`.
fn leak_in(logs: &str, secrets: &[String]) -> Option<String> {
    let lowercase_logs = logs.to_ascii_lowercase();
    for secret in secrets.iter().filter(|s| s.len() >= 16) {
        let named = nhi_broker::redact::fingerprint(secret.as_bytes());
        if logs.contains(secret.as_str()) {
            return Some(format!("a secret reached the logs: {named}"));
        }
        if base64_forms(secret.as_bytes())
            .iter()
            .any(|form| logs.contains(form.as_str()))
        {
            return Some(format!("a secret reached the logs in base64: {named}"));
        }
        if lowercase_logs.contains(&hex(secret.as_bytes())) {
            return Some(format!("a secret reached the logs in hex: {named}"));
        }
        if let Some(signature) = secret.rsplit('.').next().filter(|s| s.len() >= 16)
            && logs.contains(signature)
        {
            return Some(format!("a token signature reached the logs: {named}"));
        }
    }
    None
}

/// The text base64 (standard and URL-safe) makes of `bytes` wherever they sit in what is
/// encoded: the bytes start a 3-byte group, or 1 or 2 bytes into one (as a secret inside a JSON
/// document that is then encoded does). For each offset, only the characters that depend on
/// `bytes` alone: the first characters, which mix in what comes before, and the last partial
/// group, which mixes in what comes after (or padding), are left out.
fn base64_forms(bytes: &[u8]) -> Vec<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut forms = Vec::new();
    // Characters that carry bits of the 0, 1 or 2 bytes before.
    for (offset, mixed) in [(0, 0), (1, 2), (2, 3)] {
        let mut shifted = vec![0u8; offset];
        shifted.extend_from_slice(bytes);
        shifted.truncate(shifted.len() / 3 * 3);
        for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
            let text = engine.encode(&shifted);
            if text.len() > mixed {
                forms.push(text[mixed..].to_string());
            }
        }
    }
    forms
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Assert exactly these AWS operations (and counts) since the counter was last reset, and print them.
pub fn assert_aws_calls(h: &Harness, what: &str, expected: &[(&str, u64)]) {
    let calls = h.api.calls.by_operation();
    println!("AWS calls per {what}: {} {calls:?}", h.api.calls.total());
    let expected: std::collections::BTreeMap<String, u64> = expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(calls, expected, "{what}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    const SECRET: &str = "s3cr3t-value-0123456789-abcdef";

    #[test]
    fn a_secret_is_found_in_base64_wherever_it_sits_in_what_was_encoded() {
        for prefix in ["", "{", "{\"", "{\"v\":\"", "{\"value\":\""] {
            let document = format!("{prefix}{SECRET}\"}}");
            for encoded in [STANDARD.encode(&document), URL_SAFE_NO_PAD.encode(&document)] {
                let line = format!(r#"{{"message":"sent","body":"{encoded}"}}"#);
                assert!(
                    leak_in(&line, &[SECRET.to_string()]).is_some(),
                    "missed with {} bytes before it: {line}",
                    prefix.len()
                );
            }
        }
    }

    #[test]
    fn a_secret_is_found_as_it_is_and_in_hex_of_either_case() {
        let hex_lower = hex(SECRET.as_bytes());
        for line in [
            format!("token={SECRET}"),
            format!("bytes={hex_lower}"),
            format!("bytes={}", hex_lower.to_ascii_uppercase()),
        ] {
            assert!(leak_in(&line, &[SECRET.to_string()]).is_some(), "{line}");
        }
    }

    #[test]
    fn logs_without_the_secret_pass_and_a_finding_names_it_by_fingerprint_only() {
        let other = "another-value-9876543210-zyxwvu";
        let line = format!(
            "{} {} {}",
            STANDARD.encode(format!("{{\"v\":\"{other}\"}}")),
            hex(other.as_bytes()),
            nhi_broker::redact::fingerprint(SECRET.as_bytes())
        );
        assert_eq!(leak_in(&line, &[SECRET.to_string()]), None);
        let finding = leak_in(&STANDARD.encode(format!("x{SECRET}")), &[SECRET.to_string()]).unwrap();
        assert!(!finding.contains(SECRET), "{finding}");
    }
}
