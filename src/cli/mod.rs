//! Command lines of `orchestrator` and `runner` (design.md §5: letters and
//! variables are public interface). Precedence: command line > environment >
//! `.env` in the working directory (loaded by the mains with dotenvy) > default.
//!
//! Owns the clap definitions and their translation into the validated
//! configuration the roles take (`config`); it must not run anything itself.

mod config;
mod credentials;
mod orchestrator;
mod runner;

pub use config::{orchestrator_config, runner_config, subcommand};
pub use orchestrator::{
    BundleArgs, Command, DemoArgs, DoctorArgs, ImageCommand, LogsArgs, OrchestratorCli, PruneArgs,
};
pub use runner::{RunnerCli, RunnerOpts};

use clap::ValueEnum;

use crate::types::runtime::Runtime;

/// `-R`: a runtime, or none to detect one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeChoice(pub Option<Runtime>);

/// Parse `-R`: empty means "detect".
pub(crate) fn parse_runtime(s: &str) -> Result<RuntimeChoice, String> {
    if s.is_empty() {
        return Ok(RuntimeChoice(None));
    }
    Runtime::from_str(s, true)
        .map(|r| RuntimeChoice(Some(r)))
        .map_err(|_| {
            format!(
                "unknown runtime {s:?}: use krunvm, podman or qemu, or leave it empty to detect"
            )
        })
}

/// A file system's size: [`parse_bytes`], 0 or at least 16M.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s)?;
    if bytes != 0 && bytes < 16 << 20 {
        return Err(format!(
            "{s:?} is too small for a file system (at least 16M, or 0 for none)"
        ));
    }
    Ok(bytes)
}

/// A number of bytes, at least 64K, e.g. `64M`: [`parse_bytes`].
pub fn parse_limit(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s)?;
    if bytes < 64 << 10 {
        return Err(format!("{s:?} is too small (at least 64K)"));
    }
    Ok(bytes)
}

/// A size with an optional K/M/G/T suffix (powers of 1024), e.g. `16G`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512M, 16G, 0)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Verbosity from `-v` count plus a numeric environment variable.
pub fn verbosity(count: u8, var: &str) -> u8 {
    let env = std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u8>().ok())
        .unwrap_or(0);
    count.saturating_add(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        RunnerCli::command().debug_assert();
        OrchestratorCli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16G").unwrap(), 16 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert!(parse_size("1K").unwrap_err().contains("too small"));
        assert!(parse_size("2X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("1.5G").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn runtime_parsing() {
        assert_eq!(parse_runtime("").unwrap(), RuntimeChoice(None));
        assert_eq!(
            parse_runtime("krunvm").unwrap(),
            RuntimeChoice(Some(Runtime::Krunvm))
        );
        assert!(parse_runtime("docker")
            .unwrap_err()
            .contains("krunvm, podman or qemu"));
    }
}
