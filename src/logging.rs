//! Tracing set-up shared by the binaries: `-v` count → level, `RUST_LOG` on top,
//! to standard error or appended to the `-l` file, as text or one JSON object per
//! line (`--log-format`); and the final error report, in the same format.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

/// Set when logs go to a file (then errors are also written there).
static TO_FILE: AtomicBool = AtomicBool::new(false);

/// Set in JSON mode (the final error report is JSON too).
static JSON: AtomicBool = AtomicBool::new(false);

/// `--log-format`: how the host's log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    // (Plain comments: doc comments here would turn every --help page long.)
    // `who: uptime LEVEL message key=value…`, for people.
    #[default]
    #[allow(missing_docs)]
    Text,
    // One JSON object per line: timestamp, level, who, message and the event's
    // fields (`boot_ms`, `turnaround_ms`, `vm`, `runner`, …), for log shippers.
    #[allow(missing_docs)]
    Json,
}

impl LogFormat {
    /// Its `--log-format` value (what the orchestrator passes to its loops).
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The format [`init`] installed.
pub fn format() -> LogFormat {
    match JSON.load(Ordering::Relaxed) {
        true => LogFormat::Json,
        false => LogFormat::Text,
    }
}

/// Install the global subscriber. `who` prefixes every line (`orchestrator`, `runner 3`).
pub fn init(verbose: u8, file: Option<&Path>, who: &str, format: LogFormat) -> std::io::Result<()> {
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
    let json = format == LogFormat::Json;
    JSON.store(json, Ordering::Relaxed);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime());
    // JSON lines carry `who` as a field; text lines get it as a prefix.
    let prefix = (!json).then(|| who.to_string());
    let file = match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            // The final error goes to this file too (see `report`).
            TO_FILE.store(true, Ordering::Relaxed);
            Some(std::sync::Mutex::new(f))
        }
        None => None,
    };
    use std::io::IsTerminal;
    let ansi = !json && file.is_none() && std::io::stderr().is_terminal();
    let writer = move || {
        Prefixed(
            prefix.clone(),
            file.as_ref()
                .and_then(|f| f.lock().map(|g| g.try_clone()).ok())
                .and_then(Result::ok),
        )
    };
    let builder = builder.with_ansi(ansi).with_writer(writer);
    match json {
        true => builder
            .event_format(JsonLines {
                who: who.to_string(),
            })
            .init(),
        false => builder.init(),
    }
    Ok(())
}

/// A writer that prefixes each line with the process role (text mode) and goes
/// to the `-l` file or standard error.
struct Prefixed(Option<String>, Option<std::fs::File>);

impl std::io::Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let prefix = self.0.as_deref().unwrap_or_default();
        let mut line = Vec::with_capacity(buf.len() + prefix.len() + 2);
        if !prefix.is_empty() {
            line.extend_from_slice(prefix.as_bytes());
            line.extend_from_slice(b": ");
        }
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

/// `--log-format json`: one flat object per event. A formatter of our own rather
/// than tracing-subscriber's `json` feature, which nests the fields under
/// `fields`, needs `tracing-serde`, and has no place for a constant `who`.
struct JsonLines {
    who: String,
}

/// An event's fields as JSON values (numbers stay numbers).
#[derive(Default)]
struct Fields(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for Fields {
    fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_i64(&mut self, f: &tracing::field::Field, v: i64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_f64(&mut self, f: &tracing::field::Field, v: f64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_bool(&mut self, f: &tracing::field::Field, v: bool) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        self.0.insert(f.name().into(), format!("{v:?}").into());
    }
}

/// The head of every JSON line: timestamp, level, who.
fn json_head(level: &str, who: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    m.insert("timestamp".into(), now.into());
    m.insert("level".into(), level.into());
    m.insert("who".into(), who.into());
    m
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = json_head(event.metadata().level().as_str(), &self.who);
        let mut fields = Fields::default();
        event.record(&mut fields);
        // The message first, then the structured fields (never over the head).
        if let Some(m) = fields.0.remove("message") {
            line.insert("message".into(), m);
        }
        for (k, v) in fields.0 {
            line.entry(k).or_insert(v);
        }
        writeln!(w, "{}", serde_json::Value::Object(line))
    }
}

/// An error and its causes.
fn causes(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut v = vec![];
    let mut src = err.source();
    while let Some(e) = src {
        v.push(e.to_string());
        src = e.source();
    }
    v
}

/// The final error report as one JSON line (`--log-format json`).
fn report_json(who: &str, err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = json_head("ERROR", who);
    line.insert("message".into(), format!("error: {err}").into());
    line.insert("error".into(), err.to_string().into());
    line.insert("causes".into(), causes(err).into());
    serde_json::Value::Object(line).to_string()
}

/// Print an error and its chain of causes, once, to standard error (and to the
/// `-l` file); one JSON object in JSON mode.
pub fn report(who: &str, err: &(dyn std::error::Error + 'static)) {
    if JSON.load(Ordering::Relaxed) {
        let line = report_json(who, err);
        eprintln!("{line}");
        if TO_FILE.load(Ordering::Relaxed) {
            tracing::error!(error = %err, causes = ?causes(err), "error: {err}");
        }
        return;
    }
    eprintln!("{who}: error: {err}");
    for e in causes(err) {
        eprintln!("{who}:   caused by: {e}");
    }
    if !TO_FILE.load(Ordering::Relaxed) {
        return;
    }
    tracing::error!("{}", chain(err));
}

/// An error and its causes on one line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    for e in causes(err) {
        s.push_str(": ");
        s.push_str(&e);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_json_report_is_one_object_with_its_causes() {
        let e = Outer(std::io::Error::other("inner"));
        let line = report_json("runner 2", &e);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["who"], "runner 2");
        assert_eq!(v["message"], "error: outer");
        assert_eq!(v["causes"], serde_json::json!(["inner"]));
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn json_lines_are_flat_with_numbers_as_numbers() {
        use std::io::Write;
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .event_format(JsonLines {
                who: "runner 1".into(),
            })
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::info!(boot_ms = 7042u64, vm = %"GH-1-abc", "runner GH-1-abc is up");
            tracing::warn!(who = "forged", "a \"quoted\"\nline");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["boot_ms"], 7042);
        assert_eq!(lines[0]["vm"], "GH-1-abc");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["message"], "runner GH-1-abc is up");
        assert_eq!(
            lines[1]["who"], "runner 1",
            "a field cannot replace the head"
        );
        assert_eq!(lines[1]["message"], "a \"quoted\"\nline");
    }
}
