//! The local API's request bodies through the same checks the handlers run: `POST /api/v1/punches`,
//! `PUT /api/v1/employees`, `POST /api/v1/employees/import`, `POST /api/v1/approvals`, approve/reject decisions and
//! `PUT /api/v1/rules`, `POST /api/v1/leave`. The first byte picks the endpoint; the rest is the body.
#![no_main]

use gatewayd::api::v1::{self, Decision, EmployeeIn, LeaveRequest, MakeupRequest, PunchRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 7 {
        0 => {
            if let Ok(req) = serde_json::from_slice::<PunchRequest>(body) {
                let now = 1_795_827_600_000;
                match v1::punch_from_request(req, "E1".into(), "tok", now, 4 * 3_600_000) {
                    Ok(v1::Posted::Punch(p)) => {
                        assert!(matches!(p.method, drivers::Method::Gps | drivers::Method::Qr | drivers::Method::Wifi));
                        assert_eq!(p.device_time_ms, now, "timed by the gateway");
                    }
                    Ok(v1::Posted::OfflineClaim(gatewayd::reconcile::approvals::Kind::OfflineClaim { time_ms, .. })) => {
                        assert!((now - 4 * 3_600_000..=now).contains(&time_ms));
                    }
                    Ok(other) => panic!("not a punch body: {other:?}"),
                    Err(_) => {}
                }
            }
        }
        1 => {
            if let Ok(list) = serde_json::from_slice::<Vec<EmployeeIn>>(body) {
                let _ = v1::roster_from_employees(list);
            }
        }
        2 => {
            if let Ok(roster) = v1::roster_from_csv(body) {
                // An imported roster exports to CSV that imports to the same roster.
                let again = v1::roster_from_csv(roster.to_csv().as_bytes());
                assert_eq!(again.ok().as_ref(), Some(&roster));
            }
        }
        3 => {
            if let Ok(req) = serde_json::from_slice::<MakeupRequest>(body) {
                let _ = v1::parse_time(&req.time);
            }
        }
        4 => {
            let _ = Decision::from_body(body);
        }
        5 => {
            if let Ok(req) = serde_json::from_slice::<LeaveRequest>(body) {
                let _ = gatewayd::reconcile::leave::LeaveType::parse(&req.leave_type);
                let tz = jiff::tz::TimeZone::get("Asia/Shanghai").expect("bundled zone");
                if let Ok(p) = gatewayd::reconcile::leave::Period::parse(&req.from, &req.to, &tz) {
                    // A leave overlaps itself, and its dates are in order.
                    assert!(p.overlaps(&p, &tz));
                    let (from, to) = p.dates(&tz);
                    assert!(from <= to);
                }
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(body) {
                let _ = gatewayd::reconcile::rules::Rules::parse(std::path::Path::new("rules.toml"), text);
            }
        }
    }
});
