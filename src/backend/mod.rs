//! microVM backends behind one interface (design.md §6): prepare an image,
//! create, start (a supervised child process), force-stop, delete, list by prefix.
//!
//! Every backend process is started in its own process group with
//! `PR_SET_PDEATHSIG(SIGKILL)`, from the runner's single runtime thread (the
//! death signal belongs to the spawning *thread*), so a VM never outlives its loop.

mod krunvm;
mod podman;
pub mod qemu;

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::types::runtime::Runtime;
use crate::types::vm::VmSpec;

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
    /// The image (a QEMU bundle) is unusable.
    #[error("-i {0}: {1}")]
    Image(PathBuf, String),
}

const BUILDAH_HINT: &str =
    "install buildah (Debian/Ubuntu: apt-get install buildah; Fedora: dnf install buildah)";
const KRUNVM_HINT: &str = "install krunvm (Fedora: dnf install krunvm; elsewhere build it from github.com/containers/krunvm with libkrun)";
const PODMAN_HINT: &str =
    "install podman (Debian/Ubuntu: apt-get install podman; Fedora: dnf install podman)";
const KRUN_HINT: &str = "podman needs the krun runtime: install crun built with libkrun (Fedora: dnf install crun-krun), so that `krun` is on PATH or `crun --version` shows +LIBKRUN";

/// A microVM runtime.
#[derive(Debug, Clone)]
pub enum Backend {
    /// `buildah unshare krunvm …`.
    Krunvm,
    /// `podman run --runtime krun …`.
    Podman,
    /// `qemu-system-x86_64 -M microvm …` with a kernel + initramfs bundle.
    Qemu(qemu::Qemu),
}

fn need(tool: &'static str, hint: &'static str) -> Result<(), BackendError> {
    which::which(tool)
        .map(|_| ())
        .map_err(|_| BackendError::Missing { tool, hint })
}

/// Is the krun OCI runtime available to podman?
fn has_krun() -> bool {
    if which::which("krun").is_ok() {
        return true;
    }
    std::process::Command::new("crun")
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("+LIBKRUN"))
}

impl Backend {
    /// The forced runtime after checking its tools, or the first available one
    /// (podman with krun, krunvm, QEMU).
    pub fn detect(
        forced: Option<Runtime>,
        qemu: &qemu::QemuConfig,
    ) -> Result<Backend, BackendError> {
        match forced {
            Some(Runtime::Qemu) => Ok(Backend::Qemu(qemu::Qemu::new(qemu.clone())?)),
            Some(Runtime::Krunvm) => {
                need("buildah", BUILDAH_HINT)?;
                need("krunvm", KRUNVM_HINT)?;
                Ok(Backend::Krunvm)
            }
            Some(Runtime::Podman) => {
                need("podman", PODMAN_HINT)?;
                if !has_krun() {
                    return Err(BackendError::Missing {
                        tool: "krun",
                        hint: KRUN_HINT,
                    });
                }
                Ok(Backend::Podman)
            }
            None if which::which("podman").is_ok() && has_krun() => Ok(Backend::Podman),
            None if which::which("krunvm").is_ok() && which::which("buildah").is_ok() => {
                Ok(Backend::Krunvm)
            }
            None => Err(BackendError::NoRuntime),
        }
    }

    /// The runtime this backend implements.
    pub fn runtime(&self) -> Runtime {
        match self {
            Backend::Krunvm => Runtime::Krunvm,
            Backend::Podman => Runtime::Podman,
            Backend::Qemu(_) => Runtime::Qemu,
        }
    }

    /// Make sure the image is available locally (pulls it when missing).
    pub async fn prepare(&self, image: &str) -> Result<(), BackendError> {
        let (tool, check, pull): (&str, Vec<&str>, Vec<&str>) = match self {
            Backend::Krunvm => (
                "buildah",
                vec!["inspect", "--type", "image", image],
                vec!["pull", image],
            ),
            Backend::Podman => (
                "podman",
                vec!["image", "exists", image],
                vec!["pull", image],
            ),
            Backend::Qemu(q) => return q.prepare(image).await,
        };
        if output(tool, &check).await.is_ok() {
            return Ok(());
        }
        tracing::info!(image, "pulling the guest image");
        output(tool, &pull).await.map(|_| ())
    }

    /// Create the VM (krunvm keeps a definition; podman creates at start).
    pub async fn create(&self, spec: &VmSpec) -> Result<(), BackendError> {
        match self {
            Backend::Krunvm => krunvm::create(spec).await,
            Backend::Podman => Ok(()),
            Backend::Qemu(q) => q.create(spec),
        }
    }

    /// Start the VM; the returned child lives as long as the VM.
    pub fn start(&self, spec: &VmSpec) -> Result<Child, BackendError> {
        let (program, args): (PathBuf, Vec<String>) = match self {
            Backend::Krunvm => {
                let (p, a) = krunvm::start_argv(spec);
                (p.into(), a)
            }
            Backend::Podman => {
                let (p, a) = podman::run_argv(spec);
                (p.into(), a)
            }
            Backend::Qemu(q) => q.argv(spec)?,
        };
        let mut cmd = Command::new(&program);
        cmd.args(&args).stdin(Stdio::null()).kill_on_drop(true);
        if let Backend::Qemu(q) = self {
            // QEMU's own messages; the guest console goes to console.log beside it.
            let log = q.console_path(&spec.name).with_file_name("qemu.log");
            let f = std::fs::File::create(&log)
                .map_err(|e| BackendError::Spawn(log.display().to_string(), e))?;
            cmd.stdout(Stdio::null()).stderr(f);
        }
        scrub(&mut cmd);
        supervised(&mut cmd);
        let name = program
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("backend")
            .to_string();
        cmd.spawn().map_err(|e| spawn_error(&name, e))
    }

    /// What the backend process's exit status says: (success, description).
    pub fn describe_exit(&self, st: &std::process::ExitStatus) -> (bool, String) {
        match self {
            Backend::Qemu(_) => qemu::describe_exit(st),
            _ => (st.success(), st.to_string()),
        }
    }

    /// The guest's own exit status (the entrypoint's), when the backend passes it on.
    pub fn guest_status(&self, st: &std::process::ExitStatus) -> Option<i32> {
        match self {
            Backend::Qemu(_) => qemu::guest_status(st),
            _ => st.code(),
        }
    }

    /// Has the VM's boot visibly stalled (QEMU: no sign of init on the console)?
    pub fn boot_stalled(&self, name: &str, elapsed: std::time::Duration) -> bool {
        match self {
            Backend::Qemu(q) => q.boot_stalled(name, elapsed),
            _ => false,
        }
    }

    /// The tail of the VM's console, when the backend keeps one.
    pub fn console_tail(&self, name: &str) -> Option<String> {
        match self {
            Backend::Qemu(q) => q.console_tail(name, 25),
            _ => None,
        }
    }

    /// Ask the guest to shut down through the hypervisor, where there is a way
    /// (QEMU: the ACPI power button over QMP). False when nothing was sent.
    pub async fn powerdown(&self, name: &str) -> bool {
        match self {
            Backend::Qemu(q) => q.powerdown(name).await,
            _ => false,
        }
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
        if matches!(self, Backend::Podman) {
            let _ = output("podman", &["rm", "-f", "-t", "0", name]).await;
        }
    }

    /// Remove the VM's definition (missing is fine).
    pub async fn delete(&self, name: &str) -> Result<(), BackendError> {
        match self {
            Backend::Krunvm => krunvm::delete(name).await,
            Backend::Podman => podman::remove(name).await,
            Backend::Qemu(q) => q.delete(name),
        }
    }

    /// Names of the VMs whose name starts with `<prefix>-`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let all = match self {
            Backend::Krunvm => krunvm::list().await?,
            Backend::Podman => podman::list(prefix).await?,
            Backend::Qemu(q) => q.list(),
        };
        let p = format!("{prefix}-");
        Ok(all.into_iter().filter(|n| n.starts_with(&p)).collect())
    }
}

/// Credentials of the host that no backend process (and so no guest) may inherit.
const HOST_SECRETS: &[&str] = &[
    "RUNNER_PAT",
    "RUNNER_SECRET",
    "RUNNER_APP_KEY",
    "GITHUB_TOKEN",
    "GH_TOKEN",
];

/// Remove the host's credentials from a backend command's environment.
fn scrub(cmd: &mut Command) -> &mut Command {
    for v in HOST_SECRETS {
        cmd.env_remove(v);
    }
    cmd
}

/// Put the child in its own process group and tie its life to this thread.
pub fn supervised(cmd: &mut Command) {
    // SAFETY: setpgid and prctl are async-signal-safe and touch no memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn spawn_error(program: &str, e: std::io::Error) -> BackendError {
    let program = program.rsplit('/').next().unwrap_or(program);
    match (e.kind(), program) {
        (std::io::ErrorKind::NotFound, "buildah") => BackendError::Missing {
            tool: "buildah",
            hint: BUILDAH_HINT,
        },
        (std::io::ErrorKind::NotFound, "krunvm") => BackendError::Missing {
            tool: "krunvm",
            hint: KRUNVM_HINT,
        },
        (std::io::ErrorKind::NotFound, "podman") => BackendError::Missing {
            tool: "podman",
            hint: PODMAN_HINT,
        },
        _ => BackendError::Spawn(program.to_string(), e),
    }
}

/// Run a tool to completion; non-zero exit is an error with its stderr.
pub(crate) async fn output(program: &'static str, args: &[&str]) -> Result<String, BackendError> {
    let out = scrub(&mut Command::new(program))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| spawn_error(program, e))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr
        .trim()
        .chars()
        .rev()
        .take(400)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(BackendError::Failed {
        command: format!("{program} {}", args.join(" ")),
        status: out.status.to_string(),
        stderr: tail,
    })
}
