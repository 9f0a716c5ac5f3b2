//! The whole loop, end to end, on both libkrun backends.

use std::time::Duration;

use crate::common::{facts_script, World, PAT};
use ghrm::localforge::JobStatus;

fn run_six_jobs(runtime: &str) {
    let w = World::new();
    for _ in 0..6 {
        w.forge
            .queue_job(crate::common::REPO, &["microvm"], &facts_script());
    }
    let mut p = w.orchestrator(&["-n", "2", "-R", runtime], &["-r", "3", "-u", "root"]);
    let st = p.finish(Duration::from_secs(120));
    let log = p.log();
    assert!(st.success(), "orchestrator failed: {st}\n{log}");

    let jobs = w.forge.jobs();
    assert_eq!(jobs.len(), 6);
    for j in &jobs {
        assert_eq!(
            j.status,
            JobStatus::Completed,
            "job {} not completed\n{log}",
            j.id
        );
        assert_eq!(j.claims, 1, "job {} handed out {} times", j.id, j.claims);
        assert_eq!(
            j.exit_code,
            Some(0),
            "job {} failed:\n{}\n{log}",
            j.id,
            j.output
        );
        assert!(
            j.output.contains("facts-done"),
            "job output incomplete:\n{}",
            j.output
        );
        // From inside: the .env is gone before the runner starts ...
        assert!(
            !j.output.contains("env-file-present="),
            ".env visible to the job:\n{}",
            j.output
        );
        assert!(
            j.output.contains("dir-mode=700"),
            "loop directory is not 0700:\n{}",
            j.output
        );
        // ... and the PAT is nowhere the guest can read (environment, argv, loop directory).
        assert!(
            !j.output.contains(PAT),
            "the PAT reached the guest:\n{}",
            j.output
        );
        // The runner consumed its JIT config: the job's own environment does not carry it
        // (the runner's initial environment in /proc does, as with the real runner; the
        // config is single-use and already spent by then).
        let own = j
            .output
            .split("--- own environment")
            .nth(1)
            .unwrap()
            .split("--- process")
            .next()
            .unwrap();
        assert!(
            !own.contains("ACTIONS_RUNNER_INPUT_JITCONFIG"),
            "JIT config in the job's environment:\n{own}"
        );
        // The per-VM secret stays in the entrypoint: no guest environment or file shows it.
        assert!(
            !j.output.contains("GHRM_SECRET"),
            "secret visible to the job:\n{}",
            j.output
        );
    }
    // Both loops took jobs, three each.
    let mut per_loop = std::collections::HashMap::new();
    for j in &jobs {
        let name = j.runner_name.clone().unwrap();
        let l = name
            .strip_prefix("GH-runner-")
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_string();
        *per_loop.entry(l).or_insert(0) += 1;
    }
    assert_eq!(per_loop.get("1"), Some(&3), "{per_loop:?}");
    assert_eq!(per_loop.get("2"), Some(&3), "{per_loop:?}");

    assert!(
        w.forge.runners().is_empty(),
        "runners left at GitHub: {:?}",
        w.forge.runners()
    );
    assert_eq!(w.forge.stats().jit_configs, 6);
    assert!(
        w.env_roots().is_empty(),
        "environment root left: {:?}",
        w.env_roots()
    );
    assert!(w.vms().is_empty(), "VMs left: {:?}", w.vms());
    let left = w.wait_no_processes(Duration::from_secs(5));
    assert!(left.is_empty(), "processes left: {left:?}");
    // The PAT reached neither the backend's environment nor any runner's argv.
    assert_eq!(
        w.read_state("backend-env.log"),
        "",
        "credentials in the backend environment"
    );
    // Nor the orchestrator's own argv, although the user put it there with -T: it
    // moved it into its environment at once (its sweep calls the backend too, so
    // its lines are recorded as well).
    let argv = w.read_state("parent-cmdline.log");
    let runners: Vec<&str> = argv.lines().filter(|l| l.contains("/runner ")).collect();
    assert!(!runners.is_empty(), "no runner argv recorded: {argv}");
    assert!(
        argv.lines().any(|l| l.contains("/orchestrator ")),
        "no orchestrator argv recorded: {argv}"
    );
    assert!(!argv.contains(PAT), "PAT in a process's argv: {argv}");
    // Pinned argv of the backend.
    let calls = w.read_state("calls.log");
    match runtime {
        "krunvm" => {
            assert!(calls.contains("buildah unshare krunvm create ghcr.io/gh-runner-microvm/gh-runner-microvm:ubuntu --cpus 2 --mem 1024 --dns 1.1.1.1 --name GH-runner-1-"), "{calls}");
            assert!(
                calls.contains("/_environment --volume")
                    || calls.contains(":/_environment\n")
                    || calls.contains(":/_environment"),
                "{calls}"
            );
            assert!(calls.contains("krunvm start GH-runner-2-"), "{calls}");
            assert!(calls.contains("krunvm delete GH-runner-"), "{calls}");
        }
        _ => {
            assert!(
                calls.contains("podman run --runtime krun --rm --name GH-runner-1-"),
                "{calls}"
            );
            assert!(calls.contains("--annotation krun.ram_mib=1024"), "{calls}");
            assert!(calls.contains(":/_environment:Z,rw"), "{calls}");
        }
    }
}

/// `orchestrator -n 2 -R krunvm -- -T <pat> -g <forge> -p acme/widgets -r 3 -u root`
#[test]
fn krunvm_runs_every_job_once_and_leaves_nothing() {
    run_six_jobs("krunvm");
}

/// The same through `podman run --runtime krun`.
#[test]
fn podman_runs_every_job_once_and_leaves_nothing() {
    run_six_jobs("podman");
}

/// `-D /local`: the directory of a freshly built entrypoint is mounted into the VM
/// and that entrypoint runs instead of the image's, with krunvm and with podman
/// (QEMU: `qemu::qemu_dev_dir_and_mounts` and the image test).
#[test]
fn dev_mode_runs_the_fresh_entrypoint_with_krunvm_and_podman() {
    for runtime in ["krunvm", "podman"] {
        let w = World::new();
        let dev = w.dir.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        // "Freshly built": the real entrypoint behind a wrapper that leaves a mark.
        let wrapper = dev.join("entrypoint");
        // Run as the guest, it also does what a hostile job could: write into what
        // it was shared.
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nd=$(dirname \"$0\")\necho \"dev entrypoint ran: $* from $d saw $(ls \"$d\" | tr '\\n' ' ')\" >> '{}'\necho pwned > \"$d/planted\"\necho '# pwned' >> \"$0\"\nexec '{}' \"$@\"\n",
                dev.join("ran").display(),
                crate::common::bin("entrypoint").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        for _ in 0..2 {
            w.forge.queue_job(crate::common::REPO, &[], "echo dev-ok");
        }
        let dev_s = dev.display().to_string();
        let before = std::fs::read(&wrapper).unwrap();
        let mut p = w.orchestrator(
            &["-n", "1", "-R", runtime],
            &["-r", "2", "-u", "root", "-D", "/local", "--dev-dir", &dev_s],
        );
        let st = p.finish(Duration::from_secs(60));
        let log = p.log();
        assert!(st.success(), "{runtime}: {st}\n{log}");
        for j in w.forge.jobs() {
            assert_eq!(j.status, JobStatus::Completed, "{runtime}: {log}");
            assert!(j.output.contains("dev-ok"), "{runtime}: {}", j.output);
        }
        // The guest saw a private copy of just the entrypoint: what it wrote there
        // reached neither the developer's directory nor the next VM.
        assert_eq!(
            std::fs::read(&wrapper).unwrap(),
            before,
            "{runtime}: the guest changed the host's entrypoint"
        );
        assert!(
            !dev.join("planted").exists(),
            "{runtime}: the guest wrote into the host's -D directory"
        );
        let ran = std::fs::read_to_string(dev.join("ran")).unwrap_or_default();
        assert!(
            ran.contains("dev entrypoint ran: -E ") && ran.contains(".env -k "),
            "{runtime}: the dev entrypoint did not run: {ran:?}\n{log}"
        );
        assert!(
            !ran.contains(&format!("from {dev_s} ")),
            "{runtime}: the host's -D directory itself was shared: {ran}"
        );
        assert_eq!(ran.lines().count(), 2, "{runtime}: {ran}");
        assert!(
            ran.lines().all(|l| l.ends_with(" saw entrypoint ")),
            "{runtime}: a VM saw more than a fresh copy of the entrypoint: {ran}"
        );
        let calls = w.read_state("calls.log");
        assert!(
            calls.contains(":/local")
                && !calls.contains(&format!("{dev_s}:/local"))
                && calls.contains("/local/entrypoint"),
            "{runtime}: {calls}"
        );
    }
}

/// GitHub refuses deprecated runners and `Runner.Listener` then exits 7: the guest
/// says so, and the loop ends at once with exit 2 naming the fix, instead of
/// registering runner after runner that cannot work.
#[test]
fn a_deprecated_runner_ends_the_loop_with_a_clear_error() {
    let w = World::new();
    let old = w.dir.path().join("install/runner-9.0.0/bin");
    std::fs::create_dir_all(&old).unwrap();
    let listener = old.join("Runner.Listener");
    std::fs::write(
        &listener,
        "#!/bin/sh\necho 'An error occurred: Runner version v9.0.0 is deprecated and cannot receive messages.'\nexit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &listener,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    w.forge.queue_job(crate::common::REPO, &[], "echo never");
    let url = w.forge.url();
    let mut p = w.spawn(
        "runner",
        &[
            "-R",
            "krunvm",
            "-T",
            PAT,
            "-g",
            &url,
            "-p",
            crate::common::REPO,
            "-r",
            "3",
            "-u",
            "root",
        ],
    );
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert_eq!(st.code(), Some(2), "{log}");
    assert!(
        log.contains("GitHub refused this actions runner as deprecated"),
        "the guest did not say it: {log}"
    );
    assert!(
        log.contains("is deprecated: GitHub refused it") && log.contains("RUNNER_VERSION"),
        "{log}"
    );
    assert_eq!(w.forge.stats().jit_configs, 1, "{log}");
    assert!(w.forge.runners().is_empty(), "{:?}", w.forge.runners());
    assert!(w.vms().is_empty(), "{:?}", w.vms());
}

/// What one job leaves in its loop directory never reaches the next job of that
/// loop (which may be another repository's): the directory is emptied between VMs.
#[test]
fn a_job_leaves_nothing_in_the_loop_directory_for_the_next() {
    let w = World::new();
    let script = format!(
        "{}echo \"saw: $(ls -A \"$D\" | grep -v \"^$ID\\.\" | tr '\\n' ' ')\"\nmkdir -p \"$D/left-dir-$ID/sub\"\necho x > \"$D/left-file-$ID\"\nln -s /etc/passwd \"$D/left-link-$ID\"\n",
        crate::common::PRELUDE
    );
    for _ in 0..2 {
        w.forge.queue_job(crate::common::REPO, &[], &script);
    }
    let mut p = w.orchestrator(&["-n", "1", "-R", "krunvm"], &["-r", "2", "-u", "root"]);
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    let jobs = w.forge.jobs();
    assert!(
        jobs.iter().all(|j| j.status == JobStatus::Completed),
        "{log}"
    );
    for j in &jobs {
        assert!(j.output.contains("saw: \n"), "{}", j.output);
        assert!(
            !j.output.contains("left-"),
            "a job saw what an earlier one left:\n{}",
            j.output
        );
    }
}

/// krunvm cannot share a directory read-only: `-M …:ro` is refused (exit 2,
/// naming the backend) rather than silently shared writable.
#[test]
fn krunvm_refuses_a_read_only_mount_it_cannot_enforce() {
    let w = World::new();
    let shared = w.dir.path().join("cache");
    std::fs::create_dir_all(&shared).unwrap();
    let m = format!("{}:/cache:ro", shared.display());
    let mut p = w.runner(&["-R", "krunvm", "-M", &m, "-r", "1"]);
    let st = p.finish(Duration::from_secs(30));
    let log = p.log();
    assert_eq!(st.code(), Some(2), "{log}");
    assert!(
        log.contains("krunvm cannot share a directory read-only"),
        "{log}"
    );
    assert!(
        w.read_state("calls.log")
            .lines()
            .all(|l| !l.contains("create")),
        "a VM was made"
    );
}

/// `runner -T PAT` run by hand: the PAT leaves the process list at once (the
/// runner runs itself again with it in its environment) and the loop still works.
#[test]
fn a_pat_on_the_runner_command_line_leaves_the_process_list() {
    let w = World::new();
    let mut p = w.runner(&["-R", "krunvm", "-u", "root"]);
    w.wait_for(
        "the runner to register",
        Duration::from_secs(30),
        &p,
        || !w.forge.runners().is_empty(),
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(" -g ") && !cmdline.contains(PAT),
        "{cmdline}"
    );
    p.signal(nix::sys::signal::Signal::SIGTERM);
    let st = p.finish(Duration::from_secs(30));
    assert!(st.success(), "{st}\n{}", p.log());
}

/// A VM whose removal fails (podman `rm` errors) may still have its loop
/// directory mounted: the loop ends (exit 1) after moving that directory away, and
/// the next VM's `.env` is written into a fresh one, never where the old VM can read.
#[test]
fn a_vm_not_confirmed_gone_never_gets_the_next_env() {
    let w = World::new();
    std::fs::write(w.state().join("rm-fails"), "1").unwrap();
    let script = format!(
        "{}echo \"dir-inode=$(stat -c %i \"$D\")\"",
        crate::common::PRELUDE
    );
    for _ in 0..2 {
        w.forge.queue_job(crate::common::REPO, &[], &script);
    }
    let mut p = w.orchestrator(&["-n", "1", "-R", "podman"], &["-r", "1", "-u", "root"]);
    let st = p.finish(Duration::from_secs(90));
    let log = p.log();
    assert!(log.contains("cannot confirm that VM"), "{log}");
    assert!(log.contains("restarting in"), "{log}");
    let jobs = w.forge.jobs();
    assert!(
        jobs.iter().all(|j| j.status == JobStatus::Completed),
        "{st}\n{log}"
    );
    let inodes: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j.output.split("dir-inode=").nth(1))
        .map(|r| r.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(inodes.len(), 2, "{log}");
    assert_ne!(
        inodes[0], inodes[1],
        "the second VM got the same directory:\n{log}"
    );
    assert!(w.env_roots().is_empty(), "{:?}", w.env_roots());
}
