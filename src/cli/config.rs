//! The top of the configuration flow: parsed command lines become the validated
//! configuration and requests the roles take (`RunnerConfig`, the orchestrator's
//! `OrchestratorConfig` and `Subcommand`). Checks and look-ups only: nothing here
//! starts a process, a VM or a request to GitHub. Every error names the option.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches};

use super::{
    Command, DemoArgs, DoctorArgs, ImageCommand, LogsArgs, OrchestratorCli, RunnerCli, RunnerOpts,
};
use crate::backend::qemu;
use crate::demo::DemoConfig;
use crate::doctor::DoctorConfig;
use crate::forge::{Auth, Endpoints, ScopeKind};
use crate::image::oci::OciInputs;
use crate::image::BundleInputs;
use crate::orchestrator::image::BundleJob;
use crate::orchestrator::logs::{LogsRequest, LogsTarget};
use crate::orchestrator::{OrchestratorConfig, OrchestratorError, Subcommand};
use crate::runner::config::RunnerConfig;
use crate::types::invalid::ConfigError;
use crate::types::mount::Mount;
use crate::types::paths::beside_me;
use crate::types::runtime::Runtime;

/// `runner`'s options → one loop's configuration. `loop_id` comes after `--`;
/// `prefix` and `environment` from the orchestrator's variables.
pub fn runner_config(
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
    // systemd credentials (credentials.rs) stand in for what is not given: the App's
    // key when --app-id is, else the PAT.
    let credential = |e: super::credentials::CredentialError| ConfigError(e.to_string());
    let app_key = match (&o.app_id, &o.app_key) {
        (Some(_), None) => super::credentials::app_key().map_err(credential)?,
        (_, key) => key.clone(),
    };
    let pat = match (
        &o.app_id,
        o.pat
            .as_ref()
            .map(|p| p.expose().to_string())
            .filter(|p| !p.is_empty()),
    ) {
        (None, None) => super::credentials::pat()
            .map_err(credential)?
            .map(|p| p.expose().to_string()),
        (_, pat) => pat,
    };
    let auth = match (&o.app_id, &app_key, pat) {
        (Some(_), None, _) => {
            return err("--app-id needs --app-key PEM_FILE (RUNNER_APP_KEY), or under systemd a runner-app-key credential".into())
        }
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
            Auth::App { app_id: *id, key_pem: pem, installation: o.installation_id }
        }
        (_, _, Some(pat)) => Auth::Pat(pat),
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
    if o.no_jit && !o.accept_scope_token {
        return err(
            "--no-jit hands every guest a registration token valid for the whole scope (-s/-p) for an hour: a job \
             could register runners of its own there; use JIT (the default) where the forge has it, or add \
             --accept-scope-token"
                .into(),
        );
    }
    if let Some(s) = o.secret.as_ref().map(|s| s.expose()) {
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
                            "-D: cannot find this executable's directory; give --dev-dir".into(),
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
        .map(|f| qemu::Forward::parse(f.trim()).map_err(ConfigError))
        .collect::<Result<Vec<_>, _>>()?;
    let allow = o
        .net_allow
        .iter()
        .filter(|a| !a.trim().is_empty())
        .map(|a| crate::guestnet::parse_allow(a).map_err(ConfigError))
        .collect::<Result<Vec<_>, _>>()?;
    if !allow.is_empty() && o.net != qemu::NetMode::Internet {
        return err(format!(
            "--net-allow goes with --net internet (the default), not --net {}",
            if o.net == qemu::NetMode::User {
                "user"
            } else {
                "restricted"
            }
        ));
    }
    // QEMU hands these to the guest on its kernel command line, where a space or a
    // quote would split or end a word: refused here, naming the option, rather
    // than when the first VM starts.
    if o.runtime.0 == Some(Runtime::Qemu) {
        let words = std::iter::once(("-d/--dns", o.dns.as_str()))
            .chain(
                mounts
                    .iter()
                    .map(|m| ("-M/--mount (guest path)", m.guest.as_str())),
            )
            .chain(dev.iter().map(|(_, g)| ("-D/--dir", g.as_str())));
        for (flag, v) in words {
            if !protocol::cmdline::safe_value(v) {
                return err(format!(
                    "{flag} {v:?}: with -R qemu it travels on the guest's kernel command line, which cannot \
                     carry spaces, quotes, backslashes or control characters; choose a plain path or address"
                ));
            }
        }
    }
    // A DNS server the default network refuses would fail every lookup in silence.
    let policy = crate::guestnet::Policy { allow };
    if o.runtime.0 == Some(Runtime::Qemu) && o.net == qemu::NetMode::Internet {
        if let Ok(ip) = o.dns.parse::<std::net::IpAddr>() {
            let host = crate::guestnet::host_nets().unwrap_or_default();
            if policy.refuses(ip, &host) {
                return err(format!(
                    "-d/--dns {ip}: the guest's network (--net internet) refuses that address (this host, its LAN or \
                     a private range); give a DNS server on the internet (default 1.1.1.1), or open a LAN one with \
                     --net-allow {ip}/32"
                ));
            }
        }
    }
    if let Some(k) = &o.kernel {
        if !k.is_file() {
            return err(format!("--kernel {}: no such file", k.display()));
        }
    }
    let qemu = qemu::QemuConfig {
        accel: o.accel,
        net: o.net,
        forwards,
        policy,
        kernel: o.kernel.clone(),
        scratch: o.scratch_size,
        start: o.start,
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
        warm: o.warm,
        secret: o.secret.clone(),
        grace: o.grace,
        boot_timeout: o.boot_timeout,
        vm_lifetime: std::time::Duration::from_secs(o.vm_lifetime),
        console_limit: o.console_limit,
        keep_consoles: o.keep_consoles,
        verbose: o.verbose,
    })
}

/// `orchestrator`'s options → its configuration, the runner arguments after `--`
/// validated with the runner's own parser (a typo fails here with exit 2, not N
/// times in N children).
pub fn orchestrator_config(
    cli: &OrchestratorCli,
    verbose: u8,
) -> Result<OrchestratorConfig, OrchestratorError> {
    let prefix = valid_prefix(cli.prefix.clone())?;
    if cli.runner_args.iter().any(|a| a == "--") {
        return Err(OrchestratorError::Usage(
            "the runner arguments after -- may not contain another --: the orchestrator appends -- <loop> itself".into(),
        ));
    }
    let isolation =
        !cli.no_isolation && std::env::var("ORCHESTRATOR_ISOLATION").map_or(true, |v| v != "0");
    let parsed = loop_options(cli, &cli.runner_args)?;
    let runner = runner_config(&parsed.opts, &[], Some(prefix.clone()), None)
        .map_err(|e| OrchestratorError::Usage(format!("in the runner arguments after --: {e}")))?;
    Ok(OrchestratorConfig {
        runners: cli.runners,
        prefix,
        isolation,
        sleep: cli.sleep,
        log: cli.log.clone(),
        verbose,
        registrations: cli.registrations,
        reconcile: cli.reconcile,
        metrics: cli.metrics,
        runner_args: cli.runner_args.clone(),
        runner,
    })
}

/// The prefix of `status`, `drain` and `logs`: theirs (`orchestrator status -p X`)
/// or the orchestrator's own (`orchestrator -p X status`, as a deploy script may
/// write it), never silently the default when one of them names another.
fn either_prefix(cli: &OrchestratorCli, own: String) -> Result<String, OrchestratorError> {
    let default = "GH-runner";
    match (cli.prefix.as_str(), own.as_str()) {
        (top, sub) if top == sub || top == default => Ok(own),
        (top, sub) if sub == default => Ok(top.to_string()),
        (top, sub) => Err(OrchestratorError::Usage(format!(
            "two prefixes given, -p {top} before the subcommand and -p {sub} after it: give one"
        ))),
    }
}

/// `-p/--prefix`, checked.
fn valid_prefix(prefix: String) -> Result<String, OrchestratorError> {
    if !protocol::valid_prefix(&prefix) {
        return Err(OrchestratorError::Usage(format!(
            "-p/--prefix {prefix:?} must match [A-Za-z0-9][A-Za-z0-9_.-]* (at most 64 characters)"
        )));
    }
    Ok(prefix)
}

/// The loops' arguments (after `--`) parsed with the runner's own parser, the
/// orchestrator's `-R` standing in for `RUNNER_RUNTIME`.
fn loop_options(cli: &OrchestratorCli, args: &[String]) -> Result<RunnerCli, OrchestratorError> {
    let usage = |e: clap::Error| {
        OrchestratorError::Usage(format!(
            "in the runner arguments after --: {}",
            e.render().to_string().trim()
        ))
    };
    let mut matches = RunnerCli::command()
        .try_get_matches_from(std::iter::once("runner".to_string()).chain(args.iter().cloned()))
        .map_err(usage)?;
    let mut parsed = RunnerCli::from_arg_matches_mut(&mut matches).map_err(usage)?;
    // The orchestrator's -R stands in for RUNNER_RUNTIME: a -R among the runner
    // arguments still wins, the environment does not.
    if cli.runtime.0.is_some()
        && matches.value_source("runtime") != Some(clap::parser::ValueSource::CommandLine)
    {
        parsed.opts.runtime = cli.runtime;
    }
    Ok(parsed)
}

/// `orchestrator doctor -- RUNNER_ARGS` → what to check: the loops' configuration
/// as the orchestrator would validate it, where a credential (and with it `-p`)
/// is optional.
fn doctor_config(a: DoctorArgs, cli: &OrchestratorCli) -> Result<DoctorConfig, OrchestratorError> {
    let mut opts = loop_options(cli, &a.runner_args)?.opts;
    let has_pat = opts.pat.as_ref().is_some_and(|p| !p.expose().is_empty());
    let credential = has_pat || (opts.app_id.is_some() && opts.app_key.is_some());
    if !credential {
        // Validate everything else with stand-ins that are never used (nothing is sent).
        opts.pat = Some("doctor-no-credential".to_string().into());
        if opts.principal.as_deref().is_none_or(str::is_empty) {
            opts.principal = Some(
                if opts.scope == ScopeKind::Repo {
                    "owner/repo"
                } else {
                    "owner"
                }
                .into(),
            );
        }
    }
    let runner = runner_config(&opts, &[], Some(cli.prefix.clone()), None)
        .map_err(|e| OrchestratorError::Usage(format!("in the runner arguments after --: {e}")))?;
    Ok(DoctorConfig {
        json: a.json,
        boot: !a.no_boot,
        loops: cli.runners,
        github: credential.then(|| runner.auth.clone()),
        runner,
    })
}

/// An `orchestrator` subcommand → the request its role carries out; `cli` gives
/// the options they share with the loops (`-n`, `-R`, `-p`).
pub fn subcommand(
    command: Command,
    cli: &OrchestratorCli,
) -> Result<Subcommand, OrchestratorError> {
    match command {
        Command::Doctor(a) => Ok(Subcommand::Doctor(Box::new(doctor_config(a, cli)?))),
        Command::Demo(a) => Ok(Subcommand::Demo(demo_config(a))),
        Command::Image(ImageCommand::Prune(a)) => Ok(Subcommand::Prune { all: a.all }),
        Command::Status(a) => Ok(Subcommand::Status {
            prefix: valid_prefix(either_prefix(cli, a.of.prefix)?)?,
            json: a.json,
        }),
        Command::Drain(a) => Ok(Subcommand::Drain {
            prefix: valid_prefix(either_prefix(cli, a.of.prefix)?)?,
            wait: !a.no_wait,
        }),
        Command::Logs(mut a) => {
            a.of.prefix = either_prefix(cli, a.of.prefix)?;
            Ok(Subcommand::Logs(logs_request(a)?))
        }
        Command::Image(ImageCommand::Bundle(a)) => {
            let entrypoint = match a.entrypoint {
                Some(e) => e,
                None => beside_me("entrypoint")
                    .ok_or_else(|| OrchestratorError::Usage("no entrypoint beside this executable: build it with scripts/build.sh or give --entrypoint".into()))?,
            };
            let job = match (a.oci, a.busybox, a.runner_tarball) {
                (Some(image), ..) => BundleJob::Oci(OciInputs {
                    image,
                    kernel: a.kernel,
                    modules: a.modules,
                    entrypoint,
                    out: a.out,
                    cache: crate::image::oci::disk_cache(),
                }),
                (None, Some(busybox), Some(runner_tarball)) => BundleJob::Parts(BundleInputs {
                    kernel: a.kernel,
                    modules: a.modules,
                    busybox,
                    runner_tarball,
                    entrypoint,
                    out: a.out,
                }),
                _ => {
                    return Err(OrchestratorError::Usage(
                        "give --oci IMAGE, or --busybox and --runner-tarball".into(),
                    ))
                }
            };
            Ok(Subcommand::Bundle(job))
        }
    }
}

/// `logs [-p PREFIX] [LOOP | VM] [-f]`: a number is a loop, anything else must be
/// a VM name of the prefix.
fn logs_request(a: LogsArgs) -> Result<LogsRequest, OrchestratorError> {
    let usage = |s: String| Err(OrchestratorError::Usage(s));
    let prefix = valid_prefix(a.of.prefix)?;
    let target = match a.target {
        None => None,
        Some(t) if t.bytes().all(|b| b.is_ascii_digit()) => match t.parse::<u32>() {
            Ok(n) if n >= 1 => Some(LogsTarget::Loop(n)),
            _ => return usage(format!("LOOP {t:?} must be a loop number from 1")),
        },
        Some(t) if crate::types::names::is_vm_of(&t, &prefix) => Some(LogsTarget::Vm(t)),
        Some(t) => {
            return usage(format!(
                "{t:?} is neither a loop number nor a VM of prefix {:?} ({}-<loop>-<random>); another prefix needs -p",
                prefix, prefix
            ))
        }
    };
    Ok(LogsRequest {
        prefix,
        target,
        follow: a.follow,
    })
}

fn demo_config(a: DemoArgs) -> DemoConfig {
    DemoConfig {
        jobs: a.jobs,
        accel: a.accel,
        start: a.start,
        warm: a.warm,
        memory: a.memory,
        kernel: a.kernel,
        modules: a.modules,
        busybox: a.busybox,
        bundle: a.bundle,
        json: a.json,
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
        runner_config(&cli.opts, &cli.loop_id, None, None)
    }

    #[test]
    fn kernel_command_line_values_are_checked_for_qemu() {
        let base = ["-T", "x", "-p", "o/r"];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        let dev = tempfile::tempdir().unwrap();
        std::fs::write(dev.path().join("entrypoint"), "").unwrap();
        let dev = dev.path().to_str().unwrap();
        for args in [
            &["-R", "qemu", "-M", "/tmp:/mnt/with space"][..],
            &["-R", "qemu", "-M", "/tmp:/mnt/quo\"te"][..],
            &["-R", "qemu", "--dev-dir", dev, "-D", "/dev dir"][..],
        ] {
            let e = with(args).unwrap_err().to_string();
            assert!(e.contains("kernel command line"), "{args:?}: {e}");
        }
        assert!(with(&["-R", "krunvm", "-M", "/tmp:/mnt/with space"]).is_ok());
        assert!(with(&["-R", "qemu", "-M", "/tmp:/mnt/plain"]).is_ok());
    }

    #[test]
    fn a_dns_server_the_default_network_refuses_is_an_error() {
        let base = ["-T", "x", "-p", "o/r", "-R", "qemu"];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        let e = with(&["-d", "192.168.1.1"]).unwrap_err().0;
        assert!(
            e.contains("-d/--dns 192.168.1.1") && e.contains("--net-allow 192.168.1.1/32"),
            "{e}"
        );
        assert!(with(&["-d", "127.0.0.53"]).is_err());
        assert!(with(&["-d", "192.168.1.1", "--net-allow", "192.168.1.0/24"]).is_ok());
        assert!(with(&["-d", "192.168.1.1", "--net", "restricted"]).is_ok());
        assert!(with(&["-d", "9.9.9.9"]).is_ok());
        assert!(with(&[]).is_ok(), "the default 1.1.1.1");
    }

    #[test]
    fn no_jit_needs_its_explicit_opt_in() {
        let e = parse(&["-T", "x", "-p", "o/r", "--no-jit"]).unwrap_err().0;
        assert!(e.contains("--accept-scope-token"), "{e}");
        let c = parse(&["-T", "x", "-p", "o/r", "--no-jit", "--accept-scope-token"]).unwrap();
        assert!(!c.jit);
    }

    #[test]
    fn debug_of_the_options_and_the_config_shows_no_credential() {
        let pat = "test-pat-NotARealOne0123456789";
        let fixed = "FixedSecret0123456789abcdef";
        let args = [
            "runner", "-T", pat, "-S", fixed, "-p", "o/r", "-R", "krunvm",
        ];
        let cli = crate::cli::RunnerCli::try_parse_from(args).unwrap();
        let c = runner_config(&cli.opts, &cli.loop_id, None, None).unwrap();
        for shown in [format!("{cli:?}"), format!("{c:?}")] {
            assert!(!shown.contains(pat) && !shown.contains(fixed), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
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
}
