//! The ATTLOG stamps of ADMS terminals on disk: one small JSON object `{"SN": "stamp", …}`, rewritten whole (temporary
//! file, then rename) whenever a stamp changes, so a reader sees the old or the new file, never a torn one.
//!
//! The file is advisory: a stamp lost in a crash makes the terminal re-send records the store already has, and punch
//! ids (content hashes) absorb them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Longest stamp kept (terminals send a decimal counter or a time in seconds).
pub const MAX_STAMP_LEN: usize = 32;
/// Largest stamp file read (a site has at most some thousands of terminals).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StampError {
    #[error("adms stamp file {path}: {message}")]
    File { path: String, message: String },
}

/// A stamp as a terminal sent it, if it is usable: ASCII digits, at most [`MAX_STAMP_LEN`] of them.
pub fn clean(stamp: &str) -> Option<String> {
    let stamp = stamp.trim();
    (!stamp.is_empty() && stamp.len() <= MAX_STAMP_LEN && stamp.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stamp.to_owned())
}

/// Parses a stamp file's content; entries that are not usable stamps are dropped.
pub fn parse(text: &[u8]) -> Result<HashMap<String, String>, String> {
    let map: HashMap<String, String> = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    Ok(map.into_iter().filter_map(|(sn, stamp)| clean(&stamp).map(|s| (sn, s))).collect())
}

/// The stamp file; [`StampFile::save`] calls are serialised.
#[derive(Debug)]
pub struct StampFile {
    path: PathBuf,
    write: Mutex<()>,
}

impl StampFile {
    pub fn new(path: PathBuf) -> StampFile {
        StampFile { path, write: Mutex::new(()) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, message: impl std::fmt::Display) -> StampError {
        StampError::File { path: self.path.display().to_string(), message: message.to_string() }
    }

    /// The stamps in the file; none when it does not exist.
    pub fn load(&self) -> Result<HashMap<String, String>, StampError> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(self.err(e)),
        };
        if meta.len() > MAX_FILE_BYTES {
            return Err(self.err(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        let text = std::fs::read(&self.path).map_err(|e| self.err(e))?;
        parse(&text).map_err(|e| self.err(e))
    }

    /// Writes the stamps as they are when the write starts (under the write lock, so the last write carries the newest
    /// state even when two uploads finish at once).
    pub fn save(&self, stamps: &Mutex<HashMap<String, String>>) -> Result<(), StampError> {
        let _writing = self.write.lock().map_err(|_| self.err("a previous write panicked"))?;
        let body = {
            let map = stamps.lock().map_err(|_| self.err("the stamp table is poisoned"))?;
            let sorted: std::collections::BTreeMap<&String, &String> = map.iter().collect();
            serde_json::to_vec_pretty(&sorted).map_err(|e| self.err(e))?
        };
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &self.path)).map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_keeps_numbers_only() {
        assert_eq!(clean("9999").as_deref(), Some("9999"));
        assert_eq!(clean(" 42 ").as_deref(), Some("42"));
        for bad in ["", "1\nDelay=1", "abc", "12a", &"1".repeat(MAX_STAMP_LEN + 1)] {
            assert_eq!(clean(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn save_then_load_round_trips_and_malformed_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("adms-stamps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = StampFile::new(dir.join("adms-stamps.json"));
        assert!(file.load().unwrap().is_empty(), "a missing file is empty");
        let map = Mutex::new(HashMap::from([("SN1".to_owned(), "100".to_owned()), ("SN2".to_owned(), "7".to_owned())]));
        file.save(&map).unwrap();
        assert_eq!(file.load().unwrap(), *map.lock().unwrap());
        std::fs::write(file.path(), b"{not json").unwrap();
        assert!(file.load().unwrap_err().to_string().contains("adms-stamps.json"));
        std::fs::write(file.path(), br#"{"SN1": "12", "SN2": "x\nDelay=0"}"#).unwrap();
        assert_eq!(file.load().unwrap(), HashMap::from([("SN1".to_owned(), "12".to_owned())]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse(&bytes);
        }
    }
}
