//! The host crate's floors (DEVELOPMENT.md, "Layers"): every `crate::…` path in
//! `src/` (and `ghrm::…` in the mains), in `use` lines or inline, is an arrow from
//! the file it is written in to the file it names. This test fails on an arrow to a
//! higher floor, on a circle between rooms or between files, and on a room that has
//! no floor yet. It reads the source as text; it does not need a build.
//!
//! `cargo test --test layers -- --nocapture` prints the map it checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom; a room may use rooms on its own floor or below, never above.
const FLOORS: &[(&str, &[&str])] = &[
    ("mains", &["bin"]),
    ("command line", &["cli"]),
    ("roles", &["orchestrator", "runner", "demo", "doctor"]),
    (
        "services",
        &["backend", "guestnet", "forge", "image", "localforge"],
    ),
    ("shared types", &["types", "hosttool", "logging"]),
];

fn floor_of(room: &str) -> Option<usize> {
    FLOORS.iter().position(|(_, rooms)| rooms.contains(&room))
}

/// Rust source with comments, string and character literals blanked out (so that a
/// `crate::` in a message or a doc comment is not an import).
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(i + k).copied().unwrap_or('\0');
        if at(0) == '/' && at(1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if at(0) == '/' && at(1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if at(0) == 'r'
            && (at(1) == '"' || (at(1) == '#' && (at(2) == '"' || at(2) == '#')))
            && !c[..i]
                .last()
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"…", r#"…"#, …
            let mut hashes = 0;
            i += 1;
            while c.get(i) == Some(&'#') {
                hashes += 1;
                i += 1;
            }
            i += 1; // the opening quote
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if at(0) == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if at(0) == '\'' && at(1) == '\\' {
            i += 2;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if at(0) == '\'' && at(2) == '\'' {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The paths a use tree or an inline path names, after `root::`: `a::b::{c, d::e}`
/// gives `a::b::c` and `a::b::d::e`.
fn paths_after(
    code: &[char],
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let skip_ws = |i: &mut usize| {
        while *i < code.len() && code[*i].is_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if code.get(i) == Some(&'{') {
        i += 1;
        loop {
            skip_ws(&mut i);
            match code.get(i) {
                Some('}') | None => return i + 1,
                Some(',') => i += 1,
                _ => {
                    let before = i;
                    i = paths_after(code, i, prefix.clone(), out);
                    if i == before {
                        i += 1;
                    }
                }
            }
        }
    }
    let start = i;
    while i < code.len() && (code[i].is_alphanumeric() || code[i] == '_') {
        i += 1;
    }
    if i == start {
        // `*`, or nothing usable.
        if !prefix.is_empty() {
            out.push(prefix);
        }
        return i.max(start + usize::from(code.get(i) == Some(&'*')));
    }
    let mut path = prefix;
    let ident: String = code[start..i].iter().collect();
    if ident != "self" {
        path.push(ident);
    }
    let mut j = i;
    skip_ws(&mut j);
    if code.get(j) == Some(&':') && code.get(j + 1) == Some(&':') {
        return paths_after(code, j + 2, path, out);
    }
    if !path.is_empty() {
        out.push(path);
    }
    i
}

/// Every path written after `root::` in `code`.
fn named_paths(code: &str, root: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let needle: Vec<char> = format!("{root}::").chars().collect();
    let mut out = vec![];
    let mut i = 0;
    while i + needle.len() <= chars.len() {
        let boundary = i == 0
            || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_' || chars[i - 1] == ':');
        if boundary && chars[i..i + needle.len()] == needle[..] {
            i = paths_after(&chars, i + needle.len(), vec![], &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`; `src/bin/x.rs` → `bin::x`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Strongly connected components of more than one node (the circles).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges
        .iter()
        .flat_map(|(a, bs)| std::iter::once(a).chain(bs))
        .collect();
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for m in edges.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    todo.push(m.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = vec![];
    for n in &nodes {
        if done.contains(*n) {
            continue;
        }
        let scc: Vec<String> = nodes
            .iter()
            .filter(|m| reaches[*n].contains(**m) && reaches[**m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        done.extend(scc.iter().cloned());
        if scc.len() > 1 {
            out.push(scc);
        }
    }
    out
}

#[test]
fn imports_flow_down_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    files.sort();
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    // The file a path lands in: the longest prefix of it that is a module file.
    let file_of = |path: &[String]| -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].join("::"))
            .find(|m| modules.contains_key(m))
    };
    let mut problems = vec![];
    let mut room_edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut file_edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = vec![];
    for (module, file) in &modules {
        if module == "lib" {
            continue;
        }
        let room = module.split("::").next().unwrap().to_string();
        let Some(floor) = floor_of(&room) else {
            problems.push(format!(
                "{}: room `{room}` has no floor in tests/layers.rs (FLOORS)",
                file.display()
            ));
            continue;
        };
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let root = if room == "bin" { "ghrm" } else { "crate" };
        for path in named_paths(&code, root) {
            let Some(target) = file_of(&path) else {
                continue; // an item of the crate root
            };
            let to_room = target.split("::").next().unwrap().to_string();
            if to_room == room {
                continue;
            }
            room_edges
                .entry(room.clone())
                .or_default()
                .insert(to_room.clone());
            file_edges
                .entry(module.clone())
                .or_default()
                .insert(target.clone());
            match floor_of(&to_room) {
                Some(f) if f >= floor => {}
                Some(f) => upward.push(format!(
                    "{module} ({}) → {target} ({}), e.g. crate::{}",
                    FLOORS[floor].0,
                    FLOORS[f].0,
                    path.join("::")
                )),
                None => {}
            }
        }
    }
    // One arrow per pair of files, named by the first path seen.
    upward.sort();
    upward.dedup_by(|a, b| a.split(", e.g.").next() == b.split(", e.g.").next());
    let room_circles = circles(&room_edges);
    let file_circles = circles(&file_edges);
    println!("floors, top to bottom:");
    for (name, rooms) in FLOORS {
        println!("  {name}: {}", rooms.join(", "));
    }
    println!("arrows between rooms:");
    for (from, to) in &room_edges {
        println!(
            "  {from} → {}",
            to.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    println!(
        "circles between rooms: {}; between files: {}; arrows up: {}",
        room_circles.len(),
        file_circles.len(),
        upward.len()
    );
    for c in &room_circles {
        problems.push(format!("circle between rooms: {}", c.join(" ↔ ")));
    }
    for c in &file_circles {
        problems.push(format!("circle between files: {}", c.join(" ↔ ")));
    }
    for u in &upward {
        problems.push(format!("arrow up: {u}"));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_scanner_sees_every_form() {
    let code = code_only(
        "use crate::a::{b::C, d};\n// crate::comment::X\nlet s = \"crate::string\";\n\
         let c = '\\''; fn f<'x>() { crate::e::f::g(); }\nuse crate::{h, i::{j, k}};\n",
    );
    let found: Vec<String> = named_paths(&code, "crate")
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(found, ["a::b::C", "a::d", "e::f::g", "h", "i::j", "i::k"]);
}
