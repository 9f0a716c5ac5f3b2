//! A `-M HOST:GUEST[:OPTIONS]` mount, parsed and checked. Backends decide how to
//! pass it to their VMs; this file only knows its syntax.

use std::path::{Path, PathBuf};

use super::invalid::ConfigError;

/// A `-M HOST:GUEST[:OPTIONS]` mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Absolute host path (exists).
    pub host: PathBuf,
    /// Absolute guest path.
    pub guest: String,
    /// Backend options (podman: `z`, `ro`…), if given.
    pub options: Option<String>,
}

impl Mount {
    /// Parse and check one `-M` value.
    pub fn parse(s: &str) -> Result<Mount, ConfigError> {
        let bad = |why: &str| {
            ConfigError(format!(
                "-M/--mount {s:?}: {why}; expected HOST:GUEST[:OPTIONS] with absolute paths"
            ))
        };
        let mut parts = s.splitn(3, ':');
        let host = parts
            .next()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host path"))?;
        let guest = parts
            .next()
            .filter(|g| !g.is_empty())
            .ok_or_else(|| bad("no guest path"))?;
        let options = parts.next().map(str::to_string);
        if !host.starts_with('/') || !guest.starts_with('/') {
            return Err(bad("paths must be absolute"));
        }
        if guest == "/" || guest.trim_end_matches('/') == protocol::GUEST_ENV_DIR {
            return Err(bad("that guest path is reserved"));
        }
        if !Path::new(host).is_dir() && !Path::new(host).is_file() {
            return Err(bad("the host path does not exist"));
        }
        Ok(Mount {
            host: host.into(),
            guest: guest.into(),
            options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts() {
        let m = Mount::parse("/tmp:/cache:ro").unwrap();
        assert_eq!(
            (m.guest.as_str(), m.options.as_deref()),
            ("/cache", Some("ro"))
        );
        assert!(Mount::parse("/tmp:/_environment").is_err());
        assert!(Mount::parse("/nonexistent-xyz:/a").is_err());
    }
}
