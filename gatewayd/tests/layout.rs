//! The daemon's module layout, checked: no module cycle, and no stage imports a later stage of the data flow.
//!
//! ```text
//! drivers (crate) -> ingest + store -> reconcile -> outbox -> upstream        api, app, cli beside and above
//! ```
//!
//! The check reads the source (`gatewayd/src`, and `drivers/src` for cycles), not the compiler's resolution: every `crate::a::b` path and every
//! `super::x` path outside comments is an import of that module. Test code (`tests.rs`, `tests/` and inline
//! `#[cfg(test)] mod tests`) may import anything and is not read. Two graphs are checked for cycles: the top-level
//! modules, and the children of each folder among themselves. A top-level module must be given a rank in [`RANKS`]; a
//! module may import only modules of its own rank or lower (a cycle within a rank is still an error).
//! docs/architecture.md explains each place.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of the daemon and its place in the flow. Lower ranks never import higher ones.
const RANKS: &[(&str, u8, &str)] = &[
    ("proto", 0, "protobuf types"),
    ("punch", 0, "the punch and its id"),
    ("chunk", 0, "the chunked value encoding"),
    ("atomic_file", 0, "atomic file writes"),
    ("config", 0, "configuration types and their locations"),
    ("tokens", 0, "the API token store"),
    ("telemetry", 0, "logging and the metrics registry"),
    ("daemon", 0, "signals, systemd, supervision, privileges"),
    ("ingest", 1, "the store's single writer"),
    ("store", 1, "the durable punch store"),
    ("reconcile", 2, "rules, roster, approvals, the engine and its change log"),
    ("outbox", 3, "what waits for delivery"),
    ("upstream", 4, "delivery to the cloud"),
    ("api", 5, "the HTTP API"),
    ("app", 6, "assembly, reload, shutdown"),
    ("cli", 7, "the command line"),
];

/// A module path (`["reconcile", "stage"]`) and the module paths it imports.
type Graph = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The drivers crate's sources (checked for cycles too).
fn drivers_src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../drivers/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests" && n != "bin") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(path);
        }
    }
}

/// `src/a/b/mod.rs` and `src/a/b.rs` are `["a", "b"]`; `lib.rs` and `main.rs` are the root.
fn module_of(file: &Path, src: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_owned()),
    }
    parts
}

/// The file without comments and without its inline test module.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") && lines.peek().is_some_and(|l| l.trim_start().starts_with("mod tests"))
        {
            break;
        }
        let code = match line.find("//") {
            // `//` inside a string (an URL) is rare enough here; cutting the rest of such a line loses nothing.
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The module paths one path expression names, up to two segments deep: `crate::a::b::C` gives `a::b` (and a `C` that
/// is an item, not a module, is harmless: it never matches a module), `crate::{a, b::c}` gives `a` and `b::c`.
fn paths_after(rest: &str) -> Vec<Vec<String>> {
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut end = group.len();
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = i;
                    break;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        let mut out = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        let inner = &group[..end];
        for (i, c) in inner.char_indices().chain(std::iter::once((inner.len(), ','))) {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.extend(paths_after(inner[start..i].trim()));
                    start = i + 1;
                }
                _ => {}
            }
        }
        return out;
    }
    let first = ident_at(rest);
    if first.is_empty() || first == "self" {
        return Vec::new();
    }
    let mut path = vec![first.to_owned()];
    if let Some(more) = rest[first.len()..].strip_prefix("::") {
        let second = ident_at(more);
        if !second.is_empty() && second != "self" {
            path.push(second.to_owned());
        } else if more.starts_with('{') {
            return paths_after(more).into_iter().map(|p| [vec![first.to_owned()], p].concat()).collect();
        }
    }
    vec![path]
}

fn imports(code: &str, module: &[String]) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", module[..module.len().saturating_sub(1)].to_vec())] {
        let mut from = 0;
        while let Some(i) = code[from..].find(prefix) {
            let at = from + i;
            from = at + prefix.len();
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            for p in paths_after(&code[from..]) {
                out.insert([base.clone(), p].concat());
            }
        }
    }
    out
}

fn graph(src: &Path) -> Graph {
    let src = src.to_path_buf();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found only {} files under {}", files.len(), src.display());
    let mut g = Graph::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let module = module_of(&file, &src);
        g.entry(module.clone()).or_default().extend(imports(&code_of(&text), &module));
    }
    g
}

/// A cycle in `edges`, if there is one, as the list of its nodes.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(n.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(n, edges, &mut state, &mut stack) {
            return Some(c);
        }
    }
    None
}

/// The edges among the children of `parent` (top level when `parent` is empty).
fn child_edges(g: &Graph, parent: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let children: BTreeSet<String> =
        g.keys().filter(|m| m.len() > parent.len() && m.starts_with(parent)).map(|m| m[parent.len()].clone()).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, targets) in g {
        if module.len() <= parent.len() || !module.starts_with(parent) {
            continue;
        }
        let from = &module[parent.len()];
        for t in targets {
            if t.len() > parent.len() && t.starts_with(parent) {
                let to = &t[parent.len()];
                if to != from && children.contains(to) {
                    edges.entry(from.clone()).or_default().insert(to.clone());
                }
            }
        }
    }
    edges
}

#[test]
fn no_module_cycle_at_any_level() {
    let mut cycles = Vec::new();
    for (krate, src) in [("gatewayd", src_dir()), ("drivers", drivers_src_dir())] {
        let g = graph(&src);
        let parents: BTreeSet<Vec<String>> =
            g.keys().flat_map(|m| (0..m.len()).map(move |i| m[..i].to_vec())).collect();
        for parent in &parents {
            if let Some(cycle) = find_cycle(&child_edges(&g, parent)) {
                let at = if parent.is_empty() { krate.to_owned() } else { format!("{krate}::{}", parent.join("::")) };
                cycles.push(format!("in {at}: {}", cycle.join(" -> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn no_stage_imports_a_later_stage() {
    let g = graph(&src_dir());
    let rank = |m: &str| RANKS.iter().find(|(n, _, _)| *n == m).map(|(_, r, _)| *r);
    let mut problems = Vec::new();
    for (module, targets) in &g {
        let Some(top) = module.first() else { continue };
        let Some(from) = rank(top) else {
            problems.push(format!("{top}: a top-level module without a place in the layout (add it to RANKS)"));
            continue;
        };
        for t in targets {
            let Some(to) = t.first() else { continue };
            if let Some(to_rank) = rank(to) {
                if to_rank > from {
                    problems.push(format!("{} imports {} (a later stage)", module.join("::"), t.join("::")));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "layout:\n{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_imports_cycles_and_groups() {
    let code = code_of(
        "use crate::{a, b::{c, d}};\n// use crate::hidden;\nfn f() { super::e::g(); crate::h::i::J; }\n\
         #[cfg(test)]\nmod tests { use crate::t; }\n",
    );
    let found = imports(&code, &["x".into(), "y".into()]);
    let want: BTreeSet<Vec<String>> = [vec!["a"], vec!["b", "c"], vec!["b", "d"], vec!["x", "e", "g"], vec!["h", "i"]]
        .into_iter()
        .map(|p| p.into_iter().map(str::to_owned).collect())
        .collect();
    let found: BTreeSet<Vec<String>> = found.into_iter().map(|p| p.into_iter().take(3).collect()).collect();
    assert_eq!(found, want);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    assert!(find_cycle(&edges).is_none());
    edges.entry("b".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&edges), Some(vec!["a".into(), "b".into(), "a".into()]));
}
