//! The client's one error type, mapped once to an exit code. Messages never carry a credential:
//! the broker's own `error_description` never echoes one, and transport errors lose their URL.

/// Exit codes, as documented in `nhi --help` and the README.
pub mod exit {
    pub const FAILURE: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const REFUSED: i32 = 3;
    pub const UNAVAILABLE: i32 = 4;
    pub const NOT_RENEWED: i32 = 5;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags or configuration; nothing was attempted.
    #[error("{0}")]
    Usage(String),
    /// The workload identity could not be obtained.
    #[error("workload identity: {0}")]
    Identity(String),
    /// The broker answered with a client error: retrying will not help.
    #[error("the broker refused the request ({status}): {error}{}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default(), request_id.as_deref().map(|r| format!(" [request id {r}]")).unwrap_or_default())]
    Refused {
        status: u16,
        error: String,
        description: Option<String>,
        request_id: Option<String>,
    },
    /// The broker (or the network) failed after every retry.
    #[error("the broker is unavailable: {detail}{}", request_id.as_deref().map(|r| format!(" [request id {r}]")).unwrap_or_default())]
    Unavailable { detail: String, request_id: Option<String> },
    /// A credential expired before the agent could renew it.
    #[error("{0}")]
    NotRenewed(String),
    /// Anything else: I/O, a malformed answer, a failed command.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Refused { .. } => exit::REFUSED,
            Error::Unavailable { .. } => exit::UNAVAILABLE,
            Error::NotRenewed(_) => exit::NOT_RENEWED,
            Error::Identity(_) | Error::Failed(_) => exit::FAILURE,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A transport error without its URL (a GitHub token request URL carries a run-scoped id).
pub(crate) fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else if e.is_redirect() {
        "redirect refused".into()
    } else {
        "connection failed".into()
    }
}
