//! One typed configuration, read from the environment once at start-up. Missing or invalid
//! settings fail start-up with a message naming every offending variable.

use crate::error::BrokerError;
use crate::exchange::jwks::JwksSettings;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// `iss` of broker-issued tokens: the broker's public base URL.
    pub broker_issuer: String,
    pub registry_table: String,
    pub leases_table: String,
    pub audit_table: String,
    pub revocations_table: String,
    /// KMS key id (not alias) of the active ES256 signing key; also the `kid` of issued tokens.
    pub signing_key_id: String,
    /// KMS key id or ARN of the symmetric key secret material is encrypted under.
    pub secrets_key_id: String,
    /// KMS key (ECC_NIST_P256, SIGN_VERIFY) that certifies audit chains (`NHI_AUDIT_KEY_ID`). The
    /// template always sets it; without it chains are written uncertified and `audit verify`
    /// reports them.
    pub audit_key_id: Option<String>,
    pub max_token_ttl_seconds: i64,
    pub clock_leeway_seconds: i64,
    /// How long issuer, grant and target lookups are reused (0 disables).
    pub policy_cache: Duration,
    pub jwks: JwksSettings,
    /// Name of the signing-key ring in the registry (several deployments may share a table).
    pub signing_key_ring: String,
    /// How long a function reuses the signing-key ring it read (0 disables).
    pub signing_keys_cache: Duration,
    /// How exchange signs tokens (`NHI_SIGNING_MODE`: `kms`, the default, or `envelope`).
    pub signing_mode: crate::domain::SigningMode,
    pub rotation: RotationConfig,
    pub fanout: FanoutConfig,
    pub sweep: SweepConfig,
    /// Deadlines and retries of every AWS call.
    pub aws: AwsCallSettings,
    /// exchange answers every request within this (503 past it), inside the function timeout.
    pub request_deadline: Duration,
}

/// Deadlines of every AWS SDK call: an attempt that hangs is abandoned and retried, an operation
/// that cannot finish in time fails (exchange answers 503 `temporarily_unavailable`). The defaults
/// fit several sequential calls inside exchange's 10 s function timeout and request deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsCallSettings {
    pub connect_timeout: Duration,
    pub attempt_timeout: Duration,
    pub operation_timeout: Duration,
    pub max_attempts: u32,
}

impl Default for AwsCallSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(1000),
            attempt_timeout: Duration::from_millis(1500),
            operation_timeout: Duration::from_millis(3000),
            max_attempts: 3,
        }
    }
}

impl AwsCallSettings {
    /// From `NHI_AWS_*` (every problem named), else the defaults.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>, problems: &mut Vec<String>) -> Self {
        let defaults = Self::default();
        let mut ms = |name: &str, default: Duration, min: u64, max: u64| match lookup(name) {
            None => default,
            Some(raw) => match raw.trim().parse::<u64>() {
                Ok(v) if (min..=max).contains(&v) => Duration::from_millis(v),
                _ => {
                    problems.push(format!("{name} must be an integer in {min}..={max}"));
                    default
                }
            },
        };
        let connect_timeout = ms("NHI_AWS_CONNECT_TIMEOUT_MS", defaults.connect_timeout, 50, 30_000);
        let attempt_timeout = ms("NHI_AWS_ATTEMPT_TIMEOUT_MS", defaults.attempt_timeout, 50, 60_000);
        let operation_timeout = ms("NHI_AWS_OPERATION_TIMEOUT_MS", defaults.operation_timeout, 100, 120_000);
        let max_attempts = match lookup("NHI_AWS_MAX_ATTEMPTS") {
            None => defaults.max_attempts,
            Some(raw) => match raw.trim().parse::<u32>() {
                Ok(v) if (1..=10).contains(&v) => v,
                _ => {
                    problems.push("NHI_AWS_MAX_ATTEMPTS must be an integer in 1..=10".into());
                    defaults.max_attempts
                }
            },
        };
        if attempt_timeout > operation_timeout {
            problems.push("NHI_AWS_ATTEMPT_TIMEOUT_MS must not exceed NHI_AWS_OPERATION_TIMEOUT_MS".into());
        }
        Self {
            connect_timeout,
            attempt_timeout,
            operation_timeout,
            max_attempts,
        }
    }

    /// For tools outside the functions (brokerctl, the local runner): the environment, or the
    /// defaults when it says nothing valid.
    pub fn from_env() -> Result<Self, BrokerError> {
        let mut problems = Vec::new();
        let settings = Self::from_lookup(&|name| std::env::var(name).ok(), &mut problems);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(BrokerError::Config(problems.join("; ")))
        }
    }
}

/// What revoke-fanout needs beyond the shared settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutConfig {
    pub page_size: usize,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff_seconds: i64,
    /// A destination that has not confirmed a change within this window is flagged unconfirmed.
    pub confirm_window_seconds: i64,
}

/// What expire-sweeper needs beyond the shared settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepConfig {
    pub page_size: usize,
    pub max_per_run: usize,
    pub concurrency: usize,
}

/// What rotate needs beyond the shared settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationConfig {
    /// Secrets handled per run; the rest wait for the next run.
    pub batch_size: usize,
    /// Secrets rotated at once within a run.
    pub concurrency: usize,
    /// Age at which the active signing key is replaced (0: never).
    pub signing_key_max_age_seconds: i64,
    /// Age at which the active envelope key is replaced (signing mode `envelope`): short, so a
    /// key that leaked from an execution environment soon signs nothing.
    pub envelope_key_max_age_seconds: i64,
    /// KMS pending-deletion window of retired signing keys.
    pub key_deletion_window_days: i32,
    /// Roles allowed to sign with new signing keys (exchange, revoke-fanout, rotate), and the
    /// role that manages them (rotate). Unset only against the local emulator.
    pub key_signers: Vec<String>,
    pub key_admin_role: Option<String>,
}

impl RotationConfig {
    /// The key policy for new signing keys, if roles are configured.
    pub fn signing_key_policy(&self) -> Option<String> {
        let admin = self.key_admin_role.as_deref()?;
        // arn:aws:iam::<account>:role/... -> arn:aws:iam::<account>:root
        let root = admin.split(":role/").next().map(|prefix| format!("{prefix}:root"))?;
        Some(crate::aws::kms::signing_key_policy(&root, &self.key_signers, admin))
    }
}

impl Config {
    pub fn from_env() -> Result<Self, BrokerError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, BrokerError> {
        let mut problems = Vec::new();
        let mut required = |name: &str| match lookup(name).filter(|v| !v.trim().is_empty()) {
            Some(v) => v,
            None => {
                problems.push(format!("{name} is required"));
                String::new()
            }
        };
        let broker_issuer = required("NHI_BROKER_ISSUER");
        let registry_table = required("NHI_REGISTRY_TABLE");
        let leases_table = required("NHI_LEASES_TABLE");
        let audit_table = required("NHI_AUDIT_TABLE");
        let revocations_table = required("NHI_REVOCATIONS_TABLE");
        let signing_key_id = required("NHI_SIGNING_KEY_ID");
        let secrets_key_id = required("NHI_SECRETS_KEY_ID");
        let audit_key_id = lookup("NHI_AUDIT_KEY_ID").filter(|v| !v.trim().is_empty());
        let mut int = |name: &str, default: i64, min: i64, max: i64| match lookup(name) {
            None => default,
            Some(raw) => match raw.trim().parse::<i64>() {
                Ok(v) if (min..=max).contains(&v) => v,
                _ => {
                    problems.push(format!("{name} must be an integer in {min}..={max}"));
                    default
                }
            },
        };
        let max_token_ttl_seconds = int("NHI_MAX_TOKEN_TTL_SECONDS", 3600, 60, 43_200);
        let clock_leeway_seconds = int("NHI_CLOCK_LEEWAY_SECONDS", 30, 0, 300);
        let jwks_cache = int("NHI_JWKS_CACHE_SECONDS", 600, 0, 86_400);
        let jwks_refresh = int("NHI_JWKS_MIN_REFRESH_SECONDS", 30, 0, 3600);
        let jwks_timeout_ms = int("NHI_JWKS_TIMEOUT_MS", 3000, 100, 10_000);
        let policy_cache_seconds = int("NHI_POLICY_CACHE_SECONDS", 5, 0, 60);
        let signing_keys_cache_seconds = int("NHI_SIGNING_KEYS_CACHE_SECONDS", 60, 0, 300);
        let batch_size = int("NHI_ROTATION_BATCH_SIZE", 100, 1, 1000);
        let concurrency = int("NHI_ROTATION_CONCURRENCY", 8, 1, 64);
        let signing_key_max_age_seconds = int("NHI_SIGNING_KEY_MAX_AGE_SECONDS", 30 * 86_400, 0, 366 * 86_400);
        let key_deletion_window_days = int("NHI_SIGNING_KEY_DELETION_WINDOW_DAYS", 30, 7, 30);
        let envelope_key_max_age_seconds = int("NHI_ENVELOPE_KEY_MAX_AGE_SECONDS", 86_400, 3600, 7 * 86_400);
        let fanout_page_size = int("NHI_FANOUT_PAGE_SIZE", 100, 1, 1000);
        let fanout_concurrency = int("NHI_FANOUT_CONCURRENCY", 16, 1, 64);
        let delivery_max_attempts = int("NHI_DELIVERY_MAX_ATTEMPTS", 6, 1, 20);
        let delivery_backoff_seconds = int("NHI_DELIVERY_BACKOFF_SECONDS", 30, 1, 3600);
        let confirm_window_seconds = int("NHI_DELIVERY_CONFIRM_WINDOW_SECONDS", 3600, 60, 7 * 86_400);
        let sweep_page_size = int("NHI_SWEEP_PAGE_SIZE", 100, 1, 1000);
        let sweep_max_per_run = int("NHI_SWEEP_MAX_PER_RUN", 5000, 1, 100_000);
        let sweep_concurrency = int("NHI_SWEEP_CONCURRENCY", 8, 1, 64);
        let request_deadline_ms = int("NHI_REQUEST_DEADLINE_MS", 8000, 500, 29_000);
        let key_signers: Vec<String> = lookup("NHI_SIGNING_KEY_SIGNERS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let key_admin_role = lookup("NHI_SIGNING_KEY_ADMIN_ROLE").filter(|v| !v.trim().is_empty());
        for arn in key_signers.iter().chain(key_admin_role.iter()) {
            if !(arn.starts_with("arn:") && arn.contains(":role/")) {
                problems.push("NHI_SIGNING_KEY_SIGNERS and NHI_SIGNING_KEY_ADMIN_ROLE must be IAM role ARNs".into());
                break;
            }
        }
        if key_signers.is_empty() != key_admin_role.is_none() {
            problems
                .push("NHI_SIGNING_KEY_SIGNERS and NHI_SIGNING_KEY_ADMIN_ROLE are set together or not at all".into());
        }
        let signing_key_ring = lookup("NHI_SIGNING_KEY_RING")
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "default".into());

        let signing_mode = match lookup("NHI_SIGNING_MODE").filter(|v| !v.trim().is_empty()) {
            None => crate::domain::SigningMode::Kms,
            Some(raw) => crate::domain::SigningMode::parse(&raw).unwrap_or_else(|| {
                problems.push("NHI_SIGNING_MODE must be kms or envelope".into());
                crate::domain::SigningMode::Kms
            }),
        };
        let aws = AwsCallSettings::from_lookup(&lookup, &mut problems);
        if !broker_issuer.is_empty()
            && !broker_issuer.starts_with("https://")
            && !broker_issuer.starts_with("http://127.0.0.1")
            && !broker_issuer.starts_with("http://localhost")
        {
            problems.push("NHI_BROKER_ISSUER must be an https URL (http only for loopback)".into());
        }
        if signing_key_id.starts_with("alias/") {
            problems.push("NHI_SIGNING_KEY_ID must be a key id or key ARN, not an alias".into());
        }
        if !problems.is_empty() {
            return Err(BrokerError::Config(problems.join("; ")));
        }
        // `kid` is the bare key id even when configured as an ARN.
        let signing_key_id = signing_key_id.rsplit('/').next().unwrap_or_default().to_string();
        Ok(Self {
            broker_issuer: broker_issuer.trim_end_matches('/').to_string(),
            registry_table,
            leases_table,
            audit_table,
            revocations_table,
            signing_key_id,
            secrets_key_id,
            audit_key_id,
            max_token_ttl_seconds,
            clock_leeway_seconds,
            policy_cache: Duration::from_secs(policy_cache_seconds as u64),
            jwks: JwksSettings {
                cache_ttl: Duration::from_secs(jwks_cache as u64),
                min_refresh_interval: Duration::from_secs(jwks_refresh as u64),
                timeout: Duration::from_millis(jwks_timeout_ms as u64),
                ..JwksSettings::default()
            },
            signing_key_ring,
            signing_keys_cache: Duration::from_secs(signing_keys_cache_seconds as u64),
            signing_mode,
            rotation: RotationConfig {
                batch_size: batch_size as usize,
                concurrency: concurrency as usize,
                signing_key_max_age_seconds,
                envelope_key_max_age_seconds,
                key_deletion_window_days: key_deletion_window_days as i32,
                key_signers,
                key_admin_role,
            },
            fanout: FanoutConfig {
                page_size: fanout_page_size as usize,
                concurrency: fanout_concurrency as usize,
                max_attempts: delivery_max_attempts as u32,
                backoff_seconds: delivery_backoff_seconds,
                confirm_window_seconds,
            },
            sweep: SweepConfig {
                page_size: sweep_page_size as usize,
                max_per_run: sweep_max_per_run as usize,
                concurrency: sweep_concurrency as usize,
            },
            aws,
            request_deadline: Duration::from_millis(request_deadline_ms as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const FULL: &[(&str, &str)] = &[
        ("NHI_BROKER_ISSUER", "https://broker.example/"),
        ("NHI_REGISTRY_TABLE", "r"),
        ("NHI_LEASES_TABLE", "l"),
        ("NHI_AUDIT_TABLE", "a"),
        ("NHI_REVOCATIONS_TABLE", "v"),
        ("NHI_SECRETS_KEY_ID", "1234abcd-12ab-34cd-56ef-1234567890ac"),
        (
            "NHI_SIGNING_KEY_ID",
            "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        ),
    ];

    #[test]
    fn reads_required_and_defaults() {
        let c = Config::from_lookup(lookup(FULL)).unwrap();
        assert_eq!(c.broker_issuer, "https://broker.example");
        assert_eq!(c.signing_key_id, "1234abcd-12ab-34cd-56ef-1234567890ab");
        assert_eq!(c.max_token_ttl_seconds, 3600);
        assert_eq!(c.clock_leeway_seconds, 30);
        assert_eq!(c.aws, AwsCallSettings::default());
        assert!(c.aws.operation_timeout < c.request_deadline);
    }

    #[test]
    fn aws_deadlines_are_bounded_and_consistent() {
        let mut pairs = FULL.to_vec();
        pairs.push(("NHI_AWS_ATTEMPT_TIMEOUT_MS", "5000"));
        pairs.push(("NHI_AWS_OPERATION_TIMEOUT_MS", "2000"));
        pairs.push(("NHI_AWS_MAX_ATTEMPTS", "0"));
        let msg = Config::from_lookup(lookup(&pairs)).unwrap_err().to_string();
        assert!(
            msg.contains("must not exceed") && msg.contains("NHI_AWS_MAX_ATTEMPTS"),
            "{msg}"
        );
    }

    #[test]
    fn names_every_problem() {
        let err = Config::from_lookup(lookup(&[("NHI_MAX_TOKEN_TTL_SECONDS", "0")])).unwrap_err();
        let msg = err.to_string();
        for name in [
            "NHI_BROKER_ISSUER",
            "NHI_REGISTRY_TABLE",
            "NHI_SIGNING_KEY_ID",
            "NHI_MAX_TOKEN_TTL_SECONDS",
        ] {
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn signing_key_policy_names_the_configured_roles_and_the_account_root() {
        let mut pairs = FULL.to_vec();
        pairs.push((
            "NHI_SIGNING_KEY_SIGNERS",
            "arn:aws:iam::123456789012:role/x-exchange, arn:aws:iam::123456789012:role/x-rotate",
        ));
        pairs.push(("NHI_SIGNING_KEY_ADMIN_ROLE", "arn:aws:iam::123456789012:role/x-rotate"));
        let c = Config::from_lookup(lookup(&pairs)).unwrap();
        let policy: serde_json::Value = serde_json::from_str(&c.rotation.signing_key_policy().unwrap()).unwrap();
        assert_eq!(
            policy["Statement"][0]["Principal"]["AWS"],
            "arn:aws:iam::123456789012:root"
        );
        assert_eq!(
            policy["Statement"][1]["Principal"]["AWS"][0],
            "arn:aws:iam::123456789012:role/x-exchange"
        );
        assert!(
            !policy["Statement"][0]["Action"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == "kms:Sign")
        );
        // One without the other is refused.
        let mut half = FULL.to_vec();
        half.push(("NHI_SIGNING_KEY_ADMIN_ROLE", "arn:aws:iam::123456789012:role/x-rotate"));
        assert!(Config::from_lookup(lookup(&half)).is_err());
        assert!(
            Config::from_lookup(lookup(FULL))
                .unwrap()
                .rotation
                .signing_key_policy()
                .is_none()
        );
    }

    #[test]
    fn refuses_plain_http_issuer_and_aliases() {
        let mut pairs = FULL.to_vec();
        pairs[0] = ("NHI_BROKER_ISSUER", "http://broker.example");
        pairs[6] = ("NHI_SIGNING_KEY_ID", "alias/signing");
        let msg = Config::from_lookup(lookup(&pairs)).unwrap_err().to_string();
        assert!(msg.contains("https") && msg.contains("alias"), "{msg}");
    }
}
