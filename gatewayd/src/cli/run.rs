//! `gatewayd run`: load the configuration, then run the daemon until SIGTERM/SIGINT.

use std::path::Path;

use super::{block_on, CliError};
use crate::{app, telemetry};

/// A configuration problem exits before logging is set up (one clear line per problem on stderr).
pub fn execute(path: &Path) -> Result<(), CliError> {
    let config = app::load_config(path).map_err(CliError::Config)?;
    telemetry::init_logging();
    let path = path.to_owned();
    block_on(async move {
        let running = app::start(config, path).await?;
        running.run_until_signalled().await
    })
}
