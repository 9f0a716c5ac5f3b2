//! `RunnerOpts` (raw command line) → `RunnerConfig` (validated). Every error
//! names the option and says how to fix it; all of them mean exit status 2.

use std::path::{Path, PathBuf};

use crate::cli::{RunnerOpts, Runtime};
use crate::forge::{Endpoints, ScopeKind};

/// An invalid option value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

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

/// Validated runner configuration.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Prefix of VM and runner names (`RUNNER_PREFIX`).
    pub prefix: String,
    /// Loop number.
    pub loop_id: u32,
    /// Loop directory given by the orchestrator (`RUNNER_ENVIRONMENT`), if any.
    pub environment: Option<PathBuf>,
    /// Runtime, if forced.
    pub runtime: Option<Runtime>,
    /// Where GitHub is.
    pub endpoints: Endpoints,
    /// Scope and principal.
    pub scope: ScopeKind,
    /// `owner/repo`, org or enterprise.
    pub principal: String,
    /// How the host authenticates (never logged, never sent to a guest).
    pub auth: crate::forge::Auth,
    /// Runner group name.
    pub group: String,
    /// Labels (never empty).
    pub labels: Vec<String>,
    /// JIT (default) or registration token.
    pub jit: bool,
    /// Image.
    pub image: String,
    /// vCPUs.
    pub cpus: u32,
    /// MiB.
    pub memory: u32,
    /// DNS.
    pub dns: String,
    /// Extra mounts.
    pub mounts: Vec<Mount>,
    /// Dev mode: (host dir, guest dir).
    pub dev: Option<(PathBuf, String)>,
    /// Guest user.
    pub user: String,
    /// Let the runner update itself.
    pub update: bool,
    /// Loop lifetime.
    pub terminate: Option<std::time::Duration>,
    /// Iterations, `None` = forever.
    pub repeat: Option<u64>,
    /// Fixed secret (`-S`).
    pub secret: Option<String>,
    /// Grace for busy jobs.
    pub grace: u64,
    /// Boot deadline to `.tkn`.
    pub boot_timeout: u64,
    /// Verbosity.
    pub verbose: u8,
    /// QEMU settings.
    pub qemu: crate::backend::qemu::QemuConfig,
    /// Registration budget.
    pub registrations: crate::runner::budget::Rate,
    /// Failed VMs in a row before the loop gives up.
    pub max_failures: u32,
}

impl RunnerConfig {
    /// Validate. `loop_id` comes after `--`; `prefix` and `environment` from the
    /// orchestrator's variables.
    pub fn from_opts(
        o: &RunnerOpts,
        loop_id: &[String],
        prefix: Option<String>,
        environment: Option<String>,
    ) -> Result<RunnerConfig, ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        let loop_id = match loop_id {
            [] => 1,
            [one] => match one.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => return err(format!("LOOP_ID {one:?} after -- must be a number ≥ 1")),
            },
            more => {
                return err(format!(
                    "only one LOOP_ID may follow --, got {}",
                    more.join(" ")
                ))
            }
        };
        let prefix = prefix
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "GH-runner".into());
        if !protocol::valid_prefix(&prefix) {
            return err(format!("RUNNER_PREFIX {prefix:?} must match [A-Za-z0-9][A-Za-z0-9_.-]* (at most 64 characters)"));
        }
        let endpoints = Endpoints::from_github(&o.github).map_err(ConfigError)?;
        let Some(principal) = o.principal.clone().filter(|p| !p.is_empty()) else {
            return err("-p/--principal is required: owner/repo for -s repo, the organisation for -s org, the enterprise for -s enterprise (or set RUNNER_PRINCIPAL)".into());
        };
        let ok_segment = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        match o.scope {
            ScopeKind::Repo => match principal.split_once('/') {
                Some((a, b)) if ok_segment(a) && ok_segment(b) => {}
                _ => {
                    return err(format!(
                        "-p/--principal {principal:?}: with -s repo it must be owner/repo"
                    ))
                }
            },
            _ if !ok_segment(&principal) => {
                return err(format!(
                "-p/--principal {principal:?}: with -s org or -s enterprise it is a single name"
            ))
            }
            _ => {}
        }
        let auth = match (&o.app_id, &o.app_key, o.pat.clone().filter(|p| !p.is_empty())) {
            (Some(id), Some(key), _) => {
                use std::os::unix::fs::PermissionsExt;
                let meta = std::fs::metadata(key).map_err(|e| ConfigError(format!("--app-key {}: {e}", key.display())))?;
                let pem = std::fs::read(key).map_err(|e| ConfigError(format!("--app-key {}: {e}", key.display())))?;
                if !pem.windows(10).any(|w| w == b"PRIVATE KE") {
                    return err(format!("--app-key {}: not a PEM private key (download one from the App's settings)", key.display()));
                }
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        "--app-key {} is readable by other users (mode {:o}): chmod 600 it",
                        key.display(),
                        meta.permissions().mode() & 0o777
                    );
                }
                if o.scope == ScopeKind::Enterprise {
                    return err("-s enterprise: GitHub Apps cannot manage enterprise runners; use a PAT with manage_runners:enterprise".into());
                }
                crate::forge::Auth::App { app_id: *id, key_pem: pem, installation: o.installation_id }
            }
            (_, _, Some(pat)) => crate::forge::Auth::Pat(pat),
            _ => {
                return err("no GitHub credential: set RUNNER_PAT (or -T) to a PAT that may manage self-hosted runners \
                            (classic: repo for -s repo, admin:org for -s org, manage_runners:enterprise for -s enterprise), \
                            or give a GitHub App with --app-id and --app-key".into())
            }
        };
        if o.scope == ScopeKind::Repo && !o.group.eq_ignore_ascii_case("default") {
            return err(format!(
                "-G/--group {:?}: repositories have no runner groups; use -G Default or -s org",
                o.group
            ));
        }
        let runtime_name = o.runtime.0.map(Runtime::name).unwrap_or("microvm");
        let mut labels: Vec<String> = o
            .labels
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if labels.is_empty() {
            labels = vec!["microvm".into()];
            if runtime_name != "microvm" {
                labels.push(runtime_name.into());
            }
        }
        if labels.len() > 100 {
            return err("-L/--labels: GitHub accepts at most 100 labels".into());
        }
        if o.user.is_empty() || o.user.contains(['\'', '\n', ':']) {
            return err(format!("-u/--user {:?} is not a user name", o.user));
        }
        for (flag, v) in [
            ("-G/--group", &o.group),
            ("-L/--labels", &o.labels),
            ("-d/--dns", &o.dns),
        ] {
            if v.contains(['\'', '\n', '\r', '\0']) {
                return err(format!("{flag}: quotes and newlines are not allowed"));
            }
        }
        if let Some(s) = &o.secret {
            if s.len() < 16 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return err("-S/--secret must be at least 16 letters or digits".into());
            }
        }
        let repeat = match o.repeat {
            -1 => None,
            n if n >= 1 => Some(n as u64),
            n => return err(format!("-r/--repeat {n}: use -1 (forever) or a number ≥ 1")),
        };
        let mounts = o
            .mounts
            .iter()
            .filter(|m| !m.trim().is_empty())
            .map(|m| Mount::parse(m.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let dev = match &o.dev_guest_dir {
            None => None,
            Some(g) if !g.starts_with('/') || g == "/" => {
                return err(format!(
                    "-D/--dir {g:?} must be an absolute guest directory"
                ))
            }
            Some(g) => {
                let host = match &o.dev_host_dir {
                    Some(h) => h.clone(),
                    None => std::env::current_exe()
                        .ok()
                        .and_then(|e| e.parent().map(Path::to_path_buf))
                        .ok_or_else(|| {
                            ConfigError(
                                "-D: cannot find this executable's directory; give --dev-dir"
                                    .into(),
                            )
                        })?,
                };
                if !host.join("entrypoint").is_file() {
                    return err(format!(
                        "-D/--dir: {} has no entrypoint; build it (see README) or point --dev-dir at it",
                        host.display()
                    ));
                }
                Some((host, g.trim_end_matches('/').to_string()))
            }
        };
        let forwards = o
            .net_forward
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| crate::backend::qemu::Forward::parse(f.trim()).map_err(ConfigError))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(k) = &o.kernel {
            if !k.is_file() {
                return err(format!("--kernel {}: no such file", k.display()));
            }
        }
        let qemu = crate::backend::qemu::QemuConfig {
            accel: o.accel,
            net: o.net,
            forwards,
            kernel: o.kernel.clone(),
            scratch: o.scratch_size,
        };
        Ok(RunnerConfig {
            registrations: o.registrations,
            max_failures: o.max_failures,
            qemu,
            prefix,
            loop_id,
            environment: environment.filter(|e| !e.is_empty()).map(PathBuf::from),
            runtime: o.runtime.0,
            endpoints,
            scope: o.scope,
            principal,
            auth,
            group: o.group.clone(),
            labels,
            jit: !o.no_jit,
            image: o.image.clone(),
            cpus: o.cpus,
            memory: o.memory,
            dns: o.dns.clone(),
            mounts,
            dev,
            user: o.user.clone(),
            update: o.update,
            terminate: (o.terminate > 0).then(|| std::time::Duration::from_secs(o.terminate)),
            repeat,
            secret: o.secret.clone(),
            grace: o.grace,
            boot_timeout: o.boot_timeout,
            verbose: o.verbose,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<RunnerConfig, ConfigError> {
        let mut v = vec!["runner"];
        v.extend_from_slice(args);
        let cli = crate::cli::RunnerCli::try_parse_from(v).unwrap();
        RunnerConfig::from_opts(&cli.opts, &cli.loop_id, None, None)
    }

    #[test]
    fn validates() {
        let c = parse(&["-T", "x", "-p", "o/r", "-R", "krunvm", "--", "3"]).unwrap();
        assert_eq!(c.loop_id, 3);
        assert_eq!(c.labels, ["microvm", "krunvm"]);
        assert!(parse(&["-T", "x", "-p", "o"])
            .unwrap_err()
            .0
            .contains("owner/repo"));
        assert!(parse(&["-T", "x"])
            .unwrap_err()
            .0
            .contains("-p/--principal"));
        assert!(parse(&["-p", "o/r", "-T", ""])
            .unwrap_err()
            .0
            .contains("RUNNER_PAT"));
        assert!(parse(&["-T", "x", "-p", "o/r", "-G", "big"])
            .unwrap_err()
            .0
            .contains("-G"));
        assert!(parse(&["-T", "x", "-p", "o/r", "-r", "0"])
            .unwrap_err()
            .0
            .contains("-r"));
        assert!(parse(&["-T", "x", "-p", "o/r", "-M", "/tmp"])
            .unwrap_err()
            .0
            .contains("-M"));
        assert!(parse(&["-T", "x", "-p", "o/r", "-M", "rel:/x"])
            .unwrap_err()
            .0
            .contains("absolute"));
        assert!(parse(&["-T", "x", "-p", "o", "-s", "org", "-G", "big"]).is_ok());
    }

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
