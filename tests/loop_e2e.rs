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
    // (The orchestrator's own argv has it: the user put it there. Its sweep calls the
    // backend too, so only the runner loops' lines are checked.)
    let argv = w.read_state("parent-cmdline.log");
    let runners: Vec<&str> = argv.lines().filter(|l| l.contains("/runner ")).collect();
    assert!(!runners.is_empty(), "no runner argv recorded: {argv}");
    assert!(
        runners.iter().all(|l| !l.contains(PAT)),
        "PAT in a runner's argv: {argv}"
    );
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
