//! microVM backends behind one trait (design.md §6): [`Hypervisor`] is what one
//! hypervisor does (prepare an image, the VM's process, delete, list, and the
//! optional console, power button and exit-status decoding); [`Backend`] is the
//! chosen one plus what every backend shares (starting the VM's process through
//! `hosttool`, killing its group, filtering by prefix). It never reads a command
//! line or talks to GitHub.
//!
//! Adding a hypervisor: a file implementing [`Hypervisor`], its line in
//! [`BACKENDS`] (and its name in `types::runtime`), and its tests.

mod krunvm;
mod podman;
pub mod qemu;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Child;

use crate::hosttool;
use crate::types::runtime::Runtime;
use crate::types::vm::VmSpec;

/// What the trait's async methods return (`dyn`-compatible; all of it runs on the
/// loop's one thread, so nothing needs to be `Send`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Backend failures.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A tool is not installed.
    #[error("{tool} is not installed or not on PATH; {hint}")]
    Missing {
        /// The executable.
        tool: &'static str,
        /// How to get it.
        hint: &'static str,
    },
    /// No runtime could be detected.
    #[error("no microVM runtime found: install podman with the krun runtime (crun built with libkrun) or krunvm with buildah, or choose one with -R")]
    NoRuntime,
    /// A tool ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// The tail of its standard error.
        stderr: String,
    },
    /// A tool could not be run.
    #[error("cannot run {0}")]
    Spawn(String, #[source] std::io::Error),
    /// Not enough room for a VM's disk.
    #[error("{0}: {1}")]
    NoRoom(std::path::PathBuf, String),
    /// The image (a QEMU bundle) is unusable.
    #[error("-i {0}: {1}")]
    Image(std::path::PathBuf, String),
    /// A value cannot travel on the guest's kernel command line (a space or quote
    /// would split its word).
    #[error("-i {0}: this VM's configuration cannot go on the guest's kernel command line")]
    Cmdline(
        std::path::PathBuf,
        #[source] protocol::cmdline::CmdlineError,
    ),
    /// The guest network could not be set up.
    #[error("guest network: {0}")]
    Network(#[from] crate::guestnet::sandbox::SandboxError),
    /// `--start snapshot`: no snapshot template could be made.
    #[error("--start snapshot: {0} (--start auto boots cold instead)")]
    Snapshot(String),
    /// `--warm`: a waiting VM could not be handed its configuration.
    #[error("--warm: the hand-over failed: {0}")]
    Handoff(String),
    /// The image is not a usable QEMU bundle; the cause follows.
    #[error("-i {0}: not a usable QEMU bundle")]
    Bundle(std::path::PathBuf, #[source] crate::image::ImageError),
    /// Something the loop started with is gone from this host (the hypervisor's
    /// executable, the bundle): the loop waits for it rather than mint runners
    /// whose VMs cannot start.
    #[error("{what} is gone from this host; {fix}")]
    Gone {
        /// What, with its path.
        what: String,
        /// How to bring it back.
        fix: String,
    },
}

/// One hypervisor. Methods with a default are capabilities some backends lack.
pub trait Hypervisor: std::fmt::Debug {
    /// The runtime it implements.
    fn runtime(&self) -> Runtime;

    /// Make sure the image is available locally (pulls it when missing), and
    /// settle whatever depends on it.
    fn prepare<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Create the VM before it starts (krunvm keeps a definition; most create at start).
    fn create<'a>(&'a self, _spec: &'a VmSpec) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    /// The VM's process, made with [`hosttool::command`]: it lives as long as the VM.
    fn command(&self, spec: &VmSpec) -> Result<std::process::Command, BackendError>;

    /// Start the VM's process (from [`Hypervisor::command`]); a backend that sets
    /// up more around it (QEMU: the guest network, a snapshot restore) overrides this.
    fn start<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<Child, BackendError>> {
        Box::pin(async move {
            let cmd = self.command(spec)?;
            let program = cmd.get_program().to_string_lossy().into_owned();
            hosttool::spawn_async(cmd).map_err(|e| spawn_error(&program, e))
        })
    }

    /// Before a runner is minted: prepare what VMs of `shape` need to start (its
    /// name is no VM's; QEMU makes its snapshot template when missing).
    fn prepare_start<'a>(&'a self, _shape: &'a VmSpec) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    /// `--warm`: create the VM and start it up to where it waits for its
    /// configuration, registering nothing; `None` where the backend cannot.
    fn prestart<'a>(
        &'a self,
        _spec: &'a VmSpec,
    ) -> BoxFuture<'a, Result<Option<Child>, BackendError>> {
        Box::pin(async { Ok(None) })
    }

    /// `--warm`: hand a prestarted VM its configuration (its `.env` is written).
    fn handoff<'a>(
        &'a self,
        _spec: &'a VmSpec,
        _child: &'a mut Child,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    /// After the VM's process group was killed: whatever else keeps it alive.
    fn after_kill<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Remove the VM's definition (missing is fine).
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Names of the VMs that may be this prefix's (filtered again by the caller).
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, BackendError>>;

    /// What the VM process's exit status says: (success, description).
    fn describe_exit(&self, st: &ExitStatus) -> (bool, String) {
        (st.success(), st.to_string())
    }

    /// The guest's own exit status (the entrypoint's), when the backend passes it on.
    fn guest_status(&self, st: &ExitStatus) -> Option<i32> {
        st.code()
    }

    /// Has the VM's boot visibly stalled?
    fn boot_stalled(&self, _name: &str, _elapsed: Duration) -> bool {
        false
    }

    /// The tail of the VM's console, when the backend keeps one.
    fn console_tail(&self, _name: &str) -> Option<String> {
        None
    }

    /// How many bytes the VM's console holds, where the backend keeps one.
    fn console_bytes(&self, _name: &str) -> Option<u64> {
        None
    }

    /// After the VM ended, before [`Hypervisor::delete`]: keep its console for
    /// `orchestrator logs`, and only its loop's newest `keep` (0: none). Backends
    /// without a console keep nothing.
    fn keep_console(&self, _name: &str, _prefix: &str, _keep: u32) -> std::io::Result<()> {
        Ok(())
    }

    /// Ask the guest to shut down through the hypervisor (an ACPI power button).
    /// False when nothing was sent.
    fn powerdown<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }

    /// Before each VM (cheap: no process): is what the loop started with still on
    /// this host? [`BackendError::Gone`] when not. Backends whose tools are looked
    /// up at every start have nothing to check.
    fn check_host(&self, _image: &str) -> Result<(), BackendError> {
        Ok(())
    }
}

/// A backend's entry in [`BACKENDS`].
pub struct Registration {
    /// Its `-R` name.
    pub runtime: Runtime,
    /// Whether `-R ''` may pick it, and how to tell it is usable here (`None`:
    /// only when asked for by name).
    pub detect: Option<fn() -> bool>,
    /// Check its tools and open it.
    pub open: fn(&qemu::QemuConfig) -> Result<Box<dyn Hypervisor>, BackendError>,
}

/// Every backend, in the order `-R ''` tries them (design.md §6).
pub const BACKENDS: &[Registration] = &[
    podman::REGISTRATION,
    krunvm::REGISTRATION,
    qemu::REGISTRATION,
];

/// The loop's backend.
#[derive(Debug)]
pub struct Backend(Box<dyn Hypervisor>);

impl Backend {
    /// The forced runtime after checking its tools, or the first available one.
    /// Called once per process: the orchestrator passes what it found to its loops.
    pub fn detect(
        forced: Option<Runtime>,
        cfg: &qemu::QemuConfig,
    ) -> Result<Backend, BackendError> {
        let chosen = match forced {
            Some(r) => BACKENDS.iter().find(|b| b.runtime == r),
            None => BACKENDS
                .iter()
                .find(|b| b.detect.is_some_and(|usable| usable())),
        };
        let b = chosen.ok_or(BackendError::NoRuntime)?;
        (b.open)(cfg).map(Backend)
    }

    /// The runtime this backend implements.
    pub fn runtime(&self) -> Runtime {
        self.0.runtime()
    }

    /// Make sure the image is available locally.
    pub async fn prepare(&self, image: &str) -> Result<(), BackendError> {
        self.0.prepare(image).await
    }

    /// Create the VM.
    pub async fn create(&self, spec: &VmSpec) -> Result<(), BackendError> {
        self.0.create(spec).await
    }

    /// Start the VM; the returned child lives as long as the VM.
    pub async fn start(&self, spec: &VmSpec) -> Result<Child, BackendError> {
        self.0.start(spec).await
    }

    /// Prepare what VMs of `shape` need to start, before a runner is minted.
    pub async fn prepare_start(&self, shape: &VmSpec) -> Result<(), BackendError> {
        self.0.prepare_start(shape).await
    }

    /// `--warm`: start the VM up to where it waits for its configuration.
    pub async fn prestart(&self, spec: &VmSpec) -> Result<Option<Child>, BackendError> {
        self.0.prestart(spec).await
    }

    /// `--warm`: hand a prestarted VM its configuration.
    pub async fn handoff(&self, spec: &VmSpec, child: &mut Child) -> Result<(), BackendError> {
        self.0.handoff(spec, child).await
    }

    /// What the backend process's exit status says: (success, description).
    pub fn describe_exit(&self, st: &ExitStatus) -> (bool, String) {
        self.0.describe_exit(st)
    }

    /// The guest's own exit status, when the backend passes it on.
    pub fn guest_status(&self, st: &ExitStatus) -> Option<i32> {
        self.0.guest_status(st)
    }

    /// Has the VM's boot visibly stalled (QEMU: no sign of init on the console)?
    pub fn boot_stalled(&self, name: &str, elapsed: Duration) -> bool {
        self.0.boot_stalled(name, elapsed)
    }

    /// The tail of the VM's console, when the backend keeps one.
    pub fn console_tail(&self, name: &str) -> Option<String> {
        self.0.console_tail(name)
    }

    /// How many bytes the VM's console holds, where the backend keeps one.
    pub fn console_bytes(&self, name: &str) -> Option<u64> {
        self.0.console_bytes(name)
    }

    /// Keep the ended VM's console (the newest `keep` of its loop), where there is one.
    pub fn keep_console(&self, name: &str, prefix: &str, keep: u32) -> std::io::Result<()> {
        self.0.keep_console(name, prefix, keep)
    }

    /// See [`Hypervisor::check_host`].
    pub fn check_host(&self, image: &str) -> Result<(), BackendError> {
        self.0.check_host(image)
    }

    /// Ask the guest to shut down through the hypervisor, where there is a way.
    pub async fn powerdown(&self, name: &str) -> bool {
        self.0.powerdown(name).await
    }

    /// Stop the VM now: kill the supervised process group and the VM itself.
    pub async fn force_stop(&self, name: &str, child: &mut Child) {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill().await;
        self.0.after_kill(name).await;
    }

    /// Remove the VM's definition (missing is fine).
    pub async fn delete(&self, name: &str) -> Result<(), BackendError> {
        self.0.delete(name).await
    }

    /// Names of the VMs whose name starts with `<prefix>-`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let p = format!("{prefix}-");
        let all = self.0.list(prefix).await?;
        Ok(all.into_iter().filter(|n| n.starts_with(&p)).collect())
    }
}

/// A VM process from a pinned `(program, argv)`, through [`hosttool::command`].
fn argv_command((program, args): (&str, Vec<String>)) -> std::process::Command {
    let mut cmd = hosttool::command(program);
    cmd.args(args);
    cmd
}

/// How to install the tools backends run.
const HINTS: &[(&str, &str)] = &[
    (
        "buildah",
        "install buildah (Debian/Ubuntu: apt-get install buildah; Fedora: dnf install buildah)",
    ),
    (
        "krunvm",
        "install krunvm (Fedora: dnf install krunvm; elsewhere build it from github.com/containers/krunvm with libkrun)",
    ),
    (
        "podman",
        "install podman (Debian/Ubuntu: apt-get install podman; Fedora: dnf install podman)",
    ),
    (
        "krun",
        "podman needs the krun runtime: install crun built with libkrun (Fedora: dnf install crun-krun), so that `krun` is on PATH or `crun --version` shows +LIBKRUN",
    ),
];

/// A tool a backend needs: its name, whether it is here, and how to install it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// The executable (`krun`: podman's krun runtime).
    pub name: &'static str,
    /// Found?
    pub present: bool,
    /// How to install it.
    pub hint: &'static str,
}

/// The runtime `-R ''` would choose here, if any.
pub fn detected() -> Option<Runtime> {
    BACKENDS
        .iter()
        .find(|b| b.detect.is_some_and(|usable| usable()))
        .map(|b| b.runtime)
}

/// The tools `runtime` needs, each looked up now (for `doctor`).
pub fn tools_of(runtime: Runtime) -> Vec<Tool> {
    let hint = |tool: &str| {
        HINTS
            .iter()
            .find(|(t, _)| *t == tool)
            .map_or("install it", |(_, h)| h)
    };
    let on_path = |name: &'static str| Tool {
        name,
        present: which::which(name).is_ok(),
        hint: hint(name),
    };
    match runtime {
        Runtime::Krunvm => vec![on_path("buildah"), on_path("krunvm")],
        Runtime::Podman => vec![
            on_path("podman"),
            Tool {
                name: "krun",
                present: podman::has_krun(),
                hint: hint("krun"),
            },
        ],
        Runtime::Qemu => vec![Tool {
            name: "qemu-system-x86_64",
            present: qemu::qemu_binary().is_ok(),
            hint: qemu::QEMU_HINT,
        }],
    }
}

fn missing(tool: &'static str) -> BackendError {
    let hint = HINTS
        .iter()
        .find(|(t, _)| *t == tool)
        .map_or("install it", |(_, h)| h);
    BackendError::Missing { tool, hint }
}

/// Is `tool` on PATH? If not, say how to install it.
fn need(tool: &'static str) -> Result<(), BackendError> {
    which::which(tool).map(|_| ()).map_err(|_| missing(tool))
}

fn spawn_error(program: &str, e: std::io::Error) -> BackendError {
    let program = program.rsplit('/').next().unwrap_or(program);
    match HINTS.iter().find(|(t, _)| *t == program && *t != "krun") {
        Some((tool, _)) if e.kind() == std::io::ErrorKind::NotFound => missing(tool),
        _ => BackendError::Spawn(program.to_string(), e),
    }
}

/// Run a tool to completion; non-zero exit is an error with its stderr.
pub(crate) async fn output(program: &'static str, args: &[&str]) -> Result<String, BackendError> {
    let mut cmd = hosttool::command(program);
    cmd.args(args);
    let out = hosttool::output_async(cmd)
        .await
        .map_err(|e| spawn_error(program, e))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(BackendError::Failed {
        command: format!("{program} {}", args.join(" ")),
        status: out.status.to_string(),
        stderr: hosttool::stderr_tail(&out.stderr, 400),
    })
}

/// The image is there (`check` succeeds), or is pulled.
async fn pull_if_missing(
    tool: &'static str,
    check: &[&str],
    pull: &[&str],
    image: &str,
) -> Result<(), BackendError> {
    if output(tool, check).await.is_ok() {
        return Ok(());
    }
    tracing::info!(image, "pulling the guest image");
    output(tool, pull).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runtime_is_registered_once() {
        for r in [Runtime::Krunvm, Runtime::Podman, Runtime::Qemu] {
            assert_eq!(
                BACKENDS.iter().filter(|b| b.runtime == r).count(),
                1,
                "{r:?}"
            );
        }
        // `-R ''` never picks QEMU: it needs a bundle (-i DIR), not an image.
        assert!(BACKENDS
            .iter()
            .all(|b| b.runtime != Runtime::Qemu || b.detect.is_none()));
    }

    #[test]
    fn missing_tools_name_the_fix() {
        let e = spawn_error("/usr/bin/podman", std::io::ErrorKind::NotFound.into());
        assert!(e.to_string().contains("apt-get install podman"), "{e}");
        let e = spawn_error("qemu-system-x86_64", std::io::ErrorKind::NotFound.into());
        assert!(matches!(e, BackendError::Spawn(..)), "{e}");
    }
}
