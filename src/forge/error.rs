//! Failures talking to GitHub, and which of them a retry may cure. It neither
//! sends nor retries anything (`transport` does).

use std::time::Duration;

/// Failures talking to GitHub.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// The client could not be built (bad URL).
    #[error("cannot set up the GitHub client for {0}")]
    Setup(String, #[source] octocrab::Error),
    /// No answer (connection, TLS, timeout).
    #[error("no answer from GitHub while trying to {0}")]
    Transport(&'static str, #[source] octocrab::Error),
    /// An answer that is an error.
    #[error("GitHub refused to {what}: {status} {message}{hint}")]
    Refused {
        /// What we tried.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// GitHub's message.
        message: String,
        /// A hint at the fix, with `X-Accepted-GitHub-Permissions` when sent.
        hint: String,
        /// How long GitHub asked us to wait (`retry-after`, or until
        /// `x-ratelimit-reset` when `x-ratelimit-remaining` is 0).
        retry_after: Option<Duration>,
    },
    /// `generate-jitconfig` answered 409: the name exists.
    #[error("a runner named {0} already exists at GitHub")]
    Conflict(String),
    /// An answer we could not understand.
    #[error("unexpected answer from GitHub to {0}: {1}")]
    Decode(&'static str, String),
    /// `-G` names no visible group.
    #[error(
        "runner group {name:?} does not exist or is not visible here (groups: {available}); fix -G"
    )]
    NoSuchGroup {
        /// Asked for.
        name: String,
        /// What exists.
        available: String,
    },
}

impl ForgeError {
    /// Worth trying again later (5xx, 429, a rate-limited 403, no answer)?
    pub fn is_transient(&self) -> bool {
        match self {
            ForgeError::Transport(..) => true,
            ForgeError::Refused {
                status,
                retry_after,
                ..
            } => *status >= 500 || *status == 429 || (*status == 403 && retry_after.is_some()),
            _ => false,
        }
    }

    /// The wait GitHub asked for, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ForgeError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
