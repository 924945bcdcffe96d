//! `gatewayd validate`: check the configuration and every file it references; print `ok` or one line per problem.

use std::path::Path;

use super::CliError;
use crate::app;

pub fn execute(path: &Path) -> Result<(), CliError> {
    app::load_config(path).map_err(CliError::Config)?;
    println!("ok");
    Ok(())
}
