//! Property tests over the parsers an attacker reaches first: the form bodies of `/token`,
//! `/introspect` and `/revoke`, and subject tokens (arbitrary segments, and validly signed tokens
//! with arbitrary claim values). Whatever the input, the handler answers (never panics; debug
//! builds check arithmetic overflow) and never releases anything for a malformed request.
//! A fixed budget per property keeps `make test` fast; proptest prints a minimal failing input.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nhi_broker::domain::{Grant, GrantStatus, Target, TargetKind};
use nhi_broker::testing::FakeBroker;
use proptest::prelude::*;
use serde_json::{Value, json};

const NOW: i64 = 1_795_514_400;
const ISSUER: &str = "https://idp.test";
const SUBJECT: &str = "repo:example-org/demo-app:ref:refs/heads/main";
const TARGET: &str = "https://api.demo.local";
const CASES: u32 = 256;

fn world() -> FakeBroker {
    FakeBroker::new(
        ISSUER,
        Grant {
            id: "fuzz".into(),
            issuers: vec![ISSUER.into()],
            subject: nhi_broker::domain::SubjectMatch::Exact(SUBJECT.into()),
            claims: Default::default(),
            condition: None,
            environment: "dev".into(),
            targets: vec![TARGET.into()],
            scopes: vec!["deploy".into()],
            max_ttl_seconds: 900,
            session_policy: None,
            approval_expires_at: NOW + 600,
            owner: "platform".into(),
            justification: "fuzz".into(),
            status: GrantStatus::Active,
            created_at: NOW - 100,
            delivers_to: None,
        },
        Target {
            id: TARGET.into(),
            kind: TargetKind::Jwt,
            environment: "dev".into(),
            owner: "platform".into(),
            enabled: true,
        },
        NOW,
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn post(path: &str, content_type: &str, body: Vec<u8>) -> lambda_http::Request {
    http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", content_type)
        .header("authorization", "Bearer x.y.z")
        .body(lambda_http::Body::Binary(body))
        .unwrap()
}

/// JSON values with the shapes that break naive claim handling: extreme numbers, floats, strings,
/// arrays, objects, booleans, null.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        prop_oneof![
            Just(1e19),
            Just(1e308),
            Just(-1e308),
            Just(9.3e18),
            Just(253_402_300_800.0)
        ]
        .prop_map(Value::from),
        (NOW - 1000..NOW + 1000).prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Form bodies built from the real parameter names (repeated, empty, odd values) or raw bytes.
fn form_body() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just("grant_type"),
        Just("subject_token"),
        Just("subject_token_type"),
        Just("audience"),
        Just("resource"),
        Just("scope"),
        Just("requested_token_type"),
        Just("requested_expires_in"),
        Just("actor_token"),
        Just("token"),
        Just("token_type_hint"),
    ];
    let value = prop_oneof![
        Just("urn:ietf:params:oauth:grant-type:token-exchange".to_string()),
        Just("urn:ietf:params:oauth:token-type:jwt".to_string()),
        Just("urn:nhi-broker:token-type:secret".to_string()),
        Just(TARGET.to_string()),
        Just("9223372036854775807".to_string()),
        Just("-1".to_string()),
        ".{0,64}",
    ];
    prop_oneof![
        prop::collection::vec((name, value), 0..10)
            .prop_map(|pairs| serde_urlencoded::to_string(pairs).unwrap().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..512),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_form_body_panics_or_releases_without_a_valid_token(
        path in prop_oneof![Just("/token"), Just("/introspect"), Just("/revoke")],
        content_type in prop_oneof![Just("application/x-www-form-urlencoded"), Just("application/json"), Just(""), Just("Application/X-WWW-Form-Urlencoded; charset=utf-8")],
        body in form_body(),
    ) {
        let broker = world();
        let status = runtime().block_on(broker.api.handle(post(path, content_type, body))).status().as_u16();
        prop_assert!(status == 200 || (400..600).contains(&status), "status {status}");
        prop_assert!(broker.ledger.leases.lock().unwrap().is_empty(), "nothing released");
    }

    #[test]
    fn no_subject_token_shape_panics(
        header in json_value(),
        payload in json_value(),
        signature in "[A-Za-z0-9_-]{0,90}",
        raw in ".{0,200}",
    ) {
        let broker = world();
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        for token in [format!("{}.{}.{signature}", enc(&header), enc(&payload)), raw.clone()] {
            let body = serde_urlencoded::to_string([
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("subject_token", token.as_str()),
                ("audience", TARGET),
            ]).unwrap();
            let response = runtime().block_on(broker.api.handle(post("/token", "application/x-www-form-urlencoded", body.into_bytes())));
            prop_assert_eq!(response.status().as_u16(), 400);
        }
        prop_assert!(broker.ledger.leases.lock().unwrap().is_empty());
    }

    #[test]
    fn validly_signed_tokens_with_arbitrary_claim_values_never_panic(
        exp in json_value(),
        nbf in json_value(),
        iat in json_value(),
        aud in prop_oneof![Just(json!("nhi-broker")), json_value()],
        sub in prop_oneof![Just(json!(SUBJECT)), json_value()],
        crit in prop::option::of(json_value()),
    ) {
        let broker = world();
        let claims = json!({"iss": ISSUER, "sub": sub, "aud": aud, "exp": exp, "nbf": nbf, "iat": iat});
        let mut header = json!({"alg": "ES256", "kid": broker.issuer.kid});
        if let Some(crit) = crit.filter(|c| !c.is_null()) {
            header["crit"] = crit;
        }
        let crit_present = header.get("crit").is_some();
        let token = broker.issuer.mint_with_raw_header(&header, &claims).unwrap();
        let body = serde_urlencoded::to_string([
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("subject_token", token.expose()),
            ("audience", TARGET),
        ]).unwrap();
        let status = runtime().block_on(broker.api.handle(post("/token", "application/x-www-form-urlencoded", body.into_bytes()))).status().as_u16();
        prop_assert!(status == 200 || status == 400, "status {status}");
        let released = broker.ledger.leases.lock().unwrap().len();
        prop_assert_eq!(released, usize::from(status == 200));
        if crit_present {
            prop_assert_eq!(status, 400, "a crit header is never accepted");
        }
    }
}
