//! `entrypoint`: the guest side of gh-runner-microvm.
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
//! Exit codes: the runner's own status (128+N when killed by signal N); 125 when
//! the entrypoint itself cannot set up; 126/127 when the runner cannot be executed.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};

use protocol::envfile::{GuestConfig, Registration};
use protocol::{safefs, secret, sibling, Kind, MAX_ENV_FILE, MAX_SIGNAL_FILE};

/// After TERM, how long the runner gets before KILL.
const KILL_AFTER: Duration = Duration::from_secs(10);
/// Fallback poll of `.trm`: inotify does not see host-side writes on 9p/virtio-fs.
const TICK: Duration = Duration::from_millis(1000);

const SETUP_FAILED: u8 = 125;

macro_rules! log {
    ($($t:tt)*) => { eprintln!("entrypoint: {}", format_args!($($t)*)) };
}

/// `Runner.Listener`'s exit status when GitHub refuses its version (RunnerVersionDeprecated).
const RUNNER_VERSION_DEPRECATED: u8 = 7;

/// On a root-disk guest the scratch disk is mounted at `/_work`: give it to the
/// runner's user and bind it over the runner's work folder (`<runner>/_work`), so
/// the job's files land on the scratch disk and not in the image's overlay.
fn bind_scratch(runner_dir: &Path, user: Option<&User>) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let scratch = Path::new(protocol::init::SCRATCH_MOUNT);
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

#[derive(Debug)]
struct Args {
    env: Option<PathBuf>,
    tkn: Option<PathBuf>,
    inline: Vec<String>,
    command: Vec<String>,
}

const USAGE: &str = "\
usage: entrypoint -E ENV_FILE -k TKN_FILE [-- COMMAND ARGS...]
       entrypoint -c KEY=VALUE... [-- COMMAND ARGS...]

Guest side of gh-runner-microvm. Reads and deletes ENV_FILE, starts the newest
runner-<version> under $RUNNER_INSTALL (default /opt/gh-runner-microvm/share/runner)
as the configured user, writes TKN_FILE when the runner is up, and stops it when
TKN_FILE's .trm sibling carries the secret or on SIGINT/SIGTERM (then writes .brk).
COMMAND replaces the runner's bin/Runner.Listener.";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        env: None,
        tkn: None,
        inline: vec![],
        command: vec![],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-E" => a.env = Some(value("-E")?.into()),
            "-k" => a.tkn = Some(value("-k")?.into()),
            "-c" => a.inline.push(value("-c")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--" => {
                a.command = it.collect();
                break;
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if a.env.is_none() && a.inline.is_empty() {
        return Err(format!(
            "-E ENV_FILE (or -c KEY=VALUE in insecure mode) is required\n{USAGE}"
        ));
    }
    Ok(a)
}

/// Read the `.env`, then delete it before anything else can run.
fn load_config(args: &Args) -> Result<GuestConfig, String> {
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

/// A user from `/etc/passwd` (static glibc has no NSS, so we read it ourselves).
#[derive(Debug, Clone)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
    groups: Vec<u32>,
}

fn lookup_user(name: &str) -> Result<User, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    let mut user = None;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 7 && f[0] == name {
            let uid = f[2]
                .parse()
                .map_err(|_| format!("bad uid for {name} in /etc/passwd"))?;
            let gid = f[3]
                .parse()
                .map_err(|_| format!("bad gid for {name} in /etc/passwd"))?;
            user = Some(User {
                name: name.into(),
                uid,
                gid,
                home: f[5].into(),
                groups: vec![gid],
            });
            break;
        }
    }
    let mut user = user.ok_or(format!("user {name:?} is not in /etc/passwd (check -u)"))?;
    if let Ok(group) = std::fs::read_to_string("/etc/group") {
        for line in group.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if !user.groups.contains(&g) {
                        user.groups.push(g);
                    }
                }
            }
        }
    }
    Ok(user)
}

/// Who runs the runner: `None` means "as ourselves, no drop".
fn resolve_user(wanted: &str) -> Result<Option<User>, String> {
    let me = Uid::effective();
    if me.is_root() {
        if wanted == "root" {
            return Ok(None);
        }
        return lookup_user(wanted).map(Some);
    }
    // Not root: we can only run the runner as ourselves.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let my_name = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2] == me.as_raw().to_string()).then(|| f[0].to_string())
    });
    if my_name.as_deref() == Some(wanted) {
        Ok(None)
    } else {
        Err(format!(
            "the entrypoint runs as uid {me} ({}), so it cannot run the runner as {wanted:?}: \
             start the VM as root or pass -u {}",
            my_name.as_deref().unwrap_or("?"),
            my_name.as_deref().unwrap_or("<this user>")
        ))
    }
}

/// Files through which the runner's job hooks tell us whether a job is running.
struct Hooks {
    dir: PathBuf,
    started: PathBuf,
    completed: PathBuf,
    busy: PathBuf,
}

impl Hooks {
    fn create(user: Option<&User>) -> Result<Hooks, String> {
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

/// Why the runner is being stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StopReason {
    Signal(Signal),
    Trm,
    PowerButton,
}

struct Supervisor<'a> {
    cfg: &'a GuestConfig,
    child: Pid,
    trm: Option<PathBuf>,
    busy: PathBuf,
    stop: Option<(StopReason, Instant)>,
    termed_at: Option<Instant>,
    killed: bool,
    last_forged: Option<Vec<u8>>,
}

impl Supervisor<'_> {
    fn request_stop(&mut self, why: StopReason) {
        if self.stop.is_none() {
            log!(
                "stop requested ({why:?}); {}",
                if self.busy.exists() {
                    format!("a job is running: it may finish within {}s", self.cfg.grace)
                } else {
                    "the runner is idle: stopping it now".into()
                }
            );
            self.stop = Some((why, Instant::now()));
        }
    }

    fn check_trm(&mut self) {
        let Some(trm) = &self.trm else { return };
        match safefs::read_bounded(trm, MAX_SIGNAL_FILE) {
            Ok(None) => {}
            Ok(Some(content)) if secret::matches(&self.cfg.secret, &content) => {
                self.request_stop(StopReason::Trm)
            }
            Ok(Some(content)) => {
                if self.last_forged.as_ref() != Some(&content) {
                    log!(
                        "ignoring {}: it does not carry this VM's secret",
                        trm.display()
                    );
                    self.last_forged = Some(content);
                }
            }
            Err(e) => {
                if self.last_forged.is_none() {
                    log!("ignoring .trm: {e}");
                    self.last_forged = Some(vec![]);
                }
            }
        }
    }

    /// Advance the stop state machine: TERM when idle (or after the grace), KILL later.
    fn advance(&mut self) {
        let Some((_, since)) = self.stop else { return };
        let now = Instant::now();
        match self.termed_at {
            None => {
                let busy = self.busy.exists();
                let grace_over = now >= since + Duration::from_secs(self.cfg.grace);
                if !busy || grace_over {
                    if busy {
                        log!("grace of {}s is over: terminating the job", self.cfg.grace);
                    }
                    let _ = kill(self.child, Signal::SIGTERM);
                    self.termed_at = Some(now);
                }
            }
            Some(t) if !self.killed && now >= t + KILL_AFTER => {
                log!(
                    "runner still alive {}s after SIGTERM: killing it",
                    KILL_AFTER.as_secs()
                );
                let _ = killpg(self.child, Signal::SIGKILL);
                self.killed = true;
            }
            Some(_) => {}
        }
    }
}

fn status_code(ws: WaitStatus) -> Option<u8> {
    match ws {
        WaitStatus::Exited(_, c) => Some(c as u8),
        WaitStatus::Signaled(_, s, _) => Some(128u8.wrapping_add(s as u8)),
        _ => None,
    }
}

fn run(buttons: Vec<std::os::fd::OwnedFd>) -> Result<u8, (u8, String)> {
    let setup = |e: String| (SETUP_FAILED, e);
    let args = parse_args().map_err(|e| (2, e))?;

    // Block the signals we handle synchronously, before anything is spawned.
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| setup(format!("sigprocmask: {e}")))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| setup(format!("signalfd: {e}")))?;

    let cfg = load_config(&args).map_err(setup)?;
    log!(
        "configuration read (runner {}); the .env is deleted",
        cfg.name
    );

    let install_root = std::env::var_os(protocol::RUNNER_INSTALL_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| protocol::DEFAULT_RUNNER_INSTALL.into());
    let user = resolve_user(&cfg.user).map_err(setup)?;
    let hooks = Hooks::create(user.as_ref()).map_err(setup)?;

    let (program, prog_args, cwd) = if let Some((first, rest)) = args.command.split_first() {
        (
            PathBuf::from(first),
            rest.to_vec(),
            std::env::current_dir().unwrap_or("/".into()),
        )
    } else {
        let (version, dir) = protocol::version::newest_runner(&install_root)
            .map_err(|e| setup(format!("cannot list {}: {e}", install_root.display())))?
            .ok_or_else(|| {
                setup(format!(
                    "no runner-<version> directory under {} (set {} or fix the image)",
                    install_root.display(),
                    protocol::RUNNER_INSTALL_VAR
                ))
            })?;
        log!("using actions runner {version} from {}", dir.display());
        bind_scratch(&dir, user.as_ref()).map_err(setup)?;
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
            let mut c = runner_command(&dir.join("config.sh"), &a, &dir, user.as_ref(), &hooks);
            // The token travels in the environment (read and removed by the runner).
            c.env("ACTIONS_RUNNER_INPUT_TOKEN", token);
            let st = c.status().map_err(|e| (127, format!("config.sh: {e}")))?;
            if !st.success() {
                return Err((st.code().unwrap_or(1) as u8, "config.sh failed".into()));
            }
        }
        (
            dir.join("bin/Runner.Listener"),
            vec!["run".to_string()],
            dir,
        )
    };

    let mut cmd = runner_command(&program, &prog_args, &cwd, user.as_ref(), &hooks);
    if let Registration::Jit { config } = &cfg.registration {
        cmd.env("ACTIONS_RUNNER_INPUT_JITCONFIG", config);
    }
    let child = cmd.spawn().map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        (code, format!("cannot start {}: {e}", program.display()))
    })?;
    let child = Pid::from_raw(child.id() as i32);
    drop(cmd); // the JIT config is not kept in our memory longer than needed

    if let Some(tkn) = &args.tkn {
        safefs::write_replace(tkn, cfg.name.as_bytes(), 0o644)
            .map_err(|e| setup(format!("cannot write {}: {e}", tkn.display())))?;
        log!("runner started; ready mark {} written", tkn.display());
    }

    let trm = args.tkn.as_deref().map(|t| sibling(t, Kind::Trm));
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .map_err(|e| setup(format!("inotify: {e}")))?;
    if let Some(dir) = trm.as_deref().and_then(Path::parent) {
        let flags =
            AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE;
        if let Err(e) = inotify.add_watch(dir, flags) {
            log!("inotify on {} failed ({e}); polling instead", dir.display());
        }
    }

    let mut sup = Supervisor {
        cfg: &cfg,
        child,
        trm,
        busy: hooks.busy.clone(),
        stop: None,
        termed_at: None,
        killed: false,
        last_forged: None,
    };
    sup.check_trm();
    let status = loop {
        let timeout = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::MAX);
        let mut fds = vec![
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
        ];
        fds.extend(
            buttons
                .iter()
                .map(|b| PollFd::new(b.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(setup(format!("poll: {e}"))),
        }
        let pressed = fds[2..]
            .iter()
            .any(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)));
        if pressed {
            // The ACPI power button (QMP system_powerdown): drain the events, then stop.
            let mut buf = [0u8; 256];
            for b in &buttons {
                while nix::unistd::read(b, &mut buf).is_ok_and(|n| n > 0) {}
            }
            sup.request_stop(StopReason::PowerButton);
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => {}
                Ok(s) => sup.request_stop(StopReason::Signal(s)),
                Err(_) => {}
            }
        }
        // Drain inotify events; which file changed does not matter, we re-read .trm.
        while inotify.read_events().is_ok_and(|e| !e.is_empty()) {}
        // Reap everything (we may be a subreaper or PID 1); remember our child.
        let mut main_status = None;
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) if ws.pid() == Some(child) => main_status = status_code(ws),
                Ok(_) => {}
            }
        }
        if let Some(code) = main_status {
            break code;
        }
        sup.check_trm();
        sup.advance();
    };
    // Nothing of the job may outlive the runner.
    let _ = killpg(child, Signal::SIGKILL);
    log!("runner exited with status {status}");
    if status == RUNNER_VERSION_DEPRECATED && args.command.is_empty() {
        log!(
            "error: GitHub refused this actions runner as deprecated (Runner.Listener exit 7): \
             rebuild the image with a current RUNNER_VERSION (Containerfile; the runner-pin \
             workflow keeps it current)"
        );
    }

    if sup.stop.is_some() {
        if let Some(tkn) = &args.tkn {
            let brk = sibling(tkn, Kind::Brk);
            match safefs::write_replace(&brk, cfg.secret.as_bytes(), 0o600) {
                Ok(()) => log!("asked the host to end this loop ({})", brk.display()),
                Err(e) => log!("cannot write {}: {e}", brk.display()),
            }
        }
    }
    Ok(status)
}

fn main() -> ExitCode {
    // As PID 1 of an initramfs guest (QEMU), do init's work first and never exit:
    // PID 1 exiting panics the kernel. Otherwise just reap the job's orphans.
    let pid1 = std::process::id() == 1;
    let mut buttons = vec![];
    if pid1 {
        if let Some(keys) = protocol::init::stage1_keys() {
            // Stage 1 of a root-disk bundle: make the image's disk the root and
            // become the image's entrypoint (PID 1 still; it does the rest).
            match protocol::init::stage1(&keys) {
                Ok(next) => {
                    for n in &next.notes {
                        log!("stage 1: {n}");
                    }
                    log!("stage 1: running {} from the image", next.init);
                    let err = Command::new(&next.init)
                        .args(std::env::args_os().skip(1))
                        .env_clear()
                        .env("HOME", "/root") // unless the image says otherwise
                        .envs(next.env.iter().map(|(k, v)| (k, v)))
                        .exec();
                    log!("error: stage 1: cannot run {}: {err}", next.init);
                    protocol::init::power_off(127);
                }
                Err(e) => {
                    log!("error: stage 1: {e}");
                    protocol::init::power_off(SETUP_FAILED);
                }
            }
        }
    }
    if pid1 {
        match protocol::init::setup() {
            Ok(init) => {
                for n in &init.notes {
                    log!("init: {n}");
                }
                buttons = init.power_button;
                // `--accel auto` probes KVM by booting with ghrm.probe=1.
                let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
                let keys = protocol::init::cmdline_keys(&cmdline);
                if keys.iter().any(|(k, v)| k == "probe" && v == "1") {
                    log!("init: probe boot complete");
                    protocol::init::power_off(0);
                }
                // `-D`: become the freshly built entrypoint from the dev share (still PID 1;
                // its own set-up finds everything done).
                if let Some((_, path)) = keys.iter().find(|(k, _)| k == "exec") {
                    if std::env::var_os("GHRM_EXECED").is_none() {
                        use std::os::unix::process::CommandExt;
                        log!("init: running {path} from the dev share");
                        let err = Command::new(path)
                            .args(std::env::args_os().skip(1))
                            .env("GHRM_EXECED", "1")
                            .exec();
                        log!("error: cannot run {path}: {err}");
                        protocol::init::power_off(127);
                    }
                }
            }
            Err(e) => {
                log!("error: init: {e}");
                protocol::init::power_off(SETUP_FAILED);
            }
        }
    } else {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes no pointers.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        }
    }
    let code = match run(buttons) {
        Ok(code) => code,
        Err((code, msg)) => {
            log!("error: {msg}");
            code
        }
    };
    if pid1 {
        protocol::init::power_off(code);
    }
    ExitCode::from(code)
}
