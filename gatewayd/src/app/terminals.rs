//! The roster on the terminals: every roster person is a user on every `adms` terminal (SPEC 6.4), kept in step
//! through the terminals' command queue ([`drivers::adms::Adms::sync_users`]), and on every `zk4370` terminal, whose
//! driver follows the people this task publishes ([`drivers::people::PeopleFeed`]).
//!
//! The task syncs once at start and again whenever the roster tree changes (an import, an API edit, a reload), after
//! the burst of changes settles. A person's terminal PIN is their first roster `pin`, else their employee id; their
//! name goes as is, and their first card as a decimal card number when the roster's hex UID fits 32 bits (the form
//! terminals print on their cards). Syncing is idempotent: only differences become commands.

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;

use drivers::adms::commands::TerminalUser;
use drivers::people::{People, PeopleFeed};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::reconcile::roster::{Roster, RosterStore};

/// The roster tree the task watches (the tree `RosterStore` keeps).
const ROSTER_TREE: &str = "roster";
/// How long the roster must be still before a sync.
const SETTLE: Duration = Duration::from_millis(300);

/// The terminal users of a roster: PIN → user.
pub fn people(roster: &Roster) -> BTreeMap<String, TerminalUser> {
    roster
        .employees()
        .iter()
        .map(|e| {
            let pin = e.pins.first().cloned().unwrap_or_else(|| e.id.clone());
            let card = e.cards.first().and_then(|hex| u32::from_str_radix(hex, 16).ok()).map(|n| n.to_string());
            (pin, TerminalUser { name: e.name.clone(), card })
        })
        .collect()
}

async fn sync(roster: &RosterStore, adms: &drivers::adms::Adms, feed: &watch::Sender<People>) {
    let store = roster.clone();
    let loaded = match tokio::task::spawn_blocking(move || store.load()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "roster not read; terminals keep their users");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "roster not read; terminals keep their users");
            return;
        }
    };
    let people = people(&loaded);
    feed.send_if_modified(|current| {
        let changed = **current != people;
        if changed {
            *current = Arc::new(people.clone());
        }
        changed
    });
    match adms.sync_users(&people).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(commands = n, "roster changes queued for the terminals"),
        Err(e) => tracing::error!(error = %e, "roster changes not queued for the terminals"),
    }
}

/// How far back the terminals are asked for their records after the store was quarantined.
pub const QUARANTINE_BACKFILL_DAYS: i64 = 31;

/// After a start that quarantined a damaged store: queues `DATA QUERY ATTLOG` for the last
/// [`QUARANTINE_BACKFILL_DAYS`] on every PUSH terminal, so what they still hold comes back into the fresh store. (4370
/// terminals need nothing: their next session reads their whole log into a store that holds nothing of them.)
pub async fn backfill_after_quarantine(adms: &drivers::adms::Adms) {
    let now = jiff::Timestamp::now().as_millisecond();
    let from = now - QUARANTINE_BACKFILL_DAYS * 86_400_000;
    for device in adms.terminals() {
        if let Err(e) = adms.backfill(&device, from, now + 60_000, "quarantine").await {
            tracing::error!(device = %device, error = %e, "backfill after the store quarantine not queued");
        }
    }
}

/// Starts the task; it runs until `cancel`. Returns the feed the `zk4370` drivers follow.
pub(super) fn spawn(
    db: &sled::Db,
    roster: RosterStore,
    adms: drivers::adms::Adms,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<PeopleFeed, sled::Error> {
    let mut changes = db.open_tree(ROSTER_TREE)?.watch_prefix(Vec::<u8>::new());
    let initial = roster.load().map(|r| people(&r)).unwrap_or_default();
    let (feed_tx, feed_rx) = watch::channel(Arc::new(initial));
    let ledger = adms.commands().cloned();
    tracker.spawn(async move {
        let feed = feed_tx;
        sync(&roster, &adms, &feed).await;
        loop {
            tokio::select! {
                event = &mut changes => if event.is_none() { return },
                _ = cancel.cancelled() => return,
            }
            // Let the rest of the batch arrive: one sync per change of the roster, not per employee.
            loop {
                tokio::select! {
                    event = &mut changes => if event.is_none() { return },
                    _ = tokio::time::sleep(SETTLE) => break,
                    _ = cancel.cancelled() => return,
                }
            }
            sync(&roster, &adms, &feed).await;
        }
    });
    Ok(match ledger {
        Some(ledger) => PeopleFeed::new(feed_rx, ledger),
        None => PeopleFeed::default(),
    })
}
