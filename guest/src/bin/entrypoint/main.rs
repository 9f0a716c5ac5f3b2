//! `entrypoint`: the guest side of gh-runner-microvm; this file only orders the
//! steps below and maps failures to exit statuses: every step lives in its own room.
//!
//! ```text
//! entrypoint -E /_environment/<id>.env -k /_environment/<id>.tkn [-- COMMAND ARGS…]
//! entrypoint -c KEY=VALUE… [-- COMMAND ARGS…]      (insecure mode: no loop directory)
//! ```
//!
//! Order matters and is the security argument:
//! 1. read the `.env` (no links, bounded) and **delete it** before anything else runs;
//! 2. find the newest `runner-*` under `$RUNNER_INSTALL`, resolve the user;
//! 3. start the runner (JIT config in `ACTIONS_RUNNER_INPUT_JITCONFIG`, never argv),
//!    dropping privileges in the child; write `<id>.tkn`;
//! 4. supervise: SIGINT/SIGTERM or a `.trm` carrying the secret stop the runner
//!    (at once when idle, after the job or `grace` when busy; TERM then KILL),
//!    then `.brk` is written with the secret; the runner's status is our status.
//!
//! Exit codes ([`protocol::exit`]): the runner's own status (128+N when killed by
//! signal N); 2 for a bad command line; 125 when the entrypoint itself cannot set
//! up; 126/127 when the runner cannot be executed.
//!
//! Rooms: [`args`] (our command line), [`init`] (PID 1 and stage 1), [`setup`] (the
//! `.env`, hooks, scratch disk, the runner's command), [`user`] (who runs it),
//! [`supervisor`] (the child until its exit), [`watcher`] (`.tkn`/`.trm`/`.brk`).

use std::path::PathBuf;
use std::process::ExitCode;

use protocol::exit;

/// A line on standard error (the console), marked as ours ([`protocol::console::MARKER`]).
macro_rules! log {
    ($($t:tt)*) => { eprintln!("{} {}", protocol::console::MARKER, format_args!($($t)*)) };
}

mod args;
mod init;
mod setup;
mod supervisor;
mod user;
mod watcher;

/// Why the entrypoint ends without the runner's own status.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Our command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// The entrypoint itself cannot set up.
    #[error("{0}")]
    Setup(String),
    /// The runner (or COMMAND) cannot be started.
    #[error("cannot start {}: {source}", program.display())]
    CannotStart {
        /// What we tried to run.
        program: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// `config.sh` (token registration) cannot be run.
    #[error("config.sh: {0}")]
    ConfigSh(std::io::Error),
    /// `config.sh` failed with this status.
    #[error("config.sh failed")]
    ConfigFailed(u8),
}

impl Failure {
    /// Our exit status.
    fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => exit::USAGE,
            Failure::Setup(_) => exit::SETUP_FAILED,
            Failure::CannotStart { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                exit::NOT_FOUND
            }
            Failure::CannotStart { .. } => exit::CANNOT_EXECUTE,
            Failure::ConfigSh(_) => exit::NOT_FOUND,
            Failure::ConfigFailed(code) => *code,
        }
    }
}

fn run(buttons: Vec<std::os::fd::OwnedFd>, given: Option<Vec<String>>) -> Result<u8, Failure> {
    let args = args::parse_args(given).map_err(Failure::Usage)?;
    let signals = supervisor::block_signals()?;

    let cfg = setup::load_config(&args).map_err(Failure::Setup)?;
    log!(
        "configuration read (runner {}); the .env is deleted",
        cfg.name
    );
    let user = user::resolve_user(&cfg.user).map_err(Failure::Setup)?;
    let hooks = setup::Hooks::create(user.as_ref()).map_err(Failure::Setup)?;
    let launch = setup::Launch::prepare(&args.command, &cfg, user.as_ref(), &hooks)?;
    let child = launch.spawn(&cfg, user.as_ref(), &hooks)?;

    if let Some(tkn) = &args.tkn {
        watcher::mark_ready(tkn, &cfg.name).map_err(Failure::Setup)?;
    }
    let mut watcher =
        watcher::Watcher::new(args.tkn.as_deref(), &cfg.secret).map_err(Failure::Setup)?;
    let job_mark = args
        .tkn
        .as_deref()
        .map(|t| protocol::sibling(t, protocol::Kind::Job));
    let mut sup = supervisor::Supervisor::new(child, hooks.busy.clone(), job_mark, cfg.grace);
    let status = sup.wait(&signals, &buttons, &mut watcher)?;
    if status == exit::RUNNER_DEPRECATED && args.command.is_empty() {
        log!(
            "error: GitHub refused this actions runner as deprecated (Runner.Listener exit {}): \
             rebuild the image with a current RUNNER_VERSION (Containerfile; the runner-pin \
             workflow keeps it current)",
            exit::RUNNER_DEPRECATED
        );
    }
    if sup.stopped() {
        watcher.write_brk();
    }
    Ok(status)
}

fn main() -> ExitCode {
    // As PID 1 of an initramfs guest (QEMU), do init's work first and never exit:
    // PID 1 exiting panics the kernel. Otherwise just reap the job's orphans.
    let pid1 = std::process::id() == 1;
    let booted = if pid1 {
        init::boot()
    } else {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes no pointers.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        }
        init::Booted {
            buttons: vec![],
            args: None,
        }
    };
    let code = match run(booted.buttons, booted.args) {
        Ok(code) => code,
        Err(e) => {
            log!("error: {e}");
            e.code()
        }
    };
    if pid1 {
        init::power_off(code);
    }
    ExitCode::from(code)
}
