//! No release without its record (issue 17 item 5), against moto behind the fault layer: when the
//! audit write fails, no JWT, secret, AWS credentials or revealing introspection answer leaves the
//! broker, and a refusal whose audit write fails is counted in the `AuditWriteFailures` metric.

use nhi_broker::domain::{TOKEN_TYPE_AWS_CREDENTIALS, TOKEN_TYPE_SECRET};
use nhi_tests::faults::{self, Fault, FaultProxy};
use nhi_tests::rotation::{random_policy, secret_with_value};
use nhi_tests::{Harness, attr, form_request, now, post_form};
use std::time::Duration;

async fn lease_count(h: &Harness) -> usize {
    h.leases().await.len()
}

#[tokio::test(flavor = "current_thread")]
async fn when_the_audit_write_fails_nothing_is_released_on_any_path() {
    let mut h = Harness::new().await;
    let caller = h.introspection_caller().await;
    let value = format!("pw-{}", uuid::Uuid::new_v4());
    let secret = secret_with_value(&h, "audit-db", random_policy(), &value).await;
    let role = h.aws_role("audit").await;
    let mut grant = h.grant(&format!("audit-paths-{}", h.id), &h.subject, now() + 3600);
    grant.targets = vec![secret.clone(), role.clone()];
    grant.max_ttl_seconds = 3600;
    h.registry.put_grant(&grant).await.unwrap();
    let proxy = FaultProxy::start().await;
    faults::behind(&mut h, &proxy, faults::PATIENT, Duration::from_secs(20)).await;

    let form = |h: &Harness, target: &str, token_type: Option<&str>| {
        let mut form = h.form(&h.token(&h.claims()), target);
        if let Some(t) = token_type {
            form.push(("requested_token_type".into(), t.into()));
        }
        form
    };
    // Through the proxy, each path works (and warms the caches).
    let (status, jwt) = h.post_token(&form(&h, &h.target, None)).await;
    assert_eq!(status, 200, "{jwt}");
    let jwt = jwt["access_token"].as_str().unwrap().to_string();
    let before = lease_count(&h).await;

    // The release transaction carries the audit event: when it cannot be written, nothing leaves.
    for (target, token_type) in [
        (h.target.clone(), None),
        (secret.clone(), Some(TOKEN_TYPE_SECRET)),
        (role.clone(), Some(TOKEN_TYPE_AWS_CREDENTIALS)),
    ] {
        proxy.fail("TransactWriteItems", 100, Fault::throttling("ThrottlingException"));
        let (status, body) = h.post_token(&form(&h, &target, token_type)).await;
        proxy.clear();
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("temporarily_unavailable")),
            "{target}: {body}"
        );
        assert!(
            body.get("access_token").is_none() && !body.to_string().contains(&value),
            "{target}"
        );
        assert_eq!(lease_count(&h).await, before, "{target}: no lease recorded");
    }

    // An active introspection answer discloses the lease: no answer without its record.
    let introspect = || form_request("/introspect", &[("token", &jwt)], Some(&caller));
    let (status, body) = h.call(introspect()).await;
    assert_eq!((status, body["active"].as_bool()), (200, Some(true)), "{body}");
    let recorded: Vec<_> = h
        .scan(
            &h.config.audit_table,
            "lease_id = :l",
            &[(":l", &nhi_tests_claim(&jwt, "jti"))],
        )
        .await
        .into_iter()
        .filter(|e| attr(e, "action") == "introspect")
        .collect();
    assert_eq!(recorded.len(), 1, "the disclosure is audited");
    assert_eq!(attr(&recorded[0], "outcome"), "released");
    proxy.fail("PutItem", 100, Fault::throttling("ThrottlingException"));
    let (status, body) = h.call(introspect()).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.get("sub").is_none() && body.get("active").is_none(), "{body}");

    // A refusal whose audit write fails is still a refusal, and it is counted as a metric.
    let failures = nhi_broker::telemetry::audit_write_failures();
    let (status, body) = h.call(post_form("/token", "grant_type=password".into())).await;
    proxy.clear();
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type")),
        "{body}"
    );
    assert!(
        nhi_broker::telemetry::audit_write_failures() > failures,
        "AuditWriteFailures"
    );
}

fn nhi_tests_claim(token: &str, name: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims[name].as_str().unwrap().to_string()
}
