//! The .brk/.trm handshake against a hostile workflow (design.md §3).

use std::time::Duration;

use crate::common::{World, PRELUDE, REPO};
use ghrm::localforge::JobStatus;

/// A workflow writes a `.brk` and a `.trm` with a wrong secret, then plants a FIFO
/// and a symlink as `.brk`: the guest ignores the `.trm` (the job is not cancelled),
/// the host ignores the `.brk`s without blocking, and the loop does all 3 iterations.
#[test]
fn forged_brk_and_trm_are_ignored_and_fifos_do_not_block() {
    let w = World::new();
    let j1 = w.forge.queue_job(
        REPO,
        &[],
        &format!("{PRELUDE}echo 0123456789abcdef0123456789abcdef0123 > \"$D/$ID.trm\"\necho forged > \"$D/$ID.brk\"\nsleep 2.5\necho job1-done"),
    );
    let j2 = w.forge.queue_job(
        REPO,
        &[],
        &format!("{PRELUDE}mkfifo \"$D/$ID.brk\" && echo job2-done"),
    );
    let j3 = w.forge.queue_job(
        REPO,
        &[],
        &format!("{PRELUDE}ln -s /etc/hostname \"$D/$ID.brk\" && echo job3-done"),
    );
    let mut p = w.orchestrator(&["-n", "1", "-R", "krunvm"], &["-r", "3", "-u", "root"]);
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    for (id, mark) in [(j1, "job1-done"), (j2, "job2-done"), (j3, "job3-done")] {
        let j = w.forge.jobs().into_iter().find(|j| j.id == id).unwrap();
        assert_eq!(j.status, JobStatus::Completed, "{log}");
        assert_eq!(
            j.exit_code,
            Some(0),
            "job {id} was cancelled or failed: {}\n{log}",
            j.output
        );
        assert!(j.output.contains(mark), "{}", j.output);
    }
    assert!(
        log.contains("does not carry this VM's secret"),
        "no warning about the forged files\n{log}"
    );
    assert!(
        log.contains("not a regular file"),
        "no warning about the FIFO/symlink .brk\n{log}"
    );
    assert!(!log.contains("asked to end this loop"), "{log}");
    assert!(
        w.forge.runners().is_empty() && w.env_roots().is_empty() && w.vms().is_empty(),
        "{log}"
    );
}

/// A guest asked to stop (SIGTERM to its entrypoint) writes `.brk` with the right
/// secret: the host loop ends after that VM although `-r` allows more.
#[test]
fn right_brk_ends_the_loop() {
    let w = World::new();
    // The job signals its own entrypoint (its runner's parent), as root in a guest may.
    let j1 = w.forge.queue_job(
        REPO,
        &[],
        "EP=$(awk '{print $4}' /proc/$PPID/stat); kill -TERM \"$EP\"; sleep 1; echo job1-done",
    );
    let j2 = w.forge.queue_job(REPO, &[], "echo job2-done");
    let mut p = w.orchestrator(&["-n", "1", "-R", "krunvm"], &["-r", "5", "-u", "root"]);
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    let jobs = w.forge.jobs();
    let first = jobs.iter().find(|j| j.id == j1).unwrap();
    // The busy job was allowed to finish before the runner stopped.
    assert_eq!(first.exit_code, Some(0), "{}\n{log}", first.output);
    assert_eq!(
        jobs.iter().find(|j| j.id == j2).unwrap().status,
        JobStatus::Queued,
        "loop went on\n{log}"
    );
    assert!(log.contains("the guest asked to end this loop"), "{log}");
    assert!(
        w.forge.runners().is_empty() && w.env_roots().is_empty() && w.vms().is_empty(),
        "{log}"
    );
    assert!(w.wait_no_processes(Duration::from_secs(5)).is_empty());
}
