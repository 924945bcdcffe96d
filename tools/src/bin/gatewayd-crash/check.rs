//! The end-of-run checks of `gatewayd-crash`: what the devices saw acknowledged against what the receiver got.

use std::collections::HashMap;
use std::path::Path;

/// A punch as a device made it (a re-send repeats it exactly).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub device_time_ms: i64,
    pub employee: String,
}

impl Sent {
    /// A new punch with sequence number `seq`, timed now less `backdate_ms` (millisecond precision, as the gateway
    /// stores it).
    pub fn new(seq: u64, backdate_ms: i64) -> Sent {
        Sent {
            device_time_ms: jiff::Timestamp::now().as_millisecond() - backdate_ms,
            employee: format!("E{}", 1000 + seq % 500),
        }
    }

    /// The MQTT payload of this punch.
    pub fn payload(&self, seq: u64) -> String {
        let time = jiff::Timestamp::from_millisecond(self.device_time_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        format!(r#"{{"seq":{seq},"time":"{time}","method":"face","employee":"{}"}}"#, self.employee)
    }
}

/// One punch as the receiver wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Got {
    pub device_time_ms: i64,
    pub employee: String,
    /// Lines in the receiver's file with this punch_id.
    pub lines: usize,
}

/// The punches in the receiver's `--out` file.
#[derive(Debug, Default)]
pub struct Delivered {
    pub lines: usize,
    pub by_id: HashMap<String, Got>,
}

impl Delivered {
    /// Reads the receiver's JSON lines (a missing file is an empty delivery).
    pub fn read(path: &Path) -> anyhow::Result<Delivered> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(Delivered::parse(&text))
    }

    pub fn parse(text: &str) -> Delivered {
        let mut d = Delivered::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if v["kind"] != "punch" {
                continue;
            }
            let Some(id) = v["punch_id"].as_str() else { continue };
            d.lines += 1;
            let got = Got {
                device_time_ms: v["device_time_ms"].as_i64().unwrap_or(0),
                employee: v["employee_id"].as_str().unwrap_or("").to_owned(),
                lines: 1,
            };
            d.by_id
                .entry(id.to_owned())
                .and_modify(|g| {
                    g.lines += 1;
                    // A second line with other content is remembered as a mismatch.
                    if g.device_time_ms != got.device_time_ms || g.employee != got.employee {
                        g.device_time_ms = i64::MIN;
                    }
                })
                .or_insert(got);
        }
        d
    }
}

/// The verdict.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub acked_delivered: usize,
}

/// Every acknowledged punch delivered; each delivered punch once, with the content its device sent; nothing delivered
/// that no device sent.
pub fn check(sent: &HashMap<String, Sent>, acked: &[String], delivered: &Delivered) -> Report {
    let mut r = Report::default();
    let mut lost = Vec::new();
    for id in acked {
        if delivered.by_id.contains_key(id) {
            r.acked_delivered += 1;
        } else {
            lost.push(id.as_str());
        }
    }
    if !lost.is_empty() {
        lost.sort_unstable();
        let shown: Vec<&str> = lost.iter().take(20).copied().collect();
        r.problems.push(format!(
            "{} acknowledged punches never reached the receiver (lost), e.g. {}",
            lost.len(),
            shown.join(", ")
        ));
    }
    let mut ids: Vec<&String> = delivered.by_id.keys().collect();
    ids.sort_unstable();
    for id in ids {
        let got = &delivered.by_id[id];
        if got.lines > 1 {
            r.problems.push(format!("{id} is in the receiver's file {} times", got.lines));
        }
        match sent.get(id) {
            None => r.problems.push(format!("{id} was delivered but no device sent it")),
            Some(s) if s.device_time_ms != got.device_time_ms || s.employee != got.employee => {
                r.problems.push(format!(
                    "{id} was delivered as ({}, {}) but its device sent ({}, {}): one id, two different punches",
                    got.employee, got.device_time_ms, s.employee, s.device_time_ms
                ))
            }
            Some(_) => {}
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, t: i64, e: &str) -> String {
        format!(
            r#"{{"kind":"punch","gateway_id":"gw","batch_seq":1,"punch_id":"{id}","device_time_ms":{t},"employee_id":"{e}"}}"#
        )
    }

    fn sent() -> HashMap<String, Sent> {
        [("a", 1), ("b", 2), ("c", 3)]
            .into_iter()
            .map(|(id, t)| (id.to_owned(), Sent { device_time_ms: t, employee: "E1".into() }))
            .collect()
    }

    #[test]
    fn a_clean_run_passes() {
        let text = [line("a", 1, "E1"), line("b", 2, "E1"), r#"{"kind":"record","record_id":"x"}"#.into()].join("\n");
        let r = check(&sent(), &["a".into(), "b".into()], &Delivered::parse(&text));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.acked_delivered, 2);
    }

    #[test]
    fn a_lost_punch_a_duplicate_another_content_and_an_invented_id_are_each_reported() {
        let text = [line("a", 1, "E1"), line("a", 1, "E1"), line("b", 9, "E1"), line("z", 1, "E1")].join("\n");
        let r = check(&sent(), &["a".into(), "b".into(), "c".into()], &Delivered::parse(&text));
        let all = r.problems.join("\n");
        assert!(all.contains("1 acknowledged punches never reached the receiver (lost), e.g. c"), "{all}");
        assert!(all.contains("a is in the receiver's file 2 times"), "{all}");
        assert!(all.contains("b was delivered as (E1, 9)"), "{all}");
        assert!(all.contains("z was delivered but no device sent it"), "{all}");
        assert_eq!(r.problems.len(), 4);
    }

    #[test]
    fn the_payload_carries_millisecond_time() {
        let s = Sent { device_time_ms: 1_795_827_570_123, employee: "E7".into() };
        let p: serde_json::Value = serde_json::from_str(&s.payload(5)).unwrap();
        assert_eq!(p["seq"], 5);
        let t: jiff::Timestamp = p["time"].as_str().unwrap().parse().unwrap();
        assert_eq!(t.as_millisecond(), 1_795_827_570_123);
    }
}
