//! Jittered exponential backoff, for everything that retries: device links ([`crate::transport::Link`]), the
//! daemon's supervisor of driver tasks, and the daemon's outbox and upstream retries.
//!
//! [`Backoff`] is the policy: the delay before attempt `n` is `initial * 2^n`, capped at `max`, each delay drawn from
//! 75%..125% of that (and still at most `max`), so a site full of readers that lost power together does not reconnect
//! in lockstep. A run that lasted `stable_after` counts as a success and starts the delays over. [`Retries`] counts
//! the attempts of one retrying thing against a policy.

use std::time::Duration;

use rand::Rng;

/// A backoff policy. The named constructors are the policies in use; the fields are public for the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// A run at least this long resets the delays to `initial`.
    pub stable_after: Duration,
}

/// The supervisor's policy ([`Backoff::supervisor`]).
impl Default for Backoff {
    fn default() -> Self {
        Backoff::supervisor()
    }
}

impl Backoff {
    /// Reopening a device link: 100 ms up to 10 s; a session of 5 s is stable. A device that accepts the link and
    /// drops it at once is retried with growing delays rather than in a tight loop.
    pub const fn link() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            stable_after: Duration::from_secs(5),
        }
    }

    /// Restarting a failed task (the daemon's supervisor): 200 ms up to 30 s; a run of a minute is stable.
    pub const fn supervisor() -> Backoff {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
        }
    }

    /// The delay before attempt `attempt` (0-based), with random jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.jittered(attempt, rand::rng().random_range(0.75..1.25))
    }

    /// The delay before attempt `attempt` (0-based) with the jitter factor `jitter` (drawn from 0.75..1.25):
    /// `initial * 2^attempt` capped at `max`, times `jitter`, capped at `max` again.
    pub fn jittered(&self, attempt: u32, jitter: f64) -> Duration {
        let base = self.initial.saturating_mul(1u32 << attempt.min(16)).min(self.max);
        base.mul_f64(jitter).min(self.max)
    }
}

/// The attempts of one retrying thing (a device link, a supervised task) under a [`Backoff`] policy.
#[derive(Clone, Debug)]
pub struct Retries {
    policy: Backoff,
    attempt: u32,
}

impl Retries {
    pub fn new(policy: Backoff) -> Retries {
        Retries { policy, attempt: 0 }
    }

    pub fn policy(&self) -> &Backoff {
        &self.policy
    }

    /// The delay before the next attempt; each call grows the next one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.policy.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// A run that worked for `lasted` ended: if it was stable, the delays start over. Returns whether it was.
    pub fn ran_for(&mut self, lasted: Duration) -> bool {
        let stable = lasted >= self.policy.stable_after;
        if stable {
            self.reset();
        }
        stable
    }

    /// Back to the initial delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(non_snake_case)]
    fn MS(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_from_initial_and_cap_at_max() {
        let b = Backoff { initial: MS(100), max: Duration::from_secs(2), stable_after: Duration::from_secs(5) };
        let plain: Vec<Duration> = (0..7).map(|n| b.jittered(n, 1.0)).collect();
        assert_eq!(plain, [MS(100), MS(200), MS(400), MS(800), MS(1600), MS(2000), MS(2000)]);
        // The shift stops growing at 2^16; huge attempt numbers neither overflow nor exceed the cap.
        assert_eq!(b.jittered(u32::MAX, 1.0), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_within_a_quarter_and_under_the_cap() {
        let b = Backoff::link();
        assert_eq!(b.jittered(0, 0.75), MS(75));
        assert_eq!(b.jittered(0, 1.25), MS(125));
        // Near the cap, the upper jitter is cut at max.
        assert_eq!(b.jittered(10, 1.25), Duration::from_secs(10));
        for attempt in 0..40 {
            let d = b.delay(attempt);
            assert!(d >= b.jittered(attempt, 0.75) && d <= b.jittered(attempt, 1.25), "{attempt}: {d:?}");
        }
    }

    #[test]
    fn the_named_policies() {
        assert_eq!(
            (Backoff::link().initial, Backoff::link().max, Backoff::link().stable_after),
            (MS(100), Duration::from_secs(10), Duration::from_secs(5))
        );
        assert_eq!(
            (Backoff::supervisor().initial, Backoff::supervisor().max, Backoff::supervisor().stable_after),
            (MS(200), Duration::from_secs(30), Duration::from_secs(60))
        );
        assert_eq!(Backoff::default(), Backoff::supervisor());
    }

    #[test]
    fn retries_grow_and_a_stable_run_starts_them_over() {
        let mut r = Retries::new(Backoff { initial: MS(100), max: Duration::from_secs(2), stable_after: MS(500) });
        let first = r.next_delay();
        assert!(first >= MS(75) && first <= MS(125), "{first:?}");
        for _ in 0..3 {
            r.next_delay();
        }
        let fifth = r.next_delay();
        assert!(fifth >= MS(1200), "{fifth:?}");
        assert_eq!(r.attempts(), 5);
        // A short run keeps the count; a stable one resets it.
        assert!(!r.ran_for(MS(499)));
        assert_eq!(r.attempts(), 5);
        assert!(r.ran_for(MS(500)));
        assert_eq!(r.attempts(), 0);
        assert!(r.next_delay() <= MS(125));
        r.reset();
        assert_eq!(r.attempts(), 0);
    }
}
