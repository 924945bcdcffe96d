//! PostgreSQL: the embedded migrations and the one transaction that applies a batch.
//!
//! Apply rule (one transaction per batch, committed before the batch is acknowledged, so any loader may die at any
//! point and another applies the batch again with the same effect):
//! - punches: `INSERT … ON CONFLICT (punch_id) DO NOTHING` — every punch once;
//! - records: `INSERT … ON CONFLICT (record_id) DO UPDATE … WHERE records.revision < EXCLUDED.revision` — a row is
//!   replaced only by a higher revision, whatever order loaders commit in;
//! - digests: checked against the punches the database holds for that gateway in `[from_ms, to_ms)` (count and SHA-256
//!   of the sorted ids, the gateway's own definition, [`ids_sha256`]) after this batch's punches, and stored; a mismatch
//!   asks for the day again (at most [`MAX_RESEND_ASKS`] times in a row per gateway and day, counted in
//!   `digests.asked`, which a matching digest resets). A digest replaces the stored one unless it is older (lower
//!   `batch_seq` of the same outbox);
//! - gateways: the highest `batch_seq` per (gateway_id, outbox_id).
//!
//! Rows are written with one `INSERT … SELECT FROM unnest(…)` per kind, so a batch of 5,000 punches is one statement.
//! Lists (`flags`, `statuses`, `punch_ids`) travel joined with U+001F, which no id or status contains.

use tokio_postgres::{Client, NoTls};

use crate::cli::upstream_sink::{BatchSummary, DigestCheck, MAX_RESEND_ASKS};
use crate::outbox::digest::ids_sha256;
use crate::proto::upstream::UploadBatch;

/// The schema, in order; each runs once, recorded in `schema_migrations`.
pub const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("migrations/0001_init.sql"))];

/// Serialises migrations between loaders starting together (an arbitrary advisory lock key).
const MIGRATION_LOCK: i64 = 0x6761_7465_7761_7964;

/// Separator of list fields on the way in (`string_to_array`).
const SEP: &str = "\u{1f}";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("postgres {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("postgres: migration {version}: {source}")]
    Migrate {
        version: i32,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("postgres: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("postgres: a value does not fit: {0}")]
    Range(String),
}

/// Connects (no TLS: run the loader next to the database or through a tunnel) and spawns the connection task.
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let target = redact(url);
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|source| DbError::Connect { target: target.clone(), source })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "loader: the PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The URL without a password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Applies the migrations the database does not have yet, under an advisory lock. Returns how many ran.
pub async fn migrate(client: &mut Client) -> Result<usize, DbError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, \
         applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let mut ran = 0;
    for (version, sql) in MIGRATIONS {
        let done = tx.query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[version]).await?;
        if done.is_some() {
            continue;
        }
        tx.batch_execute(sql).await.map_err(|source| DbError::Migrate { version: *version, source })?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version]).await?;
        ran += 1;
    }
    tx.commit().await?;
    Ok(ran)
}

fn int(v: u64, what: &str) -> Result<i64, DbError> {
    i64::try_from(v).map_err(|_| DbError::Range(format!("{what} {v}")))
}

fn joined(list: &[String]) -> String {
    list.join(SEP)
}

const INSERT_PUNCHES: &str = "INSERT INTO punches (punch_id, gateway_id, device_id, employee_id, credential, method, \
     device_time_ms, received_time_ms, flags, lat, lng, score, batch_seq) \
     SELECT u.id, $1, u.dev, u.emp, u.cred, u.method, u.t, u.rt, \
            CASE WHEN u.flags = '' THEN '{}'::text[] ELSE string_to_array(u.flags, E'\\x1f') END, \
            u.lat, u.lng, u.score, $2 \
     FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::text[], \
                 $11::float8[], $12::float8[], $13::float4[]) \
          AS u(id, dev, emp, cred, method, t, rt, flags, lat, lng, score) \
     ON CONFLICT (punch_id) DO NOTHING";

const UPSERT_RECORDS: &str = "INSERT INTO records (record_id, gateway_id, revision, employee_id, work_date, shift_id, \
     clock_in_ms, clock_out_ms, statuses, late_minutes, early_leave_minutes, worked_minutes, overtime_minutes, \
     punch_ids, closed, rules_version, batch_seq) \
     SELECT u.id, $1, u.rev, u.emp, u.date, u.shift, u.cin, u.cout, \
            CASE WHEN u.st = '' THEN '{}'::text[] ELSE string_to_array(u.st, E'\\x1f') END, \
            u.late, u.early, u.worked, u.ot, \
            CASE WHEN u.pids = '' THEN '{}'::text[] ELSE string_to_array(u.pids, E'\\x1f') END, \
            u.closed, u.rv, $2 \
     FROM unnest($3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::bigint[], \
                 $10::text[], $11::int4[], $12::int4[], $13::int4[], $14::int4[], $15::text[], $16::bool[], \
                 $17::bigint[]) \
          AS u(id, rev, emp, date, shift, cin, cout, st, late, early, worked, ot, pids, closed, rv) \
     ON CONFLICT (record_id) DO UPDATE SET revision = EXCLUDED.revision, employee_id = EXCLUDED.employee_id, \
         work_date = EXCLUDED.work_date, shift_id = EXCLUDED.shift_id, clock_in_ms = EXCLUDED.clock_in_ms, \
         clock_out_ms = EXCLUDED.clock_out_ms, statuses = EXCLUDED.statuses, late_minutes = EXCLUDED.late_minutes, \
         early_leave_minutes = EXCLUDED.early_leave_minutes, worked_minutes = EXCLUDED.worked_minutes, \
         overtime_minutes = EXCLUDED.overtime_minutes, punch_ids = EXCLUDED.punch_ids, closed = EXCLUDED.closed, \
         rules_version = EXCLUDED.rules_version, batch_seq = EXCLUDED.batch_seq, loaded_at = now() \
     WHERE records.revision < EXCLUDED.revision";

/// Applies one batch in one transaction and commits it. The summary's `resend_dates` are the days to ask for again.
pub async fn apply(client: &mut Client, batch: &UploadBatch) -> Result<BatchSummary, DbError> {
    let gw = batch.gateway_id.as_str();
    let seq = int(batch.batch_seq, "batch_seq")?;
    let mut s = BatchSummary { gateway_id: gw.to_owned(), batch_seq: batch.batch_seq, ..BatchSummary::default() };
    let tx = client.transaction().await?;

    if !batch.punches.is_empty() {
        // In id order: two loaders inserting overlapping punches (a batch and its resend) take row locks in the same
        // order and cannot deadlock.
        let mut p: Vec<&crate::proto::upstream::Punch> = batch.punches.iter().collect();
        p.sort_unstable_by(|a, b| a.punch_id.cmp(&b.punch_id));
        let ids: Vec<&str> = p.iter().map(|x| x.punch_id.as_str()).collect();
        let devs: Vec<&str> = p.iter().map(|x| x.device_id.as_str()).collect();
        let emps: Vec<&str> = p.iter().map(|x| x.employee_id.as_str()).collect();
        let creds: Vec<&str> = p.iter().map(|x| x.credential.as_str()).collect();
        let methods: Vec<&str> = p.iter().map(|x| x.method.as_str()).collect();
        let times: Vec<i64> = p.iter().map(|x| x.device_time_ms).collect();
        let received: Vec<i64> = p.iter().map(|x| x.received_time_ms).collect();
        let flags: Vec<String> = p.iter().map(|x| joined(&x.flags)).collect();
        let lat: Vec<Option<f64>> = p.iter().map(|x| x.lat).collect();
        let lng: Vec<Option<f64>> = p.iter().map(|x| x.lng).collect();
        let score: Vec<Option<f32>> = p.iter().map(|x| x.score).collect();
        let new = tx
            .execute(
                INSERT_PUNCHES,
                &[&gw, &seq, &ids, &devs, &emps, &creds, &methods, &times, &received, &flags, &lat, &lng, &score],
            )
            .await?;
        s.punches = new;
        s.punch_duplicates = p.len() as u64 - new;
    }

    if !batch.records.is_empty() {
        let r = &batch.records;
        let ids: Vec<&str> = r.iter().map(|x| x.record_id.as_str()).collect();
        let revs: Vec<i64> = r.iter().map(|x| i64::from(x.revision)).collect();
        let emps: Vec<&str> = r.iter().map(|x| x.employee_id.as_str()).collect();
        let dates: Vec<&str> = r.iter().map(|x| x.work_date.as_str()).collect();
        let shifts: Vec<&str> = r.iter().map(|x| x.shift_id.as_str()).collect();
        let cin: Vec<Option<i64>> = r.iter().map(|x| x.clock_in_ms).collect();
        let cout: Vec<Option<i64>> = r.iter().map(|x| x.clock_out_ms).collect();
        let statuses: Vec<String> = r.iter().map(|x| joined(&x.statuses)).collect();
        let late: Vec<i32> = r.iter().map(|x| x.late_minutes).collect();
        let early: Vec<i32> = r.iter().map(|x| x.early_leave_minutes).collect();
        let worked: Vec<i32> = r.iter().map(|x| x.worked_minutes).collect();
        let ot: Vec<i32> = r.iter().map(|x| x.overtime_minutes).collect();
        let pids: Vec<String> = r.iter().map(|x| joined(&x.punch_ids)).collect();
        let closed: Vec<bool> = r.iter().map(|x| x.closed).collect();
        let rv: Vec<i64> = r.iter().map(|x| i64::from(x.rules_version)).collect();
        // Several revisions of one record in one batch: only the highest goes in (one row per key per statement).
        let mut best: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, x) in r.iter().enumerate() {
            let e = best.entry(x.record_id.as_str()).or_insert(i);
            if r[*e].revision < x.revision {
                *e = i;
            }
        }
        let mut keep: Vec<usize> = best.into_values().collect();
        keep.sort_unstable_by(|a, b| r[*a].record_id.cmp(&r[*b].record_id));
        fn pick<T: Clone>(v: &[T], keep: &[usize]) -> Vec<T> {
            keep.iter().filter_map(|&i| v.get(i).cloned()).collect()
        }
        let changed = tx
            .execute(
                UPSERT_RECORDS,
                &[
                    &gw,
                    &seq,
                    &pick(&ids, &keep),
                    &pick(&revs, &keep),
                    &pick(&emps, &keep),
                    &pick(&dates, &keep),
                    &pick(&shifts, &keep),
                    &pick(&cin, &keep),
                    &pick(&cout, &keep),
                    &pick(&statuses, &keep),
                    &pick(&late, &keep),
                    &pick(&early, &keep),
                    &pick(&worked, &keep),
                    &pick(&ot, &keep),
                    &pick(&pids, &keep),
                    &pick(&closed, &keep),
                    &pick(&rv, &keep),
                ],
            )
            .await?;
        s.records = changed;
        s.records_stale = r.len() as u64 - changed;
    }

    for d in &batch.digests {
        let rows = tx
            .query(
                "SELECT punch_id FROM punches WHERE gateway_id = $1 AND device_time_ms >= $2 AND device_time_ms < $3",
                &[&gw, &d.from_ms, &d.to_ms],
            )
            .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let (received, sha) = ids_sha256(ids.iter());
        let ok = received == d.punch_count && sha == d.punch_ids_sha256;
        let prior = tx
            .query_opt(
                "SELECT outbox_id, batch_seq, asked FROM digests WHERE gateway_id = $1 AND work_date = $2 FOR UPDATE",
                &[&gw, &d.work_date],
            )
            .await?;
        let (older, mut asked) = match &prior {
            Some(row) => {
                let (outbox, prior_seq, asked): (String, i64, i32) = (row.get(0), row.get(1), row.get(2));
                (outbox == batch.outbox_id && prior_seq > seq, asked)
            }
            None => (false, 0),
        };
        if !older {
            if ok {
                // A complete day may be asked for again if a later digest of it does not match.
                asked = 0;
            } else if asked < MAX_RESEND_ASKS as i32 {
                asked += 1;
                s.resend_dates.push(d.work_date.clone());
            }
            tx.execute(
                "INSERT INTO digests (gateway_id, work_date, outbox_id, batch_seq, punch_count, punch_ids_sha256, \
                     record_count, from_ms, to_ms, complete, received_punch_count, asked) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (gateway_id, work_date) DO UPDATE SET outbox_id = EXCLUDED.outbox_id, \
                     batch_seq = EXCLUDED.batch_seq, punch_count = EXCLUDED.punch_count, \
                     punch_ids_sha256 = EXCLUDED.punch_ids_sha256, record_count = EXCLUDED.record_count, \
                     from_ms = EXCLUDED.from_ms, to_ms = EXCLUDED.to_ms, complete = EXCLUDED.complete, \
                     received_punch_count = EXCLUDED.received_punch_count, asked = EXCLUDED.asked, checked_at = now()",
                &[
                    &gw,
                    &d.work_date,
                    &batch.outbox_id,
                    &seq,
                    &int(d.punch_count, "punch_count")?,
                    &d.punch_ids_sha256,
                    &int(d.record_count, "record_count")?,
                    &d.from_ms,
                    &d.to_ms,
                    &ok,
                    &int(received, "received")?,
                    &asked,
                ],
            )
            .await?;
        }
        s.digests.push(DigestCheck { work_date: d.work_date.clone(), ok, expected: d.punch_count, received });
    }

    tx.execute(
        "INSERT INTO gateways (gateway_id, outbox_id, last_batch_seq, batches) VALUES ($1, $2, $3, 1) \
         ON CONFLICT (gateway_id, outbox_id) DO UPDATE SET \
             last_batch_seq = GREATEST(gateways.last_batch_seq, EXCLUDED.last_batch_seq), \
             batches = gateways.batches + 1, updated_at = now()",
        &[&gw, &batch.outbox_id, &seq],
    )
    .await?;
    tx.commit().await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("host=/tmp user=u"), "host=/tmp user=u");
    }
}
