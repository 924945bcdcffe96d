//! Backpressure from the store to the device: at most [`WINDOW`] punches of one device between the front and the
//! store's answer.
//!
//! Why: rumqttd keeps publishes in an in-memory commit log of a fixed size per filter and, when a subscriber (here the
//! ingest link) falls behind by more than that, drops the oldest segment and moves the subscriber forward. The device
//! already had its PUBACK, so those punches would reach the store only when the device re-sends them after missing the
//! durable ack. The broker offers no way to slow a publisher down for a slow subscriber, so the front does it: it counts
//! each device's punch publishes it forwards, the ingest counts each punch it answered (stored, rejected, or given up on
//! transiently), and when a device has [`WINDOW`] punches unanswered the front stops reading from that device until the
//! store catches up; TCP then holds the device back. With `WINDOW` punches per device the commit log holds far less
//! than its capacity for any realistic number of devices, so nothing is dropped.
//!
//! A punch the ingest never sees (a connection cut between the front and the broker in the middle of a frame) would
//! hold a slot forever; when a full window sees no answer for [`STALL`], the front forgets the unanswered punches of the
//! device and lets it continue (they are re-sent by the device, which has no durable ack for them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

/// Most punches of one device between the front and the store's answer.
pub const WINDOW: u64 = 32;
/// How long a full window may go without any answer before its unanswered punches are forgotten.
pub const STALL: Duration = Duration::from_secs(2);

/// One device's counts.
#[derive(Debug, Default)]
pub struct DeviceWindow {
    forwarded: AtomicU64,
    answered: AtomicU64,
    progress: Notify,
}

impl DeviceWindow {
    /// Punches forwarded and not answered yet.
    pub fn unanswered(&self) -> u64 {
        self.forwarded.load(Ordering::Acquire).saturating_sub(self.answered.load(Ordering::Acquire))
    }

    /// The front forwarded `n` punch publishes.
    pub fn forwarded(&self, n: u64) {
        self.forwarded.fetch_add(n, Ordering::AcqRel);
    }

    /// Waits until the device may send another punch: fewer than [`WINDOW`] unanswered. Returns `false` when it gave up
    /// waiting after [`STALL`] without progress (the unanswered punches are then forgotten).
    pub async fn wait_for_room(&self) -> bool {
        self.wait_for_room_within(STALL).await
    }

    async fn wait_for_room_within(&self, stall: Duration) -> bool {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.unanswered() < WINDOW {
                return true;
            }
            if tokio::time::timeout(stall, notified).await.is_err() {
                self.answered.fetch_max(self.forwarded.load(Ordering::Acquire), Ordering::AcqRel);
                return false;
            }
        }
    }

    fn answer(&self, n: u64) {
        self.answered.fetch_add(n, Ordering::AcqRel);
        self.progress.notify_waiters();
    }
}

/// Every device's window. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    devices: Arc<RwLock<HashMap<String, Arc<DeviceWindow>>>>,
}

impl Windows {
    /// The window of `device` (created on first use; devices are few and known, so entries are never removed).
    pub fn of(&self, device: &str) -> Arc<DeviceWindow> {
        if let Some(w) = self.devices.read().ok().and_then(|m| m.get(device).cloned()) {
            return w;
        }
        match self.devices.write() {
            Ok(mut m) => m.entry(device.to_owned()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// The ingest answered `n` punches of `device` (stored, rejected, or given up on).
    pub fn answered(&self, device: &str, n: u64) {
        if let Some(w) = self.devices.read().ok().and_then(|m| m.get(device).cloned()) {
            w.answer(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_window_waits_for_answers() {
        let windows = Windows::default();
        let w = windows.of("d1");
        w.forwarded(WINDOW);
        assert_eq!(w.unanswered(), WINDOW);
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.wait_for_room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        windows.answered("d1", 1);
        assert!(waiter.await.unwrap(), "room after an answer, not after a stall");
        assert_eq!(w.unanswered(), WINDOW - 1);
        windows.answered("unknown", 5); // no window, nothing happens
    }

    #[tokio::test]
    async fn a_stalled_window_is_forgotten() {
        let w = Windows::default().of("d1");
        w.forwarded(WINDOW + 3);
        assert!(!w.wait_for_room_within(Duration::from_millis(20)).await);
        assert_eq!(w.unanswered(), 0);
    }
}
