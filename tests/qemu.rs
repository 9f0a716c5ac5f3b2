//! Real microVMs: QEMU `-M microvm` under TCG (CI has no usable KVM), booting the
//! bundle made by `orchestrator image bundle`, against the local forge reached
//! only through `--net restricted` and one forward to loopback.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::common::{bundle_release, facts_script, qemu_bundle, World, PAT, PRELUDE, REPO};
use ghrm::localforge::JobStatus;

const GUEST_FORGE: &str = "10.0.2.100:80";

pub(crate) fn qemu_args(w: &World, extra: &[&str]) -> Vec<String> {
    let bundle = qemu_bundle();
    let port = w.forge.addr().port();
    w.forge.set_runner_url(&format!("http://{GUEST_FORGE}"));
    let mut a: Vec<String> = vec![
        "-i".into(),
        bundle.display().to_string(),
        "--accel".into(),
        "tcg".into(),
        "--net".into(),
        "restricted".into(),
        "--net-forward".into(),
        format!("{GUEST_FORGE}=127.0.0.1:{port}"),
        "-m".into(),
        "512".into(),
        "-c".into(),
        "1".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn vm_facts() -> String {
    facts_script()
        + r#"echo "entrypoint-pid=$(awk '{print $4}' /proc/$PPID/stat)"
echo "kernel=$(uname -r)"
echo "user=$(id -u)"
"#
}

/// `orchestrator -n 2 -R qemu -- -i <bundle> --accel tcg --net restricted
/// --net-forward 10.0.2.100:80=127.0.0.1:<port> -g … -p acme/widgets -r 2`:
/// every job runs inside a VM (the entrypoint is PID 1, the kernel is the bundle's),
/// as the unprivileged runner user, and nothing is left behind.
#[test]
fn qemu_loops_run_every_job_in_a_microvm() {
    let w = World::new();
    for _ in 0..4 {
        w.forge.queue_job(REPO, &["microvm"], &vm_facts());
    }
    let args = qemu_args(&w, &["-r", "2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = w.orchestrator(&["-n", "2", "-R", "qemu"], &args);
    let st = p.finish(Duration::from_secs(300));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    let release = bundle_release(&qemu_bundle());
    for j in w.forge.jobs() {
        assert_eq!(j.status, JobStatus::Completed, "{log}");
        assert_eq!(j.exit_code, Some(0), "{}\n{log}", j.output);
        assert_eq!(j.claims, 1);
        assert!(
            j.output.contains("entrypoint-pid=1\n"),
            "not in a VM:\n{}",
            j.output
        );
        assert!(
            j.output.contains(&format!("kernel={release}\n")),
            "not the bundle's kernel:\n{}",
            j.output
        );
        assert!(
            j.output.contains("user=1001\n"),
            "the job did not run as the runner user:\n{}",
            j.output
        );
        assert!(
            !j.output.contains("env-file-present="),
            ".env visible:\n{}",
            j.output
        );
        assert!(
            !j.output.contains(PAT),
            "PAT reached the guest:\n{}",
            j.output
        );
    }
    assert!(w.forge.runners().is_empty(), "{:?}", w.forge.runners());
    assert!(w.env_roots().is_empty(), "{:?}", w.env_roots());
    assert!(
        ghrm_qemu_state(&w).is_empty(),
        "VM state left: {:?}",
        ghrm_qemu_state(&w)
    );
    let left = w.wait_no_processes(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:?}");
    assert!(
        !log.contains("VM ") || log.contains("guest exit status 0"),
        "{log}"
    );
}

pub(crate) fn ghrm_qemu_state(w: &World) -> Vec<String> {
    std::fs::read_dir(w.tmp())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("gh-runner-microvm-qemu.")
        })
        .flat_map(|e| {
            std::fs::read_dir(e.path())
                .unwrap()
                .flatten()
                .map(|x| x.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Across a real VM boundary, as root in the guest: a forged `.brk` and `.trm` are
/// ignored, a symlink and a FIFO planted through 9p are harmless to the host, and a
/// stop request while a job runs lets that job finish within `--grace`.
#[test]
fn qemu_handshake_and_busy_drain_across_the_vm_boundary() {
    let w = World::new();
    let victim = w.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let j1 = w.forge.queue_job(
        REPO,
        &[],
        &format!(
            "{PRELUDE}echo 0123456789abcdef0123456789abcdef0123 > \"$D/$ID.trm\"\necho forged > \"$D/$ID.brk\"\nsleep 3\nrm -f \"$D/$ID.trm\"\nln -s '{}' \"$D/$ID.trm\"\nmkfifo \"$D/$ID.tkn.fifo\"\necho job1-done",
            victim.display()
        ),
    );
    let j2 = w.forge.queue_job(REPO, &[], "sleep 10; echo job2-done");
    let args = qemu_args(&w, &["-u", "root", "--grace", "60"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = w.orchestrator(&["-n", "1", "-R", "qemu"], &args);
    w.wait_for(
        "the second job running",
        Duration::from_secs(120),
        &p,
        || {
            w.forge
                .jobs()
                .iter()
                .any(|j| j.id == j2 && j.status == JobStatus::InProgress)
        },
    );
    p.signal(Signal::SIGTERM);
    let mut p = p;
    let st = p.finish(Duration::from_secs(120));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    let jobs = w.forge.jobs();
    let first = jobs.iter().find(|j| j.id == j1).unwrap();
    assert_eq!(
        first.exit_code,
        Some(0),
        "forged .trm stopped the job: {}\n{log}",
        first.output
    );
    assert!(log.contains("does not carry this VM's secret"), "{log}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let second = jobs.iter().find(|j| j.id == j2).unwrap();
    assert_eq!(
        second.exit_code,
        Some(0),
        "busy job not allowed to finish: {}\n{log}",
        second.output
    );
    assert!(log.contains("a job is running"), "{log}");
    assert!(
        w.forge.runners().is_empty() && w.env_roots().is_empty() && ghrm_qemu_state(&w).is_empty(),
        "{log}"
    );
    assert!(w.wait_no_processes(Duration::from_secs(5)).is_empty());
}

/// Stop an idle guest (SIGTERM once its runner is online) and check the log says it
/// stopped the way `expect` names, without a kill. (`-k` triggers the same drain; its
/// timing is proven with the stand-in backends, where boots take no time.)
fn idle_guest_stops(orchestrator_args: &[&str], expect: &str) {
    let w = World::new();
    let args = qemu_args(&w, &["-u", "root"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = w.orchestrator(orchestrator_args, &args);
    w.wait_for(
        "an idle runner in a VM",
        Duration::from_secs(150),
        &p,
        || w.forge.runners().iter().any(|r| r.status == "online"),
    );
    p.signal(Signal::SIGTERM);
    let mut p = p;
    let st = p.finish(Duration::from_secs(120));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(log.contains(expect), "{log}");
    assert!(
        !log.contains("killing it"),
        "the guest did not stop by itself and was killed\n{log}"
    );
    assert!(
        w.forge.runners().is_empty() && w.env_roots().is_empty() && ghrm_qemu_state(&w).is_empty(),
        "{log}"
    );
}

/// Across the VM boundary an idle runner is deregistered and its guest stops
/// through `.trm` at once.
#[test]
fn qemu_idle_guest_stops_through_trm() {
    idle_guest_stops(&["-n", "1", "-R", "qemu"], "idle, stopping now");
}

/// `-I` on QEMU is refused (exit 2): the guest's configuration would travel on
/// QEMU's command line, readable in the host's process list and `/proc/cmdline`.
#[test]
fn qemu_refuses_insecure_mode() {
    let w = World::new();
    let args = qemu_args(&w, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut o = w.orchestrator(&["-I", "-n", "1", "-R", "qemu"], &args);
    let st = o.finish(Duration::from_secs(60));
    let log = o.log();
    assert!(!st.success(), "{log}");
    assert!(
        log.contains("-I with QEMU would put the guest's configuration"),
        "{log}"
    );
    assert_eq!(w.forge.stats().jit_configs, 0, "{log}");
    assert!(ghrm_qemu_state(&w).is_empty(), "{log}");
}

/// A guest deaf to `.trm` (a root job mounts over `/_environment`) is still
/// stopped through QMP `system_powerdown` (the ACPI power button) before QEMU is
/// killed.
#[test]
fn qemu_a_guest_deaf_to_trm_is_stopped_by_the_power_button() {
    let w = World::new();
    w.forge.queue_job(
        REPO,
        &[],
        "mount -t tmpfs none /_environment && echo deaf; sleep 600",
    );
    let args = qemu_args(&w, &["-u", "root", "--grace", "2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = w.orchestrator(&["-n", "1", "-R", "qemu"], &args);
    w.wait_for(
        "a busy runner in a VM",
        Duration::from_secs(150),
        &p,
        || w.forge.runners().iter().any(|r| r.busy),
    );
    std::thread::sleep(Duration::from_secs(2));
    p.signal(Signal::SIGTERM);
    let mut p = p;
    let st = p.finish(Duration::from_secs(120));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(log.contains("to power down (ACPI power button)"), "{log}");
    assert!(
        w.forge.runners().is_empty() && w.env_roots().is_empty() && ghrm_qemu_state(&w).is_empty(),
        "{log}"
    );
    let left = w.wait_no_processes(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:?}");
}

/// SIGTERM to the orchestrator while a VM runs a job: clean exit, no QEMU left;
/// then SIGKILL of a second orchestrator: no QEMU survives it either.
#[test]
fn qemu_sigterm_and_sigkill_leave_no_vm() {
    let w = World::new();
    w.forge.queue_job(REPO, &[], "sleep 120");
    let args = qemu_args(&w, &["--grace", "2", "-u", "root"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = w.orchestrator(&["-n", "1", "-R", "qemu"], &a);
    w.wait_for(
        "a busy runner in a VM",
        Duration::from_secs(120),
        &p,
        || w.forge.runners().iter().any(|r| r.busy),
    );
    p.signal(Signal::SIGTERM);
    let mut p = p;
    let st = p.finish(Duration::from_secs(90));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(
        w.wait_no_processes(Duration::from_secs(10)).is_empty(),
        "{log}"
    );
    assert!(
        w.forge.runners().is_empty() && w.env_roots().is_empty() && ghrm_qemu_state(&w).is_empty(),
        "{log}"
    );

    let p2 = w.orchestrator(&["-n", "1", "-R", "qemu"], &a);
    w.wait_for(
        "a runner online in a VM",
        Duration::from_secs(120),
        &p2,
        || w.forge.runners().iter().any(|r| r.status == "online"),
    );
    p2.signal(Signal::SIGKILL);
    let left = w.wait_no_processes(Duration::from_secs(60));
    assert!(
        left.is_empty(),
        "QEMU or loop survived SIGKILL: {left:?}\n{}",
        p2.log()
    );
}

/// A guest that fails at boot (here: no runner in the bundle's install root) is
/// reported with the tail of its console log.
#[test]
fn qemu_guest_failure_is_reported_with_its_console() {
    let w = World::new();
    w.forge.queue_job(REPO, &[], "echo never");
    let mut args = qemu_args(&w, &["-r", "1", "-u", "nobody-here"]);
    args.push("--boot-timeout".into());
    args.push("120".into());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = w.spawn(
        "runner",
        &[
            &["-T", PAT, "-g", &w.forge.url(), "-p", REPO, "-R", "qemu"][..],
            &a,
        ]
        .concat(),
    );
    // The loop gives up after repeated failures; one is enough to check the report.
    w.wait_for(
        "a reported guest failure",
        Duration::from_secs(120),
        &p,
        || p.log().contains("its console ended with"),
    );
    let log = p.log();
    assert!(log.contains("guest exit status 125"), "{log}");
    assert!(
        log.contains("user \"nobody-here\" is not in /etc/passwd"),
        "console tail missing the guest's error:\n{log}"
    );
    p.signal(Signal::SIGTERM);
    let _ = p.finish(Duration::from_secs(60));
}

/// `image bundle` names the bad input: a dynamic busybox, a kernel without a needed
/// module, a tarball that is not an actions runner.
#[test]
fn image_bundle_errors_name_the_input() {
    let w = World::new();
    let kdir = qemu_bundle(); // ensures the kernel is fetched; its inputs are reused below
    let kernel = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-kernel.sh"),
    )
    .output()
    .unwrap();
    let kernel = std::path::PathBuf::from(String::from_utf8_lossy(&kernel.stdout).trim());
    let tgz = ghrm::image::fake_runner_tarball(
        &crate::common::bin("fake-runner-listener"),
        w.dir.path(),
        "2.330.0",
    )
    .unwrap();
    let empty_mods = w.dir.path().join("mods/6.0.0-test");
    std::fs::create_dir_all(empty_mods.join("kernel")).unwrap();
    let not_runner = w.dir.path().join("actions-runner-linux-x64-1.0.0.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&not_runner).unwrap(),
            flate2::Compression::fast(),
        );
        let mut t = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, "README", &b"hi"[..]).unwrap();
        t.into_inner().unwrap().finish().unwrap();
    }
    let out = w.dir.path().join("out");
    let run = |modules: &std::path::Path, busybox: &str, tarball: &std::path::Path| {
        let o = w
            .command("orchestrator")
            .args(["image", "bundle", "--kernel"])
            .arg(kernel.join("vmlinuz"))
            .arg("--modules")
            .arg(modules)
            .args(["--busybox", busybox, "--runner-tarball"])
            .arg(tarball)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let mods = kernel.join("modules");
    let (code, err) = run(&mods, "/bin/sh", &tgz);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--busybox") && err.contains("not a static busybox"),
        "{err}"
    );
    let (code, err) = run(&empty_mods, "/bin/busybox", &tgz);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--modules") && err.contains("no module virtio_mmio"),
        "{err}"
    );
    let (code, err) = run(&mods, "/bin/busybox", &not_runner);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--runner-tarball") && err.contains("no run.sh"),
        "{err}"
    );
    assert!(kdir.join("bundle.json").is_file());

    // The two kinds: one of --oci or --busybox (with --runner-tarball), not both.
    let bundle = |extra: &[&str], path: &str| {
        let o = w
            .command("orchestrator")
            .env("PATH", path)
            .args(["image", "bundle", "--kernel"])
            .arg(kernel.join("vmlinuz"))
            .arg("--modules")
            .arg(&mods)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = bundle(&[], "/usr/bin:/bin");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--oci") && err.contains("--busybox"), "{err}");
    let (code, err) = bundle(
        &["--oci", "x", "--busybox", "/bin/busybox"],
        "/usr/bin:/bin",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, err) = bundle(&["--busybox", "/bin/busybox"], "/usr/bin:/bin");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--busybox and --runner-tarball"), "{err}");
    // --oci without buildah: named, with how to install it.
    let empty = w.dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, err) = bundle(&["--oci", "localhost/x"], &empty.display().to_string());
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("buildah is not installed") && err.contains("apt-get install buildah"),
        "{err}"
    );
    assert!(!out.join("bundle.json").exists());
}

/// The README's first command: `orchestrator demo` runs jobs in microVMs and
/// prints its table.
#[test]
fn demo_runs_jobs_in_microvms() {
    let w = World::new();
    let o = w
        .command("orchestrator")
        .env(
            "XDG_CACHE_HOME",
            std::env::var("HOME")
                .map(|h| format!("{h}/.cache"))
                .unwrap_or_default(),
        )
        .args([
            "demo",
            "-n",
            "1",
            "--jobs",
            "2",
            "--accel",
            "tcg",
            "--busybox",
            "/bin/busybox",
        ])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        err.contains("job 1: hello from") && err.contains("entrypoint pid 1"),
        "{err}"
    );
    assert!(
        out.contains("VM start → runner up (.tkn)") && out.contains("jobs per minute"),
        "{out}"
    );
    assert!(w
        .wait_no_processes(std::time::Duration::from_secs(5))
        .is_empty());
}

/// Make a bundle beside the test bundle whose `/init` is `script` (busybox sh).
fn bundle_with_init(w: &World, script: &str) -> std::path::PathBuf {
    let src = qemu_bundle();
    let dir = w.dir.path().join("odd-bundle");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["vmlinuz", "bundle.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let _ = std::fs::remove_file(dir.join("vmlinux")); // the second bundle here
    std::os::unix::fs::symlink(src.join("vmlinux"), dir.join("vmlinux")).unwrap();
    let mut c =
        ghrm::image::cpio::Cpio::new(std::fs::File::create(dir.join("initrd.img")).unwrap());
    c.dir("/bin", 0o755, 0, 0).unwrap();
    c.dir("/dev", 0o755, 0, 0).unwrap();
    c.chardev("/dev/console", 0o600, 5, 1).unwrap();
    c.file(
        "/bin/busybox",
        0o755,
        0,
        0,
        &std::fs::read("/bin/busybox").unwrap(),
    )
    .unwrap();
    c.file(
        "/init",
        0o755,
        0,
        0,
        format!("#!/bin/busybox sh\n{script}\n").as_bytes(),
    )
    .unwrap();
    c.finish().unwrap();
    dir
}

/// A guest that panics (its init exits) is reported with the tail of its console;
/// one that hangs before init is killed at the stall deadline and retried.
#[test]
fn qemu_panicking_and_hanging_guests_are_reported_and_retried() {
    let w = World::new();
    let panics = bundle_with_init(&w, "echo init-is-leaving; exit 3");
    let mut args = qemu_args(&w, &["-r", "1"]);
    let i = args.iter().position(|a| a == "-i").unwrap();
    args[i + 1] = panics.display().to_string();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = w.spawn(
        "runner",
        &[
            &["-T", PAT, "-g", &w.forge.url(), "-p", REPO, "-R", "qemu"][..],
            &a,
        ]
        .concat(),
    );
    w.wait_for("a reported panic", Duration::from_secs(90), &p, || {
        p.log().contains("its console ended with")
    });
    let log = p.log();
    assert!(
        log.contains("Kernel panic") && log.contains("init-is-leaving"),
        "{log}"
    );
    // Stopped, not killed: a loop killed between a mint and its clean-up would
    // leave its registration for the check below.
    p.signal(Signal::SIGTERM);
    let mut p = p;
    let st = p.finish(Duration::from_secs(60));
    assert!(st.success(), "{st}\n{}", p.log());

    let hangs = bundle_with_init(&w, "/bin/busybox sleep 100000");
    args[i + 1] = hangs.display().to_string();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = w.spawn(
        "runner",
        &[
            &["-T", PAT, "-g", &w.forge.url(), "-p", REPO, "-R", "qemu"][..],
            &a,
        ]
        .concat(),
    );
    w.wait_for(
        "the stalled boot killed and retried",
        Duration::from_secs(120),
        &p,
        || {
            let l = p.log();
            l.contains("shows no sign of its init")
                && l.matches("VM GH-runner-1-").count() >= 2
                && l.contains("retrying in")
        },
    );
    p.signal(Signal::SIGTERM);
    let mut p = p;
    let st = p.finish(Duration::from_secs(60));
    assert!(st.success(), "{st}\n{}", p.log());
    assert!(w.forge.runners().is_empty(), "{}", p.log());
}

/// `-D /local` on QEMU runs the freshly built entrypoint from the dev share as PID 1,
/// and `-M HOST:GUEST` shares a host directory with the guest.
#[test]
fn qemu_dev_dir_and_mounts() {
    let w = World::new();
    // A comma in a host path must not end QEMU's -fsdev option list.
    let cache = w.dir.path().join("ca,readonly=on,che");
    std::fs::create_dir_all(&cache).unwrap();
    w.forge.queue_job(REPO, &[], "echo \"pid1=$(readlink /proc/1/exe)\"; echo from-the-guest > /cache/written; echo mounts-ok");
    let dev = crate::common::bin("entrypoint")
        .parent()
        .unwrap()
        .display()
        .to_string();
    let mount = format!("{}:/cache", cache.display());
    let args = qemu_args(
        &w,
        &[
            "-u",
            "root",
            "-r",
            "1",
            "-D",
            "/local",
            "--dev-dir",
            &dev,
            "-M",
            &mount,
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = w.orchestrator(&["-n", "1", "-R", "qemu"], &args);
    let st = p.finish(Duration::from_secs(120));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    let j = &w.forge.jobs()[0];
    assert_eq!(j.exit_code, Some(0), "{}\n{log}", j.output);
    // The template made before the mint (for the loop's shape, -D and -M included)
    // is the one this VM was restored from: made once.
    assert_eq!(
        log.matches("made the snapshot template").count(),
        1,
        "{log}"
    );
    assert!(log.contains("restored from the snapshot template"), "{log}");
    assert!(
        j.output.contains("pid1=/local/entrypoint"),
        "PID 1 is not the dev entrypoint:\n{}",
        j.output
    );
    assert_eq!(
        std::fs::read_to_string(cache.join("written")).unwrap(),
        "from-the-guest\n"
    );
}

/// A job that fills its loop directory (through 9p, as root in a real VM) is
/// stopped at the bound, the loop says so once and goes on with a fresh VM, and
/// nothing is left behind.
#[test]
fn qemu_a_job_that_floods_its_loop_directory_is_stopped() {
    let w = World::new();
    w.forge.queue_job(
        REPO,
        &[],
        &format!(
            "{PRELUDE}i=0; while [ $i -lt 1500 ]; do : > \"$D/flood-$i\"; i=$((i+1)); done; sleep 300"
        ),
    );
    let args = qemu_args(&w, &["-u", "root"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = w.orchestrator(&["-n", "1", "-R", "qemu"], &args);
    w.wait_for(
        "the flood to be stopped",
        Duration::from_secs(240),
        &p,
        || {
            p.log()
                .contains("filled its loop directory (more than 1000 entries")
        },
    );
    // The loop goes on with a fresh VM; stop it.
    p.signal(Signal::SIGTERM);
    let st = p.finish(Duration::from_secs(120));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert_eq!(
        log.matches("filled its loop directory").count(),
        1,
        "said once: {log}"
    );
    assert!(w.env_roots().is_empty(), "{:?}", w.env_roots());
    assert!(ghrm_qemu_state(&w).is_empty(), "{:?}", ghrm_qemu_state(&w));
    let left = w.wait_no_processes(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:?}");
}

/// A host-side bound on a VM's life: `--vm-lifetime` ends a VM whose job would run
/// on, and a VM whose runner is gone from GitHub (here removed at the forge while
/// its job hangs on) is ended shortly after; the loop goes on with fresh VMs.
#[test]
fn qemu_a_vm_cannot_outlive_its_bounds() {
    for case in ["lifetime", "gone"] {
        let w = World::new();
        w.env
            .lock()
            .unwrap()
            .push(("GHRM_GONE_CHECK_SECONDS".into(), "2".into()));
        w.forge.queue_job(REPO, &[], "echo job-started; sleep 600");
        let extra: &[&str] = if case == "lifetime" {
            &["--vm-lifetime", "25"]
        } else {
            &[]
        };
        let args = qemu_args(&w, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = w.orchestrator(&["-n", "1", "-R", "qemu"], &args);
        w.wait_for("the job to start", Duration::from_secs(120), &p, || {
            w.forge.jobs()[0].claims == 1
        });
        if case == "gone" {
            let name = w
                .forge
                .runners()
                .into_iter()
                .find(|r| r.busy)
                .map(|r| r.name);
            assert!(w.forge.remove_runner(&name.unwrap()), "{}", p.log());
        }
        let expect = if case == "lifetime" {
            "reached --vm-lifetime 25s: killing it"
        } else {
            "is gone from GitHub but its VM still runs after"
        };
        w.wait_for(expect, Duration::from_secs(60), &p, || {
            p.log().contains(expect)
        });
        p.signal(Signal::SIGTERM);
        let st = p.finish(Duration::from_secs(120));
        let log = p.log();
        assert!(st.success(), "{case}: {st}\n{log}");
        assert!(
            ghrm_qemu_state(&w).is_empty(),
            "{case}: {:?}",
            ghrm_qemu_state(&w)
        );
        let left = w.wait_no_processes(Duration::from_secs(5));
        assert!(left.is_empty(), "{case}: {left:?}");
    }
}

/// A guest printing without end on its console (`yes > /dev/ttyS0`, as root) is
/// stopped at `--console-limit` with the VM still supervised: killed, cleaned up,
/// and the loop goes on.
#[test]
fn qemu_a_console_flood_is_stopped_at_the_bound() {
    let w = World::new();
    w.forge.queue_job(
        REPO,
        &[],
        "printf '\\033]0;owned\\007\\033[2J' > /dev/ttyS0; yes 0123456789abcdefghijklmnopqrstuvwxyz > /dev/ttyS0",
    );
    let args = qemu_args(&w, &["-u", "root", "--console-limit", "1M"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = w.orchestrator(&["-n", "1", "-R", "qemu"], &args);
    let expect = "printed more than --console-limit 1048576 bytes on its console: killing it";
    w.wait_for(
        "the flood to be stopped",
        Duration::from_secs(240),
        &p,
        || p.log().contains(expect),
    );
    p.signal(Signal::SIGTERM);
    let st = p.finish(Duration::from_secs(120));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(
        !log.contains('\u{1b}'),
        "a guest's escape sequence reached the log: {log}"
    );
    assert!(ghrm_qemu_state(&w).is_empty(), "{:?}", ghrm_qemu_state(&w));
    let left = w.wait_no_processes(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:?}");
}

/// The `-kernel` of the test's running QEMU.
fn qemu_kernel(w: &World) -> Option<String> {
    w.tagged().into_iter().find_map(|(_, cmd)| {
        let args: Vec<&str> = cmd.split(' ').collect();
        let qemu = args.first()?.ends_with("qemu-system-x86_64");
        let i = args.iter().position(|a| *a == "-kernel")?;
        qemu.then(|| args.get(i + 1).map(|k| k.to_string()))?
    })
}

/// `image bundle` took the uncompressed kernel out of Debian's vmlinuz (a PVH ELF)
/// and QEMU boots it (`-kernel …/vmlinux`); a bundle made before that (no `vmlinux`
/// in its bundle.json) still boots its bzImage. Both run their job.
#[test]
fn qemu_boots_the_pvh_vmlinux_and_older_bundles_their_bzimage() {
    let w = World::new();
    let bundle = qemu_bundle();
    let info = ghrm::image::BundleInfo::load(&bundle).unwrap();
    assert_eq!(info.vmlinux.as_deref(), Some("vmlinux"));
    let elf = std::fs::read(bundle.join("vmlinux")).unwrap();
    assert!(ghrm::image::vmlinux::pvh_entry(&elf).is_ok());
    // An older bundle: its bundle.json has no vmlinux (the file beside it is ignored).
    let old = w.dir.path().join("old-bundle");
    std::fs::create_dir_all(&old).unwrap();
    for f in ["vmlinuz", "vmlinux", "initrd.img"] {
        std::os::unix::fs::symlink(bundle.join(f), old.join(f)).unwrap();
    }
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("bundle.json")).unwrap())
            .unwrap();
    json.as_object_mut().unwrap().remove("vmlinux");
    std::fs::write(old.join("bundle.json"), json.to_string()).unwrap();

    for (dir, kernel) in [(&bundle, "vmlinux"), (&old, "vmlinuz")] {
        w.forge.queue_job(REPO, &[], "sleep 2; echo booted-fine");
        let mut args = qemu_args(&w, &["-r", "1", "-R", "qemu"]);
        let i = args.iter().position(|a| a == "-i").unwrap();
        args[i + 1] = dir.display().to_string();
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = w.runner(&a);
        let mut seen = None;
        w.wait_for("a running QEMU", Duration::from_secs(120), &p, || {
            seen = qemu_kernel(&w);
            seen.is_some()
        });
        let st = p.finish(Duration::from_secs(120));
        let log = p.log();
        assert!(st.success(), "{st}\n{log}");
        assert_eq!(seen, Some(dir.join(kernel).display().to_string()), "{log}");
        let jobs = w.forge.jobs();
        let j = jobs.last().unwrap();
        assert_eq!(j.exit_code, Some(0), "{}\n{log}", j.output);
        assert!(j.output.contains("booted-fine"), "{}", j.output);
    }
}
