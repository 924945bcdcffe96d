//! The reference documentation checked against the code, so that it cannot drift:
//!
//! - `docs/configuration.md` and `docs/rules.md`: the keys in their key tables are exactly the keys the serde types of
//!   the configuration and the rules file accept (read from the source, see [`schema`]); every complete TOML example
//!   loads through the real loader (`app::load::load`, which `gatewayd validate` runs; `Rules::parse`), the configuration
//!   examples through `gatewayd validate` itself, and together they use every key; fragments use documented keys only;
//!   each key's example value is accepted; each default written as one literal is what the loader does without the key;
//!   each range written as "`A` to `B`" accepts `A` and `B` and refuses what lies just beyond.
//! - The roster CSV section names the roster's columns, and its example parses.
//! - `docs/api.md` names every route (`METHOD /path`) an axum router in the sources serves.
//! - Every relative link in `README.md` and `docs/` resolves to a file in the repository (and a `#anchor` to a heading).
//!
//! Where the types are: every `src/` folder of the repository is read, starting from the roots below. When the
//! configuration or rules types move, nothing here changes unless a root struct is renamed or its name becomes ambiguous.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod markdown;
mod schema;
mod toml_paths;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use gatewayd::reconcile::roster::Roster;
use gatewayd::reconcile::rules::Rules;
use toml::{Table, Value};

use markdown::{Cell, Page};

/// The root struct of the configuration file, and where (relative to the repository) it is looked for when several
/// structs have its name.
const CONFIG_ROOT: (&str, &str) = ("Config", "gatewayd/src/config");
/// The root struct of the rules file.
const RULES_ROOT: (&str, &str) = ("RulesFile", "gatewayd/src/reconcile/rules");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

fn read_page(rel: &str) -> Page {
    let text = std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    markdown::parse(&text)
}

/// One row of a key table.
#[derive(Debug)]
struct Row {
    path: String,
    default: Cell,
    allowed: Cell,
    example: Cell,
}

/// The rows of every table whose first header is `key`.
fn key_rows(page: &Page, name: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for table in page.tables.iter().filter(|t| t.column("key") == Some(0)) {
        let col = |c: &str| table.column(c).unwrap_or_else(|| panic!("{name}: a key table without a `{c}` column"));
        let (default, allowed, example) = (col("default"), col("allowed"), col("example"));
        for cells in &table.rows {
            let cell = |i: usize| cells.get(i).cloned().unwrap_or_default();
            let path = cell(0)
                .only_code()
                .unwrap_or_else(|| panic!("{name}: key cell {:?} is not one `code` span", cell(0).text()))
                .to_owned();
            rows.push(Row { path, default: cell(default), allowed: cell(allowed), example: cell(example) });
        }
    }
    rows
}

/// A kind of file with a reference page.
trait Kind {
    type Loaded: PartialEq + Debug;
    /// Loads a document through the real loader: the loaded value, or the problems as `key: message`.
    fn load(&self, doc: &Table) -> Result<Self::Loaded, Vec<String>>;
    /// Whether the literal default of this key is checked (the loaded value shows it).
    fn checks_default(&self, key: &schema::Key) -> bool;
}

/// The configuration: documents are written to a work directory holding the files they name.
struct ConfigKind {
    dir: tempfile::TempDir,
}

impl Kind for ConfigKind {
    type Loaded = String;

    fn load(&self, doc: &Table) -> Result<String, Vec<String>> {
        let path = self.dir.path().join("variant.toml");
        std::fs::write(&path, toml::to_string(doc).unwrap()).unwrap();
        match gatewayd::app::load::load(&path) {
            // `Config` is compared by its Debug text: it has no PartialEq, and holds no map whose order could vary.
            Ok((config, _)) => Ok(format!("{config:?}")),
            Err(problems) => Err(problems.iter().map(|p| format!("{}: {}", p.key, p.message)).collect()),
        }
    }

    /// `Option` fields get their defaults where they are used, so only fields serde fills in show them.
    fn checks_default(&self, key: &schema::Key) -> bool {
        key.serde_default && !key.optional
    }
}

struct RulesKind;

impl Kind for RulesKind {
    type Loaded = Rules;

    fn load(&self, doc: &Table) -> Result<Rules, Vec<String>> {
        Rules::parse(Path::new("rules.toml"), &toml::to_string(doc).unwrap())
            .map_err(|problems| problems.iter().map(|p| format!("{}: {}", p.key, p.message)).collect())
    }

    /// Rules are compiled: every default is in the compiled value.
    fn checks_default(&self, _: &schema::Key) -> bool {
        true
    }
}

/// The TOML examples of a page, each with its name in messages.
fn toml_blocks(page: &Page) -> Vec<(String, Table)> {
    page.code
        .iter()
        .filter(|b| b.lang == "toml")
        .enumerate()
        .map(|(i, b)| {
            let name = format!("TOML example {} (`{}`)", i + 1, b.text.lines().next().unwrap_or_default());
            let table = toml::from_str::<Table>(&b.text).unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
            (name, table)
        })
        .collect()
}

/// A value just beyond a range bound written as `text` (`None` when nothing lies below `0`).
fn beyond(text: &str, up: bool) -> Option<Value> {
    if let Ok(n) = text.parse::<i64>() {
        return match (up, n) {
            (false, 0) => None,
            (false, n) => Some(Value::Integer(n - 1)),
            (true, n) => Some(Value::Integer(n + 1)),
        };
    }
    if let Ok(x) = text.parse::<f64>() {
        return Some(Value::Float(if up { x + 0.5 } else { x - 0.5 })).filter(|_| up || x > 0.0);
    }
    let ms = drivers::config::parse_duration(text)
        .unwrap_or_else(|e| panic!("range bound `{text}`: not a number or a duration: {e}"))
        .as_millis();
    match (up, ms) {
        (false, 0) => None,
        (false, ms) => Some(Value::String(format!("{}ms", ms - 1))),
        (true, ms) => Some(Value::String(format!("{}ms", ms + 1))),
    }
}

/// A range bound as a value of the key.
fn bound(text: &str) -> Value {
    if let Ok(n) = text.parse::<i64>() {
        Value::Integer(n)
    } else if let Ok(x) = text.parse::<f64>() {
        Value::Float(x)
    } else {
        Value::String(text.to_owned())
    }
}

/// Checks a reference page against the types rooted at `root`, with `complete` the page's complete examples.
fn check_page<K: Kind>(
    name: &str,
    root: (&str, &str),
    kind: &K,
    page: &Page,
    complete: &[(String, Table)],
) -> Vec<String> {
    let mut failures = Vec::new();
    let keys: BTreeMap<String, schema::Key> =
        schema::Source::read(&repo()).keys(root.0, root.1).into_iter().map(|k| (k.path.clone(), k)).collect();
    let rows = key_rows(page, name);
    let mut documented = BTreeSet::new();
    for row in &rows {
        if !documented.insert(row.path.clone()) {
            failures.push(format!("{name}: `{}` is documented twice", row.path));
        }
    }
    for (path, key) in &keys {
        if !key.table && !documented.contains(path) {
            failures.push(format!("{name}: `{path}` is accepted by `{}` but not documented", root.0));
        }
    }
    for path in &documented {
        if !keys.contains_key(path) {
            failures.push(format!("{name}: `{path}` is documented but not accepted by `{}`", root.0));
        }
    }
    if complete.is_empty() {
        failures.push(format!("{name}: no complete example"));
    }
    let mut shown = BTreeSet::new();
    for (example, doc) in complete {
        if let Err(problems) = kind.load(doc) {
            failures.push(format!("{name}: {example} does not load:\n  {}", problems.join("\n  ")));
        }
        shown.extend(toml_paths::paths(doc));
    }
    for (path, key) in &keys {
        if !key.table && !shown.contains(path) {
            failures.push(format!("{name}: no complete example uses `{path}`"));
        }
    }
    if !failures.is_empty() {
        return failures;
    }

    for row in rows.iter().filter(|r| keys.get(&r.path).is_some_and(|k| !k.table)) {
        let key = &keys[&row.path];
        let leaf = row.path.rsplit('.').next().unwrap_or(&row.path);
        let Some((_, base)) = complete.iter().find(|(_, d)| toml_paths::has(d, &row.path)) else { continue };
        let set = |v: Value| toml_paths::with(base, &row.path, v).expect("the key is in this example");
        let mut fail = |what: String| failures.push(format!("{name}: `{}`: {what}", row.path));

        if let Some(text) = row.example.only_code() {
            match toml_paths::value(text) {
                Ok(v) => {
                    if let Err(p) = kind.load(&set(v)) {
                        fail(format!("the example `{text}` is refused:\n  {}", p.join("\n  ")));
                    }
                }
                Err(e) => fail(e),
            }
        }

        if let (Some(text), true) = (row.default.only_code(), kind.checks_default(key)) {
            match toml_paths::value(text) {
                Ok(v) => {
                    let given = kind.load(&set(v));
                    let absent = kind.load(&toml_paths::without(base, &row.path).expect("the key is in this example"));
                    match (given, absent) {
                        (Ok(a), Ok(b)) if a == b => {}
                        (Ok(_), Ok(_)) => fail(format!("leaving it out is not the same as the default `{text}`")),
                        (given, absent) => fail(format!("with `{text}`: {given:?}; without it: {absent:?}")),
                    }
                }
                Err(e) => fail(e),
            }
        }

        if let Some((low, high)) = row.allowed.range() {
            for b in [low, high] {
                if let Err(p) = kind.load(&set(bound(b))) {
                    fail(format!("the bound `{b}` of `{low}` to `{high}` is refused:\n  {}", p.join("\n  ")));
                }
            }
            for (b, up) in [(low, false), (high, true)] {
                let Some(v) = beyond(b, up) else { continue };
                let shown = v.to_string();
                match kind.load(&set(v)) {
                    Ok(_) => fail(format!("{shown}, outside `{low}` to `{high}`, is accepted")),
                    Err(p) if p.iter().any(|p| p.contains(leaf)) => {}
                    Err(p) => fail(format!("{shown} is refused, but no problem names `{leaf}`:\n  {}", p.join("\n  "))),
                }
            }
        }
    }
    failures
}

/// The work directory of the configuration checks: development certificates, the roster of configuration.md and the
/// first rules example of rules.md, in the files the configuration examples name.
fn config_kind(examples: &[(String, Table)], roster: &str, schedule: &str, rules: &str) -> ConfigKind {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("dev-certs");
    let out = Command::new(env!("CARGO_BIN_EXE_gatewayd"))
        .args(["certs", "dev", "--out"])
        .arg(&certs)
        .output()
        .expect("run gatewayd certs dev");
    assert!(out.status.success(), "gatewayd certs dev: {}", String::from_utf8_lossy(&out.stderr));
    let keys: BTreeMap<String, schema::Key> = schema::Source::read(&repo())
        .keys(CONFIG_ROOT.0, CONFIG_ROOT.1)
        .into_iter()
        .map(|k| (k.path.clone(), k))
        .collect();
    for (_, doc) in examples {
        for (path, value) in toml_paths::leaves(doc) {
            if keys.get(&path).is_none_or(|k| k.type_name != "PathBuf") || path == "gateway.data_dir" {
                continue;
            }
            let content = match path.as_str() {
                p if p.ends_with(".client_ca") || p == "upstream.ca" => std::fs::read_to_string(certs.join("ca.pem")),
                p if p.ends_with("tls.cert") => std::fs::read_to_string(certs.join("server.pem")),
                p if p.ends_with("tls.key") => std::fs::read_to_string(certs.join("server.key")),
                "upstream.cert" => std::fs::read_to_string(certs.join("client.pem")),
                "upstream.key" => std::fs::read_to_string(certs.join("client.key")),
                "roster.file" => Ok(roster.to_owned()),
                "rules.file" => Ok(rules.to_owned()),
                "schedule.file" => Ok(schedule.to_owned()),
                other => {
                    panic!("the configuration examples name a file for `{other}`: say in config_kind what it holds")
                }
            }
            .unwrap();
            let file = dir.path().join(value.as_str().expect("a path is a string"));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
    }
    ConfigKind { dir }
}

/// The CSV example of configuration.md whose header starts with `header` (the roster's, the schedule's).
fn csv_example(page: &Page, header: &str) -> String {
    let blocks: Vec<&str> =
        page.code.iter().filter(|b| b.lang == "csv" && b.text.starts_with(header)).map(|b| b.text.as_str()).collect();
    assert_eq!(blocks.len(), 1, "configuration.md: one CSV example starting `{header}`");
    blocks[0].to_owned()
}

/// The roster CSV example of configuration.md.
fn roster_example(page: &Page) -> String {
    csv_example(page, "employee,name")
}

#[test]
fn configuration_md_is_the_configuration() {
    let page = read_page("docs/configuration.md");
    let rules_page = read_page("docs/rules.md");
    let rules = rules_page.code.iter().find(|b| b.lang == "toml").expect("rules.md has an example").text.clone();
    // Complete examples name a [gateway]; their data dir is the work directory's, whatever the machine has in
    // /var/lib/gatewayd.
    let (mut complete, fragments): (Vec<_>, Vec<_>) =
        toml_blocks(&page).into_iter().partition(|(_, t)| t.contains_key("gateway"));
    for (_, doc) in &mut complete {
        *doc = toml_paths::with(doc, "gateway.data_dir", Value::String("data".into())).unwrap();
    }
    let kind = config_kind(&complete, &roster_example(&page), &csv_example(&page, "employee,date,shift"), &rules);
    let mut failures = check_page("configuration.md", CONFIG_ROOT, &kind, &page, &complete);

    let documented: BTreeSet<String> = key_rows(&page, "configuration.md").into_iter().map(|r| r.path).collect();
    for (example, doc) in &fragments {
        for path in toml_paths::paths(doc) {
            let table =
                documented.iter().any(|d| d.starts_with(&format!("{path}.")) || d.starts_with(&format!("{path}[].")));
            if !documented.contains(&path) && !table {
                failures.push(format!("configuration.md: {example} uses `{path}`, which is not documented"));
            }
        }
    }
    // The examples as files, through `gatewayd validate` itself.
    for (i, (example, doc)) in complete.iter().enumerate() {
        let path = kind.dir.path().join(format!("example-{}.toml", i + 1));
        std::fs::write(&path, toml::to_string(doc).unwrap()).unwrap();
        let out =
            Command::new(env!("CARGO_BIN_EXE_gatewayd")).arg("validate").arg("--config").arg(&path).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.code() != Some(0) || stdout.trim() != "ok" {
            failures.push(format!(
                "configuration.md: `gatewayd validate` of {example}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn rules_md_is_the_rules_file() {
    let page = read_page("docs/rules.md");
    let complete = toml_blocks(&page);
    let failures = check_page("rules.md", RULES_ROOT, &RulesKind, &page, &complete);
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_roster_csv_section_names_the_roster_columns() {
    let page = read_page("docs/configuration.md");
    let tables: Vec<_> = page.tables.iter().filter(|t| t.column("column") == Some(0)).collect();
    assert_eq!(tables.len(), 1, "configuration.md: one table of roster columns");
    let documented: Vec<String> = tables[0].rows.iter().map(|r| r[0].text()).collect();
    assert_eq!(
        documented,
        gatewayd::reconcile::roster::COLUMNS,
        "the roster columns, in the order of the roster module"
    );
    if let Err(problems) = Roster::parse_csv(&roster_example(&page)) {
        panic!("configuration.md: the roster example does not parse: {problems:?}");
    }
}

#[test]
fn api_md_documents_every_route() {
    let page = read_page("docs/api.md");
    let routes = schema::routes(&repo());
    assert!(routes.len() >= 10, "the routes were not found in the sources: {routes:?}");
    let missing: Vec<String> = routes
        .iter()
        .map(|(method, path)| format!("{method} {path}"))
        .filter(|route| !page.code_spans.iter().any(|c| c == route || c.starts_with(&format!("{route}?"))))
        .collect();
    assert!(missing.is_empty(), "api.md does not document (as `METHOD /path`): {missing:?}");
}

/// `path` with `.` and `..` resolved without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

#[test]
fn links_in_the_readme_and_docs_stay_in_the_repository() {
    let root = repo();
    let mut files = vec![root.join("README.md")];
    markdown_files(&root.join("docs"), &mut files);
    files.sort();
    let mut failures = Vec::new();
    for file in &files {
        let page = markdown::parse(&std::fs::read_to_string(file).unwrap());
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        for link in &page.links {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (target, anchor) = match link.split_once('#') {
                Some((t, a)) => (t, Some(a)),
                None => (link.as_str(), None),
            };
            let target = target.split('?').next().unwrap_or_default();
            let resolved = if target.is_empty() {
                file.clone()
            } else if let Some(abs) = target.strip_prefix('/') {
                normalize(&root.join(abs))
            } else {
                normalize(&file.parent().unwrap().join(target))
            };
            if !resolved.starts_with(&root) {
                failures.push(format!("{name}: `{link}` points outside the repository"));
                continue;
            }
            if !resolved.exists() {
                failures.push(format!("{name}: `{link}`: {} does not exist", resolved.display()));
                continue;
            }
            if let (Some(anchor), true) = (anchor, resolved.extension().is_some_and(|e| e == "md")) {
                let target_page = markdown::parse(&std::fs::read_to_string(&resolved).unwrap());
                if !target_page.anchors.contains(anchor) {
                    failures.push(format!("{name}: `{link}`: no heading with the anchor `{anchor}`"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} broken links:\n{}", failures.len(), failures.join("\n"));
}
