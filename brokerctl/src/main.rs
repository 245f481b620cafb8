//! brokerctl: the operator CLI. AWS configuration as the AWS CLI reads it (profiles, region,
//! `AWS_ENDPOINT_URL`); table names and keys from the same `NHI_*` variables the functions use
//! (`source .local/local.env` under `make local`), or flags.

use brokerctl::{CliError, Ctl, Manifest, Report, SecretValue, Tables, rotation_policy};
use clap::{Parser, Subcommand, ValueEnum};
use nhi_broker::domain::{Issuer, JwksSource, RevocationTarget, Secret, Target, TargetKind};
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
    /// Who may obtain what (write them with `apply`).
    Grant {
        #[command(subcommand)]
        action: ListAction,
    },
    /// Systems holding copies of secrets (write them with `apply`).
    Destination {
        #[command(subcommand)]
        action: ListAction,
    },
    /// Make the registry match a YAML/JSON manifest (issuers, targets, grants, destinations).
    /// Shows the changes; writes them only with --yes.
    Apply {
        #[arg(long, short)]
        file: String,
        #[arg(long)]
        yes: bool,
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
    /// Query the audit trail, or `audit verify` its hash chains (exit 5 on tampering).
    Audit {
        #[command(subcommand)]
        verify: Option<AuditAction>,
        #[arg(long)]
        secret: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        grant: Option<String>,
        /// RFC 3339 or epoch seconds.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
    /// Rotate one secret now (an EventBridge event the template routes to rotate).
    Rotate { secret: String },
}

#[derive(Subcommand)]
enum AuditAction {
    Verify,
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
    /// Register a secret; with a value source, store its first value.
    Put {
        id: String,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        environment: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, group = "value")]
        value_file: Option<String>,
        #[arg(long, group = "value")]
        value_stdin: bool,
        /// Generate a random alphanumeric value of this length.
        #[arg(long, group = "value")]
        generate: Option<usize>,
        /// Rotate every this many seconds (random values of --rotate-length characters).
        #[arg(long)]
        rotate_every: Option<i64>,
        #[arg(long, default_value_t = 3600)]
        grace: i64,
        #[arg(long, default_value_t = 40)]
        rotate_length: usize,
        #[arg(long)]
        disabled: bool,
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
            let text = if output == Output::Json {
                serde_json::to_string_pretty(&report.json).unwrap_or_default()
            } else {
                report.text
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

async fn run(cli: Cli) -> Result<Report, CliError> {
    let ctl = Ctl::new(
        Tables {
            registry: cli.registry_table,
            leases: cli.leases_table,
            audit: cli.audit_table,
            revocations: cli.revocations_table,
            secrets_key_id: cli.secrets_key_id,
            event_bus: cli.event_bus,
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
                    disabled,
                },
        } => {
            let value = match (value_file, value_stdin, generate) {
                (Some(path), _, _) => Some(SecretValue::File(path)),
                (_, true, _) => Some(SecretValue::Stdin),
                (_, _, Some(length)) => Some(SecretValue::Generate(length)),
                _ => None,
            };
            let secret = Secret {
                id,
                owner,
                environment,
                enabled: !disabled,
                description,
                rotation: rotation_policy(rotate_every, grace, rotate_length)?,
            };
            ctl.put_secret(&secret, value).await
        }
        Command::Grant {
            action: ListAction::List,
        } => ctl.list("grant").await,
        Command::Destination {
            action: ListAction::List,
        } => ctl.list("destination").await,
        Command::Apply { file, yes } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::usage(format!("cannot read {file}: {}", e.kind())))?;
            ctl.apply(&Manifest::parse(&text, &file)?, yes).await
        }
        Command::Revoke { kind, id, reason } => ctl.revoke(kind.into(), &id, &reason).await,
        Command::Unrevoke {
            kind: UnrevokeKind::Subject,
            id,
            reason,
        } => ctl.unrevoke_subject(&id, &reason).await,
        Command::Inventory { secret } => ctl.inventory(secret.as_deref()).await,
        Command::Audit {
            verify: Some(AuditAction::Verify),
            ..
        } => ctl.audit_verify().await,
        Command::Audit {
            verify: None,
            secret,
            subject,
            grant,
            since,
            until,
        } => {
            let since = since.as_deref().map(brokerctl::parse_time).transpose()?;
            let until = until.as_deref().map(brokerctl::parse_time).transpose()?;
            ctl.audit(secret.as_deref(), subject.as_deref(), grant.as_deref(), since, until)
                .await
        }
        Command::Rotate { secret } => ctl.rotate(&secret).await,
    }
}
