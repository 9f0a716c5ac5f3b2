//! Memory-snapshot templates of the QEMU backend (`--start`): the key of a VM's
//! shape, making a template once (a guest booted to wait, saved with QMP `migrate`),
//! and restoring each VM from it with its resume message. Must not decide anything
//! of the loop's: a failed restore boots that VM cold and says so.
//!
//! A template is guest memory: it is kept only in this user's private cache
//! (`$XDG_CACHE_HOME/gh-runner-microvm/templates/`, 0700), never beside a bundle
//! another user may write: running a template someone else wrote is running their code.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protocol::resume::{Resume, ACK, ENTROPY, WAITING};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cmdline::{Boot, INCOMING_FD};
use super::qmp::Qmp;
use super::{BackendError, Qemu};
use crate::types::vm::VmSpec;

/// `--start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartMode {
    /// Boot every VM from its kernel.
    Cold,
    /// Restore every VM from a memory-snapshot template (made once per bundle and
    /// VM shape); a loop that cannot make one fails.
    Snapshot,
    /// Snapshot where it works, else cold with one warning.
    Auto,
}

/// Templates kept at most; the least recently used go first.
const KEEP: usize = 6;
/// A template guest must be waiting within this.
const MAKE_TIMEOUT: Duration = Duration::from_secs(180);
/// A restored guest must answer within this (QEMU loads ~100 MB, then the guest
/// applies its message).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);
/// `--start auto`: a loop whose template could not be made tries again after this.
const RETRY_AFTER: Duration = Duration::from_secs(600);
/// Format of the key; bump it when the template's contract with the guest changes.
const KEY_VERSION: &str = "ghrm-template-1";

/// What the loop knows of its templates.
#[derive(Debug, Default)]
pub(super) struct Templates {
    /// Since when this loop boots cold (`--start auto` after a failure); it tries
    /// again after [`RETRY_AFTER`] (the cause may pass: a full cache, a lock).
    disabled: Option<Instant>,
    /// VMs to restore, with their template, decided at create.
    restore: std::collections::HashMap<String, PathBuf>,
    /// `--warm` VMs waiting for their hand-over: paused after a restore (true) or
    /// booted cold to wait (false).
    held: std::collections::HashMap<String, bool>,
}

/// Where this user's templates live.
pub fn templates_dir() -> PathBuf {
    crate::types::paths::cache_dir().join("templates")
}

/// A file's identity for a key: path, size, modification time, inode.
fn file_id(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{} {} {}.{} {}",
            path.display(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino()
        ),
        Err(_) => format!("{} missing", path.display()),
    }
}

/// A word safe inside `sh -c`: single-quoted.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// 64 bits of a stable hash of `text`, twice with different seeds.
fn digest(text: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut out = String::new();
    for seed in [0u8, 1] {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        seed.hash(&mut h);
        text.hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

impl Qemu {
    /// Forget what was planned for VM `name` (it is being removed).
    pub(super) fn forget_start(&self, name: &str) {
        let mut t = self.templates();
        t.restore.remove(name);
        t.held.remove(name);
    }

    fn templates(&self) -> std::sync::MutexGuard<'_, Templates> {
        self.templates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The spec of `spec`'s template VM: its shares are an empty directory in the
    /// template's state directory.
    fn template_spec(&self, spec: &VmSpec, name: &str) -> VmSpec {
        let share = self.dir(name).join("share");
        let mut t = spec.clone();
        t.name = name.to_string();
        t.env_dir = spec.env_dir.as_ref().map(|_| share.clone());
        for m in &mut t.mounts {
            m.host = share.clone();
        }
        t.args = vec![];
        t
    }

    /// The key of `spec`'s template (everything that makes its memory what it is:
    /// QEMU and its whole argv, the bundle's files by identity) and its file stem.
    fn template_key(&self, spec: &VmSpec) -> Result<(String, String), BackendError> {
        let (kernel, initrd, root) = self.bundle(Path::new(&spec.image))?;
        let (_, argv) = self.argv(&self.template_spec(spec, "template"), Boot::Template)?;
        let mut key = format!(
            "{KEY_VERSION}\nqemu {}\nhost {}\n",
            file_id(&self.binary),
            host_id()
        );
        for f in [Some(kernel), Some(initrd), root.map(|r| r.disk)]
            .into_iter()
            .flatten()
        {
            key.push_str(&format!("file {}\n", file_id(&f)));
        }
        // The TSC rate is measured by each loop, never twice the same: the template's
        // kernel keeps the one it booted with, and the host's TSC is the same.
        let argv: Vec<String> = argv
            .iter()
            .map(|a| {
                a.split(' ')
                    .map(|w| match w.starts_with("tsc_early_khz=") {
                        true => "tsc_early_khz=*",
                        false => w,
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        key.push_str(&format!("argv {}\n", argv.join("\u{1f}")));
        let stem = digest(&key);
        Ok((key, stem))
    }

    /// At create: settle how `spec` starts. With a template (made now when there is
    /// none), the VM will be restored from it; without, it boots cold.
    /// `make`: a missing template is made now (a cold boot and a save); without,
    /// the VM boots cold (`--warm`'s next VM is never worth a template boot inline).
    pub(super) async fn plan_start(&self, spec: &VmSpec, make: bool) -> Result<(), BackendError> {
        use super::StartMode::*;
        if self.cfg.start == Cold
            || self
                .templates()
                .disabled
                .is_some_and(|t| t.elapsed() < RETRY_AFTER)
        {
            return Ok(());
        }
        let made = self.template_for(spec, make).await;
        match (made, self.cfg.start) {
            (Ok(Some(path)), _) => {
                self.templates().restore.insert(spec.name.clone(), path);
                Ok(())
            }
            (Ok(None), _) => Ok(()),
            (Err(why), Snapshot) => Err(BackendError::Snapshot(why)),
            (Err(why), _) => {
                tracing::warn!(
                    "--start auto: no snapshot template ({why}); this loop's VMs boot cold, trying again in {} min \
                     (--start cold never tries)",
                    RETRY_AFTER.as_secs() / 60
                );
                self.templates().disabled = Some(Instant::now());
                Ok(())
            }
        }
    }

    /// The template file for `spec`, made when missing and `make` (one maker at a
    /// time per key).
    async fn template_for(&self, spec: &VmSpec, make: bool) -> Result<Option<PathBuf>, String> {
        let info = crate::image::BundleInfo::load(Path::new(&spec.image))
            .map_err(|e| format!("-i {}: {e}", spec.image))?;
        if self.cfg.kernel.is_none()
            && !info
                .modules
                .iter()
                .any(|m| m.contains("/virtio_console.ko"))
        {
            return Err(format!(
                "the bundle {} has no virtio_console module (its resume port); make it again with `orchestrator image bundle`",
                spec.image
            ));
        }
        let (key, stem) = self.template_key(spec).map_err(|e| e.to_string())?;
        let dir = templates_dir();
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
        }
        protocol::safefs::ensure_private_dir(&dir)
            .map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let mem = dir.join(format!("{stem}.mem"));
        let keyfile = dir.join(format!("{stem}.key"));
        let matches = |p: &Path| {
            protocol::safefs::read_bounded(p, 64 << 10)
                .ok()
                .flatten()
                .is_some_and(|k| k == key.as_bytes())
        };
        let ready = || protocol::safefs::is_regular(&mem) && matches(&keyfile);
        if !make {
            return Ok(ready().then_some(mem));
        }
        let _lock = lock(&dir.join(format!("{stem}.lock"))).await?;
        if ready() {
            // Used now: pruning takes the least recently used.
            if let Ok(f) = std::fs::File::open(&mem) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            return Ok(Some(mem));
        }
        sweep_partial(&dir);
        let t0 = Instant::now();
        self.make_template(spec, &stem, &mem).await?;
        protocol::safefs::write_replace(&keyfile, key.as_bytes(), 0o600)
            .map_err(|e| format!("write {}: {e}", keyfile.display()))?;
        let size = std::fs::metadata(&mem).map(|m| m.len()).unwrap_or(0);
        tracing::info!(
            template_ms = t0.elapsed().as_millis() as u64,
            "made the snapshot template {} ({} MiB) in {} ms",
            mem.display(),
            size >> 20,
            t0.elapsed().as_millis()
        );
        prune(&dir, &stem);
        Ok(Some(mem))
    }

    /// Boot `spec`'s template guest until it waits, then save it to `mem`.
    async fn make_template(&self, spec: &VmSpec, stem: &str, mem: &Path) -> Result<(), String> {
        let name = format!("template-{}", &stem[..16]);
        let _ = self.remove(&name);
        let t = self.template_spec(spec, &name);
        let d = self.dir(&name);
        protocol::safefs::create_private_dir(&d)
            .and_then(|_| protocol::safefs::create_private_dir(&d.join("share")))
            .map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        let result = async {
            let (_, _, root) = self
                .bundle(Path::new(&t.image))
                .map_err(|e| e.to_string())?;
            if root.is_some() && self.cfg.scratch > 0 {
                self.make_scratch(&name).map_err(|e| e.to_string())?;
            }
            let cmd = self
                .qemu_command(&t, Boot::Template)
                .map_err(|e| e.to_string())?;
            let mut child =
                crate::hosttool::spawn_async(cmd).map_err(|e| format!("start QEMU: {e}"))?;
            let saved = self.save_when_waiting(&name, &mut child, mem).await;
            let _ = child.start_kill();
            let _ = child.wait().await;
            saved.map_err(|why| match self.console_tail(&name, 15) {
                Some(tail) if !tail.is_empty() => {
                    format!("{why}; the template guest's console ended with:\n{tail}")
                }
                _ => why,
            })
        }
        .await;
        let _ = self.remove(&name);
        result
    }

    /// Wait for the template guest's [`WAITING`] line, stop it and migrate its
    /// state into `mem` (through a temporary name, renamed when complete).
    async fn save_when_waiting(
        &self,
        name: &str,
        child: &mut tokio::process::Child,
        mem: &Path,
    ) -> Result<(), String> {
        let deadline = Instant::now() + MAKE_TIMEOUT;
        let marker = format!("{} {WAITING}", protocol::console::MARKER);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("the template guest ended before it waited ({st})"));
            }
            if super::console::read_bounded(&self.console_path(name), true)
                .is_some_and(|c| String::from_utf8_lossy(&c).contains(&marker))
            {
                break;
            }
            // A guest silent for this long hangs (QEMU microvm notes): give up early.
            let elapsed =
                MAKE_TIMEOUT.saturating_sub(deadline.saturating_duration_since(Instant::now()));
            if Instant::now() >= deadline || self.boot_stalled(name, elapsed) {
                return Err(format!(
                    "the template guest was not waiting after {}s",
                    elapsed.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tmp = mem.with_extension(format!("mem.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut q = Qmp::connect(&self.dir(name).join("qmp.sock")).await?;
        q.execute("stop", serde_json::json!({})).await?;
        q.execute(
            "migrate-set-parameters",
            serde_json::json!({"max-bandwidth": 100u64 << 30}),
        )
        .await?;
        let uri = format!(
            "exec:umask 077 && exec cat > {}",
            sh_quote(&tmp.display().to_string())
        );
        q.execute("migrate", serde_json::json!({ "uri": uri }))
            .await?;
        let status = loop {
            let r = q.execute("query-migrate", serde_json::json!({})).await?;
            match r.get("status").and_then(|s| s.as_str()) {
                Some("completed") => break Ok(()),
                Some("failed") | Some("cancelled") => {
                    let why = r
                        .get("error-desc")
                        .and_then(|s| s.as_str())
                        .unwrap_or("migration failed");
                    break Err(format!("saving the template: {why}"));
                }
                _ if Instant::now() >= deadline => {
                    break Err("saving the template took too long".into());
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let _ = q.execute("quit", serde_json::json!({})).await;
        if let Err(e) = status {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .and_then(|_| std::fs::rename(&tmp, mem))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("keep {}: {e}", mem.display())
            })
    }

    /// Start `spec`'s VM: restored from its template when create planned that (a
    /// restore that fails is said once, its template removed, and the VM booted
    /// cold), else cold.
    pub(super) async fn start_vm(
        &self,
        spec: &VmSpec,
    ) -> Result<tokio::process::Child, BackendError> {
        let planned = self.templates().restore.remove(&spec.name);
        if let Some(mem) = planned {
            let t0 = Instant::now();
            match self.restore(spec, &mem).await {
                Ok(child) => {
                    tracing::info!(
                        restore_ms = t0.elapsed().as_millis() as u64,
                        vm = %spec.name,
                        "VM {} restored from the snapshot template in {} ms",
                        spec.name,
                        t0.elapsed().as_millis()
                    );
                    return Ok(child);
                }
                Err(why) => self.restore_failed(spec, &mem, &why),
            }
        }
        self.spawn_with_net(&spec.name, self.qemu_command(spec, Boot::Cold)?)
    }

    /// A restore from `mem` failed: said once; the template goes (the next VM's
    /// create makes it again) and the VM's sockets with it (it boots cold now).
    fn restore_failed(&self, spec: &VmSpec, mem: &Path, why: &str) {
        tracing::warn!(
            "VM {}: the restore from the snapshot template {} failed ({why}); booting it cold, and the template is made again for the next VM",
            spec.name,
            mem.display()
        );
        let _ = std::fs::remove_file(mem);
        let _ = std::fs::remove_file(mem.with_extension("key"));
        for f in ["qmp.sock", "ctl.sock"] {
            let _ = std::fs::remove_file(self.dir(&spec.name).join(f));
        }
    }

    /// Restore `spec`'s VM from `mem` and hand it its resume message.
    async fn restore(&self, spec: &VmSpec, mem: &Path) -> Result<tokio::process::Child, String> {
        let line = self.resume_line(spec).map_err(|e| e.to_string())?;
        let mut child = self.spawn_restore(spec, mem).await?;
        match tokio::time::timeout(RESTORE_TIMEOUT, self.wake(spec, &mut child, &line, true)).await
        {
            Ok(Ok(())) => Ok(child),
            outcome => Err(self.give_up(spec, &mut child, outcome).await),
        }
    }

    /// Kill a VM whose restore or hand-over failed; why, with QEMU's own words.
    async fn give_up(
        &self,
        spec: &VmSpec,
        child: &mut tokio::process::Child,
        outcome: Result<Result<(), String>, tokio::time::error::Elapsed>,
    ) -> String {
        let _ = child.start_kill();
        let _ = child.wait().await;
        self.drop_net(&spec.name);
        let qemu_log = std::fs::read(self.dir(&spec.name).join("qemu.log"))
            .map(|b| crate::hosttool::stderr_tail(&b, 400))
            .unwrap_or_default();
        let why = match outcome {
            Ok(Err(why)) => why,
            _ => "no answer in time".to_string(),
        };
        match qemu_log.is_empty() {
            true => why,
            false => format!("{why}; QEMU said: {qemu_log}"),
        }
    }

    /// Start QEMU restoring `spec`'s VM from `mem`; returns once the state is
    /// loaded, the guest still paused.
    async fn spawn_restore(
        &self,
        spec: &VmSpec,
        mem: &Path,
    ) -> Result<tokio::process::Child, String> {
        let file = open_regular(mem).map_err(|e| format!("open {}: {e}", mem.display()))?;
        let mut cmd = self
            .qemu_command(spec, Boot::Restore)
            .map_err(|e| e.to_string())?;
        let raw = file.as_raw_fd();
        // SAFETY: dup2 is async-signal-safe; `file` lives in the closure until exec.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &file;
                // Already there (dup2 would keep its close-on-exec flag): clear it.
                let rc = if raw == INCOMING_FD {
                    libc::fcntl(raw, libc::F_SETFD, 0)
                } else {
                    libc::dup2(raw, INCOMING_FD)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = self
            .spawn_with_net(&spec.name, cmd)
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(RESTORE_TIMEOUT, self.loaded(spec, &mut child)).await {
            Ok(Ok(())) => Ok(child),
            outcome => Err(self.give_up(spec, &mut child, outcome).await),
        }
    }

    /// Wait for QEMU to load the template.
    async fn loaded(&self, spec: &VmSpec, child: &mut tokio::process::Child) -> Result<(), String> {
        let mut q = self.qmp_of(spec, child).await?;
        loop {
            let r = q.execute("query-migrate", serde_json::json!({})).await?;
            match r.get("status").and_then(|s| s.as_str()) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    return Err(r
                        .get("error-desc")
                        .and_then(|s| s.as_str())
                        .unwrap_or("loading the template failed")
                        .to_string());
                }
                _ => {
                    if let Ok(Some(st)) = child.try_wait() {
                        return Err(format!("QEMU ended while loading the template ({st})"));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
            }
        }
    }

    /// QMP of a QEMU just started (its socket appears shortly).
    async fn qmp_of(
        &self,
        spec: &VmSpec,
        child: &mut tokio::process::Child,
    ) -> Result<Qmp, String> {
        let sock = self.dir(&spec.name).join("qmp.sock");
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("QEMU ended ({st})"));
            }
            match Qmp::connect(&sock).await {
                Ok(q) => return Ok(q),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Let a waiting guest go on (`paused`: restored, so `cont` it first): send its
    /// resume message (fresh entropy, the time now, its command line) and read its
    /// answer.
    async fn wake(
        &self,
        spec: &VmSpec,
        child: &mut tokio::process::Child,
        line: &str,
        paused: bool,
    ) -> Result<(), String> {
        let ctl = self.dir(&spec.name).join("ctl.sock");
        let mut port = loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("QEMU ended ({st})"));
            }
            match tokio::net::UnixStream::connect(&ctl).await {
                Ok(p) => break p,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        if paused {
            let mut q = self.qmp_of(spec, child).await?;
            q.execute("cont", serde_json::json!({})).await?;
        }
        let mut entropy = [0u8; ENTROPY];
        getrandom::fill(&mut entropy).map_err(|e| format!("host entropy: {e}"))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let msg = Resume {
            entropy,
            secs: now.as_secs() as i64,
            nanos: now.subsec_nanos(),
            cmdline: line.to_string(),
        }
        .render()
        .map_err(|e| e.to_string())?;
        port.write_all(msg.as_bytes())
            .await
            .map_err(|e| format!("send the resume message: {e}"))?;
        // The answer: one short line, read with a bound.
        let mut answer = Vec::with_capacity(16);
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\n") {
            match port.read(&mut byte).await {
                Ok(0) => return Err("the guest closed its resume port".into()),
                Ok(_) if answer.len() < 64 => answer.push(byte[0]),
                Ok(_) => return Err("the guest's answer is too long".into()),
                Err(e) => return Err(format!("read the guest's answer: {e}")),
            }
        }
        if answer != format!("{ACK}\n").as_bytes() {
            return Err("the guest did not acknowledge its resume message".into());
        }
        Ok(())
    }

    /// `--warm`: start `spec`'s VM up to where it waits for its configuration:
    /// restored and paused when create planned a restore, else booted cold to wait.
    pub(super) async fn prestart_vm(
        &self,
        spec: &VmSpec,
    ) -> Result<tokio::process::Child, BackendError> {
        self.create_dir(spec)?;
        self.plan_start(spec, false).await?;
        let planned = self.templates().restore.remove(&spec.name);
        if let Some(mem) = planned {
            match self.spawn_restore(spec, &mem).await {
                Ok(child) => {
                    self.templates().held.insert(spec.name.clone(), true);
                    return Ok(child);
                }
                Err(why) => self.restore_failed(spec, &mem, &why),
            }
        }
        let child = self.spawn_with_net(&spec.name, self.qemu_command(spec, Boot::Warm)?)?;
        self.templates().held.insert(spec.name.clone(), false);
        Ok(child)
    }

    /// `--warm`: hand a prestarted VM its configuration (its `.env` is written).
    pub(super) async fn handoff_vm(
        &self,
        spec: &VmSpec,
        child: &mut tokio::process::Child,
    ) -> Result<(), BackendError> {
        let paused =
            self.templates().held.remove(&spec.name).ok_or_else(|| {
                BackendError::Handoff(format!("VM {} was not prestarted", spec.name))
            })?;
        let line = self.resume_line(spec)?;
        // A cold-booted warm VM may still be booting: give it a boot's time.
        let within = if paused {
            RESTORE_TIMEOUT
        } else {
            MAKE_TIMEOUT
        };
        match tokio::time::timeout(within, self.wake(spec, child, &line, paused)).await {
            Ok(Ok(())) => Ok(()),
            outcome => Err(BackendError::Handoff(
                self.give_up(spec, child, outcome).await,
            )),
        }
    }
}

/// Take `path`'s lock, waiting while another loop makes the same template.
async fn lock(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = Instant::now() + MAKE_TIMEOUT + Duration::from_secs(60);
    loop {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err((_, e)) => return Err(format!("lock {}: {e}", path.display())),
        }
    }
}

/// `path` for reading, when it is a regular file (never through a link).
fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// Keep the [`KEEP`] most recently used templates (and `keep`'s).
fn prune(dir: &Path, keep: &str) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut mems: Vec<(std::time::SystemTime, String)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".mem")?.to_string();
            let t = e.metadata().ok()?.modified().ok()?;
            Some((t, stem))
        })
        .filter(|(_, s)| s != keep)
        .collect();
    mems.sort();
    let excess = (mems.len() + 1).saturating_sub(KEEP);
    for (_, stem) in mems.into_iter().take(excess) {
        // Never the lock: a loop waiting on it would take a new one beside a maker.
        for ext in ["mem", "key"] {
            let _ = std::fs::remove_file(dir.join(format!("{stem}.{ext}")));
        }
    }
}

/// Partial templates (`<stem>.mem.tmp-<pid>`) of makers that are gone (a SIGKILLed
/// loop), removed before a new one is made.
fn sweep_partial(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split_once(".mem.tmp-").map(|(_, p)| p.to_string()) else {
            continue;
        };
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|p| p == std::process::id() || Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What of this host a template depends on beyond QEMU's argv: its kernel (KVM),
/// its CPU's features (`-cpu host`, `-cpu max`) and the machine (a cache shared
/// between hosts).
/// Read once per process: it is part of every key, computed twice per VM.
fn host_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let flags = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("flags"))
            .unwrap_or_default()
            .to_string();
        let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
        digest(&format!("{}\n{flags}\n{}", release.trim(), machine.trim()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_templates_of_gone_makers_are_swept() {
        let d = tempfile::tempdir().unwrap();
        let gone = d.path().join("s.mem.tmp-999999999");
        let mine = d.path().join(format!("s.mem.tmp-{}", std::process::id()));
        let other = d.path().join("s.mem");
        for f in [&gone, &mine, &other] {
            std::fs::write(f, b"x").unwrap();
        }
        sweep_partial(d.path());
        assert!(!gone.exists());
        assert!(mine.exists() && other.exists());
    }

    #[test]
    fn quoting_keeps_a_path_one_word() {
        assert_eq!(sh_quote("/a b/c"), "'/a b/c'");
        assert_eq!(sh_quote("/x'; rm -rf /'"), "'/x'\\''; rm -rf /'\\'''");
    }

    #[test]
    fn the_digest_is_stable_and_discerning() {
        assert_eq!(digest("a"), digest("a"));
        assert_ne!(digest("a"), digest("b"));
        assert_eq!(digest("a").len(), 32);
    }

    #[test]
    fn pruning_keeps_the_newest() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..(KEEP + 3) {
            let f = d.path().join(format!("s{i}.mem"));
            std::fs::write(&f, b"x").unwrap();
            std::fs::write(d.path().join(format!("s{i}.key")), b"k").unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(&f)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        prune(d.path(), "s0");
        let left: std::collections::BTreeSet<String> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".mem"))
            .collect();
        // s0 is the one in use; the newest KEEP-1 others stay.
        let want: std::collections::BTreeSet<String> = std::iter::once("s0.mem".to_string())
            .chain((4..(KEEP + 3)).map(|i| format!("s{i}.mem")))
            .collect();
        assert_eq!(left, want);
    }
}
