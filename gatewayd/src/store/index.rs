//! The read indexes of the punch store: by punch id, by time, by device and by subject.
//!
//! Index entries are derived data: they are built from the punch log by [`super::Store::index_pending`], after the
//! punches they cover are durable, and rebuilt from the log when the store opens after a crash. See the module docs of
//! [`super`] for the key layout.
//!
//! Time, device and subject entries are *postings*: sled values per (group, time bucket, indexing round) holding the
//! `(device_time, seq)` pairs of every punch of that round in that bucket (at most 256 per value). A round indexes every punch that became
//! durable since the previous round, so under load one posting covers many punches and the index costs a fraction of a
//! sled insert per punch; when the site is quiet a round holds one punch and the cost does not matter.

use std::collections::BTreeMap;

use drivers::sink::Subject;
use sha2::{Digest, Sha256};

use crate::punch::Punch;

pub(super) const K_ID: u8 = b'I';
pub(super) const K_NUMBERED_ID: u8 = b'N';
/// The version of the index layout, kept in the `meta` tree under [`META_KEY`]. An index of another version is dropped
/// and rebuilt from the log when the store opens (it is derived data).
pub(super) const LAYOUT: &[u8] = b"punch-index-v2";
pub(super) const META_KEY: &str = "index";
/// Numbered ids share a posting per 256 consecutive device sequence numbers.
const NUMBER_BUCKET_BITS: u32 = 8;
pub(super) const K_TIME: u8 = b'T';
pub(super) const K_DEVICE: u8 = b'D';
pub(super) const K_SUBJECT: u8 = b'S';
/// The key of the cursor: the highest sequence number whose index entries are written.
pub(super) const CURSOR: &[u8] = b"C";

/// Bucket widths, in milliseconds of device time.
pub(super) const TIME_BUCKET: i64 = 60_000;
pub(super) const DEVICE_BUCKET: i64 = 3_600_000;
pub(super) const SUBJECT_BUCKET: i64 = 86_400_000;

/// The encoding version byte of a posting value.
const POSTING_V1: u8 = 1;
const ENTRY_LEN: usize = 16;
/// Postings stay small sled values (4 KiB at most): sled rewrites a whole leaf (up to 17 values) as one log message and
/// stores a message over 128 KiB as a separate blob file, which sled never syncs (see *Durability point* in [`super`]).
const MAX_POSTING_ENTRIES: usize = 256;

/// Unix milliseconds (or a bucket number) with the sign bit flipped, so that byte order is numeric order.
pub(super) fn ordered(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

pub(super) fn id_key(punch_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(punch_id.len() + 1);
    k.push(K_ID);
    k.extend_from_slice(punch_id.as_bytes());
    k
}

/// A punch id of the form `{gateway}:{device}:{n}` (a device that numbers its punches, see [`crate::punch::punch_id`]),
/// split into `{gateway}:{device}` and `n`. Only the canonical decimal form counts, so one number has one id.
pub(crate) fn numbered(punch_id: &str) -> Option<(&str, u64)> {
    let (prefix, last) = punch_id.rsplit_once(':')?;
    let canonical =
        !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) && (last == "0" || !last.starts_with('0'));
    let n = last.parse::<u64>().ok().filter(|_| canonical)?;
    Some((prefix, n))
}

/// The part of a numbered id's key shared by all of one prefix: `N` prefix 0x00 (ids cannot contain 0x00).
pub(super) fn numbered_prefix(prefix: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 18);
    k.push(K_NUMBERED_ID);
    k.extend_from_slice(prefix.as_bytes());
    k.push(0);
    k
}

/// The group and bucket part of a numbered id's key: [`numbered_prefix`] then bucket:u64be.
pub(super) fn numbered_group(prefix: &str, n: u64) -> Vec<u8> {
    let mut k = numbered_prefix(prefix);
    k.extend_from_slice(&(n >> NUMBER_BUCKET_BITS).to_be_bytes());
    k
}

/// Finds `n` in the postings of a numbered id's group: the postings hold `(n, seq)` pairs (`n` stored as the i64 with
/// the same bits).
pub(super) fn find_numbered(postings: &[(i64, u64)], n: u64) -> Option<u64> {
    postings.iter().find(|&&(m, _)| m as u64 == n).map(|&(_, seq)| seq)
}

/// The group part of a device key: `D` device 0x00 (device ids cannot contain 0x00; checked at ingest).
pub(super) fn device_group(device: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 2);
    k.push(K_DEVICE);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k
}

/// The group part of a subject key: `S` and one byte of a hash of the subject. Subjects are many (every employee and
/// credential), so they share 256 groups; readers filter the punches of a group by their subject.
pub(super) fn subject_group(subject: &Subject) -> Vec<u8> {
    let mut h = Sha256::new();
    crate::punch::hash_subject(&mut h, subject);
    let digest = h.finalize();
    vec![K_SUBJECT, digest[0]]
}

/// The keys a punch is indexed under, without the posting's first sequence number: its time, device and subject
/// buckets, and its numbered id's group or its `I` key. Expiry rewrites the postings under these prefixes.
pub(super) fn entry_prefixes(p: &Punch) -> Vec<Vec<u8>> {
    let t = p.device_time_ms;
    let mut out = Vec::with_capacity(4);
    out.push(match numbered(&p.punch_id) {
        Some((prefix, n)) => numbered_group(prefix, n),
        None => id_key(&p.punch_id),
    });
    for (mut group, width) in [
        (vec![K_TIME], TIME_BUCKET),
        (device_group(&p.device_id), DEVICE_BUCKET),
        (subject_group(&p.subject), SUBJECT_BUCKET),
    ] {
        group.extend_from_slice(&ordered(t.div_euclid(width)));
        out.push(group);
    }
    out
}

/// A posting without the pairs whose sequence number `gone` says is removed: `None` when nothing changes, `Some(None)`
/// when nothing is left, else the new value.
pub(super) fn without(value: &[u8], gone: impl Fn(u64) -> bool) -> Result<Option<Option<Vec<u8>>>, String> {
    let entries = decode_posting(value)?;
    let kept: Vec<(i64, u64)> = entries.iter().copied().filter(|&(_, seq)| !gone(seq)).collect();
    Ok(match kept.len() {
        n if n == entries.len() => None,
        0 => Some(None),
        _ => Some(Some(encode_posting(&kept))),
    })
}

/// Index entries for a run of punches (one indexing round), added to `batch` together with the new cursor.
pub(super) fn build(punches: &[Punch], cursor: u64, batch: &mut sled::Batch) {
    let mut postings: BTreeMap<Vec<u8>, Vec<(i64, u64)>> = BTreeMap::new();
    for p in punches {
        match numbered(&p.punch_id) {
            // Postings per device and run of device sequence numbers: a round of a device's punches is one sled
            // insert, where one key per id would make the id index the most expensive part of the store.
            Some((prefix, n)) => postings.entry(numbered_group(prefix, n)).or_default().push((n as i64, p.seq)),
            None => batch.insert(id_key(&p.punch_id), &p.seq.to_be_bytes()),
        }
        let t = p.device_time_ms;
        for (mut group, width) in [
            (vec![K_TIME], TIME_BUCKET),
            (device_group(&p.device_id), DEVICE_BUCKET),
            (subject_group(&p.subject), SUBJECT_BUCKET),
        ] {
            group.extend_from_slice(&ordered(t.div_euclid(width)));
            postings.entry(group).or_default().push((t, p.seq));
        }
    }
    for (group_bucket, entries) in postings {
        // Entries are in sequence order; each posting is keyed by its first sequence number, so keys never collide and
        // a round repeated after a crash writes the same keys again.
        for chunk in entries.chunks(MAX_POSTING_ENTRIES) {
            let mut key = group_bucket.clone();
            key.extend_from_slice(&chunk[0].1.to_be_bytes());
            batch.insert(key, encode_posting(chunk));
        }
    }
    batch.insert(CURSOR, &cursor.to_be_bytes());
}

fn encode_posting(entries: &[(i64, u64)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + entries.len() * ENTRY_LEN);
    v.push(POSTING_V1);
    for (t, seq) in entries {
        v.extend_from_slice(&t.to_be_bytes());
        v.extend_from_slice(&seq.to_be_bytes());
    }
    v
}

/// Decodes a posting value into `(device_time, seq)` pairs; the error says what is wrong.
pub fn decode_posting(bytes: &[u8]) -> Result<Vec<(i64, u64)>, String> {
    let (&version, body) = bytes.split_first().ok_or("empty posting")?;
    if version != POSTING_V1 {
        return Err(format!("unknown posting version {version} (this build reads version {POSTING_V1})"));
    }
    if body.len() % ENTRY_LEN != 0 {
        return Err(format!("posting of {} bytes is not a whole number of entries", body.len()));
    }
    Ok(body
        .chunks_exact(ENTRY_LEN)
        .map(|c| {
            let mut t = [0u8; 8];
            let mut s = [0u8; 8];
            t.copy_from_slice(&c[..8]);
            s.copy_from_slice(&c[8..]);
            (i64::from_be_bytes(t), u64::from_be_bytes(s))
        })
        .collect())
}

/// The key range `[lo, hi]` of the postings of `group` whose bucket may hold times in `[from_ms, to_ms)`.
/// `from_ms < to_ms` is required.
pub(super) fn range(group: &[u8], width: i64, from_ms: i64, to_ms: i64) -> (Vec<u8>, Vec<u8>) {
    let mut lo = group.to_vec();
    lo.extend_from_slice(&ordered(from_ms.div_euclid(width)));
    lo.extend_from_slice(&[0; 8]);
    let mut hi = group.to_vec();
    hi.extend_from_slice(&ordered((to_ms - 1).div_euclid(width)));
    hi.extend_from_slice(&[0xff; 8]);
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn postings_round_trip_and_reject_damage() {
        let entries = vec![(-5, 1), (1_700_000_000_000, 2), (i64::MAX, u64::MAX)];
        let v = encode_posting(&entries);
        assert_eq!(decode_posting(&v), Ok(entries));
        assert!(decode_posting(&v[..v.len() - 1]).unwrap_err().contains("whole number"));
        assert!(decode_posting(&[9]).unwrap_err().contains("unknown posting version 9"));
        assert!(decode_posting(&[]).is_err());
    }

    #[test]
    fn numbered_ids_are_recognised_only_in_canonical_form() {
        assert_eq!(numbered("gw:dev-1:42"), Some(("gw:dev-1", 42)));
        assert_eq!(numbered("gw:dev-1:0"), Some(("gw:dev-1", 0)));
        assert_eq!(numbered("gw:dev:1:18446744073709551615"), Some(("gw:dev:1", u64::MAX)));
        for other in
            ["gw:dev-1:042", "gw:dev-1:", "gw:dev-1:+4", "gw:dev-1:h0a1b", "gw:dev-1:18446744073709551616", "7"]
        {
            assert_eq!(numbered(other), None, "{other}");
        }
        assert_eq!(find_numbered(&[(5, 10), (u64::MAX as i64, 11)], u64::MAX), Some(11));
        assert_eq!(find_numbered(&[(5, 10)], 6), None);
        // One bucket holds 256 consecutive numbers; the next number starts a new one.
        assert_eq!(numbered_group("gw:d", 255), numbered_group("gw:d", 0));
        assert_ne!(numbered_group("gw:d", 256), numbered_group("gw:d", 255));
    }

    #[test]
    fn ordered_keys_sort_like_numbers() {
        let values = [i64::MIN, -86_400_000, -1, 0, 1, 60_000, i64::MAX];
        for w in values.windows(2) {
            assert!(ordered(w[0]) < ordered(w[1]), "{w:?}");
        }
    }

    #[test]
    fn range_covers_the_buckets_of_both_ends() {
        let (lo, hi) = range(&[K_TIME], TIME_BUCKET, 59_999, 120_001);
        let key = |bucket: i64, round: u64| {
            let mut k = vec![K_TIME];
            k.extend_from_slice(&ordered(bucket));
            k.extend_from_slice(&round.to_be_bytes());
            k
        };
        for (bucket, inside) in [(-1, false), (0, true), (1, true), (2, true), (3, false)] {
            let k = key(bucket, 42);
            assert_eq!(lo <= k && k <= hi, inside, "bucket {bucket}");
        }
    }

    proptest! {
        #[test]
        fn decode_posting_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_posting(&bytes);
        }
    }
}
