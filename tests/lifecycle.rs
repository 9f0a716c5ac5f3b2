//! Lifetimes and failures: -k drains, signals, SIGKILL and restart, boot timeouts.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::{World, PRELUDE, REPO};
use ghrm::localforge::JobStatus;

/// `-k` ends every loop through `.trm`: the idle runner stops at once, the busy job
/// finishes within `--grace`, and a `.trm` planted as a symlink to a host file is
/// replaced, not followed.
#[test]
fn lifetime_drains_idle_at_once_and_busy_within_grace() {
    let w = World::new();
    let victim = w.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let job = w.forge.queue_job(
        REPO,
        &[],
        &format!(
            "{PRELUDE}ln -s '{}' \"$D/$ID.trm\"\nsleep 7\necho busy-done",
            victim.display()
        ),
    );
    let t0 = Instant::now();
    let mut p = w.orchestrator(
        &["-n", "2", "-R", "krunvm"],
        &["-k", "4", "--grace", "30", "-u", "root"],
    );
    let st = p.finish(Duration::from_secs(60));
    let took = t0.elapsed();
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious",
        "the host followed a planted .trm symlink\n{log}"
    );
    let j = w.forge.jobs().into_iter().find(|j| j.id == job).unwrap();
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(
        j.exit_code,
        Some(0),
        "busy job did not finish: {}\n{log}",
        j.output
    );
    assert!(j.output.contains("busy-done"));
    assert!(log.contains("idle, stopping now"), "{log}");
    assert!(log.contains("a job is running"), "{log}");
    assert!(
        took < Duration::from_secs(25),
        "took {took:?}: the idle runner was not stopped at once\n{log}"
    );
    assert!(
        w.forge.runners().is_empty() && w.env_roots().is_empty() && w.vms().is_empty(),
        "{log}"
    );
    assert!(w.wait_no_processes(Duration::from_secs(5)).is_empty());
}

/// A busy job that outlives `--grace` is terminated (reported as cancelled).
#[test]
fn lifetime_terminates_a_job_past_the_grace() {
    let w = World::new();
    let job = w.forge.queue_job(REPO, &[], "sleep 60; echo never");
    let mut p = w.orchestrator(
        &["-n", "1", "-R", "podman"],
        &["-k", "2", "--grace", "2", "-u", "root"],
    );
    let st = p.finish(Duration::from_secs(45));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    let j = w.forge.jobs().into_iter().find(|j| j.id == job).unwrap();
    assert_eq!(
        j.exit_code,
        Some(-1),
        "the job was not cancelled: {j:?}\n{log}"
    );
    assert!(log.contains("grace of 2s is over"), "{log}");
    assert!(
        w.forge.runners().is_empty() && w.env_roots().is_empty() && w.vms().is_empty(),
        "{log}"
    );
    assert!(w.wait_no_processes(Duration::from_secs(5)).is_empty());
}

/// SIGTERM to the orchestrator mid-job: clean exit 0, nothing left anywhere.
#[test]
fn sigterm_mid_run_leaves_nothing() {
    let w = World::new();
    w.forge.queue_job(REPO, &[], "sleep 60");
    let p = w.orchestrator(
        &["-n", "2", "-R", "krunvm"],
        &["--grace", "2", "-u", "root"],
    );
    w.wait_for(
        "a busy runner and an idle one",
        Duration::from_secs(30),
        &p,
        || {
            let r = w.forge.runners();
            r.len() == 2 && r.iter().any(|r| r.busy) && r.iter().all(|r| r.status == "online")
        },
    );
    p.signal(Signal::SIGTERM);
    let mut p = p;
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(
        w.forge.runners().is_empty(),
        "{:?}\n{log}",
        w.forge.runners()
    );
    assert!(w.env_roots().is_empty() && w.vms().is_empty(), "{log}");
    let left = w.wait_no_processes(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:?}\n{log}");
}

/// SIGKILL to the orchestrator: no loop, VM or job survives it, and the next
/// orchestrator of the same prefix starts cleanly and sweeps what was left.
#[test]
fn sigkill_leaves_no_process_and_a_restart_is_clean() {
    let w = World::new();
    let p = w.orchestrator(
        &["-n", "2", "-R", "krunvm"],
        &["--grace", "2", "-u", "root"],
    );
    w.wait_for("two runners online", Duration::from_secs(30), &p, || {
        let r = w.forge.runners();
        r.len() == 2 && r.iter().all(|r| r.status == "online")
    });
    p.signal(Signal::SIGKILL);
    let left = w.wait_no_processes(Duration::from_secs(40));
    assert!(
        left.is_empty(),
        "survivors of SIGKILL: {left:?}\n{}",
        p.log()
    );
    // The loops deregistered their runners on their way out.
    assert!(
        w.forge.runners().is_empty(),
        "{:?}\n{}",
        w.forge.runners(),
        p.log()
    );
    // Its environment root is left (and its control directory, taken back by the next one).
    let stale = w.env_roots();
    assert_eq!(
        stale.iter().filter(|n| n.contains(".root-")).count(),
        1,
        "{stale:?}"
    );
    drop(p);

    w.forge.queue_job(REPO, &[], "echo after-restart");
    let mut p2 = w.orchestrator(&["-n", "1", "-R", "krunvm"], &["-r", "1", "-u", "root"]);
    let st = p2.finish(Duration::from_secs(60));
    let log = p2.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(log.contains("left by a previous orchestrator"), "{log}");
    assert!(
        w.env_roots().is_empty() && w.vms().is_empty(),
        "{:?}\n{log}",
        w.env_roots()
    );
    assert!(
        w.forge.jobs().iter().all(|j| j.exit_code == Some(0)),
        "{log}"
    );
}

/// A guest that never writes `.tkn`: killed after `--boot-timeout`, its runner
/// deleted at GitHub, and the iteration retried (and not counted for `-r`).
#[test]
fn boot_timeout_kills_deregisters_and_retries() {
    let w = World::new();
    std::fs::write(w.state().join("hang"), "1").unwrap();
    let job = w.forge.queue_job(REPO, &[], "echo ran");
    let mut p = w.orchestrator(
        &["-n", "1", "-R", "krunvm"],
        &["-r", "1", "--boot-timeout", "2", "-u", "root"],
    );
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(log.contains("--boot-timeout 2s"), "{log}");
    assert_eq!(w.forge.stats().jit_configs, 2, "{log}");
    assert!(
        w.forge.stats().deletions >= 1,
        "the hung VM's runner was not deleted\n{log}"
    );
    assert!(w.forge.runners().is_empty(), "{log}");
    assert_eq!(
        w.forge
            .jobs()
            .into_iter()
            .find(|j| j.id == job)
            .unwrap()
            .exit_code,
        Some(0),
        "{log}"
    );
    assert!(w.env_roots().is_empty() && w.vms().is_empty(), "{log}");
    assert!(w.wait_no_processes(Duration::from_secs(5)).is_empty());
}

/// Two orchestrators with one prefix cannot run at once.
#[test]
fn one_orchestrator_per_prefix() {
    let w = World::new();
    let p = w.orchestrator(&["-n", "1", "-R", "krunvm"], &["-u", "root"]);
    w.wait_for("a runner online", Duration::from_secs(30), &p, || {
        w.forge.runners().iter().any(|r| r.status == "online")
    });
    let out = w
        .command("orchestrator")
        .args(["-R", "krunvm", "--", "-T", "x", "-p", "a/b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another orchestrator with prefix \"GH-runner\" is running"),
        "{err}"
    );
    assert!(err.contains(&format!("pid {}", p.pid())), "{err}");
}

/// `-I` (no isolation): no loop directory, the configuration travels as guest
/// options, starts are staggered by `-s`, and jobs still run.
#[test]
fn insecure_mode_runs_jobs_without_a_loop_directory() {
    let w = World::new();
    for _ in 0..2 {
        w.forge.queue_job(
            REPO,
            &[],
            &format!("{PRELUDE}ls \"$D\" 2>/dev/null | wc -l; echo insecure-ok"),
        );
    }
    let mut p = w.orchestrator(
        &["-I", "-s", "1", "-n", "2", "-R", "krunvm"],
        &["-r", "1", "-u", "root"],
    );
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(
        w.forge
            .jobs()
            .iter()
            .all(|j| j.exit_code == Some(0) && j.output.contains("insecure-ok")),
        "{log}"
    );
    assert!(
        w.env_roots().is_empty() && w.vms().is_empty() && w.forge.runners().is_empty(),
        "{log}"
    );
    assert!(
        w.read_state("calls.log")
            .contains(" -c GHRM_NAME=GH-runner-"),
        "configuration not passed as options"
    );
}

/// A loop that dies unexpectedly is restarted (with back-off) by the orchestrator.
#[test]
fn a_dead_loop_is_restarted() {
    let w = World::new();
    let p = w.orchestrator(&["-n", "1", "-R", "krunvm"], &["-u", "root"]);
    w.wait_for("a runner online", Duration::from_secs(30), &p, || {
        w.forge.runners().iter().any(|r| r.status == "online")
    });
    let loop_pid = w
        .tagged()
        .into_iter()
        .find(|(_, cmd)| cmd.contains("/runner ") && cmd.ends_with("-- 1 "))
        .map(|(pid, _)| pid)
        .unwrap_or_else(|| panic!("no runner loop among {:?}", w.tagged()));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(loop_pid), Signal::SIGKILL).unwrap();
    w.wait_for("the loop restarted", Duration::from_secs(30), &p, || {
        p.log().contains("loop 1 died")
            && w.tagged()
                .iter()
                .any(|(pid, c)| *pid != loop_pid && c.contains("/runner ") && c.ends_with("-- 1 "))
    });
    w.wait_for("a new runner online", Duration::from_secs(30), &p, || {
        w.forge
            .runners()
            .iter()
            .filter(|r| r.status == "online")
            .count()
            >= 1
            && p.log().matches("VM GH-runner-1-").count() >= 2
    });
    p.signal(Signal::SIGTERM);
    let mut p = p;
    let st = p.finish(Duration::from_secs(60));
    assert!(st.success(), "{st}\n{}", p.log());
    // The killed loop's VM was swept on the way out.
    assert!(
        w.vms().is_empty() && w.env_roots().is_empty(),
        "{:?}\n{}",
        w.vms(),
        p.log()
    );
}

/// A loop that keeps dying (here: GitHub unreachable, each start retried with
/// back-off for ~15 s) is given up: exit 1 with the reason, after 5 runs.
#[test]
fn a_loop_that_keeps_dying_is_given_up() {
    let w = World::new();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut p = w.spawn(
        "orchestrator",
        &[
            "-n", "1", "-R", "krunvm", "--", "-T", "x", "-s", "org", "-p", "acme", "-g", &url,
        ],
    );
    let st = p.finish(Duration::from_secs(300));
    let log = p.log();
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("no answer from GitHub"), "{log}");
    assert!(
        log.contains("failed 5 times in a row") && log.contains("given up"),
        "{log}"
    );
    assert!(w.env_roots().is_empty(), "{log}");
}

/// Reconciliation deletes only this host's stale registrations: at start at once,
/// while running after two passes; never busy ones, other prefixes, other tools'
/// or other hosts' runners, nor the loop's own live runner.
#[test]
fn only_this_hosts_stale_registrations_are_deleted() {
    use ghrm::localforge::Scope;
    let w = World::new();
    let scope = Scope::Repo("acme".into(), "widgets".into());
    w.forge
        .add_runner(scope.clone(), "GH-runner-1-stale0001", "offline", false);
    let keep = [
        w.forge
            .add_runner(scope.clone(), "GH-runner-2-busy00001", "online", true),
        w.forge
            .add_runner(scope.clone(), "GH-runnerX-1-abcdefgh", "offline", false),
        w.forge
            .add_runner(scope.clone(), "GH-runner-manual", "offline", false),
        w.forge
            .add_runner(scope.clone(), "other-host-1-abcdefgh", "offline", false),
    ];
    let p = w.orchestrator(
        &["-n", "1", "-R", "krunvm", "--reconcile", "1"],
        &["-u", "root"],
    );
    w.wait_for(
        "the stale runner deleted at start",
        Duration::from_secs(20),
        &p,
        || {
            !w.forge
                .runners()
                .iter()
                .any(|r| r.name == "GH-runner-1-stale0001")
        },
    );
    w.wait_for(
        "the loop's runner online",
        Duration::from_secs(20),
        &p,
        || {
            w.forge
                .runners()
                .iter()
                .any(|r| r.name.starts_with("GH-runner-1-") && r.status == "online")
        },
    );
    w.forge
        .add_runner(scope, "GH-runner-7-late0001", "offline", false);
    w.wait_for(
        "the late stale runner deleted",
        Duration::from_secs(20),
        &p,
        || {
            !w.forge
                .runners()
                .iter()
                .any(|r| r.name == "GH-runner-7-late0001")
        },
    );
    // Several passes later the loop's own runner is still there.
    std::thread::sleep(Duration::from_secs(3));
    let ours: Vec<_> = w
        .forge
        .runners()
        .into_iter()
        .filter(|r| r.name.starts_with("GH-runner-1-"))
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}\n{}", p.log());
    p.signal(Signal::SIGTERM);
    let mut p = p;
    assert!(p.finish(Duration::from_secs(60)).success(), "{}", p.log());
    let left: Vec<u64> = w.forge.runners().iter().map(|r| r.id).collect();
    for id in keep {
        assert!(left.contains(&id), "runner {id} was deleted\n{}", p.log());
    }
    assert!(
        p.log()
            .contains("deleted stale runner registration GH-runner-7-late0001"),
        "{}",
        p.log()
    );
}
