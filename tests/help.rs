//! The command lines are public interface (design.md §5): the `--help` of both
//! binaries and of every subcommand is pinned byte for byte in `tests/golden/`.
//! After an intended change, regenerate with `GHRM_BLESS=1 cargo test --test
//! integration help::` and review the diff.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::bin;

/// (golden file, binary, arguments).
const PAGES: &[(&str, &str, &[&str])] = &[
    ("orchestrator.txt", "orchestrator", &["--help"]),
    ("orchestrator-short.txt", "orchestrator", &["-h"]),
    ("orchestrator-demo.txt", "orchestrator", &["demo", "--help"]),
    (
        "orchestrator-image.txt",
        "orchestrator",
        &["image", "--help"],
    ),
    (
        "orchestrator-image-bundle.txt",
        "orchestrator",
        &["image", "bundle", "--help"],
    ),
    (
        "orchestrator-image-prune.txt",
        "orchestrator",
        &["image", "prune", "--help"],
    ),
    (
        "orchestrator-doctor.txt",
        "orchestrator",
        &["doctor", "--help"],
    ),
    ("orchestrator-help.txt", "orchestrator", &["help"]),
    (
        "orchestrator-status.txt",
        "orchestrator",
        &["status", "--help"],
    ),
    (
        "orchestrator-drain.txt",
        "orchestrator",
        &["drain", "--help"],
    ),
    ("orchestrator-logs.txt", "orchestrator", &["logs", "--help"]),
    ("runner.txt", "runner", &["--help"]),
    ("runner-short.txt", "runner", &["-h"]),
];

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// The help text as a user with a 100-column terminal and no variables set sees it.
fn help(binary: &str, args: &[&str]) -> String {
    let out = Command::new(bin(binary))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("COLUMNS", "100")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{binary} {args:?}: {}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_is_pinned() {
    let bless = std::env::var_os("GHRM_BLESS").is_some();
    let mut changed = vec![];
    for (file, binary, args) in PAGES {
        let now = help(binary, args);
        let path = golden(file);
        if bless {
            std::fs::write(&path, &now).unwrap();
            continue;
        }
        let pinned = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (GHRM_BLESS=1 writes it)", path.display()));
        if now != pinned {
            changed.push(format!(
                "{binary} {}: differs from {}\n--- now ---\n{now}",
                args.join(" "),
                path.display()
            ));
        }
    }
    assert!(changed.is_empty(), "{}", changed.join("\n"));
}
