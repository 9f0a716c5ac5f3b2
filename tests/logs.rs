//! `orchestrator logs`, `--keep-consoles` and `--log-format json`: a live QEMU
//! guest's console followed as it prints and until its VM ends, consoles kept
//! (bounded, private, the newest K per loop), guest escape sequences shown and
//! not obeyed, and JSON host logs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{World, REPO};
use crate::qemu::{ghrm_qemu_state, qemu_args};

/// Where `World`'s commands (HOME = the world's directory) keep `prefix`'s consoles.
fn kept_dir(w: &World, prefix: &str) -> PathBuf {
    w.dir
        .path()
        .join(".local/state/gh-runner-microvm/consoles")
        .join(prefix)
}

fn kept(w: &World, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(kept_dir(w, prefix))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `orchestrator ARGS` in the world, run to its end: (status, stdout, stderr).
fn orchestrator(w: &World, args: &[&str]) -> (i32, String, String) {
    let out = w.command("orchestrator").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Nothing to show is exit 1 saying what was looked for; an argument that is
/// neither a loop nor a VM of the prefix is a usage error.
#[test]
fn logs_of_a_prefix_with_nothing_say_what_was_looked_for() {
    let w = World::new();
    let (code, out, err) = orchestrator(&w, &["logs", "-p", "Nothing"]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("no console of prefix \"Nothing\": no running VM in ")
            && err.contains(".local/state/gh-runner-microvm/consoles/Nothing"),
        "{err}"
    );
    let (code, _, err) = orchestrator(&w, &["logs", "-p", "Nothing", "-f", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no console of loop 2 of prefix \"Nothing\""),
        "{err}"
    );
    let (code, _, err) = orchestrator(&w, &["logs", "-p", "Nothing", "Nothing-1-abcd1234"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no console of VM Nothing-1-abcd1234"), "{err}");
    // The error report is JSON too in JSON mode.
    let (code, _, err) = orchestrator(&w, &["--log-format", "json", "logs", "-p", "Nothing"]);
    assert_eq!(code, 1, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(v["level"], "ERROR");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no console of prefix"),
        "{v}"
    );
    let (code, _, err) = orchestrator(&w, &["logs", "Other-1-abcd1234"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("another prefix needs -p"), "{err}");
}

/// Kept consoles of two loops: without an argument each loop's newest, labelled;
/// guest escape sequences are shown, never written raw; `-f` needs one console,
/// and on an ended VM prints it and says it has ended.
#[test]
fn logs_prints_kept_consoles_made_printable() {
    let w = World::new();
    let dir = kept_dir(&w, "P");
    std::fs::create_dir_all(&dir).unwrap();
    let old = dir.join("P-1-oldoldol.log");
    std::fs::write(&old, "old console\n").unwrap();
    let t = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(t)
        .unwrap();
    std::fs::write(
        dir.join("P-1-newnewne.log"),
        "loop one \x1b]0;title\x07\x1b[2J\rforged\n",
    )
    .unwrap();
    std::fs::write(dir.join("P-2-twotwotw.log"), "loop two é\u{9b} no newline").unwrap();
    let (code, out, err) = orchestrator(&w, &["logs", "-p", "P"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "==> loop 1: P-1-newnewne (ended) <==\nloop one ^[]0;title^G^[[2J^Mforged\n\
         ==> loop 2: P-2-twotwotw (ended) <==\nloop two é\u{fffd} no newline\n"
    );
    let (code, out, _) = orchestrator(&w, &["logs", "-p", "P", "P-1-oldoldol"]);
    assert_eq!((code, out.as_str()), (0, "old console\n"));
    let (code, _, err) = orchestrator(&w, &["logs", "-p", "P", "-f"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("name a LOOP or a VM"), "{err}");
    let (code, out, err) = orchestrator(&w, &["logs", "-p", "P", "-f", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(
        out.ends_with("forged\n==> VM P-1-newnewne has ended <==\n"),
        "{out:?}"
    );
}

/// The JSON events of a log: every line must be one object.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{log}"))
        })
        .collect()
}

/// One QEMU loop, three VMs, `--log-format json --keep-consoles 2`:
/// - `logs -f 1` follows the first guest as it prints a line a second: the early
///   lines show while the job still runs, and it exits 0 with the VM;
/// - the second guest prints escape sequences after 1.5 MB: its kept console is
///   at most 1 MiB and `logs` shows the escapes made visible;
/// - exactly the newest two consoles are kept, 0600 in a 0700 directory;
/// - every line of the orchestrator's and the loop's standard error is JSON, and
///   `boot_ms` is a number on each "runner … is up" event.
#[test]
fn qemu_logs_follows_a_live_guest_and_keeps_bounded_consoles() {
    let w = World::new();
    w.forge.queue_job(
        REPO,
        &[],
        "for i in 1 2 3 4 5 6 7 8; do echo slow-line-$i > /dev/ttyS0; sleep 1; done",
    );
    w.forge.queue_job(
        REPO,
        &[],
        r"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 1500000 > /dev/ttyS0; printf 'esc-start \033]0;title\007\033[2J esc-end\n' > /dev/ttyS0",
    );
    w.forge.queue_job(REPO, &[], "echo third-job > /dev/ttyS0");
    let args = qemu_args(&w, &["-u", "root", "-r", "3", "--keep-consoles", "2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = w.orchestrator(&["-n", "1", "-R", "qemu", "--log-format", "json"], &args);
    let p_log = p.log.clone();
    let log = || std::fs::read_to_string(&p_log).unwrap_or_default();
    // The VMs' names, from the "is up" events (their `vm` field).
    let up = |log: &str| -> Vec<serde_json::Value> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"].as_str().is_some_and(|m| m.ends_with(" is up")))
            .collect()
    };
    w.wait_for(
        "the first runner to be up",
        Duration::from_secs(240),
        &p,
        || {
            // Fail at the first line that is not JSON, not at the timeout.
            let l = log();
            let complete = &l[..l.rfind('\n').map_or(0, |i| i + 1)];
            json_lines(complete);
            !up(&l).is_empty()
        },
    );
    let vm1 = up(&log())[0]["vm"].as_str().unwrap().to_string();

    let mut f = w.spawn("orchestrator", &["logs", "-f", "1"]);
    let f_log = f.log.clone();
    let seen = || std::fs::read_to_string(&f_log).unwrap_or_default();
    w.wait_for(
        "logs -f to show slow-line-2",
        Duration::from_secs(120),
        &f,
        || seen().contains("slow-line-2\n"),
    );
    let early = seen();
    assert!(
        !early.contains("slow-line-8") && f.child.try_wait().unwrap().is_none(),
        "the lines came all at once, not as the guest printed them:\n{early}"
    );
    // It ends with the VM: within seconds of QEMU's exit.
    w.wait_for("VM 1 to exit", Duration::from_secs(120), &p, || {
        log().contains(&format!("VM {vm1} exited"))
    });
    let t = Instant::now();
    let st = f.finish(Duration::from_secs(15));
    assert!(st.success(), "{st}\n{}", f.log());
    let out = seen();
    assert!(out.contains("slow-line-8\n"), "{out}");
    assert!(
        out.ends_with(&format!("==> VM {vm1} has ended <==\n")),
        "{out}"
    );
    eprintln!(
        "logs -f was done {:?} after the test saw the loop log the VM's exit",
        t.elapsed()
    );

    let st = p.finish(Duration::from_secs(300));
    let all = log();
    assert!(st.success(), "{st}\n{all}");
    let events = json_lines(&all);
    let ups = up(&all);
    assert_eq!(ups.len(), 3, "{all}");
    for u in &ups {
        assert!(u["boot_ms"].is_u64(), "{u}");
        assert_eq!(u["runner"], u["vm"], "{u}");
        assert_eq!(u["who"], "runner 1", "{u}");
    }
    assert!(events.iter().any(|e| e["who"] == "orchestrator"), "{all}");
    assert!(events.iter().any(|e| e["turnaround_ms"].is_u64()), "{all}");
    let vms: Vec<String> = ups
        .iter()
        .map(|u| u["vm"].as_str().unwrap().into())
        .collect();

    // The newest two kept, private.
    let dir = kept_dir(&w, "GH-runner");
    assert_eq!(
        kept(&w, "GH-runner"),
        [format!("{}.log", vms[1]), format!("{}.log", vms[2])]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(mode(&dir), 0o700);
    for k in kept(&w, "GH-runner") {
        assert_eq!(mode(&dir.join(&k)), 0o600, "{k}");
    }
    let big = std::fs::metadata(dir.join(format!("{}.log", vms[1])))
        .unwrap()
        .len();
    assert!(big <= (1 << 20) + 100, "kept {big} bytes");
    assert!(big >= 1 << 20, "the flood was not printed ({big} bytes)");

    // The escapes, shown and not obeyed.
    let (code, out, err) = orchestrator(&w, &["logs", &vms[1]]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("esc-start ^[]0;title^G^[[2J esc-end"),
        "{}",
        &out[out.len().saturating_sub(2000)..]
    );
    assert!(!out.contains('\u{1b}'), "a raw ESC reached the terminal");
    assert!(out.len() < (1 << 20) + 200, "{}", out.len());
    // A loop's last console is its newest.
    let (code, out, _) = orchestrator(&w, &["logs", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("third-job"), "{out}");
    assert!(ghrm_qemu_state(&w).is_empty(), "{:?}", ghrm_qemu_state(&w));
    let left = w.wait_no_processes(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:?}");
}
