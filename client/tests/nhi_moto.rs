//! `nhi` end to end: the real binary against the moto-backed stack (`make test`).

mod common;

use common::{Stack, claim, run, serve_fn, verify_broker_jwt};
use nhi_tests::rotation::{random_policy, secret_with_value};
use nhi_tests::{attr, now};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A secret holding `value` with a grant for the stack's subject.
async fn granted_secret(s: &Stack, name: &str, value: &str) -> String {
    let secret = secret_with_value(&s.h, name, random_policy(), value).await;
    let mut grant =
        s.h.grant(&format!("{name}-readers-{}", s.h.id), &s.h.subject, now() + 3600);
    grant.targets = vec![secret.clone()];
    s.h.registry.put_grant(&grant).await.unwrap();
    secret
}

/// A registered role with a grant for the stack's subject.
async fn granted_role(s: &Stack) -> String {
    let arn = s.h.aws_role("cli").await;
    let mut grant = s.h.grant(&format!("cli-role-{}", s.h.id), &s.h.subject, now() + 7200);
    grant.targets = vec![arn.clone()];
    grant.max_ttl_seconds = 3600;
    s.h.registry.put_grant(&grant).await.unwrap();
    arn
}

async fn lease_statuses(s: &Stack) -> Vec<(String, String)> {
    let mut leases: Vec<(String, String)> =
        s.h.leases()
            .await
            .iter()
            .filter(|l| attr(l, "subject") == s.h.subject)
            .map(|l| (attr(l, "lease_id").to_string(), attr(l, "status").to_string()))
            .collect();
    leases.sort();
    leases
}

#[tokio::test(flavor = "current_thread")]
async fn token_prints_a_verifiable_broker_jwt_and_json_names_its_lease() {
    let s = Stack::new().await;
    let mut token = s.nhi();
    token.args(["token", "--audience", &s.h.target, "--scope", "deploy"]);
    let out = run(token).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        !out.stdout.ends_with('\n'),
        "exactly the token when stdout is not a terminal"
    );
    let claims = verify_broker_jwt(&s.h, &out.stdout, &s.h.target).await;
    assert_eq!(claims["sub"], s.h.subject.as_str());
    assert_eq!(claims["scope"], "deploy");

    let mut json = s.nhi();
    json.args([
        "--output",
        "json",
        "token",
        "--audience",
        &s.h.target,
        "--expires-in",
        "120",
    ]);
    let out = run(json).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        doc["lease_id"],
        claim(doc["access_token"].as_str().unwrap(), "jti").as_str()
    );
    assert_eq!(doc["expires_in"], 120);
    assert!(doc["expires_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "current_thread")]
async fn a_refusal_exits_3_with_the_brokers_error_and_request_id_and_prints_no_token() {
    let s = Stack::new().await;
    let subject_token = s.refresh_subject_token();
    let mut command = s.nhi();
    command.args(["token", "--audience", "https://not-registered.example.com"]);
    let out = run(command).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("invalid_target"), "{}", out.stderr);
    assert!(out.stderr.contains("[request id "), "{}", out.stderr);
    assert!(!out.stderr.contains(&subject_token));

    // No identity at all: a usage error before any request.
    let mut bare = tokio::process::Command::new(env!("CARGO_BIN_EXE_nhi"));
    bare.env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .args(["--url", &s.url, "token", "--audience", &s.h.target]);
    let out = run(bare).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no workload identity"), "{}", out.stderr);
}

#[tokio::test(flavor = "current_thread")]
async fn secret_get_writes_the_value_atomically_with_mode_0600() {
    let s = Stack::new().await;
    let value = format!("pw-{}", uuid::Uuid::new_v4());
    let secret = granted_secret(&s, "cli-db", &value).await;
    let path = s.dir.join("db-password");
    let mut command = s.nhi();
    command.args(["secret", "get", &secret, "--output-file"]).arg(&path);
    let out = run(command).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.is_empty() && !out.stderr.contains(&value));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), value);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    let mut stdout = s.nhi();
    stdout.args(["secret", "get", &secret]);
    let out = run(stdout).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, value.as_str()));
}

#[tokio::test(flavor = "current_thread")]
async fn credential_process_output_is_accepted_by_boto3() {
    let s = Stack::new().await;
    let arn = granted_role(&s).await;
    let mut command = s.nhi();
    command.args(["aws", "credential-process", "--role-arn", &arn]);
    let out = run(command).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    let mut keys: Vec<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "AccessKeyId",
            "Expiration",
            "SecretAccessKey",
            "SessionToken",
            "Version"
        ]
    );
    assert_eq!(doc["Version"], 1);

    // An AWS profile using it, read by boto3: the session is the role the broker assumed.
    let config = s.dir.join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[profile nhi]\ncredential_process = {} --url {} --subject-token-file {} aws credential-process --role-arn {arn}\n",
            env!("CARGO_BIN_EXE_nhi"),
            s.url,
            s.token_file.display()
        ),
    )
    .unwrap();
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    let script = "import boto3; print(boto3.Session(profile_name='nhi').client('sts', region_name='us-east-1').get_caller_identity()['Arn'])";
    let out = tokio::process::Command::new(python)
        .args(["-c", script])
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let role_name = arn.rsplit('/').next().unwrap();
    assert!(
        stdout.contains(&format!("assumed-role/{role_name}/")),
        "boto3 used the broker's session: {stdout}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn exec_passes_credentials_and_the_exit_code_then_revokes_every_lease() {
    let s = Stack::new().await;
    let value = format!("pw-{}", uuid::Uuid::new_v4());
    let secret = granted_secret(&s, "cli-exec", &value).await;
    let seen = s.dir.join("seen");
    let script = format!(
        "printf '%s\\n%s' \"$DB_PASSWORD\" \"$API_TOKEN\" > {}; exit 7",
        seen.display()
    );
    let mut command = s.nhi();
    command.args([
        "exec",
        "--secret",
        &format!("{secret}=DB_PASSWORD"),
        "--token",
        &format!("{}=API_TOKEN", s.h.target),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let out = run(command).await;
    assert_eq!(out.code, 7, "the command's exit code: {}", out.stderr);
    let seen = std::fs::read_to_string(&seen).unwrap();
    let (password, jwt) = seen.split_once('\n').unwrap();
    assert_eq!(password, value);
    assert_eq!(claim(jwt, "aud"), s.h.target);
    assert!(!out.stderr.contains(&value) && !out.stderr.contains(jwt));

    // Both leases were revoked when the command exited.
    assert_eq!(s.introspect(jwt).await, json!({"active": false}));
    let leases = lease_statuses(&s).await;
    assert_eq!(leases.len(), 2, "{leases:?}");
    assert!(leases.iter().all(|(_, status)| status == "revoked"), "{leases:?}");

    // --keep leaves them active.
    let mut keep = s.nhi();
    keep.args([
        "exec",
        "--keep",
        "--token",
        &format!("{}=T", s.h.target),
        "--",
        "sh",
        "-c",
        "printf %s \"$T\"",
    ]);
    let out = run(keep).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(s.introspect(&out.stdout).await["active"], true);
}

#[tokio::test(flavor = "current_thread")]
async fn exec_forwards_sigterm_to_the_command_and_still_revokes() {
    let s = Stack::new().await;
    let started = s.dir.join("started");
    let script = format!(
        "trap 'exit 42' TERM; printf %s \"$T\" > {}; while :; do sleep 0.1; done",
        started.display()
    );
    let mut command = s.nhi();
    command
        .args([
            "exec",
            "--token",
            &format!("{}=T", s.h.target),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().unwrap();
    let pid = child.id().unwrap() as libc::pid_t;
    for _ in 0..300 {
        if std::fs::metadata(&started).is_ok_and(|m| m.len() > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let jwt = std::fs::read_to_string(&started).expect("the command started");
    // SAFETY: a process this test spawned.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(42), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.introspect(&jwt).await, json!({"active": false}));
}

#[tokio::test(flavor = "current_thread")]
async fn agent_renews_before_expiry_and_revokes_when_stopped() {
    let s = Stack::new().await;
    let path = s.dir.join("api-token");
    let mut command = s.nhi();
    command
        .args([
            "agent",
            "--token",
            &format!("{}={}", s.h.target, path.display()),
            "--expires-in",
            "6",
        ])
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().unwrap();
    let pid = child.id().unwrap() as libc::pid_t;
    let mut tokens: Vec<String> = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(14) {
        if let Ok(token) = std::fs::read_to_string(&path) {
            let exp: i64 = nhi_client::broker::jwt_claim(&token, "exp")
                .and_then(|v| v.parse().ok())
                .or_else(|| {
                    let payload = token.split('.').nth(1)?;
                    let bytes = base64_decode(payload)?;
                    serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_i64()
                })
                .unwrap();
            assert!(exp > now(), "the file never holds an expired token");
            if tokens.last() != Some(&token) {
                tokens.push(token);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        tokens.len() >= 3,
        "renewed at least twice in 14 s with 6 s tokens: {}",
        tokens.len()
    );
    // SAFETY: a process this test spawned.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.introspect(tokens.last().unwrap()).await, json!({"active": false}));
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()
}

#[tokio::test(flavor = "current_thread")]
async fn agent_exits_5_when_the_broker_is_gone_at_expiry() {
    let s = Stack::new().await;
    let path = s.dir.join("api-token");
    let mut command = s.nhi();
    command
        .args([
            "--max-attempts",
            "2",
            "agent",
            "--token",
            &format!("{}={}", s.h.target, path.display()),
        ])
        .args(["--expires-in", "4"])
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().unwrap();
    for _ in 0..200 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(path.exists(), "the first token was written");
    s.stop_api();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("expired before it could be renewed"), "{stderr}");
}

#[tokio::test(flavor = "current_thread")]
async fn revoke_takes_a_jwt_alone_and_a_lease_id_with_the_holders_identity() {
    let s = Stack::new().await;
    let value = format!("pw-{}", uuid::Uuid::new_v4());
    let secret = granted_secret(&s, "cli-revoke", &value).await;
    let mut token = s.nhi();
    token.args(["token", "--audience", &s.h.target]);
    let jwt = run(token).await.stdout;
    let mut json = s.nhi();
    json.args(["--output", "json", "secret", "get", &secret]);
    let lease: Value = serde_json::from_str(&run(json).await.stdout).unwrap();
    let lease_id = lease["lease_id"].as_str().unwrap().to_string();

    // A JWT alone, from stdin.
    let mut by_jwt = tokio::process::Command::new(env!("CARGO_BIN_EXE_nhi"));
    by_jwt
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .args(["--url", &s.url, "revoke", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = by_jwt.spawn().unwrap();
    tokio::io::AsyncWriteExt::write_all(child.stdin.as_mut().unwrap(), jwt.as_bytes())
        .await
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.introspect(&jwt).await, json!({"active": false}));

    // A lease id without an identity is a usage error; with the holder's identity, revoked.
    let mut anonymous = tokio::process::Command::new(env!("CARGO_BIN_EXE_nhi"));
    anonymous
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .args(["--url", &s.url, "revoke", &lease_id]);
    assert_eq!(run(anonymous).await.code, 2);
    assert_eq!(s.introspect(&lease_id).await["active"], true);
    let mut holder = s.nhi();
    holder.args(["revoke", &lease_id]);
    let out = run(holder).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(s.introspect(&lease_id).await, json!({"active": false}));
}

#[tokio::test(flavor = "current_thread")]
async fn github_actions_identity_comes_from_the_oidc_request_endpoint() {
    let s = Stack::new().await;
    let h_token = s.h.token(&s.h.claims());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let (oidc, _stop) = serve_fn(move |_, path, headers, _| {
        counter.fetch_add(1, Ordering::SeqCst);
        let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("bearer run-request-token");
        if !authorized || !path.contains("audience=nhi-broker") {
            return (401, "{}".into());
        }
        (200, json!({ "value": h_token }).to_string())
    })
    .await;
    let out = run({
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_nhi"));
        c.env("ACTIONS_ID_TOKEN_REQUEST_URL", format!("{oidc}/token?api-version=2.0"))
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "run-request-token")
            .args(["--url", &s.url, "token", "--audience", &s.h.target]);
        c
    })
    .await;
    assert_eq!(out.code, 0, "detected from the variables: {}", out.stderr);
    assert_eq!(claim(&out.stdout, "sub"), s.h.subject);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_503_is_retried_honouring_retry_after_and_a_400_never() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let (flaky, _stop) = serve_fn(move |_, _, _, _| {
        if counter.fetch_add(1, Ordering::SeqCst) < 2 {
            return (
                503,
                json!({"error": "temporarily_unavailable", "error_description": "retry", "request_id": "r-503"})
                    .to_string(),
            );
        }
        let payload = base64_url(&json!({"jti": "lease-1", "exp": now() + 60}).to_string());
        (
            200,
            json!({"access_token": format!("e30.{payload}.sig"), "expires_in": 60,
                   "issued_token_type": "urn:ietf:params:oauth:token-type:jwt", "token_type": "Bearer"})
            .to_string(),
        )
    })
    .await;
    let token_file = std::env::temp_dir().join(format!("nhi-retry-{}", uuid::Uuid::new_v4()));
    std::fs::write(&token_file, "a.b.c").unwrap();
    let nhi = |url: &str| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_nhi"));
        c.env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
            .args(["--url", url, "--subject-token-file"])
            .arg(&token_file)
            .args(["token", "--audience", "https://api.example.com"]);
        c
    };
    let started = std::time::Instant::now();
    let out = run(nhi(&flaky)).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After: 1 honoured twice"
    );

    let refusals = Arc::new(AtomicUsize::new(0));
    let counter = refusals.clone();
    let (refusing, _stop2) = serve_fn(move |_, _, _, _| {
        counter.fetch_add(1, Ordering::SeqCst);
        (
            400,
            json!({"error": "invalid_request", "error_description": "no", "request_id": "r-400"}).to_string(),
        )
    })
    .await;
    let out = run(nhi(&refusing)).await;
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.contains("invalid_request: no [request id r-400]"),
        "{}",
        out.stderr
    );
    assert_eq!(refusals.load(Ordering::SeqCst), 1, "a 4xx is never retried");

    // Nothing listening: connection errors are retried, then exit 4.
    let out = run({
        let mut c = nhi("http://127.0.0.1:9");
        c.args(["--max-attempts", "2"]);
        c
    })
    .await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    let _ = std::fs::remove_file(&token_file);
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nhi events serve did not listen on {port}");
}

#[tokio::test(flavor = "current_thread")]
async fn events_serve_acknowledges_a_real_delivery_only_after_its_command_succeeds() {
    use nhi_broker::domain::{Destination, DestinationKind, RevocationTarget};
    use nhi_tests::fanout::{Fanout, exclusive};
    let _one_at_a_time = exclusive().await;
    let s = Stack::new().await;
    let mut f = Fanout::new(&s.h).await;
    f.service.settings.backoff_seconds = 30;
    let value = format!("pw-{}", uuid::Uuid::new_v4());
    let secret = granted_secret(&s, "cli-events", &value).await;

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/events");
    let destination = format!("receiver-{}", s.h.id);
    s.h.registry
        .put_destination(&Destination {
            id: destination.clone(),
            kind: DestinationKind::Webhook { url: url.clone() },
            secrets: vec![secret.clone()],
            owner: "team".into(),
            enabled: true,
        })
        .await
        .unwrap();
    // The handler fails until `allow` exists, then records the event it was given.
    let (allow, handled) = (s.dir.join("allow"), s.dir.join("handled"));
    let script = format!(
        "test -f {allow} || exit 1; {{ cat; echo; echo \"$NHI_EVENT_TYPE $NHI_EVENT_TARGET_ID\"; }} >> {handled}",
        allow = allow.display(),
        handled = handled.display()
    );
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_nhi"));
    serve
        .args([
            "events",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--audience",
            &url,
        ])
        .args(["--issuer", &s.h.config.broker_issuer, "--exec", &script])
        .args(["--jwks-url", &format!("{}/.well-known/jwks.json", s.url)])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let receiver = serve.spawn().unwrap();
    wait_listening(port).await;

    // Not a SET from the broker: refused with RFC 8935's error, nothing run.
    let forged = reqwest_post(
        &url,
        "eyJhbGciOiJFUzI1NiIsInR5cCI6InNlY2V2ZW50K2p3dCIsImtpZCI6IngifQ.e30.AAAA",
    )
    .await;
    assert_eq!(forged.0, 400, "{}", forged.1);
    assert!(forged.1.contains("\"err\""), "{}", forged.1);

    let t0 = f.now();
    let revocation =
        s.h.revoke(RevocationTarget::Secret, &secret, "suspected leak", t0)
            .await;
    f.drain().await;
    let delivery = |s: &Stack| {
        let (table, pk, sk) = (
            s.h.config.registry_table.clone(),
            format!("DEST#{destination}"),
            format!("DELIVERY#{}", revocation.revocation_id),
        );
        let dynamo = s.h.dynamo.clone();
        async move {
            let item = dynamo
                .get_item()
                .table_name(table)
                .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk))
                .key("sk", aws_sdk_dynamodb::types::AttributeValue::S(sk))
                .consistent_read(true)
                .send()
                .await
                .unwrap()
                .item
                .expect("a delivery record");
            attr(&item, "status").to_string()
        }
    };
    assert_eq!(
        delivery(&s).await,
        "pending",
        "a failed command is not an acknowledgement"
    );
    assert!(!handled.exists());

    // The broker's retry, once the handler works: acknowledged, recorded as confirmed.
    std::fs::write(&allow, "").unwrap();
    f.set_clock(t0 + 30);
    f.service.retry_due().await.unwrap();
    assert_eq!(delivery(&s).await, "confirmed");
    let record = std::fs::read_to_string(&handled).unwrap();
    let (json_line, env_line) = record.trim_end().rsplit_once('\n').unwrap();
    let event: Value = serde_json::from_str(json_line).unwrap();
    assert_eq!(event["type"], "urn:nhi-broker:secevent:credential-revoked");
    assert_eq!(event["target_id"], secret.as_str());
    assert_eq!(event["reason"], "suspected leak");
    assert_eq!(event["txn"], revocation.revocation_id.as_str());
    assert_eq!(env_line, format!("urn:nhi-broker:secevent:credential-revoked {secret}"));
    assert!(!record.contains(&value));
    drop(receiver);
}

/// POST a SET body; (status, body).
async fn reqwest_post(url: &str, body: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/secevent+jwt")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

/// `name<<delimiter` blocks of a GitHub file command file, last value per name.
fn file_command_values(path: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut values = std::collections::BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let (name, delimiter) = line.split_once("<<").expect("name<<delimiter");
        let mut value = Vec::new();
        for line in lines.by_ref() {
            if line == delimiter {
                break;
            }
            value.push(line);
        }
        values.insert(name.to_string(), value.join("\n"));
    }
    values
}

#[tokio::test(flavor = "current_thread")]
async fn the_github_action_masks_sets_exports_and_revokes_in_its_post_step() {
    let s = Stack::new().await;
    let value = format!("pw-{}", uuid::Uuid::new_v4());
    let secret = granted_secret(&s, "cli-action", &value).await;
    let role = granted_role(&s).await;
    let job_token = s.h.token(&s.h.claims());
    let (oidc, _stop) = serve_fn(move |_, path, headers, _| {
        let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("bearer job-request-token");
        if !authorized || !path.contains("audience=nhi-broker") {
            return (401, "{}".into());
        }
        (200, json!({ "value": job_token }).to_string())
    })
    .await;
    let (output, env, state) = (s.dir.join("output"), s.dir.join("env"), s.dir.join("state"));
    let action = concat!(env!("CARGO_MANIFEST_DIR"), "/action");
    let step = |script: &str| {
        let mut node = tokio::process::Command::new("node");
        node.arg(format!("{action}/{script}"))
            .env("ACTIONS_ID_TOKEN_REQUEST_URL", format!("{oidc}/token?api-version=2.0"))
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "job-request-token")
            .env("INPUT_URL", &s.url)
            .env("INPUT_AUDIENCE", &s.h.target)
            .env("INPUT_SECRET", &secret)
            .env("INPUT_ROLE", &role)
            .env("INPUT_AWS-REGION", "eu-west-1")
            .env("INPUT_SUBJECT-AUDIENCE", "nhi-broker")
            .env("INPUT_NHI", env!("CARGO_BIN_EXE_nhi"))
            .env("GITHUB_OUTPUT", &output)
            .env("GITHUB_ENV", &env)
            .env("GITHUB_STATE", &state);
        node
    };
    let main = run(step("main.js")).await;
    assert_eq!(main.code, 0, "{}{}", main.stdout, main.stderr);
    let outputs = file_command_values(&output);
    let exported = file_command_values(&env);
    let token = &outputs["token"];
    assert_eq!(claim(token, "sub"), s.h.subject);
    assert_eq!(outputs["secret"], value);
    assert_eq!(exported["AWS_SESSION_TOKEN"], outputs["aws-session-token"]);
    assert_eq!(exported["AWS_ACCESS_KEY_ID"], outputs["aws-access-key-id"]);
    assert_eq!(exported["AWS_REGION"], "eu-west-1");
    // Every value was masked, and appears in the log only inside its mask command.
    let credentials = [
        token.as_str(),
        value.as_str(),
        &exported["AWS_ACCESS_KEY_ID"],
        &exported["AWS_SECRET_ACCESS_KEY"],
        &exported["AWS_SESSION_TOKEN"],
    ];
    for credential in credentials {
        assert!(main.stdout.contains(&format!("::add-mask::{credential}\n")), "masked");
        let outside_masks = main.stdout.lines().filter(|l| !l.starts_with("::add-mask::"));
        assert!(outside_masks.clone().all(|l| !l.contains(credential)));
        assert!(!main.stderr.contains(credential));
    }
    let leases = file_command_values(&state)["leases"].clone();
    assert_eq!(leases.split(' ').count(), 3);
    assert_eq!(outputs["lease-ids"], leases);
    assert!(lease_statuses(&s).await.iter().all(|(_, status)| status == "active"));

    // The post step, as the runner starts it: state in STATE_*.
    let mut post = step("post.js");
    post.env("STATE_leases", &leases);
    let post = run(post).await;
    assert_eq!(post.code, 0, "{}{}", post.stdout, post.stderr);
    let statuses = lease_statuses(&s).await;
    assert_eq!(statuses.len(), 3);
    assert!(statuses.iter().all(|(_, status)| status == "revoked"), "{statuses:?}");
    assert_eq!(s.introspect(token).await, json!({"active": false}));
}
