//! The main configuration file through the loader `gatewayd validate` uses (`gatewayd::app::load::load` after the read): any text
//! gives a configuration or problems naming lines, never a panic.
#![no_main]

use std::path::Path;

use gatewayd::config::source::TomlSource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Relative paths in the file resolve under a directory that does not exist, so validation finds no files.
    let path = Path::new("/nonexistent/gatewayd-fuzz/gatewayd.toml");
    match gatewayd::app::load::load_source(path, TomlSource::new(path, text.to_owned())) {
        Ok(_) => {}
        Err(problems) => {
            assert!(!problems.is_empty());
            for p in &problems {
                let _ = p.to_string();
            }
        }
    }
});
