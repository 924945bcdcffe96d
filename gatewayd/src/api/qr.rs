//! Rotating QR codes (SPEC section 3.5): RFC 6238 time-based codes (HMAC-SHA1, 6 digits, 30 s steps) keyed per gateway.
//! A kiosk shows the current code (`GET /api/v1/qr/current`); a QR punch must carry a code of its step or the one before.
//!
//! # Key layout (sled tree `qr`)
//! | key   | value                                   |
//! |-------|-----------------------------------------|
//! | `key` | the gateway's 20-byte secret, generated once |
//!
//! The secret is created with compare-and-swap, so two first starts agree on one secret; it never leaves the store.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rand::RngCore;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

use crate::telemetry::{registered, Metrics, StageMetrics};

/// Seconds one code is shown for.
pub const STEP_S: u64 = 30;
/// Digits of a code.
pub const DIGITS: usize = 6;
/// How many steps back a code is recognised as expired (older: not a code of this gateway).
const RECOGNISED_STEPS: u64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum QrError {
    #[error("qr key: {0}")]
    Sled(#[from] sled::Error),
    #[error("qr key: {0}")]
    Key(String),
}

/// Why a QR punch was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Expired,
    Forged,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Expired => "expired",
            Refusal::Forged => "forged",
        }
    }

    /// The reason answered to the client.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "qr: the punch carries no code (scan the code the site's kiosk shows)",
            Refusal::Expired => "qr: the code has expired (codes are valid for their 30 s step and the one before)",
            Refusal::Forged => "qr: the code was not issued by this gateway",
        }
    }
}

/// The gateway's code generator. Cheap to clone.
#[derive(Clone)]
pub struct QrCodes {
    totp: std::sync::Arc<TOTP>,
}

impl std::fmt::Debug for QrCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QrCodes").finish_non_exhaustive()
    }
}

impl QrCodes {
    /// Opens the gateway's key, creating it on first use.
    pub fn open(db: &sled::Db) -> Result<QrCodes, QrError> {
        let tree = db.open_tree("qr")?;
        let mut fresh = [0u8; 20];
        rand::rng().fill_bytes(&mut fresh);
        let _ = tree.compare_and_swap(b"key", None as Option<&[u8]>, Some(&fresh[..]))?;
        tree.flush()?;
        let key = tree.get(b"key")?.ok_or_else(|| QrError::Key("missing after creation".into()))?;
        QrCodes::from_key(key.to_vec())
    }

    /// Codes from a given secret (at least 16 bytes).
    pub fn from_key(key: Vec<u8>) -> Result<QrCodes, QrError> {
        let totp = TOTP::new(Algorithm::SHA1, DIGITS, 1, STEP_S, key).map_err(|e| QrError::Key(e.to_string()))?;
        Ok(QrCodes { totp: std::sync::Arc::new(totp) })
    }

    /// The code shown at `now_s` (Unix seconds) and the second its step ends.
    pub fn current(&self, now_s: u64) -> (String, u64) {
        (self.totp.generate(now_s), (now_s / STEP_S + 1) * STEP_S)
    }

    /// Checks a code against the step of `at_s` and the one before.
    pub fn check(&self, code: Option<&str>, at_s: u64) -> Result<(), Refusal> {
        let code = code.map(str::trim).filter(|c| !c.is_empty()).ok_or(Refusal::Missing)?;
        let matches = |steps_back: u64| {
            let t = at_s.saturating_sub(steps_back * STEP_S);
            bool::from(self.totp.generate(t).as_bytes().ct_eq(code.as_bytes()))
        };
        if matches(0) || matches(1) {
            Ok(())
        } else if (2..=RECOGNISED_STEPS).any(matches) {
            Err(Refusal::Expired)
        } else {
            Err(Refusal::Forged)
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The API's trust checks.
#[derive(Debug)]
pub struct TrustMetrics {
    pub qr_refused: Family<ReasonLabel, Counter>,
}

impl StageMetrics for TrustMetrics {
    fn register(registry: &mut Registry) -> TrustMetrics {
        TrustMetrics {
            qr_refused: registered(
                registry,
                "gatewayd_api_qr_refused",
                "QR punches refused, by reason (missing, expired, forged)",
                Family::default(),
            ),
        }
    }
}

/// The event of a refused QR punch: logged and counted.
pub fn qr_refused(metrics: &Metrics, reason: Refusal) {
    tracing::warn!(reason = reason.as_str(), "qr punch refused");
    if let Some(m) = metrics.get::<TrustMetrics>() {
        m.qr_refused.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_valid_for_their_step_and_the_one_before() {
        let q = QrCodes::from_key(vec![7; 20]).unwrap();
        let t = 1_795_827_615;
        let (code, until) = q.current(t);
        assert_eq!(code.len(), DIGITS);
        assert_eq!(until, 1_795_827_630);
        assert_eq!(q.check(Some(&code), t), Ok(()));
        assert_eq!(q.check(Some(&code), t + 30), Ok(()), "the step after still takes it");
        assert_eq!(q.check(Some(&code), t + 60), Err(Refusal::Expired), "two steps old");
        assert_eq!(q.check(None, t), Err(Refusal::Missing));
        assert_eq!(q.check(Some("  "), t), Err(Refusal::Missing));
        let other = QrCodes::from_key(vec![8; 20]).unwrap();
        let forged = other.current(t).0;
        if forged != code {
            assert_eq!(q.check(Some(&forged), t), Err(Refusal::Forged));
        }
        for junk in ["x", "1234567", "12345\u{0}", "€€€€€€"] {
            assert!(q.check(Some(junk), t).is_err(), "{junk}");
        }
        assert!(QrCodes::from_key(vec![1; 4]).is_err(), "short keys are refused");
    }

    #[test]
    fn the_key_is_made_once_and_kept() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let a = QrCodes::open(&db).unwrap();
        let b = QrCodes::open(&db).unwrap();
        assert_eq!(a.current(100).0, b.current(100).0);
    }
}
