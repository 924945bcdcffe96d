//! The employee roster: employees, their departments, the departments they manage and their credentials (card UIDs,
//! fingerprint module pages, face ids, PINs), so that a punch reporting a credential can be resolved to an employee.
//!
//! # Import
//! The roster comes from a CSV file (SPEC section 2: `employee,name,department,card,fingerprint,face,pin,manages` in any
//! order, several values in one cell separated by `|`), read at start and on SIGHUP, or later through the API. An import is
//! validated whole before it replaces anything: any bad line makes the import fail with every problem named by line and
//! column, and the roster in force stays as it was.
//!
//! # One roster in force
//! The roster the API imports (`PUT /api/v1/employees`, `POST /api/v1/employees/import`) is written to [`API_FILE`] in
//! the data dir (the one place the hardened service may write) before it is put in force. When that file exists it is
//! the roster file, at start and on every SIGHUP, and `[roster].file` is not read: an API import is not undone by a
//! reload or a restart. Deleting it (then SIGHUP) puts `[roster].file` back in force. [`file_in_force`] is that rule.
//!
//! # Storage
//! sled tree `roster`: key = employee id (UTF-8), value = the employee as JSON. [`RosterStore::replace`] swaps the whole
//! roster in one atomic batch, so after a crash either the old or the new roster is there, never a mix.
//!
//! # Resolution
//! - `fp:{page}` from a device: the page registered for that device (`DEVICE:PAGE`), else the page registered for any
//!   module (`PAGE`).
//! - a card UID (hex, compared upper-case), a face id, a PIN: looked up in that order, preferring the kind the punch's
//!   method names (a `card` punch is looked up among cards first).
//! - an employee id a device reports itself: the employee with that id, else the employee with that PIN (ZKTeco terminals
//!   report their user PIN).

pub mod csv;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use drivers::Method;
use serde::{Deserialize, Serialize};

use crate::config::source::Problem;

/// The roster file the API writes, in the data dir.
pub const API_FILE: &str = "api-roster.csv";

/// The roster file in force: [`API_FILE`] in the data dir when the API wrote one, else `[roster].file`, else none.
pub fn file_in_force(config: &crate::config::Config) -> Option<std::path::PathBuf> {
    let written = config.gateway.data_dir.join(API_FILE);
    if written.is_file() {
        return Some(written);
    }
    config.roster.as_ref().map(|f| f.file.clone())
}

/// The columns of a roster CSV.
pub const COLUMNS: [&str; 8] = ["employee", "name", "department", "card", "fingerprint", "face", "pin", "manages"];
/// Longest employee id, department, face id.
pub const MAX_ID_LEN: usize = 128;

/// Lookups happen once per punch: foldhash instead of SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A fingerprint registration: a module page, on one device or on any module.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The device whose module holds the page; `None` means the same page on every module.
    pub device: Option<String>,
    pub page: u16,
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.device {
            Some(d) => write!(f, "{d}:{}", self.page),
            None => write!(f, "{}", self.page),
        }
    }
}

/// One employee.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Employee {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub department: String,
    /// Card UIDs, upper-case hex.
    #[serde(default)]
    pub cards: Vec<String>,
    #[serde(default)]
    pub fingerprints: Vec<Fingerprint>,
    /// Ids face terminals report for this person.
    #[serde(default)]
    pub faces: Vec<String>,
    #[serde(default)]
    pub pins: Vec<String>,
    /// Departments this person manages (approves make-up punches and out-of-fence punches for).
    #[serde(default)]
    pub manages: Vec<String>,
}

/// A problem in a roster: the line (0 when not from a file), the column and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterProblem {
    pub line: usize,
    pub column: String,
    pub message: String,
}

impl RosterProblem {
    /// As a `FILE:LINE: column: problem` diagnostic.
    pub fn in_file(&self, file: &Path) -> Problem {
        Problem {
            file: file.to_owned(),
            line: self.line.max(1),
            key: self.column.clone(),
            message: self.message.clone(),
        }
    }
}

impl fmt::Display for RosterProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.column, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    #[error("roster: {0}")]
    Sled(#[from] sled::Error),
    #[error("roster: stored employee {id} cannot be decoded: {message}")]
    Decode { id: String, message: String },
    #[error("roster: the stored roster is inconsistent: {0}")]
    Inconsistent(String),
    #[error("roster {path}: cannot read: {message}")]
    Read { path: String, message: String },
}

/// The roster in force, with credential indexes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Roster {
    employees: Vec<Employee>,
    by_id: HashMap<String, usize>,
    cards: HashMap<String, usize>,
    fp_any: HashMap<u16, usize>,
    fp_device: HashMap<(String, u16), usize>,
    faces: HashMap<String, usize>,
    pins: HashMap<String, usize>,
}

impl Roster {
    /// An empty roster.
    pub fn empty() -> Roster {
        Roster::default()
    }

    /// Builds a roster from employees, checking that ids and credentials are unique. `lines[i]` is the line of employee
    /// `i` for problems (empty when not from a file).
    pub fn from_employees(mut employees: Vec<Employee>, lines: &[usize]) -> Result<Roster, Vec<RosterProblem>> {
        let mut problems = Vec::new();
        let line_of = |i: usize| lines.get(i).copied().unwrap_or(0);
        let mut r = Roster::default();
        for (i, e) in employees.iter().enumerate() {
            if let Some(other) = r.by_id.insert(e.id.clone(), i) {
                let first = match line_of(other) {
                    0 => String::new(),
                    l => format!(" (first on line {l})"),
                };
                problems.push(RosterProblem {
                    line: line_of(i),
                    column: "employee".into(),
                    message: format!("employee `{}` is listed twice{first}", e.id),
                });
            }
            let mut claim = |map_has: Option<usize>, column: &str, what: String| {
                if let Some(other) = map_has {
                    let on = match line_of(other) {
                        0 => String::new(),
                        l => format!(" (line {l})"),
                    };
                    problems.push(RosterProblem {
                        line: line_of(i),
                        column: column.into(),
                        message: format!("{what} is already used by {}{on}", employees[other].id),
                    });
                }
            };
            for c in &e.cards {
                claim(r.cards.insert(c.clone(), i).filter(|&o| o != i), "card", format!("card `{c}`"));
            }
            for fp in &e.fingerprints {
                let prev = match &fp.device {
                    Some(d) => r.fp_device.insert((d.clone(), fp.page), i),
                    None => r.fp_any.insert(fp.page, i),
                };
                claim(prev.filter(|&o| o != i), "fingerprint", format!("fingerprint `{fp}`"));
            }
            for f in &e.faces {
                claim(r.faces.insert(f.clone(), i).filter(|&o| o != i), "face", format!("face id `{f}`"));
            }
            for p in &e.pins {
                claim(r.pins.insert(p.clone(), i).filter(|&o| o != i), "pin", format!("pin `{p}`"));
            }
        }
        if !problems.is_empty() {
            problems.sort_by_key(|p| p.line);
            return Err(problems);
        }
        // Keep a stable order (by id) so two rosters with the same content compare equal.
        let mut order: Vec<usize> = (0..employees.len()).collect();
        order.sort_by(|&a, &b| employees[a].id.cmp(&employees[b].id));
        let mut new_pos = vec![0; employees.len()];
        for (new, &old) in order.iter().enumerate() {
            new_pos[old] = new;
        }
        let mut sorted: Vec<Option<Employee>> = employees.drain(..).map(Some).collect();
        r.employees = order.iter().filter_map(|&old| sorted[old].take()).collect();
        for map in [&mut r.by_id, &mut r.cards, &mut r.faces, &mut r.pins] {
            map.values_mut().for_each(|v| *v = new_pos[*v]);
        }
        r.fp_any.values_mut().for_each(|v| *v = new_pos[*v]);
        r.fp_device.values_mut().for_each(|v| *v = new_pos[*v]);
        Ok(r)
    }

    /// Parses and validates a roster CSV. Every problem is returned; nothing is partially accepted.
    pub fn parse_csv(text: &str) -> Result<Roster, Vec<RosterProblem>> {
        let (employees, lines) = parse_employees(text)?;
        Roster::from_employees(employees, &lines)
    }

    /// Reads and validates a roster CSV file; problems carry the file name.
    pub fn load(path: &Path) -> Result<Roster, Vec<Problem>> {
        let bytes = std::fs::read(path).map_err(|e| {
            vec![Problem { file: path.to_owned(), line: 1, key: String::new(), message: format!("cannot read: {e}") }]
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let line = e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            vec![Problem {
                file: path.to_owned(),
                line,
                key: String::new(),
                message: "the file is not valid UTF-8".into(),
            }]
        })?;
        Roster::parse_csv(&text).map_err(|problems| problems.iter().map(|p| p.in_file(path)).collect())
    }

    pub fn len(&self) -> usize {
        self.employees.len()
    }

    pub fn is_empty(&self) -> bool {
        self.employees.is_empty()
    }

    /// Every employee, by id.
    pub fn employees(&self) -> &[Employee] {
        &self.employees
    }

    pub fn get(&self, id: &str) -> Option<&Employee> {
        self.by_id.get(id).map(|&i| &self.employees[i])
    }

    /// Employees of a department.
    pub fn in_department<'a>(&'a self, department: &'a str) -> impl Iterator<Item = &'a Employee> + 'a {
        self.employees.iter().filter(move |e| e.department == department)
    }

    /// Every department named (as a home department or as managed).
    pub fn departments(&self) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        for e in &self.employees {
            if !e.department.is_empty() {
                out.insert(e.department.as_str());
            }
            out.extend(e.manages.iter().map(String::as_str));
        }
        out
    }

    /// Whether `manager` manages `department`.
    pub fn manages(&self, manager: &str, department: &str) -> bool {
        self.get(manager).is_some_and(|m| m.manages.iter().any(|d| d == department))
    }

    /// Resolves a credential a device reported to an employee.
    pub fn resolve(&self, credential: &str, device: &str, method: Method) -> Option<&Employee> {
        if let Some(page) = credential.strip_prefix("fp:") {
            let page: u16 = page.trim().parse().ok()?;
            let i = self.fp_device.get(&(device.to_owned(), page)).or_else(|| self.fp_any.get(&page))?;
            return Some(&self.employees[*i]);
        }
        let upper = credential.to_ascii_uppercase();
        let card = || self.cards.get(&upper);
        let face = || self.faces.get(credential);
        let pin = || self.pins.get(credential);
        let found = match method {
            Method::Card => card().or_else(face).or_else(pin),
            Method::Face => face().or_else(card).or_else(pin),
            Method::Pin | Method::Password => pin().or_else(card).or_else(face),
            _ => card().or_else(face).or_else(pin),
        };
        found.map(|&i| &self.employees[i])
    }

    /// Resolves an employee id a device reported itself: the employee with that id, else with that PIN.
    pub fn resolve_employee(&self, id: &str) -> Option<&Employee> {
        self.get(id).or_else(|| self.pins.get(id).map(|&i| &self.employees[i]))
    }

    /// The roster as CSV (the import format), for export and round trips.
    pub fn to_csv(&self) -> String {
        let mut out = COLUMNS.join(",");
        out.push('\n');
        for e in &self.employees {
            let fps: Vec<String> = e.fingerprints.iter().map(ToString::to_string).collect();
            let cells = [
                e.id.clone(),
                e.name.clone(),
                e.department.clone(),
                e.cards.join("|"),
                fps.join("|"),
                e.faces.join("|"),
                e.pins.join("|"),
                e.manages.join("|"),
            ];
            let quoted: Vec<String> = cells.iter().map(|c| quote(c)).collect();
            out.push_str(&quoted.join(","));
            out.push('\n');
        }
        out
    }
}

fn quote(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) || cell.starts_with([' ', '\t']) || cell.ends_with([' ', '\t']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_owned()
    }
}

fn check_text(value: &str, what: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("{what} is longer than {max} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

fn parse_employees(text: &str) -> Result<(Vec<Employee>, Vec<usize>), Vec<RosterProblem>> {
    let records = csv::parse(text)
        .map_err(|e| vec![RosterProblem { line: e.line, column: "(csv)".into(), message: e.message }])?;
    let Some((header, rows)) = records.split_first() else {
        return Err(vec![RosterProblem {
            line: 1,
            column: "(header)".into(),
            message: format!("the file is empty; the first line must name the columns: {}", COLUMNS.join(",")),
        }]);
    };
    let mut problems = Vec::new();
    let mut columns: Vec<Option<&'static str>> = Vec::new();
    for name in &header.fields {
        let lower = name.trim().to_ascii_lowercase();
        match COLUMNS.iter().find(|c| **c == lower) {
            Some(c) if columns.contains(&Some(*c)) => problems.push(RosterProblem {
                line: header.line,
                column: (*c).into(),
                message: "the column is named twice".into(),
            }),
            Some(c) => columns.push(Some(*c)),
            None => {
                problems.push(RosterProblem {
                    line: header.line,
                    column: name.clone(),
                    message: format!("unknown column (known: {})", COLUMNS.join(", ")),
                });
                columns.push(None);
            }
        }
    }
    if !columns.contains(&Some("employee")) {
        problems.push(RosterProblem {
            line: header.line,
            column: "employee".into(),
            message: "missing: the header must have an `employee` column".into(),
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut employees = Vec::with_capacity(rows.len());
    let mut lines = Vec::with_capacity(rows.len());
    for row in rows {
        if row.fields.len() != columns.len() {
            problems.push(RosterProblem {
                line: row.line,
                column: "(row)".into(),
                message: format!("has {} fields, the header has {}", row.fields.len(), columns.len()),
            });
            continue;
        }
        let mut e = Employee::default();
        let mut bad = |column: &str, message: String| {
            problems.push(RosterProblem { line: row.line, column: column.into(), message });
        };
        for (cell, column) in row.fields.iter().zip(&columns) {
            let Some(column) = *column else { continue };
            let values = || cell.split('|').map(str::trim).filter(|v| !v.is_empty());
            match column {
                "employee" => {
                    let id = cell.trim();
                    if id.is_empty() {
                        bad(column, "the employee id is empty".into());
                    } else if id.contains('|') {
                        bad(column, format!("`{id}`: an employee id cannot contain `|`"));
                    } else if let Err(m) = check_text(id, "the employee id", MAX_ID_LEN) {
                        bad(column, m);
                    }
                    e.id = id.to_owned();
                }
                "name" => {
                    if let Err(m) = check_text(cell, "the name", 256) {
                        bad(column, m);
                    }
                    e.name = cell.trim().to_owned();
                }
                "department" => {
                    if let Err(m) = check_text(cell, "the department", MAX_ID_LEN) {
                        bad(column, m);
                    }
                    e.department = cell.trim().to_owned();
                }
                "card" => {
                    for v in values() {
                        if v.len() < 4 || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                            bad(column, format!("`{v}` is not a card UID (4 to 32 hex digits)"));
                        } else {
                            e.cards.push(v.to_ascii_uppercase());
                        }
                    }
                }
                "fingerprint" => {
                    for v in values() {
                        match parse_fingerprint(v) {
                            Ok(fp) => e.fingerprints.push(fp),
                            Err(m) => bad(column, m),
                        }
                    }
                }
                "face" => {
                    for v in values() {
                        match check_text(v, "a face id", MAX_ID_LEN) {
                            Ok(()) => e.faces.push(v.to_owned()),
                            Err(m) => bad(column, m),
                        }
                    }
                }
                "pin" => {
                    for v in values() {
                        if v.len() > 24 || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                            bad(column, format!("`{v}` is not a PIN (1 to 24 letters or digits)"));
                        } else {
                            e.pins.push(v.to_owned());
                        }
                    }
                }
                "manages" => {
                    for v in values() {
                        match check_text(v, "a department", MAX_ID_LEN) {
                            Ok(()) => e.manages.push(v.to_owned()),
                            Err(m) => bad(column, m),
                        }
                    }
                }
                _ => {}
            }
        }
        dedup_keep_order(&mut e.cards);
        dedup_keep_order(&mut e.faces);
        dedup_keep_order(&mut e.pins);
        dedup_keep_order(&mut e.manages);
        dedup_keep_order(&mut e.fingerprints);
        employees.push(e);
        lines.push(row.line);
    }
    if problems.is_empty() {
        Ok((employees, lines))
    } else {
        Err(problems)
    }
}

fn dedup_keep_order<T: PartialEq + Clone>(v: &mut Vec<T>) {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v.drain(..) {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    *v = out;
}

/// Parses `PAGE` or `DEVICE_ID:PAGE`.
pub fn parse_fingerprint(v: &str) -> Result<Fingerprint, String> {
    let bad = || format!("`{v}` is not a fingerprint page (write PAGE or DEVICE_ID:PAGE, page 0 to 65535)");
    let (device, page) = match v.rsplit_once(':') {
        Some((d, p)) => {
            drivers::config::valid_device_id(d).map_err(|e| format!("`{v}`: device id {e}"))?;
            (Some(d.to_owned()), p)
        }
        None => (None, v),
    };
    let page = page.parse::<u16>().map_err(|_| bad())?;
    Ok(Fingerprint { device, page })
}

/// The roster kept in sled.
#[derive(Clone)]
pub struct RosterStore {
    tree: sled::Tree,
}

impl fmt::Debug for RosterStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RosterStore").field("employees", &self.tree.len()).finish()
    }
}

impl RosterStore {
    pub fn open(db: &sled::Db) -> Result<RosterStore, RosterError> {
        Ok(RosterStore { tree: db.open_tree("roster")? })
    }

    /// The stored roster (empty if none was ever imported).
    pub fn load(&self) -> Result<Roster, RosterError> {
        let mut employees = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&k).into_owned();
            let e: Employee = serde_json::from_slice(&v)
                .map_err(|e| RosterError::Decode { id: id.clone(), message: e.to_string() })?;
            employees.push(e);
        }
        Roster::from_employees(employees, &[]).map_err(|problems| {
            RosterError::Inconsistent(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        })
    }

    /// One stored employee (what the API reads per request, e.g. a manager's `manages`).
    pub fn get(&self, id: &str) -> Result<Option<Employee>, RosterError> {
        match self.tree.get(id.as_bytes())? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| RosterError::Decode { id: id.to_owned(), message: e.to_string() }),
            None => Ok(None),
        }
    }

    /// Makes what was replaced durable (the roster tree shares the database's log: this flushes it).
    pub async fn flush(&self) -> Result<(), RosterError> {
        self.tree.flush_async().await?;
        Ok(())
    }

    /// Replaces the stored roster with `roster` in one atomic batch. Returns false when nothing changed. Not durable until
    /// the database is flushed.
    pub fn replace(&self, roster: &Roster) -> Result<bool, RosterError> {
        let mut old: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            old.insert(k.to_vec(), v.to_vec());
        }
        let mut batch = sled::Batch::default();
        let mut changed = false;
        for e in roster.employees() {
            let value = serde_json::to_vec(e).unwrap_or_default();
            match old.remove(e.id.as_bytes()) {
                Some(v) if v == value => {}
                _ => {
                    changed = true;
                    batch.insert(e.id.as_bytes(), value);
                }
            }
        }
        for gone in old.into_keys() {
            changed = true;
            batch.remove(gone);
        }
        if changed {
            self.tree.apply_batch(batch)?;
        }
        Ok(changed)
    }
}

/// Checks `[roster]`: the file exists, and it and the copy the API wrote to the data dir parse (called by the
/// configuration loader, [`crate::app::load_config`]).
pub fn check_config(config: &crate::config::Config, out: &mut crate::config::Problems<'_>) {
    let written = config.gateway.data_dir.join(API_FILE);
    crate::config::check_stage_file(out, "roster", config.roster.as_ref(), &written, Roster::load);
}

#[cfg(test)]
mod tests;
