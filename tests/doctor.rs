//! `orchestrator doctor`: every verdict with its exit status and fix line, against
//! the local forge (classic and fine-grained PATs, an App, a skewed clock) and a
//! real QEMU (a good bundle boots under TCG; a broken one, or no QEMU, fails).
//! No output ever holds the credential.

use std::path::{Path, PathBuf};

use crate::common::{qemu_bundle, World, PAT, REPO};

/// `orchestrator doctor [extra] -- runner_args` with `env`: (exit code, stdout, stderr).
/// Whatever it prints, no PAT of the forge's is in it.
fn doctor(
    w: &World,
    env: &[(&str, &str)],
    extra: &[&str],
    runner_args: &[&str],
) -> (i32, String, String) {
    let url = w.forge.url();
    let out = w
        .command("orchestrator")
        .envs(env.iter().copied())
        .arg("doctor")
        .args(extra)
        .args(["--", "-g", &url])
        .args(runner_args)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    for secret in [PAT, CLASSIC, FINE] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a PAT was printed:\n{stdout}\n{stderr}"
        );
    }
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

const CLASSIC: &str = "test-classic-NotReal0123456789";
const FINE: &str = "test-finegrained-NotReal0123456789";

/// The line of check `name`.
fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.split_once(' ')
                .is_some_and(|(_, rest)| rest.starts_with(&format!("{name}: ")))
        })
        .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
}

/// With [`quick`]: boot nothing.
const NO_BOOT: &[&str] = &["--no-boot"];

/// A QEMU configuration that (with [`NO_BOOT`]) boots nothing and needs no network tools: the
/// GitHub checks decide the exit status.
fn quick(bundle: &Path) -> Vec<String> {
    quick_at(bundle, &["-p", REPO])
}

/// [`quick`] at another scope.
fn quick_at(bundle: &Path, scope: &[&str]) -> Vec<String> {
    let b = bundle.display().to_string();
    [
        "-R",
        "qemu",
        "-i",
        &b,
        "--accel",
        "tcg",
        "--net",
        "restricted",
    ]
    .iter()
    .chain(scope)
    .map(|s| s.to_string())
    .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The full default configuration (`--accel auto`, `--net internet`) with the good
/// bundle and a good PAT (given with -T, which is moved out of argv): exit 0, the
/// bundle boots, the credential may manage runners.
#[test]
fn a_good_pat_and_bundle_pass() {
    let w = World::new();
    let bundle = qemu_bundle().display().to_string();
    let (code, out, err) = doctor(
        &w,
        &[],
        &[],
        &["-T", PAT, "-R", "qemu", "-i", &bundle, "-p", REPO],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(line(&out, "github.auth").starts_with('✔'), "{out}");
    assert!(line(&out, "github.auth").contains("classic PAT"), "{out}");
    assert!(line(&out, "boot").starts_with('✔'), "{out}");
    assert!(line(&out, "bundle").starts_with('✔'), "{out}");
    assert!(line(&out, "qemu.microvm").starts_with('✔'), "{out}");
    assert!(line(&out, "net.namespace").starts_with('✔'), "{out}");
    assert!(line(&out, "github.clock").starts_with('✔'), "{out}");
    // KVM cannot boot guests here: a warning naming TCG, not a failure.
    let kvm = line(&out, "kvm");
    assert!(
        kvm.starts_with('✔') || (kvm.starts_with('!') && kvm.contains("TCG")),
        "{out}"
    );
    assert!(w.forge.saw_credential(PAT));
    assert!(w.forge.runners().is_empty(), "doctor registered something");
}

/// A classic PAT without `repo`: exit 1, the fix names the scope.
#[test]
fn a_classic_pat_lacking_the_scope_fails_naming_it() {
    let w = World::new();
    w.forge.add_classic_pat(CLASSIC, &["read:org", "workflow"]);
    let args = quick(&qemu_bundle());
    let (code, out, err) = doctor(&w, &[("RUNNER_PAT", CLASSIC)], NO_BOOT, &strs(&args));
    assert_eq!(code, 1, "{out}\n{err}");
    let auth = line(&out, "github.auth");
    assert!(auth.starts_with('✖'), "{out}");
    assert!(
        auth.contains("lacks the `repo` scope") && auth.contains("fix: add the `repo` scope"),
        "{auth}"
    );
    assert!(err.contains("1 required check(s) failed"), "{err}");
    // With the scope it passes.
    w.forge.add_classic_pat(CLASSIC, &["repo"]);
    let (code, out, _) = doctor(&w, &[("RUNNER_PAT", CLASSIC)], NO_BOOT, &strs(&args));
    assert_eq!(code, 0, "{out}");
}

/// A fine-grained PAT without the runner permission: exit 1, the fix names the
/// permission GitHub asked for, at repository and organisation scope; `--json`
/// carries the same verdicts.
#[test]
fn a_fine_grained_pat_lacking_the_permission_fails_naming_it() {
    let w = World::new();
    w.forge.add_fine_grained_pat(FINE, false);
    let env = [("RUNNER_PAT", FINE)];
    let args = quick(&qemu_bundle());
    let (code, out, err) = doctor(&w, &env, NO_BOOT, &strs(&args));
    assert_eq!(code, 1, "{out}\n{err}");
    let auth = line(&out, "github.auth");
    assert!(
        auth.starts_with('✖') && auth.contains("fine-grained PAT"),
        "{auth}"
    );
    assert!(auth.contains("fix: grant it administration=read"), "{auth}");
    assert!(auth.contains("Administration: Read and write"), "{auth}");

    let (jcode, json, _) = doctor(&w, &env, &["--json", "--no-boot"], &strs(&args));
    assert_eq!(jcode, 1);
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v["ok"], false);
    let checks = v["checks"].as_array().unwrap();
    assert!(!checks.is_empty());
    for c in checks {
        let name = c["name"].as_str().unwrap();
        let mark = match c["status"].as_str().unwrap() {
            "ok" => '✔',
            "warn" => '!',
            "fail" => '✖',
            s => panic!("status {s}"),
        };
        assert!(line(&out, name).starts_with(mark), "{name}: {c}\n{out}");
        assert!(
            c["detail"].is_string() && (c["fix"].is_string() || c["fix"].is_null()),
            "{c}"
        );
    }
    let auth = checks.iter().find(|c| c["name"] == "github.auth").unwrap();
    assert!(
        auth["fix"]
            .as_str()
            .unwrap()
            .contains("administration=read"),
        "{auth}"
    );

    let org = quick_at(&qemu_bundle(), &["-s", "org", "-p", "acme"]);
    let (code, out, _) = doctor(&w, &env, NO_BOOT, &strs(&org));
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "github.auth").contains("organization_self_hosted_runners=read"),
        "{out}"
    );

    w.forge.add_fine_grained_pat(FINE, true);
    let (code, out, _) = doctor(&w, &env, NO_BOOT, &strs(&args));
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "github.auth").contains("fine-grained PAT may list runners"),
        "{out}"
    );
}

/// A GitHub App key pair made for this test: (private key path, public PEM).
fn app_key(w: &World) -> (PathBuf, String) {
    let key = w.dir.path().join("app.pem");
    let public = crate::common::app_key(&key);
    (key, public)
}

/// An App passes; GitHub's clock 10 minutes off fails it (its JWTs would be
/// refused), while for a PAT 2 minutes off is a warning.
#[test]
fn an_app_passes_and_a_skewed_clock_fails_it() {
    let w = World::new();
    let (key, public) = app_key(&w);
    w.forge.add_app(4242, &public, 77, "acme");
    let mut args = quick(&qemu_bundle());
    args.extend(["--app-id", "4242", "--app-key"].map(String::from));
    args.push(key.display().to_string());
    let (code, out, err) = doctor(&w, &[], NO_BOOT, &strs(&args));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        line(&out, "github.auth").contains("GitHub App installation may list runners"),
        "{out}"
    );
    assert!(line(&out, "github.clock").starts_with('✔'), "{out}");

    w.forge.set_clock_skew(-600);
    let (code, out, _) = doctor(&w, &[], NO_BOOT, &strs(&args));
    assert_eq!(code, 1, "{out}");
    let clock = line(&out, "github.clock");
    assert!(
        clock.starts_with('✖') && clock.contains("ahead of GitHub's"),
        "{clock}"
    );
    assert!(
        clock.contains("fix: synchronise this host's clock: timedatectl set-ntp true"),
        "{clock}"
    );

    w.forge.set_clock_skew(120);
    let pat_args = quick(&qemu_bundle());
    let (code, out, _) = doctor(&w, &[("RUNNER_PAT", PAT)], NO_BOOT, &strs(&pat_args));
    assert_eq!(code, 0, "{out}");
    let clock = line(&out, "github.clock");
    assert!(
        clock.starts_with('!') && clock.contains("s behind GitHub's"),
        "{clock}"
    );
}

/// No QEMU on PATH with -R qemu: ✖ naming the package, exit 1.
#[test]
fn missing_qemu_fails_naming_the_package() {
    let w = World::new();
    let empty = w.dir.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let path = empty.display().to_string();
    let args = quick(&qemu_bundle());
    let (code, out, err) = doctor(&w, &[("PATH", &path)], NO_BOOT, &strs(&args));
    assert_eq!(code, 1, "{out}\n{err}");
    let q = line(&out, "tools.qemu");
    assert!(
        q.starts_with('✖') && q.contains("qemu-system-x86_64 not installed"),
        "{q}"
    );
    assert!(
        q.contains("apt-get install qemu-system-x86")
            && q.contains("dnf install qemu-system-x86-core"),
        "{q}"
    );
    // Without a credential GitHub is not asked, and says so.
    assert!(line(&out, "github.auth").starts_with('!'), "{out}");
    assert_eq!(w.forge.requests().len(), 0);
}

/// A bundle whose bundle.json is not JSON, and one whose kernel does not boot.
#[test]
fn a_broken_bundle_fails() {
    let w = World::new();
    let bad = w.dir.path().join("bad-json");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("bundle.json"), "{ not json").unwrap();
    let (code, out, err) = doctor(&w, &[], &[], &strs(&quick(&bad)));
    assert_eq!(code, 1, "{out}\n{err}");
    let b = line(&out, "bundle");
    assert!(
        b.starts_with('✖') && b.contains("bundle.json") && b.contains("fix: make the bundle again"),
        "{b}"
    );

    let good = qemu_bundle();
    let broken = w.dir.path().join("no-boot");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["bundle.json", "initrd.img"] {
        std::fs::copy(good.join(f), broken.join(f)).unwrap();
    }
    std::fs::write(broken.join("vmlinuz"), vec![0x5a; 1 << 20]).unwrap();
    let (code, out, _) = doctor(&w, &[], &[], &strs(&quick(&broken)));
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "bundle").starts_with('✔'), "{out}");
    let boot = line(&out, "boot");
    assert!(
        boot.starts_with('✖') && boot.contains("did not boot under TCG"),
        "{boot}"
    );

    // --no-boot skips the boot (a warning) and passes.
    let (code, out, _) = doctor(&w, &[], &["--no-boot"], &strs(&quick(&broken)));
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "boot").starts_with('!'), "{out}");
}

/// With krunvm (the orchestrator's own -R, before `doctor`): its tools are
/// required, QEMU's are not, and the guest network is said plainly to reach the host.
#[test]
fn krunvm_is_warned_about_its_network() {
    let w = World::new();
    let url = w.forge.url();
    let o = w
        .command("orchestrator")
        .args(["-R", "krunvm", "doctor", "--", "-g", &url, "-p", REPO])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        line(&out, "runtime").contains("krunvm (-R krunvm)"),
        "{out}"
    );
    assert!(line(&out, "tools.krunvm").starts_with('✔'), "{out}");
    let net = line(&out, "net");
    assert!(
        net.starts_with('!') && net.contains("libkrun") && net.contains("this host's services"),
        "{net}"
    );
    assert!(
        !out.contains(" bundle: ") && !out.contains(" boot: "),
        "{out}"
    );
}
