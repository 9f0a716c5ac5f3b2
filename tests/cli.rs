//! Command-line behaviour: help, and every invalid input exiting 2 with a message
//! that names the option (a missing backend: 1, naming the tool and the fix).

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;

use crate::common::World;

fn cmd(w: &World, bin: &str) -> Command {
    Command::from_std(w.command(bin))
}

#[test]
fn help_teaches() {
    let w = World::new();
    cmd(&w, "runner").arg("--help").assert().success().stdout(
        predicate::str::contains("RUNNER_PAT")
            .and(predicate::str::contains("--boot-timeout"))
            .and(predicate::str::contains("Exit status")),
    );
    cmd(&w, "orchestrator")
        .arg("--help")
        .assert()
        .success()
        .stdout(
            predicate::str::contains("ORCHESTRATOR_RUNNERS").and(
                predicate::str::contains("never\nshow in ps").or(predicate::str::contains("ps")),
            ),
        );
}

#[test]
fn invalid_values_exit_2_naming_the_option() {
    let w = World::new();
    let cases: &[(&str, &[&str], &str)] = &[
        ("orchestrator", &["-n", "abc"], "--runners"),
        ("orchestrator", &["-n", "0"], "--runners"),
        (
            "orchestrator",
            &["-p", "a/b", "--", "-T", "x", "-p", "o/r"],
            "-p/--prefix",
        ),
        (
            "orchestrator",
            &["--", "-T", "x", "-p", "o/r", "--", "3"],
            "may not contain another --",
        ),
        (
            "orchestrator",
            &["--", "-T", "x", "-p", "o/r", "-s", "galaxy"],
            "--scope",
        ),
        ("orchestrator", &["--", "-T", "x"], "-p/--principal"),
        ("orchestrator", &["-R", "docker"], "--runtime"),
        (
            "runner",
            &["-T", "x", "-p", "o/r", "-s", "galaxy"],
            "--scope",
        ),
        ("runner", &["-T", "x"], "-p/--principal"),
        ("runner", &["-p", "o/r"], "RUNNER_PAT"),
        (
            "runner",
            &["-T", "x", "-p", "o/r", "-R", "docker"],
            "--runtime",
        ),
        (
            "runner",
            &["-T", "x", "-p", "o/r", "-M", "/tmp"],
            "-M/--mount",
        ),
        (
            "runner",
            &["-T", "x", "-p", "o/r", "-M", "relative:/x"],
            "-M/--mount",
        ),
        ("runner", &["-T", "x", "-p", "o/r", "-c", "many"], "--cpus"),
        (
            "runner",
            &["-T", "x", "-p", "o/r", "-r", "0"],
            "-r/--repeat",
        ),
        ("runner", &["-T", "x", "-p", "owner-only"], "owner/repo"),
        (
            "runner",
            &["-T", "x", "-p", "o/r", "-G", "gpu"],
            "-G/--group",
        ),
        (
            "runner",
            &["-T", "x", "-p", "o/r", "-g", "ftp://x"],
            "-g/--github",
        ),
        (
            "runner",
            &["-T", "x", "-p", "o/r", "-D", "relative"],
            "-D/--dir",
        ),
    ];
    for (bin, args, needle) in cases {
        cmd(&w, bin)
            .args(*args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(*needle).from_utf8());
    }
}

#[test]
fn the_final_error_reaches_the_log_file() {
    let w = World::new();
    for (bin, args, needle) in [
        ("runner", &["-p", "o/r"][..], "RUNNER_PAT"),
        ("orchestrator", &["-p", "a/b"][..], "-p/--prefix"),
    ] {
        let log = w.dir.path().join(format!("{bin}.log"));
        cmd(&w, bin)
            .args(args)
            .arg("-l")
            .arg(&log)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(needle));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            text.contains(needle) && text.contains("ERROR"),
            "{bin}: {text:?}"
        );
    }
}

#[test]
fn environment_and_dotenv_feed_options() {
    let w = World::new();
    // RUNNER_SCOPE from the environment is validated like -s.
    cmd(&w, "runner")
        .env("RUNNER_SCOPE", "galaxy")
        .args(["-T", "x", "-p", "o/r"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--scope"));
    // A .env in the working directory is read; the environment wins over it.
    std::fs::write(
        w.dir.path().join(".env"),
        "RUNNER_PRINCIPAL=not-a-repo\nRUNNER_PAT=x\n",
    )
    .unwrap();
    cmd(&w, "runner")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("\"not-a-repo\""));
    cmd(&w, "runner")
        .env("RUNNER_PRINCIPAL", "still-not")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("\"still-not\""));
}

#[test]
fn missing_backend_names_the_tool_and_the_fix() {
    let w = World::new();
    let forge = w.forge.url();
    // A PATH with none of the tools (this host may have buildah or QEMU installed).
    let empty = w.dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let empty = empty.display().to_string();
    for (rt, tool) in [("krunvm", "buildah"), ("podman", "podman")] {
        cmd(&w, "orchestrator")
            .env("PATH", &empty)
            .args(["-R", rt, "--", "-T", "x", "-p", "o/r", "-g", &forge])
            .assert()
            .code(1)
            .stderr(
                predicate::str::contains(format!("{tool} is not installed"))
                    .and(predicate::str::contains("install")),
            );
    }
    cmd(&w, "orchestrator")
        .env("PATH", &empty)
        .args(["--", "-T", "x", "-p", "o/r"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no microVM runtime found"));
}

#[test]
fn bad_credentials_fail_once_with_a_clear_error() {
    let w = World::new();
    let forge = w.forge.url();
    cmd(&w, "runner")
        .args([
            "-R",
            "krunvm",
            "-T",
            "wrong-pat",
            "-g",
            &forge,
            "-s",
            "org",
            "-p",
            "acme",
        ])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("401 Bad credentials")
                .and(predicate::str::contains("-T/RUNNER_PAT")),
        );
}

/// `scripts/update-runner-pin.sh` (run weekly by .github/workflows/runner-pin.yml)
/// moves the Containerfile's pin to the latest release with that release's
/// checksums, and leaves a current or newer pin alone.
#[test]
fn runner_pin_follows_the_latest_release() {
    let w = World::new();
    let file = w.dir.path().join("Containerfile");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("Containerfile"),
        &file,
    )
    .unwrap();
    let release = |tag: &str| {
        let p = w.dir.path().join(format!("release-{tag}.json"));
        let body = format!(
            "## Changes\n- actions-runner-linux-x64-{v}.tar.gz <!-- BEGIN SHA linux-x64 -->{x}<!-- END SHA linux-x64 -->\n\
             - actions-runner-linux-arm64-{v}.tar.gz <!-- BEGIN SHA linux-arm64 -->{a}<!-- END SHA linux-arm64 -->\n",
            v = tag.trim_start_matches('v'),
            x = "a".repeat(64),
            a = "b".repeat(64)
        );
        std::fs::write(
            &p,
            serde_json::json!({"tag_name": tag, "body": body}).to_string(),
        )
        .unwrap();
        p
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/update-runner-pin.sh");
    let run = |json: &Path| {
        std::process::Command::new(&script)
            .env("CONTAINERFILE", &file)
            .env("RELEASE_JSON", json)
            .output()
            .unwrap()
    };
    let out = run(&release("v9.999.1"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "9.999.1");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\nARG RUNNER_VERSION=9.999.1\n"), "{text}");
    assert!(text.contains(&format!("\nARG RUNNER_SHA256_X64={}\n", "a".repeat(64))));
    assert!(text.contains(&format!("\nARG RUNNER_SHA256_ARM64={}\n", "b".repeat(64))));
    // Current: nothing to do. Older: left alone.
    for tag in ["v9.999.1", "v2.100.0"] {
        let out = run(&release(tag));
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    }
    // Notes without checksums: an error, the file untouched.
    let p = w.dir.path().join("bad.json");
    std::fs::write(&p, r#"{"tag_name":"v10.0.0","body":"no sums"}"#).unwrap();
    let out = run(&p);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksums"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}

/// `base/docker.sh`, the guest's `docker`: the real CLI against podman's socket,
/// with `--network host` added to run/create/build unless a network is named.
#[test]
fn docker_shim_adds_host_networking_unless_a_network_is_named() {
    let w = World::new();
    let real = w.dir.path().join("docker-real");
    std::fs::write(&real, "#!/bin/sh\necho \"$DOCKER_HOST|$*\"\n").unwrap();
    std::fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("base/docker.sh");
    let docker = |args: &[&str]| {
        let out = std::process::Command::new(&shim)
            .args(args)
            .env("DOCKER_REAL_CLI", &real)
            .env("DOCKER_HOST", "unix:///run/podman/podman.sock")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let h = "unix:///run/podman/podman.sock|";
    assert_eq!(
        docker(&["run", "--rm", "alpine", "true"]),
        format!("{h}run --network host --rm alpine true")
    );
    assert_eq!(
        docker(&["create", "alpine"]),
        format!("{h}create --network host alpine")
    );
    assert_eq!(
        docker(&["build", "-t", "x", "."]),
        format!("{h}build --network host -t x .")
    );
    assert_eq!(
        docker(&["run", "--network=none", "alpine"]),
        format!("{h}run --network=none alpine")
    );
    assert_eq!(
        docker(&["run", "--net", "bridge", "alpine"]),
        format!("{h}run --net bridge alpine")
    );
    // Arguments of the container's command are not options of docker's.
    assert_eq!(
        docker(&["run", "alpine", "--", "--network", "x"]),
        format!("{h}run --network host alpine -- --network x")
    );
    assert_eq!(docker(&["ps", "-a"]), format!("{h}ps -a"));
    assert_eq!(
        docker(&["compose", "up", "-d"]),
        format!("{h}compose up -d")
    );
    // No real CLI: a clear error, 127.
    let out = std::process::Command::new(&shim)
        .arg("ps")
        .env("DOCKER_REAL_CLI", w.dir.path().join("absent"))
        .env("DOCKER_HOST", "unix:///x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("docker-ce-cli"));
}
