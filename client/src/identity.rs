//! Where the workload's own identity comes from: the OIDC JWT its platform issues. Each source is
//! read again for every exchange (projected tokens rotate; GitHub's are short-lived; issuers with
//! one-time `jti` refuse a second use), and the token is never printed.
//!
//! Chosen explicitly (one of the flags below) or detected: GitHub Actions when its OIDC request
//! variables are set, then a Kubernetes projected token at [`DEFAULT_K8S_TOKEN_PATH`] when running
//! in a pod.

use crate::error::{Error, Result, transport};
use crate::{Secret, is_allowed_url};
use std::path::PathBuf;
use std::time::Duration;

/// Where `nhi` looks for a projected service-account token when none is named (examples/).
pub const DEFAULT_K8S_TOKEN_PATH: &str = "/var/run/secrets/nhi-broker/token";
/// The audience workloads request for their subject token unless told otherwise (README: the
/// issuer's registered `audiences`).
pub const DEFAULT_SUBJECT_AUDIENCE: &str = "nhi-broker";
/// Longest subject token read from a file, a variable or a command (the broker accepts 8 KiB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// GitHub Actions' OIDC provider (`permissions: id-token: write`).
    GitHubActions {
        request_url: String,
        request_token: Secret,
        audience: String,
    },
    /// A file read on every exchange (a Kubernetes projected token, or any file a tool refreshes).
    File { path: PathBuf },
    /// An environment variable of this process.
    Env { var: String },
    /// The standard output of `sh -c COMMAND`.
    Command { command: String },
}

/// How the user chose (or not) the identity source: flags and their environment variables.
#[derive(Debug, Default, Clone)]
pub struct IdentityChoice {
    pub github_actions: bool,
    pub k8s_token_file: Option<PathBuf>,
    pub subject_token_file: Option<PathBuf>,
    pub subject_token_env: Option<String>,
    pub subject_token_command: Option<String>,
    /// Audience of the token requested from GitHub.
    pub subject_audience: String,
}

impl IdentityChoice {
    /// The one source chosen, or the one detected; `Ok(None)` when there is none.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<IdentitySource>> {
        let explicit = [
            self.github_actions,
            self.k8s_token_file.is_some(),
            self.subject_token_file.is_some(),
            self.subject_token_env.is_some(),
            self.subject_token_command.is_some(),
        ]
        .iter()
        .filter(|chosen| **chosen)
        .count();
        if explicit > 1 {
            return Err(Error::Usage(
                "choose one identity source: --github-actions, --k8s-token-file, --subject-token-file, \
                 --subject-token-env or --subject-token-command"
                    .into(),
            ));
        }
        let github = || -> Result<IdentitySource> {
            let (Some(request_url), Some(request_token)) = (
                env("ACTIONS_ID_TOKEN_REQUEST_URL").filter(|v| !v.is_empty()),
                env("ACTIONS_ID_TOKEN_REQUEST_TOKEN").filter(|v| !v.is_empty()),
            ) else {
                return Err(Error::Identity(
                    "ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set: \
                     give the job `permissions: id-token: write`"
                        .into(),
                ));
            };
            if !is_allowed_url(&request_url) {
                return Err(Error::Identity(
                    "ACTIONS_ID_TOKEN_REQUEST_URL must be https (or http to loopback)".into(),
                ));
            }
            Ok(IdentitySource::GitHubActions {
                request_url,
                request_token: Secret::new(request_token),
                audience: self.subject_audience.clone(),
            })
        };
        if self.github_actions {
            return github().map(Some);
        }
        if let Some(path) = self.k8s_token_file.as_ref().or(self.subject_token_file.as_ref()) {
            return Ok(Some(IdentitySource::File { path: path.clone() }));
        }
        if let Some(var) = &self.subject_token_env {
            return Ok(Some(IdentitySource::Env { var: var.clone() }));
        }
        if let Some(command) = &self.subject_token_command {
            return Ok(Some(IdentitySource::Command {
                command: command.clone(),
            }));
        }
        // Detection.
        if env("ACTIONS_ID_TOKEN_REQUEST_URL").is_some() {
            return github().map(Some);
        }
        if env("KUBERNETES_SERVICE_HOST").is_some() && std::path::Path::new(DEFAULT_K8S_TOKEN_PATH).exists() {
            return Ok(Some(IdentitySource::File {
                path: DEFAULT_K8S_TOKEN_PATH.into(),
            }));
        }
        Ok(None)
    }
}

/// The error for commands that need an identity and have none.
pub fn missing() -> Error {
    Error::Usage(
        "no workload identity: pass --github-actions, --k8s-token-file PATH, --subject-token-file PATH, \
         --subject-token-env VAR or --subject-token-command CMD"
            .into(),
    )
}

impl IdentitySource {
    /// A fresh subject token from this source.
    pub async fn subject_token(&self, http: &reqwest::Client) -> Result<Secret> {
        let raw = match self {
            IdentitySource::GitHubActions {
                request_url,
                request_token,
                audience,
            } => github_token(http, request_url, request_token, audience).await?,
            IdentitySource::File { path } => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| Error::Identity(format!("cannot read {}: {}", path.display(), e.kind())))?;
                if bytes.len() > MAX_TOKEN_BYTES {
                    return Err(Error::Identity(format!("{} is larger than 16 KiB", path.display())));
                }
                Secret::new(
                    String::from_utf8(bytes)
                        .map_err(|_| Error::Identity(format!("{} is not UTF-8", path.display())))?,
                )
            }
            IdentitySource::Env { var } => {
                Secret::new(std::env::var(var).map_err(|_| Error::Identity(format!("the variable {var} is not set")))?)
            }
            IdentitySource::Command { command } => command_token(command).await?,
        };
        let token = raw.expose().trim();
        if token.is_empty() {
            return Err(Error::Identity("the subject token is empty".into()));
        }
        if token.len() > MAX_TOKEN_BYTES || token.split('.').count() != 3 {
            return Err(Error::Identity("the subject token is not a JWT".into()));
        }
        Ok(Secret::new(token.to_string()))
    }
}

async fn github_token(
    http: &reqwest::Client,
    request_url: &str,
    request_token: &Secret,
    audience: &str,
) -> Result<Secret> {
    let mut url = url::Url::parse(request_url)
        .map_err(|_| Error::Identity("ACTIONS_ID_TOKEN_REQUEST_URL is not a URL".into()))?;
    url.query_pairs_mut().append_pair("audience", audience);
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        let response = http
            .get(url.as_str())
            .header("authorization", format!("bearer {}", request_token.expose()))
            .header("accept", "application/json")
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                last = transport(&e);
                continue;
            }
        };
        let status = response.status().as_u16();
        if status >= 500 || status == 429 {
            last = format!("HTTP {status}");
            continue;
        }
        if status != 200 {
            return Err(Error::Identity(format!(
                "GitHub's OIDC endpoint answered HTTP {status}"
            )));
        }
        let body = zeroize::Zeroizing::new(
            response
                .bytes()
                .await
                .map_err(|e| Error::Identity(format!("GitHub's OIDC endpoint: {}", transport(&e))))?
                .to_vec(),
        );
        #[derive(serde::Deserialize)]
        struct Answer {
            value: String,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|_| Error::Identity("GitHub's OIDC endpoint answered without a token".into()))?;
        return Ok(Secret::new(answer.value));
    }
    Err(Error::Identity(format!("GitHub's OIDC endpoint: {last}")))
}

async fn command_token(command: &str) -> Result<Secret> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Identity(format!("cannot run the subject token command: {}", e.kind())))?;
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| Error::Identity("the subject token command took more than 30 s".into()))?
        .map_err(|e| Error::Identity(format!("the subject token command failed: {}", e.kind())))?;
    let stdout = zeroize::Zeroizing::new(output.stdout);
    if !output.status.success() {
        return Err(Error::Identity(format!(
            "the subject token command exited with {}",
            output.status
        )));
    }
    Ok(Secret::new(String::from_utf8(stdout.to_vec()).map_err(|_| {
        Error::Identity("the subject token command printed non-UTF-8".into())
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn two_sources_are_a_usage_error() {
        let choice = IdentityChoice {
            github_actions: true,
            subject_token_env: Some("T".into()),
            ..Default::default()
        };
        assert!(matches!(choice.resolve(&env_of(&[])), Err(Error::Usage(_))));
    }

    #[test]
    fn github_actions_is_detected_from_its_variables() {
        let choice = IdentityChoice {
            subject_audience: "aud".into(),
            ..Default::default()
        };
        let env = env_of(&[
            (
                "ACTIONS_ID_TOKEN_REQUEST_URL",
                "https://pipelines.example/token?api-version=2.0",
            ),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token"),
        ]);
        match choice.resolve(&env).unwrap() {
            Some(IdentitySource::GitHubActions { audience, .. }) => assert_eq!(audience, "aud"),
            other => panic!("{other:?}"),
        }
        assert!(choice.resolve(&env_of(&[])).unwrap().is_none());
    }

    #[test]
    fn a_github_request_url_in_cleartext_is_refused() {
        let choice = IdentityChoice {
            github_actions: true,
            ..Default::default()
        };
        let env = env_of(&[
            ("ACTIONS_ID_TOKEN_REQUEST_URL", "http://pipelines.example/token"),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token"),
        ]);
        assert!(matches!(choice.resolve(&env), Err(Error::Identity(_))));
    }

    #[tokio::test]
    async fn a_file_is_reread_on_every_exchange_and_must_hold_a_jwt() {
        let dir = std::env::temp_dir().join(format!("nhi-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let source = IdentitySource::File { path: path.clone() };
        let http = reqwest::Client::new();
        std::fs::write(&path, "a.b.c\n").unwrap();
        assert_eq!(source.subject_token(&http).await.unwrap().expose(), "a.b.c");
        std::fs::write(&path, "d.e.f").unwrap();
        assert_eq!(source.subject_token(&http).await.unwrap().expose(), "d.e.f");
        std::fs::write(&path, "not-a-jwt-secret-value").unwrap();
        let err = source.subject_token(&http).await.unwrap_err().to_string();
        assert!(!err.contains("not-a-jwt-secret-value"), "{err}");
    }

    #[tokio::test]
    async fn a_command_source_uses_stdout_and_fails_on_a_non_zero_exit() {
        let http = reqwest::Client::new();
        let ok = IdentitySource::Command {
            command: "echo x.y.z".into(),
        };
        assert_eq!(ok.subject_token(&http).await.unwrap().expose(), "x.y.z");
        let failing = IdentitySource::Command {
            command: "echo x.y.z; exit 3".into(),
        };
        assert!(failing.subject_token(&http).await.is_err());
    }
}
