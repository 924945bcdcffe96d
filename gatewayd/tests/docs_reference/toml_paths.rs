//! Key paths in a parsed TOML document (`api.tls.cert`, `device[].port`), and setting or removing the key at one.

use std::collections::BTreeSet;

use toml::{Table, Value};

/// Every key path of `table`: leaves, and tables and arrays of tables too (arrays without `[]`).
pub fn paths(table: &Table) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    walk(table, "", &mut out);
    out
}

fn is_array_of_tables(items: &[Value]) -> bool {
    !items.is_empty() && items.iter().all(Value::is_table)
}

fn walk(table: &Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let path = format!("{prefix}{k}");
        match v {
            Value::Table(t) => {
                out.insert(path.clone());
                walk(t, &format!("{path}."), out);
            }
            Value::Array(items) if is_array_of_tables(items) => {
                out.insert(path.clone());
                for item in items.iter().filter_map(Value::as_table) {
                    walk(item, &format!("{path}[]."), out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

/// One step from a table to the table that holds a key: a key, and an index when the key is an array of tables.
type Step = (String, Option<usize>);

/// The steps to the first table along `path` (`a.b[].c`) that holds its last key.
fn locate(table: &Table, segments: &[&str], leaf: &str) -> Option<Vec<Step>> {
    let Some((first, rest)) = segments.split_first() else {
        return table.contains_key(leaf).then(Vec::new);
    };
    match first.strip_suffix("[]") {
        Some(name) => {
            let items = table.get(name)?.as_array()?;
            items.iter().enumerate().find_map(|(i, item)| {
                let mut steps = locate(item.as_table()?, rest, leaf)?;
                steps.insert(0, (name.to_owned(), Some(i)));
                Some(steps)
            })
        }
        None => {
            let mut steps = locate(table.get(*first)?.as_table()?, rest, leaf)?;
            steps.insert(0, ((*first).to_owned(), None));
            Some(steps)
        }
    }
}

fn table_at<'a>(mut table: &'a mut Table, steps: &[Step]) -> Option<&'a mut Table> {
    for (name, index) in steps {
        let value = table.get_mut(name)?;
        table = match index {
            Some(i) => value.as_array_mut()?.get_mut(*i)?.as_table_mut()?,
            None => value.as_table_mut()?,
        };
    }
    Some(table)
}

/// The table holding the first occurrence of the key `path`, and the key's name in it.
fn holder<'a>(table: &'a mut Table, path: &str) -> Option<(&'a mut Table, String)> {
    let segments: Vec<&str> = path.split('.').collect();
    let (leaf, parents) = segments.split_last()?;
    let steps = locate(table, parents, leaf)?;
    Some((table_at(table, &steps)?, (*leaf).to_owned()))
}

/// Whether the key `path` occurs in `table`.
pub fn has(table: &Table, path: &str) -> bool {
    let mut copy = table.clone();
    holder(&mut copy, path).is_some()
}

/// `table` with the first occurrence of the key `path` set to `value` (`None` when the key does not occur).
pub fn with(table: &Table, path: &str, value: Value) -> Option<Table> {
    let mut copy = table.clone();
    let (holder, leaf) = holder(&mut copy, path)?;
    holder.insert(leaf, value);
    Some(copy)
}

/// `table` without the first occurrence of the key `path`.
pub fn without(table: &Table, path: &str) -> Option<Table> {
    let mut copy = table.clone();
    let (holder, leaf) = holder(&mut copy, path)?;
    holder.remove(&leaf);
    Some(copy)
}

/// A TOML value written as in a document (`"5m"`, `30`, `["a", "b"]`, `{ a = 1 }`).
pub fn value(text: &str) -> Result<Value, String> {
    let table: Table =
        toml::from_str(&format!("v = {text}")).map_err(|e| format!("`{text}` is not a TOML value: {e}"))?;
    table.get("v").cloned().ok_or_else(|| format!("`{text}` is not a TOML value"))
}

#[test]
fn paths_and_edits() {
    let t: Table = toml::from_str(
        "[api]\ntls = { cert = \"a\" }\n[[device]]\nid = \"a\"\n[[device]]\nid = \"b\"\nport = \"p\"\nlist = [1]\n",
    )
    .unwrap();
    let all: Vec<String> = paths(&t).into_iter().collect();
    assert_eq!(all, ["api", "api.tls", "api.tls.cert", "device", "device[].id", "device[].list", "device[].port"]);
    let changed = with(&t, "device[].port", value("\"q\"").unwrap()).unwrap();
    assert_eq!(changed["device"][1]["port"].as_str(), Some("q"));
    let removed = without(&t, "api.tls.cert").unwrap();
    assert!(removed["api"]["tls"].as_table().unwrap().is_empty());
    assert!(with(&t, "device[].baud", value("1").unwrap()).is_none());
    assert!(has(&t, "device[].id") && !has(&t, "mqtt.listen"));
}

/// Every leaf of `table` with its value (a leaf inside an array of tables once per table).
pub fn leaves(table: &Table) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    leaves_in(table, "", &mut out);
    out
}

fn leaves_in(table: &Table, prefix: &str, out: &mut Vec<(String, Value)>) {
    for (k, v) in table {
        let path = format!("{prefix}{k}");
        match v {
            Value::Table(t) => leaves_in(t, &format!("{path}."), out),
            Value::Array(items) if is_array_of_tables(items) => {
                for item in items.iter().filter_map(Value::as_table) {
                    leaves_in(item, &format!("{path}[]."), out);
                }
            }
            _ => out.push((path, v.clone())),
        }
    }
}
