//! `gatewayd loader --https`: the reference receiver of the HTTPS protocol with PostgreSQL instead of a file. The
//! server is `upstream-sink`'s ([`crate::cli::upstream_sink::serve`]: mutual TLS, the client certificate must name the
//! batch's gateway, one batch at a time); this module is its [`BatchStore`] over the loader's transaction.

use tokio_postgres::Client;

use super::db;
use crate::cli::upstream_sink::{BatchStore, BatchSummary, Summary};
use crate::proto::upstream::{UploadAck, UploadBatch};

/// PostgreSQL as a [`BatchStore`]. The server's ledger thread calls it; it runs each transaction on the runtime.
pub struct PgStore {
    client: Client,
    url: String,
    runtime: tokio::runtime::Handle,
    summary: Summary,
}

impl PgStore {
    pub fn new(client: Client, url: &str, runtime: tokio::runtime::Handle) -> PgStore {
        PgStore { client, url: url.to_owned(), runtime, summary: Summary::default() }
    }
}

impl BatchStore for PgStore {
    fn apply(&mut self, batch: &UploadBatch) -> Result<(UploadAck, BatchSummary), String> {
        let runtime = self.runtime.clone();
        let s = runtime.block_on(async {
            if self.client.is_closed() {
                self.client = db::connect(&self.url).await?;
            }
            db::apply(&mut self.client, batch).await
        });
        let s = s.map_err(|e| e.to_string())?;
        let t = &mut self.summary;
        t.batches += 1;
        t.punches += s.punches;
        t.punch_duplicates += s.punch_duplicates;
        t.records += s.records;
        t.records_stale += s.records_stale;
        t.digests_ok += s.digests.iter().filter(|d| d.ok).count() as u64;
        t.digests_incomplete += s.digests.iter().filter(|d| !d.ok).count() as u64;
        let ack = UploadAck {
            batch_seq: batch.batch_seq,
            accepted: true,
            error: String::new(),
            resend_dates: s.resend_dates.clone(),
        };
        Ok((ack, s))
    }

    fn summary_mut(&mut self) -> &mut Summary {
        &mut self.summary
    }
}
