//! Moving secrets out of the runner arguments: `-T`/`--pat`/`--token` and
//! `-S`/`--secret` are removed from the argv the children get (so they never show
//! in `ps`) and handed over as `RUNNER_PAT`/`RUNNER_SECRET` in their environment.

/// Short options of `runner` that take no value (they may be clustered: `-vU`).
const SHORT_FLAGS: &[char] = &['v', 'U', 'h', 'V'];
/// Long options of `runner` that take no value.
const LONG_FLAGS: &[&str] = &[
    "update",
    "verbose",
    "no-jit",
    "accept-scope-token",
    "help",
    "version",
];

/// Split `args` into (args without secrets, PAT, secret). The last occurrence wins,
/// as with clap.
pub fn extract_secrets(args: &[String]) -> (Vec<String>, Option<String>, Option<String>) {
    let mut out = Vec::with_capacity(args.len());
    let (mut pat, mut secret) = (None, None);
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let takes_value = !long.is_empty() && !LONG_FLAGS.contains(&name);
            let value = match (&inline, takes_value) {
                (None, true) => {
                    i += 1;
                    args.get(i).cloned()
                }
                _ => None,
            };
            match name {
                "pat" | "token" => pat = inline.or(value),
                "secret" => secret = inline.or(value),
                _ => {
                    out.push(a.clone());
                    out.extend(value);
                }
            }
        } else if a.len() > 1 && a.starts_with('-') {
            let body = &a[1..];
            let mut kept = String::from("-");
            let mut pending = None;
            for (j, c) in body.char_indices() {
                if SHORT_FLAGS.contains(&c) {
                    kept.push(c);
                    continue;
                }
                let rest = &body[j + c.len_utf8()..];
                let value = if rest.is_empty() {
                    i += 1;
                    args.get(i).cloned()
                } else {
                    Some(rest.to_string())
                };
                match c {
                    'T' => pat = value,
                    'S' => secret = value,
                    _ => {
                        kept.push(c);
                        kept.push_str(rest);
                        if rest.is_empty() {
                            pending = value;
                        }
                    }
                }
                break;
            }
            if kept.len() > 1 {
                out.push(kept);
            }
            out.extend(pending);
        } else {
            out.push(a.clone());
        }
        i += 1;
    }
    (out, pat, secret)
}

/// Secrets given on our own command line would stay readable in `/proc/PID/cmdline`
/// (every local user's `ps`) for the process's whole life: before anything else,
/// run this same executable again with them moved into its environment
/// (`RUNNER_PAT`, `RUNNER_SECRET`; the command line wins over the environment, so
/// the values are the same). `after` is where the runner's options start in our
/// arguments: after `--` for `orchestrator`, from the first one for `runner`.
/// Returns only when there was nothing to hide or the executable could not be run
/// again (then with a warning).
pub fn reexec_without_secrets(after_double_dash: bool) {
    use std::os::unix::process::CommandExt;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let Some(args) = argv
        .iter()
        .skip(1)
        .map(|a| a.to_str().map(str::to_string))
        .collect::<Option<Vec<String>>>()
    else {
        return;
    };
    let start = if after_double_dash {
        match args.iter().position(|a| a == "--") {
            Some(i) => i + 1,
            None => return,
        }
    } else {
        0
    };
    let (kept, pat, secret) = extract_secrets(&args[start..]);
    if pat.is_none() && secret.is_none() {
        return;
    }
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0(&argv[0]).args(&args[..start]).args(&kept);
    if let Some(p) = pat {
        cmd.env("RUNNER_PAT", p);
    }
    if let Some(s) = secret {
        cmd.env("RUNNER_SECRET", s);
    }
    let e = cmd.exec();
    eprintln!("warning: could not hide -T/-S from the process list ({e}); give the PAT as RUNNER_PAT instead");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(args: &[&str]) -> (Vec<String>, Option<String>, Option<String>) {
        extract_secrets(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn removes_every_form() {
        let (a, p, s) = x(&["-T", "pat1", "-p", "o/r", "-S", "sec1"]);
        assert_eq!(
            (a, p.as_deref(), s.as_deref()),
            (vec!["-p".into(), "o/r".into()], Some("pat1"), Some("sec1"))
        );
        let (a, p, _) = x(&["-Tpat2", "-r", "-1"]);
        assert_eq!(
            (a, p.as_deref()),
            (vec!["-r".into(), "-1".into()], Some("pat2"))
        );
        let (a, p, s) = x(&["--pat=p3", "--secret", "s3", "--no-jit"]);
        assert_eq!(
            (a, p.as_deref(), s.as_deref()),
            (vec!["--no-jit".into()], Some("p3"), Some("s3"))
        );
        let (a, p, _) = x(&["--token", "p4", "-v"]);
        assert_eq!((a, p.as_deref()), (vec!["-v".into()], Some("p4")));
    }

    #[test]
    fn clusters() {
        let (a, p, _) = x(&["-vT", "p5", "-k", "5"]);
        assert_eq!(
            (a, p.as_deref()),
            (vec!["-v".into(), "-k".into(), "5".into()], Some("p5"))
        );
        let (a, p, _) = x(&["-vUTp6"]);
        assert_eq!((a, p.as_deref()), (vec!["-vU".into()], Some("p6")));
        // A value that looks like -T is a value, not the option.
        let (a, p, _) = x(&["-p", "-T"]);
        assert_eq!((a, p), (vec!["-p".into(), "-T".into()], None));
        let (a, _, _) = x(&["-vr", "3"]);
        assert_eq!(a, vec!["-vr".to_string(), "3".into()]);
    }
}
