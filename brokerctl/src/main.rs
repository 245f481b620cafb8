//! brokerctl: the operator CLI. AWS configuration as the AWS CLI reads it (profiles, region,
//! `AWS_ENDPOINT_URL`); table names and keys from the same `NHI_*` variables the functions use
//! (`source .local/local.env` under `make local`), or flags.

use brokerctl::{
    ApplyOptions, AuditSearch, CliError, Ctl, Manifest, Report, RotationFlags, SecretPut, SecretValue, Tables,
};
use clap::{Parser, Subcommand, ValueEnum};
use nhi_broker::domain::{Issuer, JwksSource, RevocationTarget, Target, TargetKind};
use std::io::Write;

#[derive(Parser)]
#[command(
    name = "brokerctl",
    about = "Operate nhi-broker: registry, revocation, inventory, audit"
)]
struct Cli {
    #[arg(long, env = "NHI_REGISTRY_TABLE")]
    registry_table: String,
    #[arg(long, env = "NHI_LEASES_TABLE")]
    leases_table: String,
    #[arg(long, env = "NHI_AUDIT_TABLE")]
    audit_table: String,
    #[arg(long, env = "NHI_REVOCATIONS_TABLE")]
    revocations_table: String,
    /// KMS key secret values are encrypted under (needed only to store a value).
    #[arg(long, env = "NHI_SECRETS_KEY_ID")]
    secrets_key_id: Option<String>,
    /// KMS key that certifies audit chains (template output AuditKeyId).
    #[arg(long, env = "NHI_AUDIT_KEY_ID")]
    audit_key_id: Option<String>,
    /// The audit export bucket (template output AuditExportBucketName), for `audit verify --export`.
    #[arg(long, env = "NHI_EXPORT_BUCKET")]
    export_bucket: Option<String>,
    /// Event bus for on-demand rotation requests.
    #[arg(long, env = "NHI_EVENT_BUS", default_value = "default")]
    event_bus: String,
    /// Recorded as the actor of revocations (`operator:<name>`).
    #[arg(long, env = "NHI_OPERATOR", default_value_t = default_operator())]
    operator: String,
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

fn default_operator() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
    /// JSON Lines: one record per line (audit events), for jq and log pipelines.
    Jsonl,
}

#[derive(Subcommand)]
enum Command {
    /// Identity providers whose tokens are accepted.
    Issuer {
        #[command(subcommand)]
        action: IssuerAction,
    },
    /// JWT audiences and AWS roles credentials are issued for.
    Target {
        #[command(subcommand)]
        action: TargetAction,
    },
    /// Stored secrets (values are written encrypted and never shown).
    Secret {
        #[command(subcommand)]
        action: SecretAction,
    },
    /// Who may obtain what (write them with `apply`); explain a decision.
    Grant {
        #[command(subcommand)]
        action: GrantAction,
    },
    /// Systems holding copies of secrets (write them with `apply`); resolve their exposure.
    Destination {
        #[command(subcommand)]
        action: DestinationAction,
    },
    /// Make the registry match a YAML/JSON manifest (issuers, targets, grants, destinations).
    /// Checks the whole manifest first (exit 2 on any problem), shows the changes (exit 4 when a
    /// dry run has some), and writes them all or nothing only with --yes.
    Apply {
        #[arg(long, short)]
        file: String,
        #[arg(long)]
        yes: bool,
        /// Revoke grants and disable destinations the manifest no longer names.
        #[arg(long)]
        prune: bool,
        /// Allow a change larger than one transaction: dependency-ordered transactions.
        #[arg(long)]
        staged: bool,
    },
    /// Revoke a secret, version (<secret>#<version>), grant, subject (<issuer>#<sub>), lease or
    /// destination everywhere.
    Revoke {
        #[arg(value_enum)]
        kind: Kind,
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Lift a subject revocation (`subject <issuer>#<sub>`): the identity may exchange again.
    /// Leases revoked with it stay revoked. Audited.
    Unrevoke {
        #[arg(value_enum)]
        kind: UnrevokeKind,
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Where secrets are active: leases, destinations (confirmed version, delivery state), grants.
    /// Exits 3 when a destination is unconfirmed.
    Inventory { secret: Option<String> },
    /// Query the audit trail from its indexes (oldest first, one page), or `audit verify` its hash
    /// chains and digests (exit 5 on tampering). Without --subject, --secret, --target or --grant
    /// the window is at most 400 days and defaults to the last day.
    Audit {
        #[command(subcommand)]
        verify: Option<AuditAction>,
        /// Events of one subject (the token's `sub`).
        #[arg(long)]
        subject: Option<String>,
        /// Events of one secret (recorded as `ID` or `secret:ID`).
        #[arg(long)]
        secret: Option<String>,
        /// Events of one target, exactly as recorded (`destination:billing`, an audience, a role ARN).
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        grant: Option<String>,
        /// RFC 3339 or epoch seconds (inclusive).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// Events per page (1-1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
        /// The token a full page printed (stderr), for the page after it.
        #[arg(long)]
        next_token: Option<String>,
    },
    /// Rotate one secret now (an EventBridge event the template routes to rotate). Refused when
    /// rotate would skip it. With --wait: exit 0 rotated, 1 failed, 6 not finished in time.
    Rotate {
        secret: String,
        #[arg(long)]
        wait: bool,
        /// Seconds --wait waits.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum DestinationAction {
    List,
    /// Clear a destination's exposure once it confirmed what it missed (or the secret rotated since).
    Resolve {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Queue the destination's unconfirmed deliveries again (revoke-fanout's retry schedule sends them).
    Redeliver {
        id: String,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Verify every chain and digest (exit 5 on tampering); with --export, also compare the table
    /// with its append-only copy in the export bucket.
    Verify {
        #[arg(long)]
        export: bool,
        /// Seconds an item may take to reach the export before its absence is tampering.
        #[arg(long, default_value_t = 900, requires = "export")]
        export_grace: i64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum UnrevokeKind {
    Subject,
}

#[derive(Subcommand)]
enum ListAction {
    List,
}

#[derive(Subcommand)]
enum GrantAction {
    List,
    /// Evaluate a subject token against the live registry: for every grant of its issuer, the
    /// stage (and claim) that rules it out, and the grant that would win. Exit 0: a grant
    /// applies; 3: none does.
    Explain {
        /// The subject token, verified against its issuer's registered keys.
        #[arg(long, conflicts_with = "claims_file", required_unless_present = "claims_file")]
        token_file: Option<String>,
        /// A JSON object of claims (with iss and sub), evaluated without any verification.
        #[arg(long, requires = "unverified")]
        claims_file: Option<String>,
        /// Acknowledge that --claims-file is not verified.
        #[arg(long)]
        unverified: bool,
        /// The audience, role ARN or secret id asked for.
        #[arg(long)]
        target: String,
        /// Requested scopes (repeat, or space-separated).
        #[arg(long)]
        scope: Vec<String>,
        #[arg(long, default_value = nhi_broker::domain::TOKEN_TYPE_JWT)]
        requested_token_type: String,
    },
}

#[derive(Subcommand)]
enum IssuerAction {
    Put {
        /// Exact `iss` of its tokens.
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        name: String,
        /// Accepted `aud` values (repeat).
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        #[arg(long, conflicts_with = "jwks_file")]
        jwks_url: Option<String>,
        /// A JWK Set stored with the issuer (clusters without a JWKS endpoint).
        #[arg(long)]
        jwks_file: Option<String>,
        #[arg(long = "alg", default_values_t = vec!["RS256".to_string(), "ES256".to_string()])]
        algorithms: Vec<String>,
        /// Each token (by jti) may be exchanged once.
        #[arg(long)]
        one_time_jti: bool,
        /// Whole segments (ended by `:` or `/`) a grant's subject_pattern must fix before its
        /// first wildcard: 2 for GitHub (`repo:<owner>/`), so no pattern reaches other owners.
        #[arg(long, default_value_t = nhi_broker::domain::DEFAULT_PATTERN_PREFIX_SEGMENTS)]
        pattern_prefix_segments: u32,
        #[arg(long)]
        disabled: bool,
    },
    List,
}

#[derive(Subcommand)]
enum TargetAction {
    Put {
        #[arg(long)]
        id: String,
        #[arg(long, value_enum)]
        kind: TargetKindArg,
        #[arg(long)]
        environment: String,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        disabled: bool,
    },
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum TargetKindArg {
    Jwt,
    AwsRole,
}

#[derive(Subcommand)]
enum SecretAction {
    /// Register a secret with its first value, or update one (omitted flags keep their values;
    /// the environment never changes; later values come from `rotate`).
    Put {
        id: String,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        environment: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, group = "value")]
        value_file: Option<String>,
        #[arg(long, group = "value")]
        value_stdin: bool,
        /// Generate a random alphanumeric value of this length (16 to 4096).
        #[arg(long, group = "value")]
        generate: Option<usize>,
        /// Rotate every this many seconds (random values of --rotate-length characters).
        #[arg(long)]
        rotate_every: Option<i64>,
        /// Seconds the replaced version stays valid (default 3600, or the current policy's).
        #[arg(long)]
        grace: Option<i64>,
        /// Length of rotated values (default 40, or the current policy's).
        #[arg(long)]
        rotate_length: Option<usize>,
        /// Remove the rotation policy.
        #[arg(long, conflicts_with_all = ["rotate_every", "grace", "rotate_length"])]
        no_rotation: bool,
        #[arg(long, conflicts_with = "enabled")]
        disabled: bool,
        #[arg(long)]
        enabled: bool,
    },
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Secret,
    Version,
    Grant,
    Subject,
    Lease,
    Destination,
}

impl From<Kind> for RevocationTarget {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Secret => Self::Secret,
            Kind::Version => Self::SecretVersion,
            Kind::Grant => Self::Grant,
            Kind::Subject => Self::Subject,
            Kind::Lease => Self::Lease,
            Kind::Destination => Self::Destination,
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let output = cli.output;
    match run(cli).await {
        Ok(report) => {
            let text = match output {
                Output::Json => serde_json::to_string_pretty(&report.json).unwrap_or_default(),
                Output::Jsonl => report.json_lines(),
                Output::Table => report.text,
            };
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            std::process::exit(report.exit);
        }
        Err(e) => {
            eprintln!("brokerctl: {}", e.message);
            std::process::exit(e.code);
        }
    }
}

/// A manifest read and parsed before any AWS client exists (its problems are exit 2).
fn read_manifest(file: &str) -> Result<Manifest, CliError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| CliError::usage(format!("cannot read {file}: {}", e.kind())))?;
    Manifest::parse(&text, file).map_err(|problems| brokerctl::manifest::refuse(file, &problems))
}

async fn run(cli: Cli) -> Result<Report, CliError> {
    let ctl = Ctl::new(
        Tables {
            registry: cli.registry_table,
            leases: cli.leases_table,
            audit: cli.audit_table,
            revocations: cli.revocations_table,
            secrets_key_id: cli.secrets_key_id,
            audit_key_id: cli.audit_key_id.filter(|k| !k.trim().is_empty()),
            event_bus: cli.event_bus,
            export_bucket: cli.export_bucket.filter(|b| !b.trim().is_empty()),
        },
        cli.operator,
    )
    .await?;
    match cli.command {
        Command::Issuer {
            action: IssuerAction::List,
        } => ctl.list("issuer").await,
        Command::Issuer {
            action:
                IssuerAction::Put {
                    pattern_prefix_segments,
                    issuer,
                    name,
                    audiences,
                    jwks_url,
                    jwks_file,
                    algorithms,
                    one_time_jti,
                    disabled,
                },
        } => {
            let jwks = match (jwks_url, jwks_file) {
                (Some(url), None) => JwksSource::Url { url },
                (None, Some(path)) => JwksSource::Static {
                    jwks: std::fs::read_to_string(&path)
                        .map_err(|e| CliError::usage(format!("cannot read {path}: {}", e.kind())))?,
                },
                _ => return Err(CliError::usage("give --jwks-url or --jwks-file")),
            };
            ctl.put_issuer(&Issuer {
                issuer,
                name,
                audiences,
                jwks,
                algorithms,
                enabled: !disabled,
                one_time_jti,
                pattern_prefix_segments,
            })
            .await
        }
        Command::Target {
            action: TargetAction::List,
        } => ctl.list("target").await,
        Command::Target {
            action:
                TargetAction::Put {
                    id,
                    kind,
                    environment,
                    owner,
                    disabled,
                },
        } => {
            ctl.put_target(&Target {
                id,
                kind: match kind {
                    TargetKindArg::Jwt => TargetKind::Jwt,
                    TargetKindArg::AwsRole => TargetKind::AwsRole,
                },
                environment,
                owner,
                enabled: !disabled,
            })
            .await
        }
        Command::Secret {
            action: SecretAction::List,
        } => ctl.list("secret").await,
        Command::Secret {
            action:
                SecretAction::Put {
                    id,
                    owner,
                    environment,
                    description,
                    value_file,
                    value_stdin,
                    generate,
                    rotate_every,
                    grace,
                    rotate_length,
                    no_rotation,
                    disabled,
                    enabled,
                },
        } => {
            let value = match (value_file, value_stdin, generate) {
                (Some(path), _, _) => Some(SecretValue::File(path)),
                (_, true, _) => Some(SecretValue::Stdin),
                (_, _, Some(length)) => Some(SecretValue::Generate(length)),
                _ => None,
            };
            ctl.put_secret(SecretPut {
                id,
                owner,
                environment,
                description,
                enabled: match (enabled, disabled) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                rotation: RotationFlags {
                    every: rotate_every,
                    grace,
                    length: rotate_length,
                    none: no_rotation,
                },
                value,
            })
            .await
        }
        Command::Grant {
            action: GrantAction::List,
        } => ctl.list("grant").await,
        Command::Grant {
            action:
                GrantAction::Explain {
                    token_file,
                    claims_file,
                    unverified: _,
                    target,
                    scope,
                    requested_token_type,
                },
        } => {
            let subject = match (token_file, claims_file) {
                (Some(path), _) => brokerctl::explain::SubjectSource::TokenFile(path),
                (None, Some(path)) => brokerctl::explain::SubjectSource::UnverifiedClaimsFile(path),
                (None, None) => return Err(CliError::usage("give --token-file, or --claims-file with --unverified")),
            };
            ctl.explain(&brokerctl::explain::ExplainRequest {
                subject,
                target,
                scope: scope
                    .iter()
                    .flat_map(|s| s.split_whitespace())
                    .map(str::to_string)
                    .collect(),
                requested_token_type,
            })
            .await
        }
        Command::Destination {
            action: DestinationAction::List,
        } => ctl.list("destination").await,
        Command::Destination {
            action: DestinationAction::Resolve { id, reason },
        } => ctl.resolve_destination(&id, &reason).await,
        Command::Destination {
            action: DestinationAction::Redeliver { id },
        } => ctl.redeliver(&id).await,
        Command::Apply {
            file,
            yes,
            prune,
            staged,
        } => {
            let manifest = read_manifest(&file)?;
            let options = ApplyOptions {
                write: yes,
                prune,
                staged,
                source: file,
            };
            ctl.apply(&manifest, &options).await
        }
        Command::Revoke { kind, id, reason } => ctl.revoke(kind.into(), &id, &reason).await,
        Command::Unrevoke {
            kind: UnrevokeKind::Subject,
            id,
            reason,
        } => ctl.unrevoke_subject(&id, &reason).await,
        Command::Inventory { secret } => ctl.inventory(secret.as_deref()).await,
        Command::Audit {
            verify: Some(AuditAction::Verify { export, export_grace }),
            ..
        } => ctl.audit_verify(export.then_some(export_grace)).await,
        Command::Audit {
            verify: None,
            subject,
            secret,
            target,
            grant,
            since,
            until,
            limit,
            next_token,
        } => {
            let since = since.as_deref().map(brokerctl::parse_time).transpose()?;
            let until = until.as_deref().map(brokerctl::parse_time).transpose()?;
            let mut search = AuditSearch::new(subject, secret, target, grant, (since, until));
            search.limit = limit as usize;
            search.next_token = next_token;
            ctl.audit(&search).await
        }
        Command::Rotate { secret, wait, timeout } => {
            ctl.rotate(&secret, wait.then(|| std::time::Duration::from_secs(timeout)))
                .await
        }
    }
}
