//! Memory-snapshot templates (`--start`), with real QEMU guests under TCG: VMs
//! restored from one template differ where they must (their runners, their RNG),
//! take the host's clock, and a template that is damaged or out of date is never
//! restored.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;

use crate::common::{qemu_bundle, World, REPO};
use crate::qemu::{ghrm_qemu_state, qemu_args};
use ghrm::localforge::JobStatus;

const MADE: &str = "made the snapshot template";
const RESTORED: &str = "restored from the snapshot template";

/// What a restored guest must not share with its siblings, and its clock.
const GUEST_RANDOM: &str = r#"echo "urandom=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "uuid=$(cat /proc/sys/kernel/random/uuid)"
echo "time=$(date +%s)"
"#;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn templates(w: &World) -> Vec<PathBuf> {
    let d = w.dir.path().join(".cache/gh-runner-microvm/templates");
    let mut v: Vec<PathBuf> = std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "mem"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `orchestrator -n N -- <qemu args> --start snapshot -r R [-i BUNDLE]`, run to its end.
fn run(w: &World, n: &str, r: &str, bundle: Option<&str>) -> String {
    let mut args = qemu_args(w, &["--start", "snapshot", "-r", r]);
    if let Some(b) = bundle {
        let i = args.iter().position(|a| a == "-i").unwrap();
        args[i + 1] = b.to_string();
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = w.orchestrator(&["-n", n, "-R", "qemu"], &args);
    let st = p.finish(Duration::from_secs(300));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    log
}

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
}

/// One template, two loops restored from it at once: both run their jobs under
/// their own runners, draw different bytes from the kernel's RNG (reseeded with
/// host entropy on restore), and read the host's time, not the template's (saved
/// seconds earlier).
#[test]
fn two_loops_restored_from_one_template_differ_and_keep_time() {
    let w = World::new();
    w.forge.queue_job(REPO, &[], "echo first");
    let log = run(&w, "1", "1", None);
    assert!(log.contains(MADE), "no template was made:\n{log}");
    assert_eq!(templates(&w).len(), 1, "{log}");
    // The template's clock stopped at its save: let the host's move on.
    std::thread::sleep(Duration::from_secs(4));

    for _ in 0..2 {
        w.forge.queue_job(REPO, &[], GUEST_RANDOM);
    }
    let t0 = now();
    let log = run(&w, "2", "1", None);
    let t1 = now();
    assert!(!log.contains(MADE), "the template was made again:\n{log}");
    assert_eq!(log.matches(RESTORED).count(), 2, "{log}");
    let jobs: Vec<_> = w.forge.jobs().into_iter().skip(1).collect();
    assert_eq!(jobs.len(), 2);
    for j in &jobs {
        assert_eq!(j.status, JobStatus::Completed, "{log}");
        assert_eq!(j.exit_code, Some(0), "{}\n{log}", j.output);
        let t: u64 = field(&j.output, "time").parse().unwrap();
        assert!(
            t + 1 >= t0 && t <= t1 + 1,
            "the guest's clock ({t}) is not the host's ({t0}..{t1}):\n{}",
            j.output
        );
    }
    assert_ne!(jobs[0].runner_name, jobs[1].runner_name);
    for key in ["urandom", "uuid"] {
        assert_ne!(
            field(&jobs[0].output, key),
            field(&jobs[1].output, key),
            "two VMs restored from one template drew the same {key}"
        );
    }
    assert!(w.forge.runners().is_empty(), "{:?}", w.forge.runners());
    assert!(ghrm_qemu_state(&w).is_empty(), "{:?}", ghrm_qemu_state(&w));
    let left = w.wait_no_processes(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:?}");
}

fn copy_bundle(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A template's life: made once and reused; a truncated one fails its restore,
/// which boots that VM cold with one warning and makes the template again; a
/// bundle whose files change gets a new template (the old one is never restored).
#[test]
fn a_damaged_or_outdated_template_is_never_restored() {
    let w = World::new();
    let bundle = w.dir.path().join("bundle");
    copy_bundle(&qemu_bundle(), &bundle);
    let b = bundle.display().to_string();
    let job = |n: usize| {
        for _ in 0..n {
            w.forge.queue_job(REPO, &[], "echo ok");
        }
    };
    job(1);
    let log = run(&w, "1", "1", Some(&b));
    assert!(log.contains(MADE) && log.contains(RESTORED), "{log}");
    let t = templates(&w);
    assert_eq!(t.len(), 1);
    let size = std::fs::metadata(&t[0]).unwrap().len();

    // Truncated: the first VM's restore fails, it boots cold; the second VM's
    // template is made again and restored.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&t[0])
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    job(2);
    let log = run(&w, "1", "2", Some(&b));
    assert!(
        log.contains("failed") && log.contains("booting it cold"),
        "no fallback said:\n{log}"
    );
    assert_eq!(log.matches(MADE).count(), 1, "{log}");
    assert_eq!(log.matches(RESTORED).count(), 1, "{log}");
    assert_eq!(templates(&w), t, "{log}");
    // Made again whole (a template's size varies by a few pages).
    assert!(std::fs::metadata(&t[0]).unwrap().len() > size / 10 * 9);

    // A changed bundle: a new template, restored.
    let initrd = bundle.join("initrd.img");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&initrd)
        .unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    drop(f);
    job(1);
    let log = run(&w, "1", "1", Some(&b));
    assert!(log.contains(MADE) && log.contains(RESTORED), "{log}");
    let now = templates(&w);
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now.contains(&t[0]));

    for j in w.forge.jobs() {
        assert_eq!(j.status, JobStatus::Completed);
        assert_eq!(j.exit_code, Some(0), "{}", j.output);
        assert_eq!(j.claims, 1);
    }
    assert!(w.forge.runners().is_empty(), "{:?}", w.forge.runners());
    assert!(ghrm_qemu_state(&w).is_empty(), "{:?}", ghrm_qemu_state(&w));
}

const WARM: &str = "is warm: it waits for its configuration";

/// The line index of the first log line holding all of `words`.
fn line_of(log: &str, words: &[&str]) -> Option<usize> {
    log.lines()
        .position(|l| words.iter().all(|w| l.contains(w)))
}

/// `--warm` with snapshot restores: three jobs in a row, each after the first on a
/// VM that was restored and waiting before the previous VM exited; no warm VM is
/// made for a fourth (`-r 3`), and nothing is left.
#[test]
fn warm_vms_take_the_next_jobs() {
    let w = World::new();
    for _ in 0..3 {
        w.forge.queue_job(REPO, &[], "sleep 1; echo done");
    }
    let mut args = qemu_args(&w, &["--start", "snapshot", "--warm", "-r", "3"]);
    args.push("-v".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = w.orchestrator(&["-n", "1", "-R", "qemu"], &args);
    let st = p.finish(Duration::from_secs(300));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    let jobs = w.forge.jobs();
    assert_eq!(jobs.len(), 3);
    for j in &jobs {
        assert_eq!(j.status, JobStatus::Completed, "{log}");
        assert_eq!(j.exit_code, Some(0), "{}\n{log}", j.output);
        assert_eq!(j.claims, 1);
    }
    assert_eq!(log.matches(WARM).count(), 2, "{log}");
    // The previous runner's removal at GitHub waits for the next runner: it comes
    // after the next mint.
    let reqs = w.forge.requests();
    let mints: Vec<_> = reqs
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("generate-jitconfig"))
        .map(|r| r.at)
        .collect();
    let first_delete = reqs
        .iter()
        .find(|r| r.method == "DELETE" && r.path.contains("/actions/runners/"))
        .map(|r| r.at)
        .expect("no runner was deregistered");
    assert_eq!(mints.len(), 3, "{reqs:?}");
    assert!(
        first_delete > mints[1],
        "the first runner was deregistered before the second was minted"
    );
    for pair in jobs.windows(2) {
        let (prev, next) = (
            pair[0].runner_name.as_deref().unwrap(),
            pair[1].runner_name.as_deref().unwrap(),
        );
        let warm = line_of(&log, &[next, WARM])
            .unwrap_or_else(|| panic!("{next} did not run on a warm VM:\n{log}"));
        let exited = line_of(&log, &["VM ", prev, "exited"])
            .unwrap_or_else(|| panic!("no exit of {prev}:\n{log}"));
        assert!(
            warm < exited,
            "{next} was not ready before {prev} exited:\n{log}"
        );
    }
    assert!(w.forge.runners().is_empty(), "{:?}", w.forge.runners());
    assert!(ghrm_qemu_state(&w).is_empty(), "{:?}", ghrm_qemu_state(&w));
    let left = w.wait_no_processes(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:?}");
}

/// `--warm` with cold boots: the second job runs on a VM booted to wait while the
/// first ran; SIGTERM to the loop while the second job runs and a third VM waits:
/// the job finishes (drain), the loop removes the waiting VM, and nothing is left.
#[test]
fn sigterm_during_a_warm_wait_leaves_nothing() {
    let w = World::new();
    w.forge.queue_job(REPO, &[], "sleep 3; echo one");
    w.forge.queue_job(REPO, &[], "sleep 10; echo two");
    // The loop on its own: no orchestrator sweeps up after it.
    let mut args = qemu_args(
        &w,
        &["--start", "cold", "--warm", "-r", "5", "--grace", "60"],
    );
    args.splice(0..0, ["-R".to_string(), "qemu".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = w.runner(&args);
    w.wait_for(
        "the second job running and a second warm VM",
        Duration::from_secs(240),
        &p,
        || {
            w.forge.jobs()[1].status == JobStatus::InProgress
                && std::fs::read_to_string(&p.log)
                    .unwrap_or_default()
                    .matches(WARM)
                    .count()
                    >= 2
        },
    );
    p.signal(Signal::SIGTERM);
    let st = p.finish(Duration::from_secs(120));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    let jobs = w.forge.jobs();
    for j in &jobs {
        assert_eq!(j.status, JobStatus::Completed, "{log}");
        assert_eq!(j.exit_code, Some(0), "{}\n{log}", j.output);
    }
    let second = jobs[1].runner_name.as_deref().unwrap();
    assert!(
        line_of(&log, &[second, WARM]).is_some(),
        "the second job did not run on the warm VM:\n{log}"
    );
    assert!(w.forge.runners().is_empty(), "{:?}", w.forge.runners());
    assert!(ghrm_qemu_state(&w).is_empty(), "{:?}", ghrm_qemu_state(&w));
    assert!(w.env_roots().is_empty(), "{:?}", w.env_roots());
    let left = w.wait_no_processes(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:?}");
}

/// The cache on a full file system (a 1 MiB tmpfs as `XDG_CACHE_HOME`): no template
/// can be written, so `--start auto` says so once (naming the cause) and every VM
/// boots cold; the jobs run, and no partial template is left.
#[test]
fn a_full_cache_boots_cold_with_one_warning() {
    if !nix::unistd::geteuid().is_root() {
        println!("snapshot::a_full_cache_boots_cold_with_one_warning skipped: mounting a tmpfs needs root");
        return;
    }
    let w = World::new();
    let cache = w.dir.path().join("small-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let Some(_mounted) = crate::chaos::Tmpfs::mount(&cache) else {
        println!(
            "snapshot::a_full_cache_boots_cold_with_one_warning skipped: cannot mount a tmpfs here"
        );
        return;
    };
    w.env
        .lock()
        .unwrap()
        .push(("XDG_CACHE_HOME".into(), cache.display().to_string()));
    for _ in 0..2 {
        w.forge.queue_job(REPO, &[], "echo ok");
    }
    let args = qemu_args(&w, &["-r", "2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = w.orchestrator(&["-n", "1", "-R", "qemu"], &args);
    let st = p.finish(Duration::from_secs(300));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("--start auto: no snapshot template"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("No space left on device") || warned[0].contains("saving the template"),
        "the warning does not say why: {}",
        warned[0]
    );
    assert!(!log.contains(RESTORED), "{log}");
    for j in w.forge.jobs() {
        assert_eq!(j.status, JobStatus::Completed, "{log}");
        assert_eq!(j.exit_code, Some(0), "{}", j.output);
    }
    let left: Vec<_> = std::fs::read_dir(cache.join("gh-runner-microvm/templates"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n.to_string_lossy().ends_with(".lock")),
        "partial templates left: {left:?}"
    );
    assert!(ghrm_qemu_state(&w).is_empty(), "{:?}", ghrm_qemu_state(&w));
}
