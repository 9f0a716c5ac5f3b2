//! An invalid option value: the one error type of validation, exit status 2.
//! It carries the message only; every message names the option and the fix.

/// An invalid option value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);
