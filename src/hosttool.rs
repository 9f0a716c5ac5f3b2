//! The one way this crate starts a child process: host tools (QEMU and its KVM
//! probe, mkfs.ext4, buildah, krunvm, podman, apt-get…) get an environment without
//! the host's credentials, no standard input, their own process group, SIGKILL when
//! the spawning thread dies, and their standard error captured (or sent where the
//! caller says); our own children (`runner`, the demo's `orchestrator`) get the
//! tie without the scrub. It does not interpret what a tool prints.
//!
//! `PR_SET_PDEATHSIG` belongs to the spawning *thread*: both binaries spawn from
//! their one runtime thread (design.md §6), so a child never outlives its parent.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

/// Credentials of the host that no host tool (and so no guest) may inherit.
pub const HOST_SECRETS: &[&str] = &[
    "RUNNER_PAT",
    "RUNNER_SECRET",
    "RUNNER_APP_KEY",
    "GITHUB_TOKEN",
    "GH_TOKEN",
];

/// How a child is tied to us.
#[derive(Debug, Clone, Copy)]
pub struct Tie {
    /// Its own process group (a terminal's ^C reaches only us; `killpg` reaches
    /// what it starts).
    pub own_group: bool,
    /// The signal it gets when the spawning thread dies.
    pub death: libc::c_int,
}

impl Tie {
    /// Host tools: own group, killed with us.
    pub const TOOL: Tie = Tie {
        own_group: true,
        death: libc::SIGKILL,
    };
}

/// A host tool's command: `program` without the host's credentials in its
/// environment, standard input closed, tied with [`Tie::TOOL`]. Run it with
/// [`output`] / [`output_async`] (standard error captured) or [`spawn_async`].
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for v in HOST_SECRETS {
        cmd.env_remove(v);
    }
    // A loop's report channel to its orchestrator (runner::events) is its own.
    cmd.env_remove("RUNNER_EVENTS");
    cmd.stdin(Stdio::null());
    tie(&mut cmd, Tie::TOOL);
    cmd
}

/// Tie a child's life to this thread (see [`Tie`]).
pub fn tie(cmd: &mut Command, how: Tie) {
    // SAFETY: setpgid and prctl are async-signal-safe and touch no memory.
    unsafe {
        cmd.pre_exec(move || {
            if how.own_group && libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, how.death) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Run to completion with standard output and error captured.
pub fn output(cmd: &mut Command) -> std::io::Result<Output> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output()
}

/// [`output`] on the async runtime; the child is killed if the future is dropped.
pub async fn output_async(cmd: Command) -> std::io::Result<Output> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
}

/// Start a long-lived child on the async runtime (killed when its handle is dropped).
pub fn spawn_async(cmd: Command) -> std::io::Result<tokio::process::Child> {
    tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
}

/// The last `max` characters of a tool's standard error, trimmed.
pub fn stderr_tail(stderr: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let skip = text.chars().count().saturating_sub(max);
    text.chars().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_a_tool() {
        let c = command("env");
        let removed: Vec<_> = c
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for v in HOST_SECRETS {
            assert!(removed.iter().any(|r| r == v), "{v} is inherited");
        }
        let out = output(command("env").env("KEEP", "2")).unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("KEEP=2"));
    }

    #[test]
    fn a_tool_has_its_own_group_and_no_stdin() {
        // /proc/self/stat of `cat` itself: field 1 is its pid, field 5 its group.
        let out = output(command("cat").arg("/proc/self/stat")).unwrap();
        let stat = String::from_utf8_lossy(&out.stdout).into_owned();
        let after = stat.rsplit_once(')').unwrap().1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let pid = stat.split_whitespace().next().unwrap();
        assert_eq!(fields[2], pid, "{stat}");
        let out = output(&mut command("cat")).unwrap();
        assert!(out.status.success() && out.stdout.is_empty());
    }

    #[test]
    fn stderr_is_captured_and_cut() {
        let out = output(command("sh").args(["-c", "echo nope >&2; exit 3"])).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(stderr_tail(&out.stderr, 400), "nope");
        assert_eq!(stderr_tail(b"  abcdef \n", 3), "def");
    }
}
