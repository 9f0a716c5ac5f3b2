//! The demo's measurements: peak memory of the process tree, and the per-phase
//! statistics read from the loops' structured log fields. Arithmetic only.

use std::collections::BTreeMap;

/// Resident set sizes (KiB) of `root` and its descendants, grouped by program name.
pub(super) fn rss_by_program(root: u32) -> BTreeMap<String, u64> {
    let mut parent = BTreeMap::new();
    let mut info = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let ppid = field("PPid:")
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        let rss = field("VmRSS:")
            .and_then(|v| {
                v.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let name = field("Name:").unwrap_or_default();
        parent.insert(pid, ppid);
        info.insert(pid, (name, rss));
    }
    let mut out = BTreeMap::new();
    for (pid, (name, rss)) in &info {
        let mut p = *pid;
        let mut hops = 0;
        while p != root && p > 1 && hops < 64 {
            p = parent.get(&p).copied().unwrap_or(0);
            hops += 1;
        }
        if p == root {
            let e = out.entry(name.clone()).or_insert(0u64);
            *e = (*e).max(*rss);
        }
    }
    out
}

pub(super) fn stats(mut v: Vec<f64>) -> Option<(usize, f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Some((v.len(), at(0.5), at(0.9), v[v.len() - 1]))
}

pub(super) fn log_values(log: &str, key: &str) -> Vec<f64> {
    let k = format!("{key}=");
    log.lines()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(&k)))
        .filter_map(|v| {
            v.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<f64>()
                .ok()
        })
        .map(|ms| ms / 1000.0)
        .collect()
}
