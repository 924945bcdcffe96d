//! The punches the engine keeps, compressed.
//!
//! The engine holds every punch of its horizon in memory: a month of a site, or every punch of a load test that puts
//! them all on one day. Kept as plain structs that was 80 bytes a punch; here an employee's punches are blocks of up to
//! [`BLOCK`] entries, each entry a few bytes (a sorted run delta-encodes well):
//!
//! | field | encoding |
//! |---|---|
//! | device time | varint, the difference to the previous entry's (the first entry's is the block's `first`) |
//! | tag | one byte: method (low 4 bits), credential 0x10, real-time 0x20, has a score 0x40, id kept whole 0x80 |
//! | punch id | numbered: varint number of its head in the [`Dict`], varint n; kept whole: varint length, the text |
//! | device, subject | varint numbers in the [`Dict`] |
//! | arrival time | zigzag varint of arrival − device time |
//! | score | f32, little endian, when the tag says so |
//!
//! A typical entry is about 11 bytes, and a block's header (72 bytes) adds 4.5 a punch: about 16 bytes a punch in
//! all. Punches arrive nearly in time order, so most inserts append to the last block; one that lands inside a block
//! re-encodes that block (splitting it past [`BLOCK`] entries). Reads decode a block front to back, so the block size
//! trades memory for time: the engine's month benchmark took 8.1 s with blocks of 64, 7.4 s with 32, 6.9 s with 16
//! (the uncompressed engine: 6.6 s). The encoding lives only in memory (nothing here is stored), so it carries no
//! version.

use std::sync::Arc;

use drivers::Method;
use prost::encoding::{decode_varint, encode_varint};

/// Hash maps keyed by ids: foldhash (fast, seeded per process) instead of SipHash; the engine hashes ids per punch.
pub(super) type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use super::punch_id::PunchId;

/// A kept punch's place: its time and id.
pub(super) type Key = (i64, PunchId);

/// Most entries in one block.
const BLOCK: usize = 16;

const TAG_METHOD: u8 = 0x0f;
const TAG_CREDENTIAL: u8 = 0x10;
const TAG_REALTIME: u8 = 0x20;
const TAG_SCORE: u8 = 0x40;
const TAG_WHOLE: u8 = 0x80;

/// A kept punch's facts besides its key. Subject and device are numbers in the engine's [`Dict`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Fact {
    pub subject: u32,
    pub device: u32,
    pub received_ms: i64,
    /// The match score; NaN when the punch has none.
    pub score: f32,
    pub method: Method,
    pub credential: bool,
    pub realtime: bool,
}

impl Fact {
    pub fn score(&self) -> Option<f32> {
        (!self.score.is_nan()).then_some(self.score)
    }
}

/// Strings kept punches refer to by number: devices, subjects and punch id heads. Numbers of strings no punch uses any
/// more are freed by [`Dict::sweep`] and given out again.
#[derive(Debug, Default)]
pub(super) struct Dict {
    strings: Vec<Option<Arc<str>>>,
    numbers: Map<Arc<str>, u32>,
    free: Vec<u32>,
}

impl Dict {
    /// The number and shared copy of `s` (added when missing).
    pub fn intern(&mut self, s: &str) -> (u32, Arc<str>) {
        if let Some((a, &n)) = self.numbers.get_key_value(s) {
            return (n, a.clone());
        }
        let a: Arc<str> = Arc::from(s);
        let n = match self.free.pop() {
            Some(n) => {
                self.strings[n as usize] = Some(a.clone());
                n
            }
            None => {
                self.strings.push(Some(a.clone()));
                (self.strings.len() - 1) as u32
            }
        };
        self.numbers.insert(a.clone(), n);
        (n, a)
    }

    pub fn number(&mut self, s: &str) -> u32 {
        self.intern(s).0
    }

    /// The number of `s`, if it has one (a lookup that adds nothing).
    pub fn number_of(&self, s: &str) -> Option<u32> {
        self.numbers.get(s).copied()
    }

    /// The string of number `n` ("" for a number not in use, which kept punches never hold).
    pub fn get(&self, n: u32) -> &str {
        self.strings.get(n as usize).and_then(Option::as_deref).unwrap_or("")
    }

    fn arc(&self, n: u32) -> Arc<str> {
        match self.strings.get(n as usize) {
            Some(Some(a)) => a.clone(),
            _ => Arc::from(""),
        }
    }

    /// A table of "in use" flags, one per number, for [`Punches::mark_used`] and [`Dict::sweep`].
    pub fn unused_marks(&self) -> Vec<bool> {
        vec![false; self.strings.len()]
    }

    /// Frees every number not marked in `used`.
    pub fn sweep(&mut self, used: &[bool]) {
        for (n, slot) in self.strings.iter_mut().enumerate() {
            if !used.get(n).copied().unwrap_or(true) {
                if let Some(s) = slot.take() {
                    self.numbers.remove(&s);
                    self.free.push(n as u32);
                }
            }
        }
    }

    /// Strings in use.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.numbers.len()
    }
}

/// Marks string number `n` as in use.
fn mark(used: &mut [bool], n: u32) {
    if let Some(u) = used.get_mut(n as usize) {
        *u = true;
    }
}

/// Marks the strings a kept punch refers to: its subject, its device and (a numbered id) its head.
pub(super) fn mark_punch(key: &Key, fact: &Fact, dict: &Dict, used: &mut [bool]) {
    mark(used, fact.subject);
    mark(used, fact.device);
    if let Some(head) = key.1.parts().ok().and_then(|(head, _)| dict.number_of(head)) {
        mark(used, head);
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn method_code(m: Method) -> u8 {
    Method::ALL.iter().position(|x| *x == m).unwrap_or(Method::ALL.len()) as u8
}

/// A punch id as a block holds it.
#[derive(Clone, Copy, Debug)]
enum RawId<'a> {
    Numbered { head: u32, n: u64 },
    Whole(&'a str),
}

/// A decoded entry, its id not yet turned into a [`PunchId`].
#[derive(Clone, Copy, Debug)]
struct Raw<'a> {
    time: i64,
    id: RawId<'a>,
    fact: Fact,
}

impl Raw<'_> {
    fn key(&self, dict: &Dict) -> Key {
        let id = match self.id {
            RawId::Numbered { head, n } => PunchId::from_head(dict.arc(head), n),
            RawId::Whole(text) => PunchId::new(text, |h| Arc::from(h)),
        };
        (self.time, id)
    }

    /// Whether this entry is the punch `key`.
    fn is(&self, key: &Key, dict: &Dict) -> bool {
        if self.time != key.0 {
            return false;
        }
        match (self.id, key.1.parts()) {
            (RawId::Numbered { head, n }, Ok((h, m))) => n == m && dict.get(head) == &**h,
            (RawId::Whole(text), Err(whole)) => text == whole,
            _ => false,
        }
    }
}

fn write_entry(out: &mut Vec<u8>, prev: i64, key: &Key, fact: &Fact, dict: &mut Dict) {
    let (t, id) = key;
    encode_varint((*t as u64).wrapping_sub(prev as u64), out);
    let parts = id.parts();
    let mut tag = method_code(fact.method) & TAG_METHOD;
    for (on, bit) in [
        (fact.credential, TAG_CREDENTIAL),
        (fact.realtime, TAG_REALTIME),
        (fact.score().is_some(), TAG_SCORE),
        (parts.is_err(), TAG_WHOLE),
    ] {
        if on {
            tag |= bit;
        }
    }
    out.push(tag);
    match parts {
        Ok((head, n)) => {
            encode_varint(u64::from(dict.number(head)), out);
            encode_varint(n, out);
        }
        Err(text) => {
            encode_varint(text.len() as u64, out);
            out.extend_from_slice(text.as_bytes());
        }
    }
    encode_varint(u64::from(fact.device), out);
    encode_varint(u64::from(fact.subject), out);
    encode_varint(zigzag(fact.received_ms.wrapping_sub(*t)), out);
    if let Some(s) = fact.score() {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

fn read_u32(buf: &mut &[u8]) -> Option<u32> {
    decode_varint(buf).ok().and_then(|v| u32::try_from(v).ok())
}

/// Reads one entry from the front of `buf`. `None` only if the bytes are not what [`write_entry`] wrote.
fn read_entry<'a>(buf: &mut &'a [u8], prev: i64) -> Option<Raw<'a>> {
    let time = prev.wrapping_add(decode_varint(buf).ok()? as i64);
    let (&tag, rest) = buf.split_first()?;
    *buf = rest;
    let method = *Method::ALL.get(usize::from(tag & TAG_METHOD))?;
    let id = if tag & TAG_WHOLE != 0 {
        let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
        let text = buf.get(..len)?;
        *buf = &buf[len..];
        RawId::Whole(std::str::from_utf8(text).ok()?)
    } else {
        RawId::Numbered { head: read_u32(buf)?, n: decode_varint(buf).ok()? }
    };
    let device = read_u32(buf)?;
    let subject = read_u32(buf)?;
    let received_ms = time.wrapping_add(unzigzag(decode_varint(buf).ok()?));
    let score = if tag & TAG_SCORE != 0 {
        let bytes: [u8; 4] = buf.get(..4)?.try_into().ok()?;
        *buf = &buf[4..];
        f32::from_le_bytes(bytes)
    } else {
        f32::NAN
    };
    Some(Raw {
        time,
        id,
        fact: Fact {
            subject,
            device,
            received_ms,
            score,
            method,
            credential: tag & TAG_CREDENTIAL != 0,
            realtime: tag & TAG_REALTIME != 0,
        },
    })
}

/// Up to [`BLOCK`] entries sorted by key, encoded.
#[derive(Debug)]
struct Block {
    /// The first entry's time: the base of the first time difference.
    first: i64,
    /// The last entry's key.
    last: Key,
    len: u32,
    bytes: Vec<u8>,
}

impl Block {
    fn raw(&self) -> BlockIter<'_> {
        BlockIter { buf: &self.bytes, prev: self.first, left: self.len }
    }

    fn decode(&self, dict: &Dict) -> Vec<(Key, Fact)> {
        self.raw().map(|r| (r.key(dict), r.fact)).collect()
    }

    /// A block of `entries` (sorted, at least one).
    fn encode(entries: Vec<(Key, Fact)>, dict: &mut Dict) -> Option<Block> {
        let first = entries.first()?.0 .0;
        let mut bytes = Vec::with_capacity(entries.len() * 12);
        let mut prev = first;
        for (key, fact) in &entries {
            write_entry(&mut bytes, prev, key, fact, dict);
            prev = key.0;
        }
        bytes.shrink_to_fit();
        let len = entries.len() as u32;
        let last = entries.into_iter().next_back()?.0;
        Some(Block { first, last, len, bytes })
    }
}

struct BlockIter<'a> {
    buf: &'a [u8],
    prev: i64,
    left: u32,
}

impl<'a> Iterator for BlockIter<'a> {
    type Item = Raw<'a>;

    fn next(&mut self) -> Option<Raw<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let raw = read_entry(&mut self.buf, self.prev);
        debug_assert!(raw.is_some(), "a kept punch block does not decode");
        let raw = raw?;
        self.prev = raw.time;
        Some(raw)
    }
}

/// One employee's punches, sorted by (time, id), with the employee's roster department. See the module documentation.
#[derive(Debug)]
pub(super) struct Punches {
    pub department: Arc<str>,
    blocks: Vec<Block>,
    len: usize,
}

impl Punches {
    pub fn new(department: Arc<str>) -> Punches {
        Punches { department, blocks: Vec::new(), len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block a key is in or would go into, when that is not after the last one.
    fn block_of(&self, key: &Key) -> Option<usize> {
        let i = self.blocks.partition_point(|b| b.last < *key);
        (i < self.blocks.len()).then_some(i)
    }

    /// Replaces block `i` with `entries` (sorted; split in two past [`BLOCK`], removed when empty).
    fn rewrite(&mut self, i: usize, mut entries: Vec<(Key, Fact)>, dict: &mut Dict) {
        if entries.len() > BLOCK {
            let tail = entries.split_off(entries.len() / 2);
            if let Some(b) = Block::encode(tail, dict) {
                self.blocks.insert(i + 1, b);
            }
        }
        match Block::encode(entries, dict) {
            Some(b) => self.blocks[i] = b,
            None => {
                self.blocks.remove(i);
            }
        }
    }

    /// Inserts a punch; returns the old facts if the key was there (they are replaced).
    pub fn insert(&mut self, key: Key, fact: Fact, dict: &mut Dict) -> Option<Fact> {
        let Some(i) = self.block_of(&key) else {
            // After every kept punch: append.
            self.len += 1;
            if let Some(b) = self.blocks.last_mut().filter(|b| (b.len as usize) < BLOCK) {
                write_entry(&mut b.bytes, b.last.0, &key, &fact, dict);
                b.last = key;
                b.len += 1;
                return None;
            }
            if let Some(b) = self.blocks.last_mut() {
                b.bytes.shrink_to_fit();
            }
            let mut bytes = Vec::with_capacity(16);
            write_entry(&mut bytes, key.0, &key, &fact, dict);
            self.blocks.push(Block { first: key.0, last: key, len: 1, bytes });
            return None;
        };
        let mut entries = self.blocks[i].decode(dict);
        let old = match entries.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(j) => Some(std::mem::replace(&mut entries[j].1, fact)),
            Err(j) => {
                entries.insert(j, (key, fact));
                self.len += 1;
                None
            }
        };
        self.rewrite(i, entries, dict);
        old
    }

    pub fn get(&self, key: &Key, dict: &Dict) -> Option<Fact> {
        let b = &self.blocks[self.block_of(key)?];
        b.raw().take_while(|r| r.time <= key.0).find(|r| r.is(key, dict)).map(|r| r.fact)
    }

    pub fn contains_key(&self, key: &Key, dict: &Dict) -> bool {
        self.get(key, dict).is_some()
    }

    pub fn remove(&mut self, key: &Key, dict: &mut Dict) -> Option<Fact> {
        let i = self.block_of(key)?;
        let mut entries = self.blocks[i].decode(dict);
        let j = entries.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        let (_, fact) = entries.remove(j);
        self.len -= 1;
        self.rewrite(i, entries, dict);
        Some(fact)
    }

    /// Every punch, in order.
    pub fn iter<'a>(&'a self, dict: &'a Dict) -> impl Iterator<Item = (Key, Fact)> + 'a {
        self.blocks.iter().flat_map(|b| b.raw()).map(|r| (r.key(dict), r.fact))
    }

    /// Punches with time in `[from, to]`.
    pub fn between<'a>(&'a self, from: i64, to: i64, dict: &'a Dict) -> impl Iterator<Item = (Key, Fact)> + 'a {
        let start = self.blocks.partition_point(|b| b.last.0 < from);
        self.blocks[start..]
            .iter()
            .flat_map(|b| b.raw())
            .skip_while(move |r| r.time < from)
            .take_while(move |r| r.time <= to)
            .map(|r| (r.key(dict), r.fact))
    }

    /// Removes and returns the punches before `cut`.
    pub fn drain_before(&mut self, cut: i64, dict: &mut Dict) -> Vec<(Key, Fact)> {
        let whole = self.blocks.partition_point(|b| b.last.0 < cut);
        let mut out: Vec<(Key, Fact)> = Vec::new();
        for b in self.blocks.drain(..whole) {
            out.extend(b.decode(dict));
        }
        if self.blocks.first().is_some_and(|b| b.first < cut) {
            let mut entries = self.blocks[0].decode(dict);
            let n = entries.partition_point(|((t, _), _)| *t < cut);
            let rest = entries.split_off(n);
            out.extend(entries);
            self.rewrite(0, rest, dict);
        }
        self.len -= out.len();
        if self.blocks.len() < self.blocks.capacity() / 2 {
            self.blocks.shrink_to_fit();
        }
        out
    }

    /// Marks the strings these punches refer to.
    pub fn mark_used(&self, used: &mut [bool]) {
        for r in self.blocks.iter().flat_map(|b| b.raw()) {
            mark(used, r.fact.subject);
            mark(used, r.fact.device);
            if let RawId::Numbered { head, .. } = r.id {
                mark(used, head);
            }
        }
    }

    /// Bytes held (for tests and the memory figures of docs/benchmarks.md).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.blocks.capacity() * std::mem::size_of::<Block>()
            + self.blocks.iter().map(|b| b.bytes.capacity()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn fact(dict: &mut Dict, i: u64, score: Option<f32>) -> Fact {
        Fact {
            subject: dict.number(&format!("E{}", i % 7)),
            device: dict.number(&format!("dev-{}", i % 3)),
            received_ms: i as i64 * 13,
            score: score.unwrap_or(f32::NAN),
            method: Method::ALL[(i % 10) as usize],
            credential: i.is_multiple_of(2),
            realtime: i.is_multiple_of(3),
        }
    }

    fn key(dict: &mut Dict, t: i64, id: &str) -> Key {
        (t, PunchId::new(id, |h| dict.intern(h).1))
    }

    fn same(a: &Fact, b: &Fact) -> bool {
        a.subject == b.subject
            && a.device == b.device
            && a.received_ms == b.received_ms
            && a.score.to_bits() == b.score.to_bits()
            && a.method == b.method
            && a.credential == b.credential
            && a.realtime == b.realtime
    }

    #[test]
    fn entries_round_trip_at_the_extremes() {
        let mut dict = Dict::default();
        let mut p = Punches::new(Arc::from("d"));
        let ids = ["gw:a:0", "gw:a:18446744073709551614", "gw:a:007", "whole-id", "", "gw:ä:٣"];
        let times = [i64::MIN, -1, 0, 1, i64::MAX];
        let mut model = BTreeMap::new();
        for (n, (t, id)) in times.iter().flat_map(|t| ids.iter().map(move |id| (*t, *id))).enumerate() {
            let k = key(&mut dict, t, id);
            let mut f = fact(&mut dict, n as u64, (n % 2 == 0).then_some(n as f32 * 0.5));
            f.received_ms = [i64::MIN, i64::MAX, 0, t][n % 4];
            assert!(p.insert(k.clone(), f, &mut dict).is_none());
            model.insert(k, f);
        }
        let got: Vec<(Key, Fact)> = p.iter(&dict).collect();
        assert_eq!(got.len(), model.len());
        for ((gk, gf), (mk, mf)) in got.iter().zip(&model) {
            assert_eq!(gk, mk);
            assert_eq!(gk.1.to_string(), mk.1.to_string());
            assert!(same(gf, mf), "{gk:?}: {gf:?} != {mf:?}");
        }
    }

    #[test]
    fn a_typical_punch_takes_about_16_bytes() {
        // The load tool's shape: 100 devices numbering their punches, one employee, 25 ms apart, arrival a few ms
        // later.
        let mut dict = Dict::default();
        let mut p = Punches::new(Arc::from(""));
        let subject = dict.number("E1");
        for i in 0..10_000u64 {
            let t = 1_800_000_000_000 + i as i64 * 25;
            let device = format!("load-{:03}", i % 100);
            let k = key(&mut dict, t, &format!("gw:{device}:{}", 1 + i / 100 * 7));
            let f = Fact {
                subject,
                device: dict.number(&device),
                received_ms: t + 3,
                score: f32::NAN,
                method: Method::Face,
                credential: false,
                realtime: true,
            };
            p.insert(k, f, &mut dict);
        }
        let per_punch = p.heap_bytes() as f64 / p.len() as f64;
        assert!(per_punch < 17.0, "{per_punch} bytes per punch");
    }

    #[test]
    fn unused_strings_are_swept_and_their_numbers_reused() {
        let mut dict = Dict::default();
        let mut p = Punches::new(Arc::from(""));
        let k1 = key(&mut dict, 1, "gw:old:1");
        let f1 = fact(&mut dict, 1, None);
        p.insert(k1, f1, &mut dict);
        let k2 = key(&mut dict, 2, "gw:new:1");
        let mut f2 = fact(&mut dict, 2, None);
        f2.device = dict.number("dev-new");
        p.insert(k2.clone(), f2, &mut dict);
        p.drain_before(2, &mut dict);
        let mut used = dict.unused_marks();
        p.mark_used(&mut used);
        dict.sweep(&used);
        assert_eq!(dict.len(), 3, "the head, device and subject of the punch left");
        assert_eq!(dict.get(f2.device), "dev-new");
        assert_eq!(p.iter(&dict).map(|(k, _)| k).collect::<Vec<_>>(), vec![k2.clone()]);
        // A freed number is given out again: seven strings were numbered, four are free.
        let reused = dict.number("another");
        assert!((reused as usize) < 7 && ![f2.subject, f2.device].contains(&reused), "{reused}");
        assert!(p.get(&k2, &dict).is_some());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(i64, u8, u64, Option<f32>),
        Remove(usize),
        Drain(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0i64..400, 0u8..5, 0u64..40, proptest::option::of(-1.0f32..1.0))
                .prop_map(|(t, h, n, s)| Op::Insert(t, h, n, s)),
            2 => (0usize..1000).prop_map(Op::Remove),
            1 => (0i64..200).prop_map(Op::Drain),
        ]
    }

    proptest! {
        /// Against a sorted map: the same punches after any inserts (in and out of order, repeated), removals and
        /// drains, with blocks splitting and emptying on the way.
        #[test]
        fn behaves_as_a_sorted_map(ops in proptest::collection::vec(op(), 1..600)) {
            let mut dict = Dict::default();
            let mut p = Punches::new(Arc::from(""));
            let mut model: BTreeMap<Key, Fact> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(t, h, n, score) => {
                        let id = if h == 4 { format!("whole-{n:03}") } else { format!("gw:d{h}:{n}") };
                        let k = key(&mut dict, t, &id);
                        let f = fact(&mut dict, n + t as u64, score);
                        let old = p.insert(k.clone(), f, &mut dict);
                        let expected = model.insert(k, f);
                        prop_assert_eq!(old.is_some(), expected.is_some());
                    }
                    Op::Remove(i) => {
                        if let Some(k) = model.keys().nth(i % model.len().max(1)).cloned() {
                            let got = p.remove(&k, &mut dict);
                            let expected = model.remove(&k);
                            prop_assert!(same(&got.unwrap(), &expected.unwrap()));
                        }
                    }
                    Op::Drain(cut) => {
                        let got: Vec<Key> = p.drain_before(cut, &mut dict).into_iter().map(|(k, _)| k).collect();
                        let rest = model.split_off(&(cut, PunchId::empty()));
                        let expected: Vec<Key> = std::mem::replace(&mut model, rest).into_keys().collect();
                        prop_assert_eq!(got, expected);
                    }
                }
                prop_assert_eq!(p.len(), model.len());
            }
            let all: Vec<(Key, Fact)> = p.iter(&dict).collect();
            prop_assert_eq!(all.len(), model.len());
            for ((gk, gf), (mk, mf)) in all.iter().zip(&model) {
                prop_assert_eq!(gk, mk);
                prop_assert!(same(gf, mf));
            }
            for (k, f) in &model {
                prop_assert!(same(&p.get(k, &dict).unwrap(), f));
            }
            prop_assert!(p.get(&key(&mut dict, 5, "gw:absent:1"), &dict).is_none());
            let (from, to) = (100, 250);
            let got: Vec<Key> = p.between(from, to, &dict).map(|(k, _)| k).collect();
            let expected: Vec<Key> = model.keys().filter(|(t, _)| (from..=to).contains(t)).cloned().collect();
            prop_assert_eq!(got, expected);
        }
    }
}
