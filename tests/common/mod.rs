//! Test harness: a local forge, stand-in backends on PATH, and processes that are
//! always torn down (a unique tag in every process's environment lets teardown
//! find and kill anything a test started, on every path: pass, fail, panic).

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ghrm::localforge::LocalForge;

/// The PAT the local forge accepts; tests prove it never reaches a guest.
pub const PAT: &str = "test-pat-Zq8X3vN1cK7mP2wR";
/// The repository jobs are queued for.
pub const REPO: &str = "acme/widgets";

pub fn bin(name: &str) -> PathBuf {
    let runner = PathBuf::from(env!("CARGO_BIN_EXE_runner"));
    let p = runner.with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/build.sh first (it builds the static guest binaries)",
        p.display()
    );
    p
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bin")
}

/// Lay out an actions-runner install root holding the fake runner, as
/// `<root>/runner-<version>/{run.sh,config.sh,bin/Runner.Listener}`.
pub fn fake_runner_install(root: &Path, version: &str) -> PathBuf {
    let dir = root.join(format!("runner-{version}"));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(bin("fake-runner-listener"), dir.join("bin/Runner.Listener")).unwrap();
    for (script, verb) in [("run.sh", "run"), ("config.sh", "configure")] {
        let p = dir.join(script);
        std::fs::write(
            &p,
            format!("#!/bin/sh\nexec \"$(dirname \"$0\")/bin/Runner.Listener\" {verb} \"$@\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    dir
}

/// One test's world: forge, temp dirs, stand-ins, leak tag.
pub struct World {
    pub forge: LocalForge,
    pub dir: tempfile::TempDir,
    pub tag: String,
    /// Variables added to every command's clean environment.
    pub env: std::sync::Mutex<Vec<(String, String)>>,
}

impl World {
    pub fn new() -> World {
        let forge = LocalForge::start(0, &[PAT]).unwrap();
        forge.set_runner_url(&forge.url());
        let dir = tempfile::Builder::new()
            .prefix("ghrm-test.")
            .tempdir()
            .unwrap();
        for d in ["tmp", "state", "install"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        fake_runner_install(&dir.path().join("install"), "2.330.0");
        // An older version beside it: the entrypoint must pick the newest.
        std::fs::create_dir_all(dir.path().join("install/runner-2.9.0")).unwrap();
        let tag = protocol::secret::random_alnum(16).unwrap();
        World {
            forge,
            dir,
            tag,
            env: Default::default(),
        }
    }

    pub fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A command for one of our binaries, in a clean environment with the stand-ins on PATH.
    pub fn command(&self, name: &str) -> Command {
        let mut c = Command::new(bin(name));
        c.env_clear()
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                    fixtures().display()
                ),
            )
            .env("HOME", self.dir.path())
            .env("TMPDIR", self.tmp())
            .env("GHRM_STANDIN_STATE", self.state())
            .env("GHRM_STANDIN_RUNNER", self.dir.path().join("install"))
            .env("GHRM_STANDIN_ENTRYPOINT", bin("entrypoint"))
            .env("GHRM_LEAK_TAG", &self.tag)
            // No stray .env from the developer's checkout.
            .current_dir(self.dir.path());
        c.envs(self.env.lock().unwrap().iter().cloned());
        c
    }

    /// Start a binary in its own process group, output to a log file.
    pub fn spawn(&self, name: &str, args: &[&str]) -> Proc {
        self.spawn_with(self.command(name), name, args)
    }

    /// [`World::spawn`] as the unprivileged `uid`, from the private copies that
    /// [`World::as_user`] made.
    pub fn spawn_as(&self, uid: u32, name: &str, args: &[&str]) -> Proc {
        let mut c = self.command(name);
        let mut s = Command::new(self.dir.path().join("bin").join(name));
        s.env_clear()
            .envs(
                c.get_envs()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
            )
            .current_dir(self.dir.path())
            .uid(uid)
            .gid(uid);
        c = s;
        self.spawn_with(c, name, args)
    }

    fn spawn_with(&self, mut c: Command, name: &str, args: &[&str]) -> Proc {
        let log = self.dir.path().join(format!(
            "{name}-{}.log",
            protocol::secret::random_alnum(4).unwrap()
        ));
        let f = std::fs::File::create(&log).unwrap();
        c.args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .process_group(0);
        Proc {
            child: c.spawn().unwrap(),
            log,
        }
    }

    /// Hand this world to the unprivileged `uid`: its directories, and private
    /// copies of our binaries (their build directory may not be open to it) and of
    /// `bundle`, whose copy is returned.
    pub fn as_user(&self, uid: u32, bundle: &Path) -> PathBuf {
        let bin_dir = self.dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        for b in ["orchestrator", "runner", "entrypoint"] {
            std::fs::copy(bin(b), bin_dir.join(b)).unwrap();
        }
        let copy = self.dir.path().join("bundle");
        std::fs::create_dir_all(&copy).unwrap();
        for e in std::fs::read_dir(bundle).unwrap().flatten() {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
        let st = Command::new("chown")
            .args(["-R", &format!("{uid}:{uid}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "chown: handing a world to another user needs root"
        );
        copy
    }

    /// `orchestrator ARGS -- -T PAT -g FORGE -p acme/widgets RUNNER_ARGS`
    pub fn orchestrator(&self, args: &[&str], runner_args: &[&str]) -> Proc {
        let all = self.orchestrator_args(args, runner_args);
        self.spawn(
            "orchestrator",
            &all.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    }

    /// `runner -T PAT -g FORGE -p acme/widgets ARGS`
    pub fn runner(&self, args: &[&str]) -> Proc {
        let url = self.forge.url();
        let mut all = vec!["-T", PAT, "-g", &url, "-p", REPO];
        all.extend(args);
        self.spawn("runner", &all)
    }

    /// [`World::orchestrator`] as the unprivileged `uid` (see [`World::as_user`]).
    pub fn orchestrator_as(&self, uid: u32, args: &[&str], runner_args: &[&str]) -> Proc {
        let all = self.orchestrator_args(args, runner_args);
        self.spawn_as(
            uid,
            "orchestrator",
            &all.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    }

    /// [`World::orchestrator`] (`uid` None) or [`World::orchestrator_as`] for `repo`.
    pub fn orchestrator_for(
        &self,
        uid: Option<u32>,
        repo: &str,
        args: &[&str],
        runner_args: &[&str],
    ) -> Proc {
        let all = self.orchestrator_args_for(repo, args, runner_args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        match uid {
            Some(uid) => self.spawn_as(uid, "orchestrator", &all),
            None => self.spawn("orchestrator", &all),
        }
    }

    fn orchestrator_args(&self, args: &[&str], runner_args: &[&str]) -> Vec<String> {
        self.orchestrator_args_for(REPO, args, runner_args)
    }

    fn orchestrator_args_for(
        &self,
        repo: &str,
        args: &[&str],
        runner_args: &[&str],
    ) -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--", "-T", PAT, "-g", &self.forge.url(), "-p", repo].map(String::from));
        all.extend(runner_args.iter().map(|s| s.to_string()));
        all
    }

    /// Processes (pid, cmdline) carrying this test's tag.
    pub fn tagged(&self) -> Vec<(i32, String)> {
        let needle = format!("GHRM_LEAK_TAG={}", self.tag);
        let mut found = vec![];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid == std::process::id() as i32 {
                continue;
            }
            let Ok(env) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                if stat.split_whitespace().nth(2) == Some("Z") {
                    continue; // a zombie is already dead
                }
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                found.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
            }
        }
        found
    }

    /// Wait until no tagged process is left; return the survivors if some remain.
    pub fn wait_no_processes(&self, within: Duration) -> Vec<(i32, String)> {
        let end = Instant::now() + within;
        loop {
            let left = self.tagged();
            if left.is_empty() || Instant::now() >= end {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Environment roots left in TMPDIR: `<prefix>.root-*` in any user's private
    /// `gh-runner-microvm-<uid>/` (as `gh-runner-microvm-<uid>/<name>`), and any
    /// `gh-runner-microvm.*` directory of the layout before it (none may appear).
    pub fn env_roots(&self) -> Vec<String> {
        let dirs = |d: &Path| -> Vec<(PathBuf, String)> {
            std::fs::read_dir(d)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut roots = vec![];
        for (path, name) in dirs(&self.tmp()) {
            if name.starts_with("gh-runner-microvm.") {
                roots.push(name);
            } else if name.starts_with("gh-runner-microvm-") {
                roots.extend(
                    dirs(&path)
                        .into_iter()
                        .filter(|(_, n)| n.contains(".root-"))
                        .map(|(_, n)| format!("{name}/{n}")),
                );
            }
        }
        roots
    }

    /// VMs the stand-ins still know.
    pub fn vms(&self) -> Vec<String> {
        std::fs::read_dir(self.state().join("vm"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn read_state(&self, file: &str) -> String {
        std::fs::read_to_string(self.state().join(file)).unwrap_or_default()
    }

    /// Wait for `cond` or panic with `what` and the log.
    pub fn wait_for(&self, what: &str, within: Duration, p: &Proc, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + within;
        while !cond() {
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (pid, _) in self.tagged() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A process started by a test; killed (with its process group) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn log(&self) -> String {
        format!(
            "----- {} -----\n{}",
            self.log.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Wait for exit within `within`, or panic with the log.
    pub fn finish(&mut self, within: Duration) -> ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < end,
                "process did not exit within {}s\n{}",
                within.as_secs(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Shell prelude of job scripts: `D` is the loop directory as the guest sees it,
/// `ID` this VM's iteration id (the runner name is `<prefix>-<loop>-<random>`).
pub const PRELUDE: &str = r#"D=${GHRM_TEST_ENVDIR:-/_environment}
ID=$(echo "$RUNNER_NAME" | awk -F- '{print $(NF-1)"-"$NF}')
"#;

/// A job script that reports, from inside the guest, what a workflow can see.
pub fn facts_script() -> String {
    PRELUDE.to_string()
        + r#"echo "runner=$RUNNER_NAME"
for f in "$D"/*.env; do [ -e "$f" ] && echo "env-file-present=$f"; done
echo "dir-mode=$(stat -c %a "$D")"
echo "--- own environment"; env
for p in $PPID $(awk '{print $4}' /proc/$PPID/stat); do
  echo "--- process $p"; tr '\0' ' ' < /proc/$p/cmdline; echo; tr '\0' '\n' < /proc/$p/environ
done
echo "--- loop directory"
for f in "$D"/* "$D"/.[!.]*; do [ -f "$f" ] && { echo "== $f"; cat "$f"; echo; }; done
echo facts-done
"#
}

/// A QEMU bundle built once per test run from the cached Debian kernel
/// (`scripts/fetch-kernel.sh`), busybox-static and the fake runner.
pub fn qemu_bundle() -> PathBuf {
    static BUNDLE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUNDLE
        .get_or_init(|| {
            let target = bin("runner").parent().unwrap().to_path_buf();
            let out = target.join("test-bundle");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-kernel.sh");
            let kernel = Command::new(&script)
                .output()
                .expect("run scripts/fetch-kernel.sh");
            assert!(
                kernel.status.success(),
                "scripts/fetch-kernel.sh failed: {}",
                String::from_utf8_lossy(&kernel.stderr)
            );
            let kdir = PathBuf::from(String::from_utf8_lossy(&kernel.stdout).trim());
            let busybox = PathBuf::from("/bin/busybox");
            assert!(
                busybox.is_file(),
                "/bin/busybox missing: install busybox-static (scripts/install-deps.sh does)"
            );
            let work = tempfile::tempdir().unwrap();
            let tgz = ghrm::image::fake_runner_tarball(
                &bin("fake-runner-listener"),
                work.path(),
                "2.330.0",
            )
            .unwrap();
            let out_status = Command::new(bin("orchestrator"))
                .args(["image", "bundle", "--kernel"])
                .arg(kdir.join("vmlinuz"))
                .arg("--modules")
                .arg(kdir.join("modules"))
                .arg("--busybox")
                .arg(&busybox)
                .arg("--runner-tarball")
                .arg(&tgz)
                .arg("--out")
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                out_status.status.success(),
                "image bundle failed: {}",
                String::from_utf8_lossy(&out_status.stderr)
            );
            out
        })
        .clone()
}

/// The kernel release inside the test bundle.
pub fn bundle_release(bundle: &Path) -> String {
    ghrm::image::BundleInfo::load(bundle)
        .unwrap()
        .kernel_release
}

/// A GitHub App key pair made for a test (never committed): the private key
/// written to `key` (0600), the public key's PEM returned.
pub fn app_key(key: &Path) -> String {
    let ok = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "openssl genrsa: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let public = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(key)
        .output()
        .unwrap();
    assert!(public.status.success());
    String::from_utf8(public.stdout).unwrap()
}
