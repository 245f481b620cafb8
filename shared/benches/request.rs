//! CPU of one real token-exchange request, against its floor, in the same run.
//!
//! The request is what the exchange Lambda does for an API Gateway event: parse the event JSON,
//! parse the form, verify the subject token against the issuer's JWKS (fetched once over HTTP
//! from loopback and cached, as in production), evaluate the policy (catalog warm), sign the
//! broker JWT, record the lease transaction, write the JSON log line (the production subscriber,
//! into a sink), build the response. AWS is the real SDK (KMS and DynamoDB clients: request
//! building, SigV4, response parsing) with its HTTP layer answering canned responses at once.
//!
//! Subject tokens: a GitHub-Actions-like RS256 token (about 1 kB, 30 claims) and an ES256 one.
//! Signing modes: `kms` (SDK Sign call) and `envelope` (in-process ES256 with the decrypted key).
//!
//! The request runs as the Lambda runtime runs it: the event JSON read into the HTTP API event,
//! `http::gateway::handle_event`, the response written back as JSON.
//!
//! The floor is the unavoidable part of the same request: the subject token's signature verified
//! with aws-lc (the issuer's key parsed once, as the broker keeps it), the broker token signed
//! (the same SDK Sign call, same message, in kms mode; aws-lc in envelope mode), the audit
//! event's chain signature (aws-lc, ES256 over a 64-byte hash) and
//! the very TransactWriteItems the request sent (its items captured by an interceptor, sent again
//! through the same SDK client), without any of the broker's logic. The bench prints full / floor
//! per case and exits 1 above 1.3x. For information it also prints the full request against the
//! floor plus the plumbing every Lambda HTTP function has (event JSON, a log line, response JSON).
//!
//! Run: `cargo bench -p nhi-broker --bench request` (release profile).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use aws_smithy_runtime_api::client::http::{HttpConnector, HttpConnectorFuture, SharedHttpConnector, http_client_fn};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_types::body::SdkBody;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpResponse;
use nhi_broker::domain::{
    EnvelopeKey, Grant, GrantStatus, Issuer, JwksSource, KeyRing, SigningKey, SigningKeyState, SubjectMatch, Target,
    TargetKind,
};
use nhi_broker::exchange::jwks::{HttpIssuerKeys, JwksSettings};
use nhi_broker::exchange::policy::catalog::PolicyCatalog;
use nhi_broker::exchange::{ExchangeService, ExchangeSettings};
use nhi_broker::http::BrokerApi;
use nhi_broker::http::gateway_event::{HttpApiEvent, HttpApiResponse};
use nhi_broker::ports::KeyRingStore;
use nhi_broker::testing::{FixedClock, InMemoryPolicy, InMemorySecrets, RecordingRoleAssumer};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts this thread's allocations: a figure that, unlike CPU time, does not move with the
/// machine's load, so a change's effect on the request's allocations reads exactly.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

fn count_allocation(bytes: usize) {
    // `try_with`: an allocation during the thread's teardown is not counted rather than a panic.
    let _ = ALLOCATIONS.try_with(|a| {
        let (count, total) = a.get();
        a.set((count + 1, total + bytes as u64));
    });
}

// SAFETY: every call is passed to the system allocator unchanged; counting allocates nothing.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation(layout.size());
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation(layout.size());
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count_allocation(new_size);
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// This thread's allocations (and their bytes) while `work` runs.
async fn allocations_of(work: impl std::future::Future<Output = ()>) -> (u64, u64) {
    let (count, bytes) = ALLOCATIONS.with(|a| a.get());
    work.await;
    let (count_after, bytes_after) = ALLOCATIONS.with(|a| a.get());
    (count_after - count, bytes_after - bytes)
}

const REQUESTS: usize = 2000;
const ROUNDS: usize = 5;
const LIMIT: f64 = 1.3;
const AUDIENCE: &str = "nhi-broker";
const TARGET: &str = "https://deploy.example.com";
const SUBJECT: &str = "repo:octo-org/octo-repo:environment:prod";
const KMS_KEY: &str = "0f6c2f7e-3c55-4b6b-9d59-0a3c1f1a2b3c";
const ENVELOPE_KID: &str = "env-0193b7c2a1d07b8e9f0a1b2c3d4e5f60";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The canned AWS: every call answered at once with what the service would send.
#[derive(Debug, Clone)]
struct CannedAws {
    /// A DER ECDSA signature, as KMS Sign returns.
    signature_der: Arc<Vec<u8>>,
    /// The envelope key's PKCS#8, as KMS Decrypt returns it.
    envelope_pkcs8: Arc<Vec<u8>>,
}

impl HttpConnector for CannedAws {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let target = request.headers().get("x-amz-target").unwrap_or_default();
        let body = match target {
            "TrentService.Sign" => serde_json::json!({
                "KeyId": format!("arn:aws:kms:us-east-1:123456789012:key/{KMS_KEY}"),
                "Signature": STANDARD.encode(self.signature_der.as_slice()),
                "SigningAlgorithm": "ECDSA_SHA_256",
            })
            .to_string(),
            "TrentService.Decrypt" => serde_json::json!({
                "KeyId": "arn:aws:kms:us-east-1:123456789012:key/secrets",
                "Plaintext": STANDARD.encode(self.envelope_pkcs8.as_slice()),
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            })
            .to_string(),
            "DynamoDB_20120810.TransactWriteItems" => "{}".to_string(),
            other => panic!("the bench's warm path makes no {other} call"),
        };
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-requestid", "bench")
            .body(SdkBody::from(body))
            .unwrap();
        HttpConnectorFuture::ready(Ok(HttpResponse::try_from(response).unwrap()))
    }
}

async fn canned_sdk(aws: CannedAws) -> aws_config::SdkConfig {
    let connector = SharedHttpConnector::new(aws);
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client_fn(move |_, _| connector.clone()))
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "AKIDBENCHBENCHBENCH",
            "bench/secret/key/bench/secret/key/bench0",
            Some("session-token".into()),
            None,
            "bench",
        ))
        .load()
        .await
}

/// Keeps the first TransactWriteItems and Sign inputs the exchange built, for the floor to resend
/// (once: afterwards it costs neither path anything).
#[derive(Debug, Clone, Default)]
struct Captured {
    done: Arc<std::sync::atomic::AtomicBool>,
    transaction: Arc<std::sync::Mutex<Option<Vec<aws_sdk_dynamodb::types::TransactWriteItem>>>>,
    sign_message: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for Captured {
    fn name(&self) -> &'static str {
        "bench-capture"
    }

    fn read_before_serialization(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
        use aws_sdk_kms::operation::sign::SignInput;
        if self.done.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        if let Some(input) = context.input().downcast_ref::<TransactWriteItemsInput>() {
            *self.transaction.lock().unwrap() = input.transact_items.clone();
        }
        if let Some(input) = context.input().downcast_ref::<SignInput>() {
            *self.sign_message.lock().unwrap() = input.message.as_ref().map(|m| m.as_ref().to_vec());
        }
        Ok(())
    }
}

/// The signing-key ring as the exchange caches it (read from DynamoDB once a minute on AWS).
struct FixedRing(KeyRing);

#[async_trait::async_trait]
impl KeyRingStore for FixedRing {
    async fn load(&self) -> nhi_broker::Result<Option<KeyRing>> {
        Ok(Some(self.0.clone()))
    }
    async fn save(&self, _: &KeyRing, _: Option<i64>, _: &nhi_broker::domain::AuditEvent) -> nhi_broker::Result<bool> {
        Ok(false)
    }
}

/// An identity provider's key: RS256 (GitHub) or ES256.
enum IdpKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl IdpKey {
    fn alg(&self) -> &'static str {
        match self {
            IdpKey::Rsa(_) => "RS256",
            IdpKey::Ec(_) => "ES256",
        }
    }

    fn jwk(&self) -> serde_json::Value {
        match self {
            IdpKey::Rsa(pair) => {
                let public = pair.public_key();
                let n = public.modulus().big_endian_without_leading_zero().to_vec();
                let e = public.exponent().big_endian_without_leading_zero().to_vec();
                serde_json::json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "idp-rsa",
                    "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e)})
            }
            IdpKey::Ec(pair) => {
                let point = pair.public_key().as_ref();
                serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "idp-ec",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
            }
        }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            IdpKey::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, input, &mut sig).unwrap();
                sig
            }
            IdpKey::Ec(pair) => pair.sign(&rng, input).unwrap().as_ref().to_vec(),
        }
    }

    /// The issuer's public key as the floor verifies with it: parsed once, as the broker keeps
    /// it (`exchange::key_set`).
    fn verification_key(&self) -> signature::ParsedPublicKey {
        match self {
            IdpKey::Rsa(pair) => {
                let public = pair.public_key();
                signature::RsaPublicKeyComponents {
                    n: public.modulus().big_endian_without_leading_zero(),
                    e: public.exponent().big_endian_without_leading_zero(),
                }
                .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
                .unwrap()
            }
            IdpKey::Ec(pair) => {
                signature::ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, pair.public_key()).unwrap()
            }
        }
    }

    fn kid(&self) -> &'static str {
        match self {
            IdpKey::Rsa(_) => "idp-rsa",
            IdpKey::Ec(_) => "idp-ec",
        }
    }

    fn mint(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"typ": "JWT", "alg": self.alg(), "kid": self.kid(), "x5t": "bench"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// A GitHub Actions OIDC token's claims (the shape GitHub documents).
fn github_claims(issuer: &str, now: i64) -> serde_json::Value {
    serde_json::json!({
        "jti": uuid::Uuid::new_v4().to_string(),
        "sub": SUBJECT,
        "environment": "prod",
        "aud": AUDIENCE,
        "ref": "refs/heads/main",
        "sha": "d6f4a9c2b8e1f3a5c7d9e0b2a4c6e8f0a1b3c5d7",
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "repository_owner_id": "1234567",
        "run_id": "9876543210",
        "run_number": "1842",
        "run_attempt": "1",
        "repository_visibility": "private",
        "repository_id": "76543210",
        "actor_id": "2345678",
        "actor": "octocat",
        "workflow": "deploy",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_protected": "true",
        "ref_type": "branch",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
        "workflow_sha": "d6f4a9c2b8e1f3a5c7d9e0b2a4c6e8f0a1b3c5d7",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_sha": "d6f4a9c2b8e1f3a5c7d9e0b2a4c6e8f0a1b3c5d7",
        "runner_environment": "github-hosted",
        "iss": issuer,
        "nbf": now - 5,
        "exp": now + 300,
        "iat": now - 5,
    })
}

/// Serves one JWKS on loopback (HTTP), the way an identity provider serves it over HTTPS.
async fn serve_jwks(jwks: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/.well-known/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let jwks = jwks.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

struct Case {
    name: String,
    api: BrokerApi,
    event: String,
    /// The floor's verification key.
    idp_key: signature::ParsedPublicKey,
    token: String,
    envelope: Option<Arc<EcdsaKeyPair>>,
    kms: aws_sdk_kms::Client,
    dynamo: aws_sdk_dynamodb::Client,
    captured: Captured,
    /// The floor's stand-in for the audit chain's key.
    audit_key: EcdsaKeyPair,
}

async fn case(idp: Arc<IdpKey>, envelope_mode: bool, aws: CannedAws, envelope_pair: Arc<EcdsaKeyPair>) -> Case {
    let now = now();
    let issuer_url = "https://token.actions.githubusercontent.com";
    let jwks_url = serve_jwks(serde_json::json!({ "keys": [idp.jwk()] }).to_string()).await;
    let issuer = Issuer {
        issuer: issuer_url.into(),
        name: "github".into(),
        audiences: vec![AUDIENCE.into()],
        jwks: JwksSource::Url { url: jwks_url },
        algorithms: vec![idp.alg().into()],
        enabled: true,
        one_time_jti: false,
        pattern_prefix_segments: 2,
    };
    let grant = Grant {
        id: "octo-repo-deploys".into(),
        issuers: vec![issuer_url.into()],
        subject: SubjectMatch::Exact(SUBJECT.into()),
        claims: serde_json::from_value(
            serde_json::json!({"repository_owner": ["octo-org"], "ref_protected": ["true"]}),
        )
        .unwrap(),
        condition: None,
        environment: "prod".into(),
        targets: vec![TARGET.into()],
        scopes: vec!["deploy".into()],
        max_ttl_seconds: 900,
        session_policy: None,
        approval_expires_at: now + 86_400,
        owner: "platform".into(),
        justification: "bench".into(),
        status: GrantStatus::Active,
        created_at: now - 100,
        delivers_to: None,
    };
    let target = Target {
        id: TARGET.into(),
        kind: TargetKind::Jwt,
        environment: "prod".into(),
        owner: "platform".into(),
        enabled: true,
    };
    let sdk = canned_sdk(aws).await;
    let captured = Captured::default();
    let calls = nhi_broker::aws::call_counter::CallCounter::default();
    let clients = nhi_broker::wiring::ExchangeClients {
        dynamo: aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk)
                .interceptor(calls.clone())
                .interceptor(captured.clone())
                .build(),
        ),
        kms: aws_sdk_kms::Client::from_conf(
            aws_sdk_kms::config::Builder::from(&sdk)
                .interceptor(calls.clone())
                .interceptor(captured.clone())
                .build(),
        ),
        sts: aws_sdk_sts::Client::new(&sdk),
        calls,
    };
    let mut ring = KeyRing::bootstrap(KMS_KEY, now - 1000);
    let envelope_spki = nhi_broker::crypto::p256_point_to_spki(envelope_pair.public_key().as_ref()).unwrap();
    ring.keys.push(SigningKey {
        key_id: ENVELOPE_KID.into(),
        state: SigningKeyState::Active,
        created_at: now - 1000,
        activate_at: None,
        activated_at: Some(now - 500),
        publish_until: None,
        envelope: Some(EnvelopeKey {
            public_key: STANDARD.encode(envelope_spki),
            private_key_ciphertext: STANDARD.encode(b"ciphertext as stored"),
        }),
    });
    let mut signer = nhi_broker::aws::kms::KmsSigner::with_ring(
        clients.kms.clone(),
        KMS_KEY,
        Arc::new(FixedRing(ring)),
        Duration::from_secs(600),
    );
    if envelope_mode {
        signer = signer.with_envelope_keys(nhi_broker::aws::envelope::EnvelopeKeys::new(
            clients.kms.clone(),
            "secrets",
        ));
    }
    let service = ExchangeService {
        policy: Arc::new(PolicyCatalog::new(
            Arc::new(InMemoryPolicy::with(vec![issuer], vec![grant], vec![target])),
            Duration::from_secs(600),
        )),
        ledger: Arc::new(
            nhi_broker::aws::dynamo::DynamoLedger::new(clients.dynamo.clone(), "leases", "audit", "revocations")
                .with_registry_guard("registry"),
        ),
        secrets: Arc::new(InMemorySecrets::default()),
        decryptor: Arc::new(nhi_broker::aws::kms::KmsSecretCipher::new(
            clients.kms.clone(),
            "secrets",
        )),
        signer: Arc::new(signer),
        roles: Arc::new(RecordingRoleAssumer::default()),
        issuer_keys: Arc::new(HttpIssuerKeys::new(JwksSettings::default()).unwrap()),
        clock: Arc::new(FixedClock::at(now)),
        settings: ExchangeSettings {
            broker_issuer: "https://broker.example.com".into(),
            max_token_ttl_seconds: 3600,
            clock_leeway_seconds: 30,
        },
    };
    let api = BrokerApi::with_call_counter(service, clients.calls.clone());
    let token = idp.mint(&github_claims(issuer_url, now));
    let form = serde_urlencoded::to_string([
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("subject_token", token.as_str()),
        ("audience", TARGET),
        ("scope", "deploy"),
    ])
    .unwrap();
    let mut event: serde_json::Value =
        serde_json::from_str(include_str!("../../events/exchange-token-request.json")).unwrap();
    event["body"] = STANDARD.encode(form).into();
    Case {
        name: format!(
            "{} subject token ({} B), {} signing",
            idp.alg(),
            token.len(),
            if envelope_mode { "envelope" } else { "kms" }
        ),
        api,
        event: event.to_string(),
        idp_key: idp.verification_key(),
        token,
        envelope: envelope_mode.then_some(envelope_pair),
        kms: clients.kms,
        dynamo: clients.dynamo,
        captured,
        audit_key: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap(),
    }
}

/// One full request as the Lambda runtime runs it: the API Gateway event's JSON read, the
/// response built and written back as JSON.
async fn full(case: &Case) {
    std::hint::black_box(serde_json::to_vec(&response_of(case).await).unwrap());
}

async fn response_of(case: &Case) -> HttpApiResponse {
    let event: HttpApiEvent = serde_json::from_str(&case.event).unwrap();
    let response = nhi_broker::http::gateway::handle_event(&case.api, event).await;
    assert_eq!(response.status_code(), 200, "{}", response.json());
    response
}

/// Informational, not the pass mark: the floor plus what any Lambda HTTP function does with the
/// same event whatever its logic (the event's JSON read and converted to a request, one JSON log
/// line through the production subscriber, a response of the same size written back as JSON).
async fn floor_with_plumbing(
    case: &Case,
    sign_message: &[u8],
    transaction: &[aws_sdk_dynamodb::types::TransactWriteItem],
    response: &ApiGatewayV2httpResponse,
) {
    let event: HttpApiEvent = serde_json::from_str(&case.event).unwrap();
    let request = nhi_broker::http::gateway::to_request(event).unwrap();
    std::hint::black_box(&request);
    floor(case, sign_message, transaction).await;
    tracing::info!(
        method = request.method().as_str(),
        path = request.uri().path(),
        request_id = "0193b7c2-a1d0-7b8e-9f0a-1b2c3d4e5f60",
        status = 200u16,
        latency_ms = 0u64,
        aws_calls = 2u64,
        "request"
    );
    std::hint::black_box(serde_json::to_vec(&response.clone()).unwrap());
}

/// The floor: verify, sign, sign the audit record, and the same transaction through the same SDK
/// client, no logic.
async fn floor(case: &Case, sign_message: &[u8], transaction: &[aws_sdk_dynamodb::types::TransactWriteItem]) {
    // aws-lc with the parsed key, nothing else.
    let (input, sig) = case.token.rsplit_once('.').unwrap();
    case.idp_key
        .verify_sig(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
        .unwrap();
    // Every release's audit event is signed by its chain's key (ES256 over the 64-hex-digit link
    // hash, audit::ChainState::next_link): crypto the request cannot do without.
    std::hint::black_box(case.audit_key.sign(&SystemRandom::new(), &[b'a'; 64]).unwrap());
    match &case.envelope {
        Some(pair) => {
            pair.sign(&SystemRandom::new(), sign_message).unwrap();
        }
        None => {
            case.kms
                .sign()
                .key_id(KMS_KEY)
                .message(aws_sdk_kms::primitives::Blob::new(sign_message.to_vec()))
                .message_type(aws_sdk_kms::types::MessageType::Raw)
                .signing_algorithm(aws_sdk_kms::types::SigningAlgorithmSpec::EcdsaSha256)
                .send()
                .await
                .unwrap();
        }
    }
    case.dynamo
        .transact_write_items()
        .set_transact_items(Some(transaction.to_vec()))
        .client_request_token(uuid::Uuid::new_v4().to_string())
        .send()
        .await
        .unwrap();
}

fn p50(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

fn main() {
    // The production log subscriber (JSON, one line per release), writing into a sink.
    nhi_broker::telemetry::init_with_writer(std::io::sink);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rng = SystemRandom::new();
    let envelope_pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let envelope_pair = Arc::new(
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, envelope_pkcs8.as_ref()).unwrap(),
    );
    let kms_key = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let kms_key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, kms_key.as_ref()).unwrap();
    let aws = CannedAws {
        signature_der: Arc::new(kms_key.sign(&rng, b"x").unwrap().as_ref().to_vec()),
        envelope_pkcs8: Arc::new(envelope_pkcs8.as_ref().to_vec()),
    };
    let rsa = Arc::new(IdpKey::Rsa(
        RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
    ));
    let ec = Arc::new(IdpKey::Ec(
        EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .unwrap()
                .as_ref(),
        )
        .unwrap(),
    ));
    // Crypto alone, to check the release profile keeps aws-lc fast (its assembly needs opt-level
    // 3): one ES256 verify of a ~790 B token and one ES256 sign of a ~715 B broker JWT.
    {
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .unwrap()
                .as_ref(),
        )
        .unwrap();
        let token_input = [b'a'; 700];
        let token_signature = pair.sign(&rng, &token_input).unwrap();
        let verifier =
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref().to_vec());
        let mut crypto_us = Vec::new();
        for _ in 0..REQUESTS {
            let started = Instant::now();
            verifier.verify(&token_input, token_signature.as_ref()).unwrap();
            std::hint::black_box(pair.sign(&rng, &[b'b'; 650]).unwrap());
            crypto_us.push(started.elapsed().as_secs_f64() * 1e6);
        }
        println!("aws-lc ES256 verify + sign: p50 {:.1} µs", p50(&mut crypto_us));
    }
    let mut failed = false;
    runtime.block_on(async {
        let mut cases = Vec::new();
        for idp in [rsa, ec] {
            for envelope in [false, true] {
                cases.push(case(idp.clone(), envelope, aws.clone(), envelope_pair.clone()).await);
            }
        }
        // For `perf`: NHI_BENCH_PROFILE=full:N, floor:N or both:N runs only that path of case N
        // (or both in turn), 20,000 times (or `full:N:COUNT` times), and measures nothing.
        let profile = std::env::var("NHI_BENCH_PROFILE").ok();
        for (index, case) in cases.iter().enumerate() {
            // Cold: the JWKS fetch, the policy load, the envelope key's decrypt. Not measured.
            full(case).await;
            case.api.calls.reset();
            full(case).await;
            let calls = case.api.calls.by_operation();
            case.captured.done.store(true, std::sync::atomic::Ordering::Relaxed);
            let transaction = case.captured.transaction.lock().unwrap().clone().unwrap();
            // Envelope mode signs in-process: the same signing input length as a KMS request's.
            let sign_message = case.captured.sign_message.lock().unwrap().clone().unwrap_or_else(|| vec![b'x'; 700]);
            if let Some(profile) = &profile {
                let mut parts = profile.split(':');
                let (path, wanted) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
                let count = parts.next().map_or(10 * REQUESTS, |c| c.parse().expect("a request count"));
                if wanted.parse::<usize>().expect("NHI_BENCH_PROFILE=full:N, floor:N or both:N") == index {
                    for _ in 0..count {
                        match path {
                            "full" => full(case).await,
                            // Both in turn, as the measurement runs them: one profile compares
                            // them under the same cache and machine conditions.
                            "both" => {
                                full(case).await;
                                floor(case, &sign_message, &transaction).await;
                            }
                            _ => floor(case, &sign_message, &transaction).await,
                        }
                    }
                }
                continue;
            }
            // What any Lambda HTTP function writes back: `aws_lambda_events`' response type.
            let reference_response: ApiGatewayV2httpResponse =
                serde_json::from_str(response_of(case).await.json()).unwrap();
            let full_allocations = allocations_of(full(case)).await;
            let floor_allocations = allocations_of(floor(case, &sign_message, &transaction)).await;
            let mut full_us = Vec::new();
            let mut floor_us = Vec::new();
            let mut plumbing_us = Vec::new();
            // Each round's own ratio too: on a shared machine their spread is the noise to read the
            // overall ratio against.
            let mut round_ratios = Vec::new();
            for _ in 0..ROUNDS {
                let (mut round_full, mut round_floor) = (Vec::new(), Vec::new());
                for _ in 0..REQUESTS {
                    let started = Instant::now();
                    full(case).await;
                    round_full.push(started.elapsed().as_secs_f64() * 1e6);
                    let started = Instant::now();
                    floor(case, &sign_message, &transaction).await;
                    round_floor.push(started.elapsed().as_secs_f64() * 1e6);
                    let started = Instant::now();
                    floor_with_plumbing(case, &sign_message, &transaction, &reference_response).await;
                    plumbing_us.push(started.elapsed().as_secs_f64() * 1e6);
                }
                full_us.extend_from_slice(&round_full);
                floor_us.extend_from_slice(&round_floor);
                round_ratios.push(format!("{:.2}", p50(&mut round_full) / p50(&mut round_floor)));
            }
            let (full_p50, floor_p50) = (p50(&mut full_us), p50(&mut floor_us));
            let ratio = full_p50 / floor_p50;
            println!(
                "{}: full request p50 {full_p50:.1} µs, floor p50 {floor_p50:.1} µs, {ratio:.2}x, {:.1} µs over it (rounds {}); AWS calls per warm request {:?}",
                case.name,
                full_p50 - floor_p50,
                round_ratios.join(" "),
                calls
            );
            let plumbing_p50 = p50(&mut plumbing_us);
            println!(
                "  informational: floor + Lambda HTTP plumbing (event JSON, one log line, response JSON) p50 {plumbing_p50:.1} µs; full = {:.2}x of it",
                full_p50 / plumbing_p50
            );
            println!(
                "  allocations per request (memory allocated, kB): full {} ({:.1}), floor {} ({:.1}), {} over it",
                full_allocations.0,
                full_allocations.1 as f64 / 1e3,
                floor_allocations.0,
                floor_allocations.1 as f64 / 1e3,
                full_allocations.0 as i64 - floor_allocations.0 as i64
            );
            if ratio > LIMIT {
                failed = true;
            }
        }
    });
    if failed {
        eprintln!("a full request costs more than {LIMIT}x its floor");
        std::process::exit(1);
    }
}
