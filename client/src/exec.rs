//! `nhi exec`: run a command with credentials in its environment, then revoke them.
//!
//! Order: every credential is obtained first (if one fails, those already obtained are revoked
//! and the command never starts); the command runs with them in its environment; INT, TERM, HUP
//! and QUIT reaching `nhi` are passed on to it; when it exits, every lease is revoked (RFC 7009)
//! unless `--keep`, and `nhi` exits with the command's code (128 + N when a signal N ended it). A
//! failed revocation is reported on stderr and, when the command itself succeeded, makes `nhi`
//! exit 1: a credential left alive must not look like success.

use crate::broker::{Broker, ExchangeRequest, Issued, TokenType};
use crate::error::{Error, Result};
use crate::identity::IdentitySource;
use std::os::unix::process::ExitStatusExt;

/// One credential for the command's environment.
#[derive(Debug, Clone)]
pub struct EnvCredential {
    pub request: ExchangeRequest,
    /// Variable for a JWT or a secret; ignored for AWS credentials (the AWS_* variables).
    pub variable: String,
}

#[derive(Debug, Clone)]
pub struct ExecPlan {
    pub credentials: Vec<EnvCredential>,
    pub keep: bool,
    pub command: Vec<String>,
}

/// Obtain every request's credential, or none: on a failure those already obtained are revoked.
pub async fn obtain_all(
    broker: &Broker,
    identity: &IdentitySource,
    requests: &[ExchangeRequest],
) -> Result<Vec<Issued>> {
    let mut issued = Vec::with_capacity(requests.len());
    for request in requests {
        match broker.exchange(identity, request).await {
            Ok(credential) => issued.push(credential),
            Err(e) => {
                for failure in revoke_all(broker, identity, &issued).await {
                    eprintln!("nhi: {failure}");
                }
                return Err(e);
            }
        }
    }
    Ok(issued)
}

/// Revoke every credential; returns one message per failure (never naming a credential).
pub async fn revoke_all(broker: &Broker, identity: &IdentitySource, issued: &[Issued]) -> Vec<String> {
    let mut failures = Vec::new();
    for credential in issued {
        let result = match credential.token_type {
            // A broker JWT revokes itself; leases are revoked by id with the holder's token.
            TokenType::Jwt => broker.revoke(&credential.access_token, None).await,
            _ => {
                broker
                    .revoke(&crate::Secret::new(credential.lease_id.clone()), Some(identity))
                    .await
            }
        };
        if let Err(e) = result {
            failures.push(format!("could not revoke lease {}: {e}", credential.lease_id));
        }
    }
    failures
}

/// The environment the command gets.
fn environment(plan: &ExecPlan, issued: &[Issued]) -> Vec<(String, crate::Secret)> {
    let mut env = Vec::new();
    for (wanted, credential) in plan.credentials.iter().zip(issued) {
        match credential.token_type {
            TokenType::AwsCredentials => {
                let secret = |s: &str| crate::Secret::new(s.to_string());
                env.push((
                    "AWS_ACCESS_KEY_ID".into(),
                    secret(credential.aws_access_key_id.as_deref().unwrap_or_default()),
                ));
                if let Some(key) = &credential.aws_secret_access_key {
                    env.push(("AWS_SECRET_ACCESS_KEY".into(), key.clone()));
                }
                env.push(("AWS_SESSION_TOKEN".into(), credential.access_token.clone()));
                env.push((
                    "AWS_CREDENTIAL_EXPIRATION".into(),
                    secret(&crate::output::rfc3339(credential.expires_at())),
                ));
            }
            _ => env.push((wanted.variable.clone(), credential.access_token.clone())),
        }
    }
    env
}

/// Run the plan; `Ok(code)` is the exit code `nhi` should end with.
pub async fn run(broker: &Broker, identity: &IdentitySource, plan: &ExecPlan) -> Result<i32> {
    let Some((program, args)) = plan.command.split_first() else {
        return Err(Error::Usage("nhi exec needs a command after --".into()));
    };
    let requests: Vec<ExchangeRequest> = plan.credentials.iter().map(|c| c.request.clone()).collect();
    let issued = obtain_all(broker, identity, &requests).await?;
    let mut command = tokio::process::Command::new(program);
    command.args(args);
    for (name, value) in environment(plan, &issued) {
        command.env(name, value.expose());
    }
    let code = match command.spawn() {
        Ok(child) => wait_forwarding_signals(child).await,
        Err(e) => {
            eprintln!("nhi: cannot run {program}: {}", e.kind());
            127
        }
    };
    if plan.keep {
        return Ok(code);
    }
    let failures = revoke_all(broker, identity, &issued).await;
    for failure in &failures {
        eprintln!("nhi: {failure}");
    }
    Ok(if failures.is_empty() || code != 0 { code } else { 1 })
}

async fn wait_forwarding_signals(mut child: tokio::process::Child) -> i32 {
    use tokio::signal::unix::{SignalKind, signal};
    let pid = child.id().map(|p| p as libc::pid_t);
    let kinds = [
        (SignalKind::interrupt(), libc::SIGINT),
        (SignalKind::terminate(), libc::SIGTERM),
        (SignalKind::hangup(), libc::SIGHUP),
        (SignalKind::quit(), libc::SIGQUIT),
    ];
    let mut streams: Vec<_> = kinds
        .iter()
        .filter_map(|(kind, number)| signal(*kind).ok().map(|s| (s, *number)))
        .collect();
    loop {
        let forwarded = futures_select(&mut streams);
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(status) => status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                    Err(_) => 1,
                };
            }
            number = forwarded => {
                if let Some(pid) = pid {
                    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
                    unsafe { libc::kill(pid, number) };
                }
            }
        }
    }
}

/// The number of the first signal any of `streams` receives.
async fn futures_select(streams: &mut [(tokio::signal::unix::Signal, i32)]) -> i32 {
    std::future::poll_fn(|cx| {
        for (stream, number) in streams.iter_mut() {
            if stream.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(*number);
            }
        }
        std::task::Poll::Pending
    })
    .await
}
