//! The configuration loader: the file is parsed by [`crate::config`], which checks what no stage owns, and then each
//! stage checks its own section. `gatewayd validate`, `gatewayd run` and every reload go through here, so what
//! `validate` accepts is exactly what the daemon runs with.

use std::path::Path;

use crate::config::{Config, Problem, Problems, TomlSource};

/// Reads, parses, resolves relative paths and checks. Every problem found is returned, each with its line.
pub fn load(path: &Path) -> Result<(Config, TomlSource), Vec<Problem>> {
    let source = TomlSource::read(path).map_err(|p| vec![p])?;
    load_source(path, source)
}

/// [`load`] after the read: `source` is the text of the file at `path` (relative paths in it are resolved
/// against `path`'s directory). Public so the fuzz target runs exactly what `gatewayd validate` runs.
pub fn load_source(path: &Path, source: TomlSource) -> Result<(Config, TomlSource), Vec<Problem>> {
    let (config, source) = Config::parse_source(path, source)?;
    let problems = check(&config, &source);
    if problems.is_empty() {
        Ok((config, source))
    } else {
        Err(problems)
    }
}

/// Every check of a parsed configuration: the sections no stage owns, then each stage's own.
pub fn check(config: &Config, source: &TomlSource) -> Vec<Problem> {
    let mut out = Problems::new(source);
    config.check(&mut out);
    crate::api::check_config(config, &mut out);
    crate::store::check_config(config, &mut out);
    crate::reconcile::roster::check_config(config, &mut out);
    crate::reconcile::schedule::check_config(config, &mut out);
    crate::reconcile::rules::check_config(config, &mut out);
    crate::upstream::check_config(config, &mut out);
    out.list
}
