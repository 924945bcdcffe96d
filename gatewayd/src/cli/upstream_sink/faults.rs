//! Fault injection for the reference receiver (`gatewayd upstream-sink --fail PLAN`), to test senders against it.
//!
//! A plan is a comma-separated list of steps applied to successive batch requests; once it is used up every request is
//! answered normally. Each step may repeat: `STEP*N`.
//!
//! | step        | what the receiver does with that request                                              |
//! |-------------|---------------------------------------------------------------------------------------|
//! | `ok`        | answers normally                                                                      |
//! | `500`..`599`| answers with that status, without applying the batch                                  |
//! | `400`..`499`| answers with that status and an `UploadAck { accepted: false }`, without applying it   |
//! | `reject`    | answers 200 with `UploadAck { accepted: false }`, without applying it                 |
//! | `reset`     | applies the batch, then closes the connection without an answer (the ack is lost)     |
//! | `drop`      | closes the connection without applying the batch or answering                         |
//! | `slow=MS`   | waits MS milliseconds, then answers normally                                          |
//!
//! Example: `503*3,reset,slow=2000,ok*10,422`.

use std::collections::VecDeque;
use std::time::Duration;

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Ok,
    Status(u16),
    Reject,
    Reset,
    Drop,
    Slow(Duration),
}

/// Most repetitions of one step, and most steps in a plan (a plan is for tests, not a program).
pub const MAX_REPEAT: u32 = 1_000_000;
pub const MAX_STEPS: usize = 1000;

/// A parsed plan: the faults still to come.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    steps: VecDeque<(Fault, u32)>,
}

impl FaultPlan {
    /// Parses a plan; the error names the step that is wrong.
    pub fn parse(text: &str) -> Result<FaultPlan, String> {
        let mut steps = VecDeque::new();
        if text.trim().is_empty() {
            return Ok(FaultPlan { steps });
        }
        for raw in text.split(',') {
            let step = raw.trim();
            let (what, times) = match step.split_once('*') {
                Some((w, n)) => {
                    let n: u32 = n.trim().parse().map_err(|_| format!("`{step}`: `{n}` is not a repeat count"))?;
                    if n == 0 || n > MAX_REPEAT {
                        return Err(format!("`{step}`: repeat count must be 1..{MAX_REPEAT}"));
                    }
                    (w.trim(), n)
                }
                None => (step, 1),
            };
            let fault = match what {
                "ok" => Fault::Ok,
                "reject" => Fault::Reject,
                "reset" => Fault::Reset,
                "drop" => Fault::Drop,
                _ => {
                    if let Some(ms) = what.strip_prefix("slow=") {
                        let ms: u64 = ms.parse().map_err(|_| format!("`{step}`: `{ms}` is not milliseconds"))?;
                        if ms > 600_000 {
                            return Err(format!("`{step}`: at most 600000 ms"));
                        }
                        Fault::Slow(Duration::from_millis(ms))
                    } else {
                        match what.parse::<u16>() {
                            Ok(code) if (400..=599).contains(&code) => Fault::Status(code),
                            _ => {
                                return Err(format!(
                                    "`{step}` is not a step (ok, reject, reset, drop, slow=MS, or a status 400..599)"
                                ))
                            }
                        }
                    }
                }
            };
            if steps.len() >= MAX_STEPS {
                return Err(format!("more than {MAX_STEPS} steps"));
            }
            steps.push_back((fault, times));
        }
        Ok(FaultPlan { steps })
    }

    /// The fault for the next request.
    pub fn next_fault(&mut self) -> Fault {
        let Some((fault, left)) = self.steps.front_mut() else { return Fault::Ok };
        let fault = *fault;
        *left -= 1;
        if *left == 0 {
            self.steps.pop_front();
        }
        fault
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_run_out() {
        let mut p = FaultPlan::parse("503*2, reset,slow=15,422,reject,drop").unwrap();
        let got: Vec<Fault> = (0..8).map(|_| p.next_fault()).collect();
        assert_eq!(
            got,
            vec![
                Fault::Status(503),
                Fault::Status(503),
                Fault::Reset,
                Fault::Slow(Duration::from_millis(15)),
                Fault::Status(422),
                Fault::Reject,
                Fault::Drop,
                Fault::Ok
            ]
        );
        assert!(p.is_empty());
        assert!(FaultPlan::parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_plans_name_the_step() {
        for (bad, needle) in [
            ("503*x", "`503*x`"),
            ("503*0", "repeat count"),
            ("200", "`200` is not a step"),
            ("slow=abc", "milliseconds"),
            ("slow=9999999", "at most"),
            ("ok,,ok", "`` is not a step"),
            ("boom", "`boom`"),
            ("*3", "`*3` is not a step"),
        ] {
            let e = FaultPlan::parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in ".{0,64}") {
            if let Ok(mut p) = FaultPlan::parse(&text) {
                for _ in 0..8 {
                    p.next_fault();
                }
            }
        }
    }
}
