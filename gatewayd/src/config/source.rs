//! Line-numbered diagnostics for TOML files: `FILE:LINE: key: problem`.
//!
//! Serde reports where parsing failed as a byte span; validation reports a key path such as `device[gate-1].port`. A
//! [`TomlSource`] keeps the text and its spanned parse tree so either can be turned into a line number and a dotted key.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One problem in a file, printed as `FILE:LINE: key: problem`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.key.is_empty() { "(file)" } else { &self.key };
        write!(f, "{}:{}: {}: {}", self.file.display(), self.line, key, self.message)
    }
}

/// A step in a key path: a table key or an index into an array of tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// A TOML file's text with its spanned parse tree, for turning spans and key paths into lines.
pub struct TomlSource {
    pub path: PathBuf,
    text: String,
    line_starts: Vec<usize>,
}

impl TomlSource {
    pub fn new(path: &Path, text: String) -> TomlSource {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        TomlSource { path: path.to_owned(), text, line_starts }
    }

    /// Reads a file; an unreadable file is a problem on line 1.
    pub fn read(path: &Path) -> Result<TomlSource, Problem> {
        match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Ok(TomlSource::new(path, text)),
                Err(e) => {
                    let offset = e.utf8_error().valid_up_to();
                    let src = TomlSource::new(path, String::from_utf8_lossy(e.as_bytes()).into_owned());
                    Err(src.problem_at(offset, "", "the file is not valid UTF-8".into()))
                }
            },
            Err(e) => Err(Problem {
                file: path.to_owned(),
                line: 1,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    pub fn problem_at(&self, offset: usize, key: &str, message: String) -> Problem {
        Problem { file: self.path.clone(), line: self.line_of(offset), key: key.to_owned(), message }
    }

    /// Deserializes the whole file; a syntax or type error becomes one problem with its line and key.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, Problem> {
        toml::from_str::<T>(&self.text).map_err(|e| self.serde_problem(&e))
    }

    fn serde_problem(&self, e: &toml::de::Error) -> Problem {
        let message = e.message().trim().to_owned();
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let mut key = self.key_at(offset);
        if let Some(field) = message.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
            key = if key.is_empty() { field.to_owned() } else { format!("{key}.{field}") };
        }
        self.problem_at(offset, &key, message)
    }

    /// The line of the key at `path` (or of the closest existing parent, or line 1).
    pub fn line_of_path(&self, path: &[Seg<'_>]) -> usize {
        let Ok(root) = DeTable::parse(&self.text) else { return 1 };
        let mut best = 1;
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
        for seg in path {
            match seg {
                Seg::Key(name) => {
                    let Some(t) = table else { break };
                    let Some((k, v)) = t.iter().find(|(k, _)| k.get_ref().as_ref() == *name) else { break };
                    best = self.line_of(k.span().start);
                    table = None;
                    array = None;
                    match v.get_ref() {
                        DeValue::Table(inner) => table = Some(inner),
                        DeValue::Array(items) => array = Some(&items[..]),
                        _ => {}
                    }
                }
                Seg::Index(i) => {
                    let Some(item) = array.and_then(|a| a.get(*i)) else { break };
                    best = self.line_of(item.span().start);
                    array = None;
                    table = match item.get_ref() {
                        DeValue::Table(inner) => Some(inner),
                        _ => None,
                    };
                }
            }
        }
        best
    }

    /// The dotted key whose key or value contains `offset`, e.g. `api.listen` or `device[2].baud`.
    pub fn key_at(&self, offset: usize) -> String {
        let Ok(root) = DeTable::parse(&self.text) else { return String::new() };
        let mut out = String::new();
        key_in_table(root.get_ref(), offset, &mut out);
        out
    }
}

fn key_in_table(table: &DeTable<'_>, offset: usize, out: &mut String) {
    for (k, v) in table.iter() {
        let in_key = k.span().contains(&offset);
        let in_value = v.span().contains(&offset) || (v.span().start..=v.span().end).contains(&offset);
        if in_key || in_value {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(k.get_ref());
            if !in_key {
                key_in_value(v.get_ref(), offset, out);
            }
            return;
        }
    }
    // Tables from headers (`[api]`) may span only their header; look into them by content.
    for (k, v) in table.iter() {
        let mut inner = String::new();
        match v.get_ref() {
            DeValue::Table(t) => key_in_table(t, offset, &mut inner),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(t) = item.get_ref() {
                        let mut sub = String::new();
                        key_in_table(t, offset, &mut sub);
                        if !sub.is_empty() {
                            inner = format!("[{i}].{sub}");
                            break;
                        }
                    }
                }
            }
            _ => {}
        }
        if !inner.is_empty() {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(k.get_ref());
            if !inner.starts_with('[') {
                out.push('.');
            }
            out.push_str(&inner);
            return;
        }
    }
}

fn key_in_value(value: &DeValue<'_>, offset: usize, out: &mut String) {
    match value {
        DeValue::Table(t) => key_in_table(t, offset, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if item.span().contains(&offset) {
                    out.push_str(&format!("[{i}]"));
                    if let DeValue::Table(t) = item.get_ref() {
                        let mut sub = String::new();
                        key_in_table(t, offset, &mut sub);
                        if !sub.is_empty() {
                            out.push('.');
                            out.push_str(&sub);
                        }
                    }
                    return;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_keys() {
        let text = "[gateway]\nid = \"x\"\n\n[api]\nlisten = \"nope\"\n\n[[device]]\nid = \"a\"\n\n[[device]]\nid = \"b\"\nbaud = 9\n";
        let src = TomlSource::new(Path::new("t.toml"), text.to_owned());
        assert_eq!(src.line_of_path(&[Seg::Key("api"), Seg::Key("listen")]), 5);
        assert_eq!(src.line_of_path(&[Seg::Key("device"), Seg::Index(1), Seg::Key("baud")]), 12);
        assert_eq!(src.line_of_path(&[Seg::Key("device"), Seg::Index(1), Seg::Key("port")]), 10);
        assert_eq!(src.line_of_path(&[Seg::Key("upstream"), Seg::Key("url")]), 1);
        let off = text.find("nope").unwrap_or(0);
        assert_eq!(src.key_at(off), "api.listen");
        let off = text.find("baud").unwrap_or(0);
        assert_eq!(src.key_at(off), "device[1].baud");
    }
}
