//! The entrypoint's own command line (`-E`, `-k`, `-c`, `--`), pinned by design.md §3.
//! Parses only: reading the files it names is the set-up's job.

use std::path::PathBuf;

/// What we were started with.
#[derive(Debug)]
pub struct Args {
    /// `-E`: the `.env` to read and delete.
    pub env: Option<PathBuf>,
    /// `-k`: the `.tkn` to write (`.brk`/`.trm` are its siblings).
    pub tkn: Option<PathBuf>,
    /// `-c KEY=VALUE` (insecure mode: no loop directory).
    pub inline: Vec<String>,
    /// After `--`: replaces the runner's `bin/Runner.Listener`.
    pub command: Vec<String>,
}

const USAGE: &str = "\
usage: entrypoint -E ENV_FILE -k TKN_FILE [-- COMMAND ARGS...]
       entrypoint -c KEY=VALUE... [-- COMMAND ARGS...]

Guest side of gh-runner-microvm. Reads and deletes ENV_FILE, starts the newest
runner-<version> under $RUNNER_INSTALL (default /opt/gh-runner-microvm/share/runner)
as the configured user, writes TKN_FILE when the runner is up, and stops it when
TKN_FILE's .trm sibling carries the secret or on SIGINT/SIGTERM (then writes .brk).
COMMAND replaces the runner's bin/Runner.Listener.";

/// Parse our arguments (`given`, or else our own argv); `-h` prints the usage and
/// exits 0. A guest restored from a snapshot template is given its arguments by
/// the host's resume message, as its argv is the template's.
pub fn parse_args(given: Option<Vec<String>>) -> Result<Args, String> {
    let mut a = Args {
        env: None,
        tkn: None,
        inline: vec![],
        command: vec![],
    };
    let mut it: Box<dyn Iterator<Item = String>> = match given {
        Some(v) => Box::new(v.into_iter()),
        None => Box::new(std::env::args().skip(1)),
    };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-E" => a.env = Some(value("-E")?.into()),
            "-k" => a.tkn = Some(value("-k")?.into()),
            "-c" => a.inline.push(value("-c")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--" => {
                a.command = it.collect();
                break;
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if a.env.is_none() && a.inline.is_empty() {
        return Err(format!(
            "-E ENV_FILE (or -c KEY=VALUE in insecure mode) is required\n{USAGE}"
        ));
    }
    Ok(a)
}
