//! Tracing set-up shared by the binaries: `-v` count → level, `RUST_LOG` on top,
//! to standard error or appended to the `-l` file.

use std::path::Path;

use tracing_subscriber::EnvFilter;

/// Set when logs go to a file (then errors are also written there).
static TO_FILE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Install the global subscriber. `who` prefixes every line (`orchestrator`, `runner 3`).
pub fn init(verbose: u8, file: Option<&Path>, who: &str) -> std::io::Result<()> {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // Our crates at the chosen level; dependencies stay at warn unless RUST_LOG says otherwise.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,octocrab=off,ghrm={level},orchestrator={level},runner={level}"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime());
    let who = who.to_string();
    match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            // The final error goes to this file too (see `report`).
            TO_FILE.store(true, std::sync::atomic::Ordering::Relaxed);
            let f = std::sync::Mutex::new(f);
            builder
                .with_ansi(false)
                .with_writer(move || {
                    Prefixed(
                        who.clone(),
                        f.lock().map(|g| g.try_clone()).ok().and_then(Result::ok),
                    )
                })
                .init();
        }
        None => {
            use std::io::IsTerminal;
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(move || Prefixed(who.clone(), None))
                .init();
        }
    }
    Ok(())
}

/// A writer that prefixes each line with the process role.
struct Prefixed(String, Option<std::fs::File>);

impl std::io::Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut line = Vec::with_capacity(buf.len() + self.0.len() + 2);
        line.extend_from_slice(self.0.as_bytes());
        line.extend_from_slice(b": ");
        line.extend_from_slice(buf);
        match &mut self.1 {
            Some(f) => f.write_all(&line)?,
            None => std::io::stderr().write_all(&line)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Print an error and its chain of causes, once, to standard error.
pub fn report(who: &str, err: &(dyn std::error::Error + 'static)) {
    eprintln!("{who}: error: {err}");
    let mut src = err.source();
    while let Some(e) = src {
        eprintln!("{who}:   caused by: {e}");
        src = e.source();
    }
    if !TO_FILE.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    tracing::error!("{}", chain(err));
}

/// An error and its causes on one line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}
