//! Version sort of `runner-<version>` directory names, and the newest one under a root.
//! It only lists and compares: running the runner is the entrypoint's.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

/// Compare two dotted versions numerically, segment by segment (`2.10.0 > 2.9.9`);
/// a non-numeric segment compares as text after all numeric ones.
pub fn compare(a: &str, b: &str) -> Ordering {
    let mut x = a.split(['.', '-']);
    let mut y = b.split(['.', '-']);
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => {
                let o = match (p.parse::<u64>(), q.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => p.cmp(q),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// The `runner-<version>` directory with the highest version under `root`.
pub fn newest_runner(root: &Path) -> std::io::Result<Option<(String, PathBuf)>> {
    let mut best: Option<(String, PathBuf)> = None;
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(v) = name.to_str().and_then(|n| n.strip_prefix("runner-")) else {
            continue;
        };
        if !entry.file_type()?.is_dir() || v.is_empty() {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(b, _)| compare(v, b) == Ordering::Greater)
        {
            best = Some((v.to_string(), entry.path()));
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_sort() {
        assert_eq!(compare("2.10.0", "2.9.9"), Ordering::Greater);
        assert_eq!(compare("2.330.0", "2.330.0"), Ordering::Equal);
        assert_eq!(compare("2.330", "2.330.1"), Ordering::Less);
        assert_eq!(compare("1.0.0-rc1", "1.0.0-1"), Ordering::Greater);
    }

    #[test]
    fn picks_newest_dir() {
        let d = std::env::temp_dir().join(format!("ghrm-ver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for v in ["runner-2.9.0", "runner-2.10.1", "runner-2.10.0", "other"] {
            std::fs::create_dir_all(d.join(v)).unwrap();
        }
        std::fs::write(d.join("runner-9.9.9"), "a file, not a dir").unwrap();
        let (v, p) = newest_runner(&d).unwrap().unwrap();
        assert_eq!(v, "2.10.1");
        assert_eq!(p, d.join("runner-2.10.1"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
