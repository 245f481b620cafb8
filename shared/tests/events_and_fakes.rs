//! Fast tests on the in-memory fakes, driven by the sample events in `events/` (the same JSON a
//! deployed function receives), so the fixtures cannot drift from what the handlers accept.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nhi_broker::domain::{Grant, GrantStatus, Target, TargetKind};
use nhi_broker::http::BrokerApi;
use nhi_broker::testing::FakeBroker;
use std::sync::Arc;
use std::sync::atomic::Ordering;

const TOKEN_EVENT: &str = include_str!("../../events/exchange-token-request.json");
const JWKS_EVENT: &str = include_str!("../../events/exchange-jwks-request.json");
const ROTATE_EVENT: &str = include_str!("../../events/rotate-scheduled.json");
const ROTATE_ON_DEMAND_EVENT: &str = include_str!("../../events/rotate-on-demand.json");
const SWEEP_EVENT: &str = include_str!("../../events/expire-sweeper-scheduled.json");
const STREAM_EVENT: &str = include_str!("../../events/revoke-fanout-stream.json");

const NOW: i64 = 1_795_514_400;
const ISSUER: &str = "https://idp.test";
const SUBJECT: &str = "repo:example-org/demo-app:ref:refs/heads/main";
const TARGET: &str = "https://api.demo.local";

/// The broker on fakes, with a grant whose approval ends in 600 s.
fn world() -> FakeBroker {
    FakeBroker::new(
        ISSUER,
        Grant {
            id: "demo-app-deploys".into(),
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
            justification: "tests".into(),
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

/// The sample token event with its form body replaced (API Gateway base64-encodes form bodies).
fn token_event_with_subject_token(token: &str) -> String {
    let mut event: serde_json::Value = serde_json::from_str(TOKEN_EVENT).unwrap();
    let form = serde_urlencoded::to_string([
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("subject_token", token),
        ("audience", TARGET),
        ("scope", "deploy"),
    ])
    .unwrap();
    event["body"] = STANDARD.encode(form).into();
    event.to_string()
}

/// An event through the exchange's Lambda entry point, as the runtime passes it: the event JSON
/// read, `gateway::handle_event`, the response written as JSON for API Gateway.
async fn respond(api: &BrokerApi, event: &str) -> (u16, serde_json::Value, serde_json::Value) {
    let event = serde_json::from_str(event).expect("an HTTP API (payload 2.0) event");
    let response = nhi_broker::http::gateway::handle_event(api, event).await;
    let response: serde_json::Value = serde_json::to_value(&response).unwrap();
    assert_eq!(response["isBase64Encoded"], false);
    assert_eq!(response["cookies"], serde_json::json!([]));
    let body = serde_json::from_str(response["body"].as_str().expect("a text body")).unwrap();
    (
        response["statusCode"].as_u64().unwrap() as u16,
        body,
        response["headers"].clone(),
    )
}

/// lambda_http's conversion panics on a body that is not base64 and re-parses the path through
/// `url`; a malformed event is a 400 like any other bad input, and nothing is released.
#[tokio::test]
async fn a_malformed_event_is_a_400_not_a_panic() {
    let w = world();
    let token = w
        .issuer
        .mint(&w.issuer.workload_claims(SUBJECT, "nhi-broker", NOW, 300))
        .unwrap();
    let event = token_event_with_subject_token(token.expose());
    for (what, field, value) in [
        ("body not base64", "body", serde_json::json!("not base64!")),
        ("path not a URI path", "rawPath", serde_json::json!("/to ken")),
    ] {
        let mut malformed: serde_json::Value = serde_json::from_str(&event).unwrap();
        malformed[field] = value;
        let (status, body, headers) = respond(&w.api, &malformed.to_string()).await;
        assert_eq!(status, 400, "{what}");
        assert_eq!(body["error"], "invalid_request", "{what}");
        // Under API Gateway's id, as every other answer.
        assert_eq!(body["request_id"], "JKJaXmPLvHcESHA=", "{what}");
        assert_eq!(headers["x-request-id"], "JKJaXmPLvHcESHA=", "{what}");
    }
    assert_eq!(w.ledger.leases.lock().unwrap().len(), 0, "nothing released");
    // The same event, well formed, is released: the refusals above were the malformation's.
    let (status, body, _) = respond(&w.api, &event).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn sample_token_event_is_refused_as_from_an_untrusted_issuer_and_audited() {
    let w = world();
    let (status, body, headers) = respond(&w.api, TOKEN_EVENT).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(body["error_description"], "subject_token issuer is not trusted");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(w.ledger.leases.lock().unwrap().is_empty());
    let events = w.ledger.events.lock().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason.as_deref(), Some("token_untrusted_issuer"));
}

#[tokio::test]
async fn sample_token_event_with_a_fresh_token_releases_one_lease_capped_by_approval() {
    let w = world();
    let token = w
        .issuer
        .mint(&w.issuer.workload_claims(SUBJECT, "nhi-broker", NOW, 300))
        .unwrap();
    let (status, body, headers) = respond(&w.api, &token_event_with_subject_token(token.expose())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["pragma"], "no-cache");
    // Grant max is 900 s but its approval ends in 600 s.
    assert_eq!(body["expires_in"], 600);
    assert_eq!(w.ledger.leases.lock().unwrap().len(), 1);
    assert_eq!(w.ledger.events.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_failed_ledger_write_releases_nothing_and_asks_the_client_to_retry() {
    let w = world();
    w.ledger.fail_writes.store(true, Ordering::SeqCst);
    let token = w
        .issuer
        .mint(&w.issuer.workload_claims(SUBJECT, "nhi-broker", NOW, 300))
        .unwrap();
    let (status, body, _) = respond(&w.api, &token_event_with_subject_token(token.expose())).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(body.get("access_token").is_none());
    assert!(w.ledger.leases.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_jwt_is_signed_while_its_release_is_recorded_not_after() {
    let w = world();
    // Signer and ledger each wait for the other: done one after the other, neither returns.
    let both = Arc::new(tokio::sync::Barrier::new(2));
    *w.signer.rendezvous.lock().unwrap() = Some(both.clone());
    *w.ledger.rendezvous.lock().unwrap() = Some(both);
    let token = w
        .issuer
        .mint(&w.issuer.workload_claims(SUBJECT, "nhi-broker", NOW, 300))
        .unwrap();
    let event = token_event_with_subject_token(token.expose());
    let exchange = respond(&w.api, &event);
    let (status, body, _) = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .expect("signature and release transaction overlap");
    assert_eq!(status, 200, "{body}");
    let lease = w.ledger.leases.lock().unwrap()[0].clone();
    let kid = jsonwebtoken::decode_header(body["access_token"].as_str().unwrap())
        .unwrap()
        .kid;
    assert_eq!(
        kid.as_deref(),
        Some(lease.key_id.as_str()),
        "the lease names the key that signed"
    );
}

#[tokio::test]
async fn a_signature_that_fails_after_the_release_was_recorded_returns_no_token_and_revokes_its_lease() {
    let w = world();
    w.signer.fail.store(true, Ordering::SeqCst);
    let token = w
        .issuer
        .mint(&w.issuer.workload_claims(SUBJECT, "nhi-broker", NOW, 300))
        .unwrap();
    let (status, body, _) = respond(&w.api, &token_event_with_subject_token(token.expose())).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.get("access_token").is_none());
    let events = w.ledger.events.lock().unwrap();
    let reasons: Vec<_> = events.iter().map(|e| e.reason.clone().unwrap_or_default()).collect();
    assert!(
        reasons.contains(&"signing_failed_after_record".to_string()),
        "{reasons:?}"
    );
    let lease = w.ledger.leases.lock().unwrap()[0].clone();
    assert_eq!(
        lease.status,
        nhi_broker::domain::LeaseStatus::Revoked,
        "inventory never counts it"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.lease_id.as_deref() == Some(lease.lease_id.as_str()))
            .count(),
        2,
        "the correction names the lease"
    );
}

#[tokio::test]
async fn sample_jwks_event_serves_the_signing_key() {
    let w = world();
    let (status, body, headers) = respond(&w.api, JWKS_EVENT).await;
    assert_eq!(status, 200);
    assert_eq!(body["keys"][0]["kid"], "test-key");
    assert_eq!(body["keys"][0]["alg"], "ES256");
    assert!(body["keys"][0].get("d").is_none(), "never a private key component");
    assert_eq!(headers["cache-control"], "public, max-age=300");
}

#[tokio::test]
async fn unknown_paths_and_methods_get_the_standard_error_shape() {
    let w = world();
    let mut event: serde_json::Value = serde_json::from_str(JWKS_EVENT).unwrap();
    event["rawPath"] = "/admin".into();
    event["requestContext"]["http"]["path"] = "/admin".into();
    let (status, body, _) = respond(&w.api, &event.to_string()).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let mut event: serde_json::Value = serde_json::from_str(JWKS_EVENT).unwrap();
    event["rawPath"] = "/token".into();
    event["requestContext"]["http"]["path"] = "/token".into();
    let (status, body, headers) = respond(&w.api, &event.to_string()).await;
    assert_eq!((status, body["error"].as_str()), (405, Some("invalid_request")));
    assert_eq!(headers["allow"], "POST, GET");
}

#[test]
fn schedule_samples_parse_and_garbage_is_refused() {
    for sample in [ROTATE_EVENT, SWEEP_EVENT] {
        let run = nhi_broker::jobs::parse_scheduled_event(serde_json::from_str(sample).unwrap()).unwrap();
        assert_eq!(run.detail_type, "Scheduled Event");
        assert_eq!(run.id, "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa");
    }
    assert!(nhi_broker::jobs::parse_scheduled_event(serde_json::json!({"hello": "world"})).is_err());
    assert!(nhi_broker::jobs::parse_scheduled_event(serde_json::json!([1, 2])).is_err());
}

#[test]
fn rotate_accepts_its_schedule_and_on_demand_samples_and_nothing_else() {
    use nhi_broker::jobs::{RotateRequest, parse_rotate_event};
    let scheduled = parse_rotate_event(serde_json::from_str(ROTATE_EVENT).unwrap()).unwrap();
    assert!(matches!(scheduled, RotateRequest::Scheduled(_)));
    match parse_rotate_event(serde_json::from_str(ROTATE_ON_DEMAND_EVENT).unwrap()).unwrap() {
        RotateRequest::Secret { secret_id, .. } => assert_eq!(secret_id, "demo-db-password"),
        other => panic!("{other:?}"),
    }
    let mut no_id: serde_json::Value = serde_json::from_str(ROTATE_ON_DEMAND_EVENT).unwrap();
    no_id["detail"] = serde_json::json!({});
    assert!(parse_rotate_event(no_id).unwrap_err().contains("secret_id"));
    let mut other: serde_json::Value = serde_json::from_str(ROTATE_EVENT).unwrap();
    other["detail-type"] = "Something Else".into();
    assert!(parse_rotate_event(other).is_err());
    // Not an EventBridge event at all.
    assert!(parse_rotate_event(serde_json::json!({"secret_id": "x"})).is_err());
}

#[test]
fn stream_sample_records_parse_into_fanout_work_and_unknown_records_are_refused() {
    use nhi_broker::domain::RevocationTarget;
    use nhi_broker::fanout::FanoutWork;
    use nhi_broker::jobs::fanout_work;
    let event: aws_lambda_events::dynamodb::Event = serde_json::from_str(STREAM_EVENT).unwrap();
    match fanout_work(&event.records[0]).unwrap() {
        FanoutWork::Revocation { revocation, cursor } => {
            assert_eq!(revocation.target_kind, RevocationTarget::Grant);
            assert_eq!(revocation.target_id, "demo-app-deploys");
            assert_eq!(cursor, None);
        }
        other => panic!("{other:?}"),
    }
    match fanout_work(&event.records[1]).unwrap() {
        FanoutWork::Rotation(notice) => {
            assert_eq!(notice.secret_id, "demo-db-password");
            assert_eq!(notice.destinations, ["demo-webhook"]);
        }
        other => panic!("{other:?}"),
    }
    let mut value: serde_json::Value = serde_json::from_str(STREAM_EVENT).unwrap();
    let template = value["Records"][0].clone();
    let mut bogus = template.clone();
    bogus["eventName"] = "BOGUS".into();
    let mut unknown_type = template.clone();
    unknown_type["dynamodb"]["NewImage"]["record_type"] = serde_json::json!({"S": "gossip"});
    let mut no_target = template.clone();
    no_target["dynamodb"]["NewImage"]
        .as_object_mut()
        .unwrap()
        .remove("target_kind");
    let mut resumed = template.clone();
    resumed["eventName"] = "MODIFY".into();
    resumed["dynamodb"]["OldImage"] = template["dynamodb"]["NewImage"].clone();
    resumed["dynamodb"]["NewImage"]["resume_cursor"] = serde_json::json!({"S": "{}"});
    let mut unchanged = template.clone();
    unchanged["eventName"] = "MODIFY".into();
    unchanged["dynamodb"]["OldImage"] = template["dynamodb"]["NewImage"].clone();
    value["Records"] = serde_json::json!([bogus, unknown_type, no_target, resumed, unchanged]);
    let event: aws_lambda_events::dynamodb::Event = serde_json::from_value(value).unwrap();
    assert!(fanout_work(&event.records[0]).is_err());
    assert!(fanout_work(&event.records[1]).unwrap_err().contains("gossip"));
    assert!(fanout_work(&event.records[2]).is_err());
    assert!(matches!(
        fanout_work(&event.records[3]).unwrap(),
        FanoutWork::Revocation { cursor: Some(_), .. }
    ));
    assert!(matches!(
        fanout_work(&event.records[4]).unwrap(),
        FanoutWork::Nothing(_)
    ));
}

/// What each function's main deserializes its invocation into (`LambdaEvent<T>`): every sample
/// event parses as its function's type, and the fanout samples pick the right variant.
#[test]
fn sample_events_deserialize_as_the_functions_typed_events() {
    use aws_lambda_events::eventbridge::EventBridgeEvent;
    use nhi_broker::jobs::{FanoutInvocation, RotateRequest, rotate_request, scheduled_run};
    let scheduled = |text: &str| serde_json::from_str::<EventBridgeEvent<serde_json::Value>>(text).unwrap();
    assert!(scheduled_run(&scheduled(SWEEP_EVENT)).is_ok());
    assert!(matches!(
        rotate_request(&scheduled(ROTATE_EVENT)),
        Ok(RotateRequest::Scheduled(_))
    ));
    assert!(matches!(
        rotate_request(&scheduled(ROTATE_ON_DEMAND_EVENT)),
        Ok(RotateRequest::Secret { .. })
    ));
    let fanout = |text: &str| serde_json::from_str::<FanoutInvocation>(text).unwrap();
    assert!(matches!(fanout(STREAM_EVENT), FanoutInvocation::Stream(e) if !e.records.is_empty()));
    assert!(matches!(
        fanout(include_str!("../../events/revoke-fanout-retry-scheduled.json")),
        FanoutInvocation::Scheduled(_)
    ));
}

/// audit-export on its sample: one object under the event's day, its line the stored item exactly
/// (numbers as numbers, every attribute kept); a redelivered batch writes the same key and bytes;
/// a store failure fails the batch (the stream retries it); anything else is refused.
#[tokio::test]
async fn the_export_sample_becomes_one_line_of_one_object_and_a_redelivery_repeats_it() {
    use nhi_broker::export::{ExportService, ExportStore};
    #[derive(Default)]
    struct Memory {
        puts: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
        fail: std::sync::atomic::AtomicBool,
    }
    #[async_trait::async_trait]
    impl ExportStore for Memory {
        async fn put(&self, key: &str, body: Vec<u8>) -> nhi_broker::Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(nhi_broker::BrokerError::Internal("the bucket is unreachable".into()));
            }
            self.puts.lock().unwrap().push((key.to_string(), body));
            Ok(())
        }
    }
    let store = Arc::new(Memory::default());
    let service = ExportService::new(store.clone());
    let event: serde_json::Value = serde_json::from_str(include_str!("../../events/audit-export-stream.json")).unwrap();
    for _ in 0..2 {
        let report = nhi_broker::jobs::handle_export_event(&service, event.clone())
            .await
            .unwrap();
        assert_eq!(report["records"], 1);
    }
    let puts = store.puts.lock().unwrap().clone();
    assert_eq!(puts.len(), 2);
    assert_eq!(puts[0], puts[1], "a redelivery writes the same key and bytes");
    assert_eq!(
        puts[0].0,
        "audit/v1/events/dt=2026-11-24/a87ff679a2f3e71d9181a67b7542122c-1.jsonl"
    );
    let line: serde_json::Value = serde_json::from_slice(&puts[0].1).unwrap();
    assert_eq!(line["schema"], "nhi-broker.audit.v1");
    assert_eq!(line["change"], "INSERT");
    assert_eq!(line["item"]["seq"], 1);
    assert_eq!(line["item"]["at"], 1_795_514_400);
    assert_eq!(line["item"]["actor_subject"], "repo:acme/app:ref:refs/heads/main");
    let image = &event["Records"][0]["dynamodb"]["NewImage"];
    assert_eq!(
        line["item"].as_object().unwrap().len(),
        image.as_object().unwrap().len(),
        "every attribute"
    );

    store.fail.store(true, Ordering::SeqCst);
    assert!(nhi_broker::jobs::handle_export_event(&service, event).await.is_err());
    assert!(
        nhi_broker::jobs::handle_export_event(&service, serde_json::json!({ "detail-type": "Scheduled Event" }))
            .await
            .is_err()
    );
}
