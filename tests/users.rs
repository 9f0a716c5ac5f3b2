//! Many users on one host: every name the orchestrator makes in a shared `$TMPDIR`
//! lives in its user's private `gh-runner-microvm-<uid>/`; what another user
//! planted there is never followed, trusted or written; two users' orchestrators
//! of one prefix run side by side. Needs root (to be the other user).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use crate::common::{World, REPO};
use ghrm::localforge::JobStatus;

/// The other user (nobody).
const OTHER: u32 = 65534;

/// `World::tmp` made what `/tmp` is: root's, world-writable, sticky.
fn shared_tmp(w: &World) {
    let tmp = w.tmp();
    std::os::unix::fs::lchown(&tmp, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// Make `path` (not following it) belong to the other user.
fn give(path: &Path) {
    std::os::unix::fs::lchown(path, Some(OTHER), Some(OTHER)).unwrap();
}

/// Another user plants, in a shared TMPDIR, every name the orchestrator used to
/// make there (lock, budget file, control directory, environment root) as links
/// to root's files and as its own directories, and then this user's new private
/// directory as a link, as its own directory and as one open to all: each new
/// name is refused with one error naming it, nothing planted is followed,
/// written or removed, and once the new name is free the jobs run.
#[test]
fn names_planted_by_another_user_are_never_followed_or_used() {
    let w = World::new();
    shared_tmp(&w);
    let tmp = w.tmp();
    let victim = w.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    // The old names: links to a file of root's, and the other user's directories.
    for name in [
        "gh-runner-microvm.GH-runner.lock",
        "gh-runner-microvm.GH-runner.registrations",
    ] {
        std::os::unix::fs::symlink(&victim, tmp.join(name)).unwrap();
        give(&tmp.join(name));
    }
    let theirs = [
        "gh-runner-microvm.GH-runner.root-planted",
        "gh-runner-microvm.GH-runner.control-0",
    ];
    for name in theirs {
        std::fs::create_dir(tmp.join(name)).unwrap();
        std::fs::write(tmp.join(name).join("keep"), "theirs").unwrap();
        give(&tmp.join(name).join("keep"));
        give(&tmp.join(name));
    }
    // The new name, planted three ways.
    let elsewhere = w.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mine = tmp.join("gh-runner-microvm-0");
    let plant_link = || {
        std::os::unix::fs::symlink(&elsewhere, &mine).unwrap();
        give(&mine);
    };
    let plant_dir = || {
        std::fs::create_dir(&mine).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
        give(&mine);
    };
    let plant_open = || {
        std::fs::create_dir(&mine).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o777)).unwrap();
    };
    for (how, plant) in [
        ("a link", &plant_link as &dyn Fn()),
        ("the other user's directory", &plant_dir),
        ("a directory open to all", &plant_open),
    ] {
        plant();
        let mut p = w.orchestrator(&["-n", "1", "-R", "krunvm"], &["-r", "1", "-u", "root"]);
        let st = p.finish(Duration::from_secs(30));
        let log = p.log();
        assert_eq!(st.code(), Some(1), "{how}: {st}\n{log}");
        assert!(
            log.contains(&mine.display().to_string()) && log.contains("not a private directory"),
            "{how}: the error names neither the directory nor the trap\n{log}"
        );
        assert_eq!(
            std::fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "{how}: something was made through the planted name\n{log}"
        );
        std::fs::remove_dir(&mine)
            .or_else(|_| std::fs::remove_file(&mine))
            .unwrap();
    }
    // The new name free: the job runs, and the old names stay as they were.
    w.forge.queue_job(REPO, &[], "echo ran");
    let mut p = w.orchestrator(&["-n", "1", "-R", "krunvm"], &["-r", "1", "-u", "root"]);
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(
        w.forge.jobs().iter().all(|j| j.exit_code == Some(0)),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    for name in theirs {
        assert_eq!(
            std::fs::read_to_string(tmp.join(name).join("keep")).unwrap(),
            "theirs",
            "{name}\n{log}"
        );
    }
    for name in [
        "gh-runner-microvm.GH-runner.lock",
        "gh-runner-microvm.GH-runner.registrations",
    ] {
        let m = std::fs::symlink_metadata(tmp.join(name)).unwrap();
        assert!(m.file_type().is_symlink() && m.uid() == OTHER, "{name}");
    }
    let m = std::fs::symlink_metadata(&mine).unwrap();
    assert!(m.is_dir() && m.uid() == 0 && m.mode() & 0o777 == 0o700);
    // Only its own names in it; no root left.
    let mut names: Vec<String> = std::fs::read_dir(&mine)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["GH-runner.lock", "GH-runner.registrations"],
        "{log}"
    );
}

/// Root and another user run orchestrators of the same prefix at once on one
/// host with one shared TMPDIR (each for its own repository: a prefix names a
/// host's runners at a scope, so one scope's reconciliation would take the other's
/// booting runners for stale ones). Their jobs wait for each other, so both pass
/// only if both fleets run at the same time; each answers `status` to its own
/// user; each leaves only its private directory.
#[test]
fn two_users_run_orchestrators_of_one_prefix_side_by_side() {
    let w = World::new();
    let empty = tempfile::tempdir().unwrap();
    w.as_user(OTHER, empty.path());
    shared_tmp(&w);
    // Each user's stand-in backend keeps its own VMs, as each user's krunvm does.
    let other_state = w.dir.path().join("state-other");
    std::fs::create_dir(&other_state).unwrap();
    give(&other_state);
    let sync = w.dir.path().join("sync");
    std::fs::create_dir(&sync).unwrap();
    std::fs::set_permissions(&sync, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let other_repo = "acme/gadgets";
    // A job that says who ran it, then waits (up to 40 s) for the other user's job.
    let job = |me: &str, peer: &str| {
        format!(
            "echo \"uid=$(id -u)\"; touch '{s}/{me}'; i=0\n\
             while [ ! -e '{s}/{peer}' ] && [ $i -lt 400 ]; do sleep 0.1; i=$((i+1)); done\n\
             [ -e '{s}/{peer}' ] && echo met",
            s = sync.display()
        )
    };
    let root_job = w.forge.queue_job(REPO, &[], &job("root", "other"));
    let other_job = w.forge.queue_job(other_repo, &[], &job("other", "root"));
    let args = ["-n", "1", "-R", "krunvm"];
    w.env.lock().unwrap().push((
        "GHRM_STANDIN_STATE".into(),
        other_state.display().to_string(),
    ));
    // The stand-in runs the entrypoint as a host process of its user.
    let mut other =
        w.orchestrator_for(Some(OTHER), other_repo, &args, &["-r", "1", "-u", "nobody"]);
    w.env.lock().unwrap().clear();
    let mut root = w.orchestrator_for(None, REPO, &args, &["-r", "1", "-u", "root"]);
    // While both run, `status -p GH-runner` answers each user from its own fleet.
    w.wait_for("both jobs started", Duration::from_secs(60), &other, || {
        w.forge.jobs().iter().all(|j| j.status != JobStatus::Queued)
    });
    let status = |uid: u32| {
        let mut c = w.command("orchestrator");
        if uid != 0 {
            use std::os::unix::process::CommandExt;
            c = std::process::Command::new(w.dir.path().join("bin/orchestrator"));
            c.env("TMPDIR", w.tmp()).uid(uid).gid(uid);
        }
        c.args(["status", "-p", "GH-runner", "--json"])
            .output()
            .unwrap()
    };
    for uid in [0, OTHER] {
        let out = status(uid);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "status as {uid}: {:?}", out);
        assert!(text.contains("GH-runner"), "status as {uid}: {text}");
    }
    let st_other = other.finish(Duration::from_secs(90));
    let st_root = root.finish(Duration::from_secs(90));
    let (log_other, log_root) = (other.log(), root.log());
    assert!(st_root.success(), "root: {st_root}\n{log_root}");
    assert!(st_other.success(), "other: {st_other}\n{log_other}");
    for (id, uid, log) in [(root_job, 0, &log_root), (other_job, OTHER, &log_other)] {
        let j = w.forge.jobs().into_iter().find(|j| j.id == id).unwrap();
        assert_eq!(j.exit_code, Some(0), "{}\n{log}", j.output);
        assert!(j.output.contains(&format!("uid={uid}")), "{}", j.output);
        assert!(
            j.output.contains("met"),
            "the two users' jobs did not run at once: {}\n{log}",
            j.output
        );
    }
    // Nothing of either in the shared TMPDIR but each one's private directory.
    let mut left: Vec<(String, u32, u32)> = std::fs::read_dir(w.tmp())
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.uid(),
                m.mode() & 0o7777,
            )
        })
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ("gh-runner-microvm-0".into(), 0, 0o700),
            (format!("gh-runner-microvm-{OTHER}"), OTHER, 0o700)
        ],
        "{log_root}\n{log_other}"
    );
    assert!(w.env_roots().is_empty(), "{:?}", w.env_roots());
}
