//! `nhi`: the nhi-broker client. Thin: flags in, library calls, output and exit code out.

use clap::{Args, Parser, Subcommand, ValueEnum};
use nhi_client::agent::{AgentFile, AgentPlan};
use nhi_client::exec::{EnvCredential, ExecPlan};
use nhi_client::identity::{DEFAULT_SUBJECT_AUDIENCE, IdentityChoice, IdentitySource};
use nhi_client::{Broker, Error, ExchangeRequest, Result, Secret, TokenType};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

const EXIT_CODES: &str = "Exit codes: 0 success; 1 failure (identity source, I/O, unexpected answer); 2 usage; \
3 refused by the broker (4xx: retrying will not help); 4 broker unavailable after retries; 5 (agent) a credential \
expired before it could be renewed. `nhi exec` exits with its command's code (128+N for signal N).";

#[derive(Parser)]
#[command(name = "nhi", version, about = "Short-lived credentials from nhi-broker for this workload", after_help = EXIT_CODES)]
struct Cli {
    /// The broker's base URL (https, or http to loopback).
    #[arg(long, hide_env_values = true, env = "NHI_URL", global = true)]
    url: Option<String>,
    /// text: the credential alone; json: everything the broker released.
    #[arg(
        long,
        value_enum,
        hide_env_values = true,
        env = "NHI_OUTPUT",
        default_value = "text",
        global = true
    )]
    output: Output,
    #[command(flatten)]
    identity: IdentityFlags,
    /// Attempts per broker call (503, 502, 504, 429 and connection errors are retried).
    #[arg(long, hide_env_values = true, env = "NHI_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10), global = true)]
    max_attempts: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct IdentityFlags {
    /// Identity: GitHub Actions' OIDC token (needs `permissions: id-token: write`).
    #[arg(long, global = true)]
    github_actions: bool,
    /// Identity: a Kubernetes projected service-account token file.
    #[arg(long, hide_env_values = true, env = "NHI_K8S_TOKEN_FILE", global = true)]
    k8s_token_file: Option<PathBuf>,
    /// Identity: a file holding the subject token (re-read on every exchange).
    #[arg(long, hide_env_values = true, env = "NHI_SUBJECT_TOKEN_FILE", global = true)]
    subject_token_file: Option<PathBuf>,
    /// Identity: the environment variable holding the subject token.
    #[arg(long, hide_env_values = true, env = "NHI_SUBJECT_TOKEN_ENV", global = true)]
    subject_token_env: Option<String>,
    /// Identity: a shell command printing the subject token.
    #[arg(long, hide_env_values = true, env = "NHI_SUBJECT_TOKEN_COMMAND", global = true)]
    subject_token_command: Option<String>,
    /// Audience requested for the GitHub Actions token (the issuer's registered audience).
    #[arg(long, hide_env_values = true, env = "NHI_SUBJECT_AUDIENCE", default_value = DEFAULT_SUBJECT_AUDIENCE, global = true)]
    subject_audience: String,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Args, Clone)]
struct Lifetime {
    /// Space-separated scopes (default: all the grant allows).
    #[arg(long)]
    scope: Option<String>,
    /// Requested lifetime in seconds (the broker may issue less).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=43200))]
    expires_in: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a broker JWT for an API (its registered audience).
    Token {
        #[arg(long)]
        audience: String,
        #[command(flatten)]
        lifetime: Lifetime,
    },
    /// Stored secrets.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// AWS credentials.
    #[command(subcommand)]
    Aws(AwsCommand),
    /// Run a command with credentials in its environment; revoke them when it exits.
    Exec {
        /// A secret into a variable: ID=VAR (repeatable).
        #[arg(long = "secret", value_name = "ID=VAR")]
        secrets: Vec<String>,
        /// A broker JWT into a variable: AUDIENCE=VAR (repeatable).
        #[arg(long = "token", value_name = "AUDIENCE=VAR")]
        tokens: Vec<String>,
        /// AWS credentials for a role, as AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN.
        #[arg(long)]
        aws_role: Option<String>,
        /// Do not revoke when the command exits.
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        lifetime: Lifetime,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Keep credential files fresh (a sidecar): renew at about 2/3 of each lifetime.
    Agent {
        /// A secret into a file: ID=PATH (repeatable).
        #[arg(long = "secret", value_name = "ID=PATH")]
        secrets: Vec<String>,
        /// A broker JWT into a file: AUDIENCE=PATH (repeatable).
        #[arg(long = "token", value_name = "AUDIENCE=PATH")]
        tokens: Vec<String>,
        /// AWS credentials into a shared-credentials file: ROLE_ARN=PATH (repeatable).
        #[arg(long = "aws-role", value_name = "ROLE_ARN=PATH")]
        aws_roles: Vec<String>,
        /// Write the files once and exit (an init container).
        #[arg(long)]
        once: bool,
        /// Do not revoke the leases held when stopped.
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        lifetime: Lifetime,
    },
    /// Revoke broker JWTs or lease ids (RFC 7009); `-` reads them from stdin, one per line.
    Revoke {
        #[arg(required = true, value_name = "TOKEN|LEASE_ID")]
        tokens: Vec<String>,
    },
    /// Security Event Tokens from the broker (destinations).
    #[command(subcommand)]
    Events(EventsCommand),
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Print a secret's current value (or write it to a file, mode 0600, atomically).
    Get {
        id: String,
        #[arg(long)]
        output_file: Option<PathBuf>,
        #[command(flatten)]
        lifetime: Lifetime,
    },
}

#[derive(Subcommand)]
enum AwsCommand {
    /// Print a role's credentials and their lease as JSON (for scripts; see also credential-process).
    Credentials {
        #[arg(long)]
        role_arn: String,
        #[command(flatten)]
        lifetime: Lifetime,
    },
    /// Print the AWS credential_process JSON for a role (use in ~/.aws/config).
    CredentialProcess {
        #[arg(long)]
        role_arn: String,
        #[command(flatten)]
        lifetime: Lifetime,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Receive SETs (RFC 8935 push) and run a command for each verified event.
    Serve {
        /// Address to listen on (e.g. 0.0.0.0:8080 behind a TLS-terminating proxy).
        #[arg(long)]
        listen: String,
        /// This receiver's URL exactly as registered at the broker (the SETs' `aud`).
        #[arg(long)]
        audience: String,
        /// Shell command run per event (event in NHI_EVENT_* and as JSON on stdin); 0 = acknowledged.
        #[arg(long)]
        exec: String,
        /// The broker's issuer (`iss`); default: --url.
        #[arg(long)]
        issuer: Option<String>,
        /// The broker's JWKS; default: ISSUER/.well-known/jwks.json.
        #[arg(long)]
        jwks_url: Option<String>,
        /// Oldest `iat` accepted, in seconds.
        #[arg(long, default_value_t = 300)]
        max_age: i64,
        /// Longest the command may run, in seconds.
        #[arg(long, default_value_t = 60)]
        exec_timeout: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(_) => {
            eprintln!("nhi: cannot start");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nhi: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn broker(cli: &Cli) -> Result<Broker> {
    let url = cli
        .url
        .as_deref()
        .ok_or_else(|| Error::Usage("the broker's URL is not set: --url or NHI_URL".into()))?;
    let mut broker = Broker::new(url)?;
    broker.retry.max_attempts = cli.max_attempts;
    Ok(broker)
}

fn identity(cli: &Cli) -> Result<Option<IdentitySource>> {
    let flags = &cli.identity;
    IdentityChoice {
        github_actions: flags.github_actions,
        k8s_token_file: flags.k8s_token_file.clone(),
        subject_token_file: flags.subject_token_file.clone(),
        subject_token_env: flags.subject_token_env.clone(),
        subject_token_command: flags.subject_token_command.clone(),
        subject_audience: flags.subject_audience.clone(),
    }
    .resolve(&|name| std::env::var(name).ok())
}

fn required_identity(cli: &Cli) -> Result<IdentitySource> {
    identity(cli)?.ok_or_else(nhi_client::identity::missing)
}

fn request(target: &str, token_type: TokenType, lifetime: &Lifetime) -> ExchangeRequest {
    ExchangeRequest {
        target: target.into(),
        token_type,
        scope: lifetime.scope.clone(),
        expires_in: lifetime.expires_in,
    }
}

/// `KEY=VALUE` split at the first `=` (`last`: at the last one).
fn pair(flag: &str, raw: &str, last: bool) -> Result<(String, String)> {
    let split = if last {
        raw.rsplit_once('=')
    } else {
        raw.split_once('=')
    };
    match split {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => Ok((key.into(), value.into())),
        _ => Err(Error::Usage(format!("{flag} takes NAME=VALUE, got {raw:?}"))),
    }
}

fn env_name(name: &str) -> Result<String> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name.into())
    } else {
        Err(Error::Usage(format!("{name:?} is not an environment variable name")))
    }
}

/// The credential on stdout, exactly; a newline only for a terminal.
fn print_value(value: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let newline = if std::io::stdout().is_terminal() { "\n" } else { "" };
    write!(out, "{value}{newline}")
        .and_then(|_| out.flush())
        .map_err(|e| Error::Failed(format!("cannot write to stdout: {}", e.kind())))
}

async fn run(cli: Cli) -> Result<i32> {
    match &cli.command {
        Command::Token { audience, lifetime } => {
            let (broker, identity) = (broker(&cli)?, required_identity(&cli)?);
            let issued = broker
                .exchange(&identity, &request(audience, TokenType::Jwt, lifetime))
                .await?;
            match cli.output {
                Output::Text => print_value(issued.access_token.expose())?,
                Output::Json => print_value(&nhi_client::output::issued_json(&issued))?,
            }
        }
        Command::Secret(SecretCommand::Get {
            id,
            output_file,
            lifetime,
        }) => {
            let (broker, identity) = (broker(&cli)?, required_identity(&cli)?);
            let issued = broker
                .exchange(&identity, &request(id, TokenType::Secret, lifetime))
                .await?;
            let document = match cli.output {
                Output::Text => zeroize::Zeroizing::new(issued.access_token.expose().to_string()),
                Output::Json => nhi_client::output::issued_json(&issued),
            };
            match output_file {
                Some(path) => nhi_client::files::write_atomically(path, document.as_bytes())?,
                None => print_value(&document)?,
            }
        }
        Command::Aws(AwsCommand::CredentialProcess { role_arn, lifetime }) => {
            let (broker, identity) = (broker(&cli)?, required_identity(&cli)?);
            let issued = broker
                .exchange(&identity, &request(role_arn, TokenType::AwsCredentials, lifetime))
                .await?;
            print_value(&nhi_client::output::credential_process(&issued)?)?;
        }
        Command::Aws(AwsCommand::Credentials { role_arn, lifetime }) => {
            let (broker, identity) = (broker(&cli)?, required_identity(&cli)?);
            let issued = broker
                .exchange(&identity, &request(role_arn, TokenType::AwsCredentials, lifetime))
                .await?;
            print_value(&nhi_client::output::issued_json(&issued))?;
        }
        Command::Exec {
            secrets,
            tokens,
            aws_role,
            keep,
            lifetime,
            command,
        } => {
            let mut credentials = Vec::new();
            for raw in secrets {
                let (id, var) = pair("--secret", raw, true)?;
                credentials.push(EnvCredential {
                    request: request(&id, TokenType::Secret, lifetime),
                    variable: env_name(&var)?,
                });
            }
            for raw in tokens {
                let (audience, var) = pair("--token", raw, true)?;
                credentials.push(EnvCredential {
                    request: request(&audience, TokenType::Jwt, lifetime),
                    variable: env_name(&var)?,
                });
            }
            if let Some(role) = aws_role {
                credentials.push(EnvCredential {
                    request: request(role, TokenType::AwsCredentials, lifetime),
                    variable: String::new(),
                });
            }
            if credentials.is_empty() {
                return Err(Error::Usage("nhi exec needs --secret, --token or --aws-role".into()));
            }
            let (broker, identity) = (broker(&cli)?, required_identity(&cli)?);
            let plan = ExecPlan {
                credentials,
                keep: *keep,
                command: command.clone(),
            };
            return nhi_client::exec::run(&broker, &identity, &plan).await;
        }
        Command::Agent {
            secrets,
            tokens,
            aws_roles,
            once,
            keep,
            lifetime,
        } => {
            let mut files = Vec::new();
            for (flag, list, token_type) in [
                ("--secret", secrets, TokenType::Secret),
                ("--token", tokens, TokenType::Jwt),
                ("--aws-role", aws_roles, TokenType::AwsCredentials),
            ] {
                for raw in list {
                    let (target, path) = pair(flag, raw, false)?;
                    files.push(AgentFile {
                        request: request(&target, token_type, lifetime),
                        path: path.into(),
                    });
                }
            }
            let (broker, identity) = (broker(&cli)?, required_identity(&cli)?);
            let plan = AgentPlan {
                files,
                once: *once,
                keep: *keep,
            };
            nhi_client::agent::run(&broker, &identity, &plan, stopped()).await?;
        }
        Command::Revoke { tokens } => {
            let mut handles = Vec::new();
            for raw in tokens {
                if raw == "-" {
                    let mut input = zeroize::Zeroizing::new(String::new());
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
                        .map_err(|e| Error::Failed(format!("cannot read stdin: {}", e.kind())))?;
                    handles.extend(
                        input
                            .lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(|l| Secret::new(l.into())),
                    );
                } else {
                    handles.push(Secret::new(raw.clone()));
                }
            }
            let broker = broker(&cli)?;
            let identity = identity(&cli)?;
            for handle in &handles {
                broker.revoke(handle, identity.as_ref()).await?;
            }
            if cli.output == Output::Json {
                print_value(&serde_json::json!({ "revoked": handles.len() }).to_string())?;
            }
        }
        Command::Events(EventsCommand::Serve {
            listen,
            audience,
            exec,
            issuer,
            jwks_url,
            max_age,
            exec_timeout,
        }) => {
            let issuer = issuer
                .clone()
                .or_else(|| cli.url.clone())
                .ok_or_else(|| Error::Usage("the broker's issuer is not set: --issuer, --url or NHI_URL".into()))?;
            let issuer = issuer.trim_end_matches('/').to_string();
            let jwks_url = jwks_url
                .clone()
                .unwrap_or_else(|| format!("{issuer}/.well-known/jwks.json"));
            let verifier = nhi_client::set::SetVerifier::new(&issuer, audience, &jwks_url, *max_age)?;
            let handler = std::sync::Arc::new(nhi_client::events::Handler::new(
                verifier,
                exec,
                std::time::Duration::from_secs(*exec_timeout),
            ));
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| Error::Failed(format!("cannot listen on {listen}: {}", e.kind())))?;
            let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            eprintln!("nhi events: listening on {local} for SETs to {audience}");
            nhi_client::events::serve(listener, handler, stopped()).await;
        }
    }
    Ok(0)
}

/// Resolves on SIGTERM or SIGINT.
async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn help_never_shows_the_values_of_environment_variables() {
        let command = super::Cli::command();
        for arg in command.get_arguments().filter(|a| a.get_env().is_some()) {
            assert!(
                arg.is_hide_env_values_set(),
                "--{} would print its variable's value",
                arg.get_id()
            );
        }
        command.debug_assert();
    }
}
