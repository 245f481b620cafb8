//! `nhi agent`: a sidecar that keeps credential files fresh.
//!
//! Each file is written atomically (mode 0600) at start, then re-exchanged at a random point
//! between 60% and 70% of its lifetime, so many agents never renew in step. A failed renewal is
//! retried with backoff until the credential it replaces expires; if it is still not renewed
//! then, the agent exits 5 so the orchestrator restarts it (or the pod) rather than leaving an
//! expired file looking valid. On SIGTERM or SIGINT it revokes the leases it holds (unless
//! `--keep`) and exits 0. A replaced lease is not revoked: a reader may still hold the old value
//! until it expires on its own.

use crate::broker::{Broker, ExchangeRequest, Issued, TokenType};
use crate::error::{Error, Result};
use crate::identity::IdentitySource;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct AgentFile {
    pub request: ExchangeRequest,
    /// A JWT or a secret value alone; AWS credentials as a shared-credentials file (`[default]`).
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AgentPlan {
    pub files: Vec<AgentFile>,
    /// Write once and exit (an init container).
    pub once: bool,
    pub keep: bool,
}

struct Held {
    issued: Issued,
    renew_at: tokio::time::Instant,
    failures: u32,
}

/// When to renew a credential of `lifetime` seconds obtained now: 60-70% of its lifetime.
pub fn renewal_delay(lifetime: i64) -> Duration {
    let fraction = 0.6 + crate::jitter_fraction() / 10.0;
    Duration::from_secs_f64(lifetime.max(1) as f64 * fraction)
}

fn write(file: &AgentFile, issued: &Issued) -> Result<()> {
    let contents = match issued.token_type {
        TokenType::AwsCredentials => crate::output::aws_credentials_file(issued, "default")?,
        _ => zeroize::Zeroizing::new(issued.access_token.expose().to_string()),
    };
    crate::files::write_atomically(&file.path, contents.as_bytes())?;
    eprintln!(
        "nhi agent: wrote {} (lease {}, expires {})",
        file.path.display(),
        issued.lease_id,
        crate::output::rfc3339(issued.expires_at())
    );
    Ok(())
}

pub async fn run(
    broker: &Broker,
    identity: &IdentitySource,
    plan: &AgentPlan,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    if plan.files.is_empty() {
        return Err(Error::Usage(
            "nhi agent needs at least one --secret, --token or --aws-role".into(),
        ));
    }
    let requests: Vec<ExchangeRequest> = plan.files.iter().map(|f| f.request.clone()).collect();
    let first = crate::exec::obtain_all(broker, identity, &requests).await?;
    let mut held = Vec::with_capacity(first.len());
    for (file, issued) in plan.files.iter().zip(first) {
        write(file, &issued)?;
        held.push(Held {
            renew_at: tokio::time::Instant::now() + renewal_delay(issued.expires_in),
            issued,
            failures: 0,
        });
    }
    if plan.once {
        return Ok(());
    }
    tokio::pin!(shutdown);
    loop {
        let next = held.iter().map(|h| h.renew_at).min().expect("at least one file");
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = &mut shutdown => {
                if !plan.keep {
                    let issued: Vec<Issued> = held.iter().map(|h| h.issued.clone()).collect();
                    for failure in crate::exec::revoke_all(broker, identity, &issued).await {
                        eprintln!("nhi agent: {failure}");
                    }
                }
                return Ok(());
            }
        }
        for (file, slot) in plan.files.iter().zip(held.iter_mut()) {
            if slot.renew_at > tokio::time::Instant::now() {
                continue;
            }
            let renewed = match broker.exchange(identity, &file.request).await {
                Ok(issued) => write(file, &issued).map(|_| issued),
                Err(e) => Err(e),
            };
            match renewed {
                Ok(issued) => {
                    slot.renew_at = tokio::time::Instant::now() + renewal_delay(issued.expires_in);
                    slot.issued = issued;
                    slot.failures = 0;
                }
                Err(e) => {
                    let left = slot.issued.expires_at() - crate::now();
                    if left <= 0 {
                        return Err(Error::NotRenewed(format!(
                            "{} expired before it could be renewed: {e}",
                            file.path.display()
                        )));
                    }
                    slot.failures += 1;
                    let backoff = broker.retry.delay(slot.failures, None);
                    let wait = backoff.min(Duration::from_secs(left as u64));
                    eprintln!(
                        "nhi agent: renewing {} failed ({e}); retrying in {:.1} s, {left} s before it expires",
                        file.path.display(),
                        wait.as_secs_f64()
                    );
                    slot.renew_at = tokio::time::Instant::now() + wait;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_60_and_70_percent_of_the_lifetime() {
        for _ in 0..1000 {
            let d = renewal_delay(900).as_secs_f64();
            assert!((540.0..=630.0).contains(&d), "{d}");
        }
    }
}
