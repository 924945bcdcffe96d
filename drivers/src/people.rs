//! The roster as terminals hold it: each roster person a user (PIN, name, card), following roster changes, for the
//! drivers that put users on their terminals (`adms` through its command queue, `zk4370` over its protocol).
//!
//! The daemon publishes the people on a watch channel whenever the roster changes, and keeps a *ledger* of the users
//! the gateway put on each terminal (the `u` entries of the `adms_commands` tree, [`CommandQueue::users`]): only users
//! in the ledger are ever deleted from a terminal, so people enrolled on a terminal by hand are left alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::adms::commands::CommandQueue;
pub use crate::adms::commands::TerminalUser;

/// The people: PIN → user.
pub type People = Arc<BTreeMap<String, TerminalUser>>;

/// What a driver is given to keep its terminal's users: the people as they change, and the ledger. `Default`: none
/// (the driver leaves users alone).
#[derive(Clone, Debug, Default)]
pub struct PeopleFeed {
    pub people: Option<watch::Receiver<People>>,
    pub ledger: Option<CommandQueue>,
}

impl PeopleFeed {
    pub fn new(people: watch::Receiver<People>, ledger: CommandQueue) -> PeopleFeed {
        PeopleFeed { people: Some(people), ledger: Some(ledger) }
    }
}
