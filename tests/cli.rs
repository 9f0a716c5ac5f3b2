//! Command-line behaviour: help, and every invalid input exiting 2 with a message
//! that names the option (a missing backend: 1, naming the tool and the fix).

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
    for (rt, tool) in [("krunvm", "buildah"), ("podman", "podman")] {
        cmd(&w, "orchestrator")
            .env("PATH", "/usr/bin:/bin")
            .args(["-R", rt, "--", "-T", "x", "-p", "o/r", "-g", &forge])
            .assert()
            .code(1)
            .stderr(
                predicate::str::contains(format!("{tool} is not installed"))
                    .and(predicate::str::contains("install")),
            );
    }
    cmd(&w, "orchestrator")
        .env("PATH", "/usr/bin:/bin")
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
