//! The set-up before the runner runs: the `.env` read and deleted, the job hooks, the
//! scratch disk, the runner's command (its user drop and environment) and its start.
//! It must not supervise: once the child is started, the supervisor owns it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::{Gid, Pid, Uid};
use protocol::envfile::{GuestConfig, Registration};
use protocol::{safefs, secret, MAX_ENV_FILE};

use crate::args::Args;
use crate::user::User;
use crate::Failure;

/// Read the `.env`, then delete it before anything else can run.
pub fn load_config(args: &Args) -> Result<GuestConfig, String> {
    let text = match &args.env {
        Some(path) => {
            let read = safefs::read_bounded(path, MAX_ENV_FILE);
            // Delete whatever stands there, whether or not it could be read.
            if let Err(e) = safefs::remove(path) {
                return Err(format!("cannot delete {}: {e}", path.display()));
            }
            match read {
                Ok(Some(t)) => t,
                Ok(None) => return Err(format!("{} does not exist", path.display())),
                Err(e) => return Err(e.to_string()),
            }
        }
        None => args
            .inline
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => format!("{k}='{v}'\n"),
                None => String::new(),
            })
            .collect::<String>()
            .into_bytes(),
    };
    GuestConfig::from_dotenv(&text).map_err(|e| e.to_string())
}

/// On a root-disk guest the scratch disk is mounted at `/_work`: give it to the
/// runner's user and bind it over the runner's work folder (`<runner>/_work`), so
/// the job's files land on the scratch disk and not in the image's overlay.
fn bind_scratch(runner_dir: &Path, user: Option<&User>) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let scratch = Path::new(protocol::bundle::SCRATCH_MOUNT);
    let (Ok(s), Ok(root)) = (std::fs::metadata(scratch), std::fs::metadata("/")) else {
        return Ok(());
    };
    if s.dev() == root.dev() || !Uid::effective().is_root() {
        return Ok(()); // not a mount of its own, or we cannot mount
    }
    if let Some(u) = user {
        nix::unistd::chown(
            scratch,
            Some(Uid::from_raw(u.uid)),
            Some(Gid::from_raw(u.gid)),
        )
        .map_err(|e| format!("chown {}: {e}", scratch.display()))?;
    }
    let work = runner_dir.join("_work");
    std::fs::create_dir_all(&work).map_err(|e| format!("mkdir {}: {e}", work.display()))?;
    nix::mount::mount(
        Some(scratch),
        &work,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind {} on {}: {e}", scratch.display(), work.display()))?;
    log!(
        "scratch disk {} is the runner's {}",
        scratch.display(),
        work.display()
    );
    Ok(())
}

/// Files through which the runner's job hooks tell us whether a job is running.
pub struct Hooks {
    dir: PathBuf,
    started: PathBuf,
    completed: PathBuf,
    /// Exists while a job runs.
    pub busy: PathBuf,
}

impl Hooks {
    /// Write the hook scripts into a fresh private directory (owned by `user`).
    pub fn create(user: Option<&User>) -> Result<Hooks, String> {
        let tmp = std::env::temp_dir();
        let dir = tmp.join(format!(
            "gh-runner-microvm-hooks.{}",
            secret::random_alnum(10).map_err(|e| e.to_string())?
        ));
        safefs::create_private_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let busy = dir.join("busy");
        let started = dir.join("job-started.sh");
        let completed = dir.join("job-completed.sh");
        let q = busy.display().to_string();
        std::fs::write(&started, format!("#!/bin/sh\n: > '{q}'\n"))
            .and_then(|_| std::fs::write(&completed, format!("#!/bin/sh\nrm -f '{q}'\n")))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(u) = user {
            nix::unistd::chown(&dir, Some(Uid::from_raw(u.uid)), Some(Gid::from_raw(u.gid)))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        Ok(Hooks {
            dir,
            started,
            completed,
            busy,
        })
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Build the command that runs the runner (or the user's COMMAND) as `user`.
fn runner_command(
    program: &Path,
    args: &[String],
    cwd: &Path,
    user: Option<&User>,
    hooks: &Hooks,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(cwd);
    cmd.env("ACTIONS_RUNNER_HOOK_JOB_STARTED", &hooks.started);
    cmd.env("ACTIONS_RUNNER_HOOK_JOB_COMPLETED", &hooks.completed);
    // A truthful exit status when the runner is refused for being too old.
    cmd.env("ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE", "1");
    match user {
        None if Uid::effective().is_root() => {
            cmd.env("RUNNER_ALLOW_RUNASROOT", "1");
        }
        None => {}
        Some(u) => {
            cmd.env("HOME", &u.home)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name);
            cmd.env_remove("RUNNER_ALLOW_RUNASROOT");
        }
    }
    let ids = user.map(|u| (u.uid, u.gid, u.groups.clone()));
    // SAFETY: only async-signal-safe calls (prctl, setpgid, sigprocmask, setgroups,
    // setgid, setuid) run between fork and exec; `ids` was prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Own process group, so that KILL reaches the job's processes too.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The runner must not outlive us.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if let Some((uid, gid, groups)) = &ids {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

/// What to run, where: the runner's `bin/Runner.Listener run` or the user's COMMAND.
pub struct Launch {
    program: PathBuf,
    args: Vec<String>,
    cwd: PathBuf,
}

impl Launch {
    /// COMMAND when given; else the newest runner under `$RUNNER_INSTALL`, with the
    /// scratch disk bound over its work folder and, with a registration token,
    /// `config.sh` run first.
    pub fn prepare(
        command: &[String],
        cfg: &GuestConfig,
        user: Option<&User>,
        hooks: &Hooks,
    ) -> Result<Launch, Failure> {
        if let Some((first, rest)) = command.split_first() {
            return Ok(Launch {
                program: PathBuf::from(first),
                args: rest.to_vec(),
                cwd: std::env::current_dir().unwrap_or("/".into()),
            });
        }
        let install_root = std::env::var_os(protocol::RUNNER_INSTALL_VAR)
            .map(PathBuf::from)
            .unwrap_or_else(|| protocol::DEFAULT_RUNNER_INSTALL.into());
        let (version, dir) = protocol::version::newest_runner(&install_root)
            .map_err(|e| Failure::Setup(format!("cannot list {}: {e}", install_root.display())))?
            .ok_or_else(|| {
                Failure::Setup(format!(
                    "no runner-<version> directory under {} (set {} or fix the image)",
                    install_root.display(),
                    protocol::RUNNER_INSTALL_VAR
                ))
            })?;
        log!("using actions runner {version} from {}", dir.display());
        bind_scratch(&dir, user).map_err(Failure::Setup)?;
        if let Registration::Token {
            url,
            token,
            labels,
            group,
        } = &cfg.registration
        {
            let mut a: Vec<String> = ["--unattended", "--ephemeral", "--replace", "--url", url]
                .iter()
                .map(|s| s.to_string())
                .collect();
            a.extend([
                "--name".into(),
                cfg.name.clone(),
                "--labels".into(),
                labels.clone(),
            ]);
            a.extend([
                "--runnergroup".into(),
                group.clone(),
                "--work".into(),
                "_work".into(),
            ]);
            if !cfg.update {
                a.push("--disableupdate".into());
            }
            let mut c = runner_command(&dir.join("config.sh"), &a, &dir, user, hooks);
            // The token travels in the environment (read and removed by the runner).
            c.env("ACTIONS_RUNNER_INPUT_TOKEN", token);
            let st = c.status().map_err(Failure::ConfigSh)?;
            if !st.success() {
                return Err(Failure::ConfigFailed(st.code().unwrap_or(1) as u8));
            }
        }
        Ok(Launch {
            program: dir.join("bin/Runner.Listener"),
            args: vec!["run".to_string()],
            cwd: dir,
        })
    }

    /// Start it as `user` (the JIT config in its environment, never in argv).
    pub fn spawn(
        &self,
        cfg: &GuestConfig,
        user: Option<&User>,
        hooks: &Hooks,
    ) -> Result<Pid, Failure> {
        let mut cmd = runner_command(&self.program, &self.args, &self.cwd, user, hooks);
        if let Registration::Jit { config } = &cfg.registration {
            cmd.env("ACTIONS_RUNNER_INPUT_JITCONFIG", config);
        }
        let child = cmd.spawn().map_err(|source| Failure::CannotStart {
            program: self.program.clone(),
            source,
        })?;
        drop(cmd); // the JIT config is not kept in our memory longer than needed
        Ok(Pid::from_raw(child.id() as i32))
    }
}
