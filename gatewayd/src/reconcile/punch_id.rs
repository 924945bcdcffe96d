//! Punch ids as the engine keeps them: without an allocation per punch.
//!
//! The engine keeps every punch of its horizon in memory (hundreds of thousands at a busy site), and almost every id
//! is `{gateway}:{device}:{n}` (MQTT, serial and Bluetooth devices number their punches). Such an id is kept as the
//! device's shared head `{gateway}:{device}:` and the number; any other id is kept whole. Both forms compare, hash
//! and print exactly as the id's text does, so ordering punches by (time, id) is the same as with plain strings.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// `n` of an id kept whole.
const WHOLE: u64 = u64::MAX;

/// A punch id: a head and a number (see the module documentation). Built only by [`PunchId::new`], so one text has
/// exactly one form, and the derived equality and hash agree with the text's.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PunchId {
    head: Arc<str>,
    n: u64,
}

/// Splits an id into its head (up to and including the last `:`) and its number: a numbered id as the store's index
/// reads it ([`crate::store::index::numbered`]: canonical decimal only), below `u64::MAX`.
pub fn split(id: &str) -> Option<(&str, u64)> {
    let (prefix, n) = crate::store::index::numbered(id)?;
    (n != WHOLE).then_some((&id[..prefix.len() + 1], n))
}

/// The decimal digits of `n`, most significant first, in a fixed buffer.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn of(mut n: u64) -> Digits {
        let mut buf = [0u8; 20];
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Digits { buf, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl PunchId {
    /// The id `text`. `head` gives the shared head for a numbered id (the engine's interner).
    pub fn new(text: &str, head: impl FnOnce(&str) -> Arc<str>) -> PunchId {
        match split(text) {
            Some((h, n)) => PunchId { head: head(h), n },
            None => PunchId { head: Arc::from(text), n: WHOLE },
        }
    }

    /// A numbered id from its head and number, as [`PunchId::parts`] gave them.
    pub fn from_head(head: Arc<str>, n: u64) -> PunchId {
        PunchId { head, n }
    }

    /// The head and number of a numbered id, or the text of an id kept whole.
    pub fn parts(&self) -> Result<(&Arc<str>, u64), &str> {
        if self.n == WHOLE {
            Err(&self.head)
        } else {
            Ok((&self.head, self.n))
        }
    }

    /// An empty id: sorts before every other.
    pub fn empty() -> PunchId {
        PunchId { head: Arc::from(""), n: WHOLE }
    }

    /// The id's text (what `to_string` gives, without the formatting machinery: the engine writes every id of a record
    /// into each of its revisions).
    pub fn text(&self) -> String {
        let digits = self.digits();
        let tail = digits.as_ref().map_or(&[][..], Digits::as_bytes);
        let mut out = String::with_capacity(self.head.len() + tail.len());
        out.push_str(&self.head);
        // Digits are ASCII.
        out.extend(tail.iter().map(|&b| char::from(b)));
        out
    }

    fn digits(&self) -> Option<Digits> {
        (self.n != WHOLE).then(|| Digits::of(self.n))
    }
}

impl Ord for PunchId {
    fn cmp(&self, other: &PunchId) -> Ordering {
        let (a, b) = (self.digits(), other.digits());
        let a_tail = a.as_ref().map_or(&[][..], Digits::as_bytes);
        let b_tail = b.as_ref().map_or(&[][..], Digits::as_bytes);
        if Arc::ptr_eq(&self.head, &other.head) {
            return a_tail.cmp(b_tail);
        }
        self.head.bytes().chain(a_tail.iter().copied()).cmp(other.head.bytes().chain(b_tail.iter().copied()))
    }
}

impl PartialOrd for PunchId {
    fn partial_cmp(&self, other: &PunchId) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for PunchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.head)?;
        if let Some(d) = self.digits() {
            // Digits are ASCII.
            f.write_str(std::str::from_utf8(d.as_bytes()).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for PunchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> PunchId {
        PunchId::new(s, |h| Arc::from(h))
    }

    #[test]
    fn numbered_ids_split_at_the_last_colon() {
        assert_eq!(split("gw:dev-1:42"), Some(("gw:dev-1:", 42)));
        assert_eq!(split("gw:dev-1:0"), Some(("gw:dev-1:", 0)));
        assert_eq!(split(":7"), Some((":", 7)));
        assert_eq!(split("gw:dev-1:18446744073709551614"), Some(("gw:dev-1:", u64::MAX - 1)));
    }

    #[test]
    fn other_ids_are_kept_whole() {
        for s in [
            "",
            "no-colon-42",
            "gw:dev:",
            "gw:dev:007",
            "gw:dev:+7",
            "gw:dev:-7",
            "gw:dev:4a",
            "gw:dev:h3f9c",
            "gw:dev:18446744073709551615",
            "gw:dev:99999999999999999999999",
            "gw:dev:٣",
        ] {
            assert_eq!(split(s), None, "{s}");
            let p = id(s);
            assert_eq!(p.to_string(), s);
            assert_eq!(p.n, WHOLE);
        }
    }

    #[test]
    fn numbers_sort_as_text_does() {
        // "10" sorts before "9" as text, and so it does here.
        assert!(id("gw:d:10") < id("gw:d:9"));
        assert!(id("gw:d:1") < id("gw:d:10"));
        assert!(id("gw:d:9") < id("gw:e:1"));
        assert!(id("gw:d:1") < id("gw:d:1x"));
        assert_eq!(id("gw:d:5").cmp(&id("gw:d:5")), Ordering::Equal);
        assert!(PunchId::empty() < id("a"));
    }

    proptest! {
        /// Text, equality and order are those of the id's text, whatever the mix of forms and heads.
        #[test]
        fn behaves_as_its_text(
            a in "(gw|g)(:[a-z0-9]{0,3}){0,2}:([0-9]{1,20}|[a-z0-9]{0,4})",
            b in "(gw|g)(:[a-z0-9]{0,3}){0,2}:([0-9]{1,20}|[a-z0-9]{0,4})",
            shared in any::<bool>(),
        ) {
            let head: Arc<str> = Arc::from("gw:x:");
            let make = |s: &str| PunchId::new(s, |h| if shared && h == &*head { head.clone() } else { Arc::from(h) });
            let (pa, pb) = (make(&a), make(&b));
            prop_assert_eq!(pa.to_string(), a.clone());
            prop_assert_eq!(pa.text(), a.clone());
            prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
            prop_assert_eq!(pa == pb, a == b);
        }
    }
}
