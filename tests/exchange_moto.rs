//! The exchange endpoint against moto: DynamoDB (registry, leases, audit) and KMS (ES256 signing)
//! are real API implementations; the subject-token issuer serves its JWKS over loopback HTTP.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use nhi_broker::testing::demo_issuer::DemoIssuer;
use nhi_tests::{AUDIENCE, Harness, LogCapture, attr, form_request, now, post_form};
use serde_json::json;

fn verify_broker_token(token: &str, jwks: &jsonwebtoken::jwk::JwkSet, h: &Harness) -> serde_json::Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let kid = header.kid.expect("kid");
    assert_eq!(kid, h.config.signing_key_id);
    let jwk = jwks.find(&kid).expect("signing key published in JWKS");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[&h.config.broker_issuer]);
    validation.set_audience(&[&h.target]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .expect("broker token verifies against the broker JWKS")
        .claims
}

#[tokio::test(flavor = "current_thread")]
async fn valid_exchange_releases_a_verifiable_token_with_one_lease_and_one_audit_event() {
    let logs = LogCapture::global();
    let h = Harness::new().await;
    let subject_token = h.token(&h.claims());
    let mut form = h.form(&subject_token, &h.target);
    form.push(("scope".into(), "deploy".into()));
    form.push(("requested_expires_in".into(), "120".into()));

    let (status, body) = h.post_token(&form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:jwt");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 120);
    assert_eq!(body["scope"], "deploy");
    let access_token = body["access_token"].as_str().unwrap().to_string();

    let claims = verify_broker_token(&access_token, &h.broker_jwks().await, &h);
    assert_eq!(claims["sub"], h.subject);
    assert_eq!(claims["aud"], h.target);
    assert_eq!(claims["scope"], "deploy");
    assert_eq!(claims["client_id"], h.grant_id);
    assert_eq!(claims["env"], "prod");
    assert_eq!(claims["act"]["iss"], h.issuer.issuer);
    assert_eq!(claims["act"]["sub"], h.subject);
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 120);
    let jti = claims["jti"].as_str().unwrap();

    let leases = h.leases().await;
    assert_eq!(leases.len(), 1, "exactly one lease");
    assert_eq!(attr(&leases[0], "lease_id"), jti);
    assert_eq!(attr(&leases[0], "status"), "active");
    assert_eq!(attr(&leases[0], "grant_id"), h.grant_id);
    let events = h.audit_events().await;
    assert_eq!(events.len(), 1, "exactly one audit event");
    assert_eq!(attr(&events[0], "outcome"), "released");
    assert_eq!(attr(&events[0], "lease_id"), jti);
    assert_eq!(
        attr(&events[0], "token_fingerprint"),
        nhi_broker::redact::fingerprint(subject_token.as_bytes())
    );
    assert_eq!(attr(&events[0], "hash").len(), 64);

    let mut secrets = vec![subject_token.clone(), access_token];
    secrets.extend(h.issuer.private_key_encodings());
    logs.assert_free_of(&secrets);
    logs.assert_saw_subject_token(&subject_token);
}

/// One request that must be refused with `error` and release nothing.
struct Case {
    name: &'static str,
    form: Vec<(String, String)>,
    content_type: &'static str,
    status: u16,
    error: &'static str,
    reason: Option<&'static str>,
}

fn case(name: &'static str, form: Vec<(String, String)>, error: &'static str, reason: &'static str) -> Case {
    Case {
        name,
        form,
        content_type: "application/x-www-form-urlencoded",
        status: 400,
        error,
        reason: Some(reason),
    }
}

fn unsigned(header: serde_json::Value, claims: &serde_json::Value) -> String {
    let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", enc(&header), enc(claims))
}

#[tokio::test(flavor = "current_thread")]
async fn every_invalid_or_unauthorized_request_is_refused_without_a_lease() {
    let logs = LogCapture::global();
    let h = Harness::new().await;
    let now = now();
    let base = h.claims();
    let with = |patch: serde_json::Value| {
        let mut claims = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };

    // A grant whose approval has lapsed, for its own subject.
    let lapsed_subject = format!("repo:org/lapsed-{}:ref:refs/heads/main", h.id);
    h.registry
        .put_grant(&h.grant(&format!("lapsed-{}", h.id), &lapsed_subject, now - 1))
        .await
        .unwrap();

    let mut hs256_header = Header::new(Algorithm::HS256);
    hs256_header.kid = Some(h.issuer.kid.clone());
    let hs256 = |secret: &[u8]| jsonwebtoken::encode(&hs256_header, &base, &EncodingKey::from_secret(secret)).unwrap();
    let mut unknown_kid = Header::new(Algorithm::ES256);
    unknown_kid.kid = Some("no-such-key".into());
    let impostor = DemoIssuer::generate(&h.issuer.issuer).unwrap();
    let mut same_kid = Header::new(Algorithm::ES256);
    same_kid.kid = Some(h.issuer.kid.clone());

    let tokens = vec![
        (
            "expired token",
            h.token(&with(json!({"exp": now - 120, "iat": now - 400, "nbf": now - 400}))),
            "token_expired",
        ),
        (
            "future nbf",
            h.token(&with(json!({"nbf": now + 600}))),
            "token_not_yet_valid",
        ),
        (
            "wrong iss",
            h.token(&with(json!({"iss": "https://not-registered.example"}))),
            "token_untrusted_issuer",
        ),
        (
            "wrong aud",
            h.token(&with(json!({"aud": "someone-else"}))),
            "token_wrong_audience",
        ),
        (
            "alg none",
            unsigned(json!({"alg": "none", "kid": h.issuer.kid}), &base),
            "token_alg_not_allowed",
        ),
        (
            "HS256 with the issuer's public key",
            hs256(&h.issuer.public_key_bytes()),
            "token_alg_not_allowed",
        ),
        (
            "HS256 with the issuer's JWKS",
            hs256(h.issuer.jwks_json().to_string().as_bytes()),
            "token_alg_not_allowed",
        ),
        (
            "unknown kid",
            h.issuer
                .mint_with_header(&unknown_kid, &base)
                .unwrap()
                .expose()
                .to_string(),
            "token_unknown_kid",
        ),
        (
            "bad signature",
            impostor
                .mint_with_header(&same_kid, &base)
                .unwrap()
                .expose()
                .to_string(),
            "token_bad_signature",
        ),
        ("not a JWT", "not-a-jwt".to_string(), "token_malformed"),
    ];
    let valid = h.token(&base);
    let mut secrets: Vec<String> = tokens.iter().map(|(_, t, _)| t.clone()).collect();
    secrets.push(valid.clone());

    let mut cases: Vec<Case> = tokens
        .iter()
        .map(|(name, token, reason)| case(name, h.form(token, &h.target), "invalid_request", reason))
        .collect();
    cases.push(case(
        "unknown target",
        h.form(&valid, "https://unregistered.example"),
        "invalid_target",
        "invalid_target",
    ));
    let other_subject = h.token(&with(json!({"sub": "repo:org/someone-else:ref:refs/heads/main"})));
    secrets.push(other_subject.clone());
    cases.push(case(
        "no grant",
        h.form(&other_subject, &h.target),
        "invalid_request",
        "policy_no_grant",
    ));
    cases.push(case(
        "grant for another environment",
        h.form(&valid, &h.staging_target),
        "invalid_request",
        "policy_environment_mismatch",
    ));
    let lapsed = h.token(&with(json!({"sub": lapsed_subject})));
    secrets.push(lapsed.clone());
    cases.push(case(
        "expired approval",
        h.form(&lapsed, &h.target),
        "invalid_request",
        "policy_approval_expired",
    ));
    let mut scoped = h.form(&valid, &h.target);
    scoped.push(("scope".into(), "admin".into()));
    cases.push(case(
        "scope not granted",
        scoped,
        "invalid_scope",
        "policy_scope_not_granted",
    ));
    let mut wrong_grant_type = h.form(&valid, &h.target);
    wrong_grant_type[0].1 = "client_credentials".into();
    cases.push(Case {
        reason: None,
        ..case("wrong grant_type", wrong_grant_type, "unsupported_grant_type", "")
    });
    cases.push(Case {
        reason: None,
        ..case(
            "malformed body",
            vec![("%%%".into(), "%%%".into())],
            "invalid_request",
            "",
        )
    });
    cases.push(Case {
        content_type: "application/json",
        reason: None,
        ..case("JSON body", h.form(&valid, &h.target), "invalid_request", "")
    });

    for c in &cases {
        let body = if c.name == "malformed body" {
            "{\"grant_type\": [1, 2".to_string()
        } else {
            serde_urlencoded::to_string(&c.form).unwrap()
        };
        let mut request = post_form("/token", body);
        request
            .headers_mut()
            .insert("content-type", c.content_type.parse().unwrap());
        let (status, body) = h.call(request).await;
        assert_eq!(status, c.status, "{}: {body}", c.name);
        assert_eq!(body["error"], c.error, "{}: {body}", c.name);
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(
            !description.is_empty(),
            "{}: error_description says which check failed",
            c.name
        );
        assert!(body.get("access_token").is_none(), "{}", c.name);
        assert!(h.leases().await.is_empty(), "{}: no lease may be written", c.name);
    }

    // Each policy or token denial is audited with its reason and the token's fingerprint only.
    let events = h.audit_events().await;
    assert!(events.iter().all(|e| attr(e, "outcome") == "denied"));
    for c in cases.iter().filter(|c| c.reason.is_some()) {
        let reason = c.reason.unwrap();
        let token = &c.form.iter().find(|(k, _)| k == "subject_token").unwrap().1;
        let fp = nhi_broker::redact::fingerprint(token.as_bytes());
        assert!(
            events
                .iter()
                .any(|e| attr(e, "reason") == reason && attr(e, "token_fingerprint") == fp),
            "{}: denial audited with reason {reason}",
            c.name
        );
    }

    logs.assert_free_of(&secrets);
    logs.assert_saw_subject_token(&valid);
}

#[tokio::test(flavor = "current_thread")]
async fn unknown_kid_refreshes_the_issuer_jwks_at_most_once_per_interval() {
    use std::sync::atomic::Ordering::SeqCst;
    let h = Harness::new().await;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rotated-key".into());
    let unknown_kid = |h: &Harness| {
        h.issuer
            .mint_with_header(&header, &h.claims())
            .unwrap()
            .expose()
            .to_string()
    };

    // Default interval (30 s): one fetch serves the valid token, and unknown kids right after are
    // refused without refetching.
    assert_eq!(h.post_token(&h.form(&h.token(&h.claims()), &h.target)).await.0, 200);
    assert_eq!(h.issuer.jwks_served.load(SeqCst), 1);
    for _ in 0..3 {
        let (status, body) = h.post_token(&h.form(&unknown_kid(&h), &h.target)).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    }
    assert_eq!(h.issuer.jwks_served.load(SeqCst), 1, "refreshes are rate-limited");

    // With no interval, an unknown kid makes exactly one refresh after the initial fetch, and a
    // known kid is then served from cache.
    let mut config = h.config.clone();
    config.jwks.min_refresh_interval = std::time::Duration::ZERO;
    let api = nhi_broker::wiring::broker_api(&config, &nhi_broker::aws::sdk_config().await).unwrap();
    let post = |form: Vec<(String, String)>| post_form("/token", serde_urlencoded::to_string(form).unwrap());
    assert_eq!(
        api.handle(post(h.form(&unknown_kid(&h), &h.target))).await.status(),
        400
    );
    assert_eq!(h.issuer.jwks_served.load(SeqCst), 3, "initial fetch plus one refresh");
    assert_eq!(
        api.handle(post(h.form(&h.token(&h.claims()), &h.target)))
            .await
            .status(),
        200
    );
    assert_eq!(h.issuer.jwks_served.load(SeqCst), 3, "known kid served from cache");
}

#[tokio::test(flavor = "current_thread")]
async fn local_server_serves_the_same_handler_over_loopback_http() {
    let h = Harness::new().await;
    let sdk = nhi_broker::aws::sdk_config().await;
    let api = std::sync::Arc::new(nhi_broker::wiring::broker_api(&h.config, &sdk).unwrap());
    let listener = nhi_local::bind_loopback(0).await.unwrap();
    let addr = listener.local_addr().unwrap();
    assert!(addr.ip().is_loopback());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(nhi_local::serve_broker(api, listener, stopped));

    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let subject_token = h.token(&h.claims());
    let response = client
        .post(format!("{base}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(h.form(&subject_token, &h.target)).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: serde_json::Value = response.json().await.unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet = client
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    verify_broker_token(body["access_token"].as_str().unwrap(), &jwks, &h);

    let oversized = "a".repeat(nhi_broker::http::MAX_BODY_BYTES + 10);
    let response = client
        .post(format!("{base}/token"))
        .body(oversized)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let response = client.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);

    stop.send(true).unwrap();
    server.await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn subject_token_aud_may_be_a_list_containing_the_broker() {
    let h = Harness::new().await;
    let mut claims = h.claims();
    claims["aud"] = json!(["other", AUDIENCE]);
    let (status, body) = h.post_token(&h.form(&h.token(&claims), &h.target)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_warm_jwt_exchange_makes_exactly_two_aws_calls() {
    let mut h = Harness::new().await;
    h.keep_caches_warm().await;
    let (status, _) = h.post_token(&h.form(&h.token(&h.claims()), &h.target)).await;
    assert_eq!(status, 200);
    h.api.calls.reset();
    let (status, _) = h.post_token(&h.form(&h.token(&h.claims()), &h.target)).await;
    assert_eq!(status, 200);
    // Issuer, grants and target come from the bounded policy cache once warm.
    nhi_tests::assert_aws_calls(
        &h,
        "warm JWT exchange",
        &[("KMS.Sign", 1), ("DynamoDB.TransactWriteItems", 1)],
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_one_time_subject_token_is_exchanged_once_and_a_replay_issues_nothing() {
    let h = Harness::new().await;
    h.registry
        .put_issuer(&nhi_broker::domain::Issuer {
            one_time_jti: true,
            pattern_prefix_segments: 1,
            ..h.issuer_record()
        })
        .await
        .unwrap();
    let token = h.token(&h.claims());
    let (status, body) = h.post_token(&h.form(&token, &h.target)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = h.post_token(&h.form(&token, &h.target)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert_eq!(body["error_description"], "subject_token has already been exchanged");
    assert!(body.get("access_token").is_none());
    assert_eq!(h.leases().await.len(), 1, "the replay released nothing");
    let replays: Vec<_> = h
        .audit_events()
        .await
        .into_iter()
        .filter(|e| attr(e, "reason") == "token_replayed")
        .collect();
    assert_eq!(replays.len(), 1, "the replay is audited");

    // Without a jti, a one-time issuer's token is refused outright.
    let mut claims = h.claims();
    claims.as_object_mut().unwrap().remove("jti");
    let (status, body) = h.post_token(&h.form(&h.token(&claims), &h.target)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert_eq!(h.leases().await.len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn metadata_describes_the_endpoints() {
    let h = Harness::new().await;
    let request = http::Request::builder()
        .method("GET")
        .uri("/.well-known/oauth-authorization-server")
        .body(lambda_http::Body::Empty)
        .unwrap();
    let (status, body) = h.call(request).await;
    assert_eq!(status, 200);
    assert_eq!(body["issuer"], h.config.broker_issuer);
    assert_eq!(body["token_endpoint"], format!("{}/token", h.config.broker_issuer));
    assert_eq!(
        body["jwks_uri"],
        format!("{}/.well-known/jwks.json", h.config.broker_issuer)
    );
    assert_eq!(
        body["grant_types_supported"][0],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn introspection_reports_active_until_revoke_then_inactive_and_revocation_is_recorded() {
    let logs = LogCapture::global();
    let h = Harness::new().await;
    // A separate workload allowed to introspect.
    let caller = h.introspection_caller().await;

    let subject_token = h.token(&h.claims());
    let (status, body) = h.post_token(&h.form(&subject_token, &h.target)).await;
    assert_eq!(status, 200, "{body}");
    let access_token = body["access_token"].as_str().unwrap().to_string();

    let (status, active) = h
        .call(form_request("/introspect", &[("token", &access_token)], Some(&caller)))
        .await;
    assert_eq!(status, 200, "{active}");
    assert_eq!(active["active"], true);
    assert_eq!(active["sub"], h.subject);
    assert_eq!(active["aud"], h.target);
    assert_eq!(active["client_id"], h.grant_id);
    assert_eq!(active["iss"], h.config.broker_issuer);
    let lease_id = active["jti"].as_str().unwrap().to_string();
    // The lease id introspects the same lease.
    let (_, by_id) = h
        .call(form_request("/introspect", &[("token", &lease_id)], Some(&caller)))
        .await;
    assert_eq!(by_id["active"], true);

    // Self-revocation by the holder: 200, then inactive everywhere.
    let response = h
        .api
        .handle(form_request("/revoke", &[("token", &access_token)], None))
        .await;
    assert_eq!(response.status(), 200);
    let (_, after) = h
        .call(form_request("/introspect", &[("token", &access_token)], Some(&caller)))
        .await;
    assert_eq!(after, json!({"active": false}));
    let (_, after) = h
        .call(form_request("/introspect", &[("token", &lease_id)], Some(&caller)))
        .await;
    assert_eq!(after["active"], false);
    let lease = h.leases().await;
    assert_eq!(attr(&lease[0], "status"), "revoked");
    assert!(
        !lease[0].contains_key("active_shard"),
        "revoked leases leave the sweeper's index"
    );
    let revocations = h
        .scan(
            &std::env::var("NHI_REVOCATIONS_TABLE").unwrap(),
            "target_id = :l",
            &[(":l", &lease_id)],
        )
        .await;
    assert_eq!(revocations.len(), 1);
    assert_eq!(attr(&revocations[0], "target_kind"), "lease");
    assert_eq!(attr(&revocations[0], "reason"), "self-revocation");
    let revoke_events: Vec<_> = h
        .audit_events()
        .await
        .into_iter()
        .filter(|e| attr(e, "action") == "revoke")
        .collect();
    assert_eq!(revoke_events.len(), 1);

    // Revoking again, or revoking garbage, is 200 and changes nothing.
    for token in [
        access_token.as_str(),
        "not-a-token",
        "00000000-0000-4000-8000-000000000000",
    ] {
        let response = h.api.handle(form_request("/revoke", &[("token", token)], None)).await;
        assert_eq!(response.status(), 200, "{token}");
    }
    let revocations = h
        .scan(
            &std::env::var("NHI_REVOCATIONS_TABLE").unwrap(),
            "target_id = :l",
            &[(":l", &lease_id)],
        )
        .await;
    assert_eq!(revocations.len(), 1, "revocation is idempotent");

    let mut secrets = vec![subject_token, access_token, caller];
    secrets.extend(h.issuer.private_key_encodings());
    logs.assert_free_of(&secrets);
}

#[tokio::test(flavor = "current_thread")]
async fn introspection_refuses_unauthenticated_and_unauthorized_callers() {
    let h = Harness::new().await;
    let subject_token = h.token(&h.claims());
    let (_, body) = h.post_token(&h.form(&subject_token, &h.target)).await;
    let access_token = body["access_token"].as_str().unwrap().to_string();

    let response = h
        .api
        .handle(form_request("/introspect", &[("token", &access_token)], None))
        .await;
    assert_eq!(response.status(), 401);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let (status, body) = h
        .call(form_request(
            "/introspect",
            &[("token", &access_token)],
            Some("garbage"),
        ))
        .await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_token")));
    // A valid workload token without an introspection grant: known, but not allowed.
    let (status, body) = h
        .call(form_request(
            "/introspect",
            &[("token", &access_token)],
            Some(&subject_token),
        ))
        .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("access_denied")));
    assert!(body.get("active").is_none());
    // Each refusal is in the audit trail, by reason and caller-token fingerprint.
    let refusals = h
        .scan(
            &h.config.audit_table,
            "target = :t AND token_fingerprint = :f",
            &[
                (":t", nhi_broker::domain::INTROSPECTION_TARGET),
                (":f", &nhi_broker::redact::fingerprint(subject_token.as_bytes())),
            ],
        )
        .await;
    assert_eq!(refusals.len(), 1);
    assert_eq!(attr(&refusals[0], "reason"), "introspection_no_grant");
    let garbage = h
        .scan(
            &h.config.audit_table,
            "token_fingerprint = :f",
            &[(":f", &nhi_broker::redact::fingerprint(b"garbage"))],
        )
        .await;
    assert!(
        garbage
            .iter()
            .any(|e| attr(e, "reason") == "introspection_unauthenticated")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_forged_broker_token_introspects_inactive() {
    let h = Harness::new().await;
    let caller = h.introspection_caller().await;
    let (_, body) = h.post_token(&h.form(&h.token(&h.claims()), &h.target)).await;
    let real = body["access_token"].as_str().unwrap();
    // Same header and claims (so the same jti), signed by someone else's key.
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(real).unwrap();
    let mut header = jsonwebtoken::decode_header(real).unwrap();
    header.typ = Some("at+jwt".into());
    let forged = h
        .issuer
        .mint_with_header(&header, &claims)
        .unwrap()
        .expose()
        .to_string();
    let (status, body) = h
        .call(form_request("/introspect", &[("token", &forged)], Some(&caller)))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"active": false}));
}
