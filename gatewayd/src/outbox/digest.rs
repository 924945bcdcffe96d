//! Day digests: what the gateway holds for one work date, so the cloud can check it received everything.
//!
//! A [`DayDigest`] covers the punches whose device time falls in the day `[from_ms, to_ms)` (midnight to midnight in the
//! site time zone, so 23 or 25 hours on a DST change): `punch_count` distinct punch ids, `punch_ids_sha256` =
//! SHA-256 over those ids sorted bytewise, each followed by `"\n"`, and `record_count` attendance records of that work
//! date. The punches come from the durable punch store ([`Store::by_time`]), which is the truth of what devices reported.

use sha2::{Digest, Sha256};

use crate::proto::upstream::DayDigest;
use crate::store::{Store, StoreError};

/// The bounds of a local calendar date in Unix milliseconds, `[from, to)`.
pub fn day_bounds(date: &str, tz: &jiff::tz::TimeZone) -> Result<(i64, i64), String> {
    let day: jiff::civil::Date = date.parse().map_err(|e| format!("`{date}` is not a date (YYYY-MM-DD): {e}"))?;
    if date.len() != 10 {
        return Err(format!("`{date}` is not a date (YYYY-MM-DD)"));
    }
    let start = day.to_zoned(tz.clone()).map_err(|e| format!("{date}: {e}"))?;
    let next = day.tomorrow().and_then(|d| d.to_zoned(tz.clone())).map_err(|e| format!("{date}: {e}"))?;
    Ok((start.timestamp().as_millisecond(), next.timestamp().as_millisecond()))
}

/// The local calendar date (YYYY-MM-DD) of a Unix millisecond time.
pub fn local_date(ms: i64, tz: &jiff::tz::TimeZone) -> Result<String, String> {
    let ts = jiff::Timestamp::from_millisecond(ms).map_err(|e| format!("time {ms}: {e}"))?;
    let date = ts.to_zoned(tz.clone()).date();
    if !(0..=9999).contains(&date.year()) {
        return Err(format!("time {ms} is outside years 0000..9999"));
    }
    Ok(date.to_string())
}

/// Count and SHA-256 of a set of punch ids: sorted bytewise, duplicates removed, each followed by `"\n"`.
pub fn ids_sha256<S: AsRef<str>>(ids: impl IntoIterator<Item = S>) -> (u64, Vec<u8>) {
    let mut ids: Vec<S> = ids.into_iter().collect();
    ids.sort_unstable_by(|a, b| a.as_ref().as_bytes().cmp(b.as_ref().as_bytes()));
    ids.dedup_by(|a, b| a.as_ref() == b.as_ref());
    let mut hasher = Sha256::new();
    for id in &ids {
        hasher.update(id.as_ref().as_bytes());
        hasher.update(b"\n");
    }
    (ids.len() as u64, hasher.finalize().to_vec())
}

/// The digest of `date` from the punch store, with `record_count` given by the caller (the outbox knows its records).
pub fn day_digest(
    store: &Store,
    tz: &jiff::tz::TimeZone,
    date: &str,
    record_count: u64,
) -> Result<DayDigest, DigestError> {
    let (from_ms, to_ms) = day_bounds(date, tz).map_err(DigestError::Date)?;
    let ids = store.by_time(from_ms, to_ms).map(|p| p.map(|p| p.punch_id)).collect::<Result<Vec<String>, _>>()?;
    let (punch_count, sha) = ids_sha256(ids);
    Ok(DayDigest { work_date: date.to_owned(), punch_count, punch_ids_sha256: sha, record_count, from_ms, to_ms })
}

#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("day digest: {0}")]
    Date(String),
    #[error("day digest: {0}")]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_over_sorted_unique_ids_with_newlines() {
        let (n, sha) = ids_sha256(["gw:b:2", "gw:a:1", "gw:b:2"]);
        assert_eq!(n, 2);
        let expected = Sha256::digest(b"gw:a:1\ngw:b:2\n").to_vec();
        assert_eq!(sha, expected);
        let (n, sha) = ids_sha256(Vec::<String>::new());
        assert_eq!((n, sha), (0, Sha256::digest(b"").to_vec()));
    }

    #[test]
    fn day_bounds_follow_the_site_time_zone() {
        let shanghai = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
        let (from, to) = day_bounds("2026-11-22", &shanghai).unwrap();
        assert_eq!(to - from, 86_400_000);
        assert_eq!(local_date(from, &shanghai).unwrap(), "2026-11-22");
        assert_eq!(local_date(to - 1, &shanghai).unwrap(), "2026-11-22");
        assert_eq!(local_date(to, &shanghai).unwrap(), "2026-11-23");
        // A DST day is 23 hours long.
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        let (from, to) = day_bounds("2026-03-29", &berlin).unwrap();
        assert_eq!(to - from, 23 * 3_600_000);
        for bad in ["2026-13-01", "yesterday", "", "2026-1-1"] {
            assert!(day_bounds(bad, &shanghai).is_err(), "{bad}");
        }
    }
}
