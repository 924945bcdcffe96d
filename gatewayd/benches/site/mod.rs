//! The simulated site both engine benchmarks use (`reconcile`: a month in memory; `backfill`: 60 days from the
//! store): the rules, the roster, and each day's punches from a deterministic generator, so every run sees the same
//! data. The rules keep the default horizon (`reconcile_days`, 31 days).

use jiff::civil::Date;
use jiff::tz::TimeZone;

use drivers::Method;
use gatewayd::reconcile::roster::Roster;

/// Day and night shifts, and a group with dual verification (fingerprint then card).
pub const RULES: &str = r#"
dedupe_window = "5m"
max_clock_skew = "5m"

[[shift]]
id = "day"
start = "09:00"
end = "18:00"
late_grace = "10m"
opens_before = "2h"
closes_after = "6h"
overtime_after = "30m"

[[shift]]
id = "night"
start = "22:00"
end = "06:00"
late_grace = "10m"
opens_before = "2h"
closes_after = "4h"

[[group]]
id = "office"
departments = ["D-OFF"]
shift = "day"
workdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

[[group]]
id = "nights"
departments = ["D-NIGHT"]
shift = "night"
workdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

[[group]]
id = "secure"
departments = ["D-SEC"]
shift = "day"
workdays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
verification = { require = ["fingerprint", "card"], window = "15m" }
"#;

/// A small deterministic generator (xorshift), so every run sees the same punches.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n) as i64
    }
}

/// The department of employee `e`: one in 20 works nights, one in 20 needs dual verification.
pub fn department(e: usize) -> &'static str {
    match e % 20 {
        0 => "D-NIGHT",
        1 => "D-SEC",
        _ => "D-OFF",
    }
}

/// The card UID of employee `e` (in the roster and on card punches).
pub fn card(e: usize) -> String {
    format!("{:08X}", 0x1000_0000 + e)
}

/// The roster of `employees` employees, each with a card.
pub fn roster(employees: usize) -> Roster {
    let mut csv = String::from("employee,name,department,card\n");
    for e in 0..employees {
        csv.push_str(&format!("E{e:05},Employee {e},{},{}\n", department(e), card(e)));
    }
    Roster::parse_csv(&csv).expect("roster")
}

/// One day's punches of `employees` employees, unsorted, handed to `push(employee, method, by card, time)`: morning
/// clock-in with jitter (some late), a lunch out/in pair (the second sometimes a re-sent duplicate within the dedupe
/// window), an evening clock-out (some early, some overtime); nights across midnight; dual verification twice a day;
/// one absence in 50.
pub fn day(tz: &TimeZone, date: Date, employees: usize, rng: &mut Rng, mut push: impl FnMut(usize, Method, bool, i64)) {
    let at = |h: i8, m: i8, jitter_s: i64| -> i64 {
        tz.to_timestamp(date.at(h, m, 0, 0)).expect("time").as_millisecond() + jitter_s * 1000
    };
    for e in 0..employees {
        if rng.below(50) == 0 {
            continue; // absent
        }
        let (h_in, h_out) = if department(e) == "D-NIGHT" { (21, 6) } else { (8, 18) };
        let tin = at(h_in, 45, rng.below(40 * 60));
        let tout = at(h_out, 0, rng.below(60 * 60) - 20 * 60) + if h_out == 6 { 86_400_000 } else { 0 };
        if department(e) == "D-SEC" {
            push(e, Method::Fingerprint, false, tin);
            push(e, Method::Card, true, tin + rng.below(300) * 1000);
            push(e, Method::Fingerprint, false, tout);
            push(e, Method::Card, true, tout + rng.below(300) * 1000);
        } else {
            let by_card = e % 3 == 0;
            let m = if by_card { Method::Card } else { Method::Face };
            push(e, m, by_card, tin);
            let lunch = tin + 4 * 3_600_000;
            push(e, m, by_card, lunch);
            push(e, m, by_card, lunch + if rng.below(4) == 0 { 60_000 } else { 3_600_000 });
            push(e, m, by_card, tout);
        }
    }
}

/// A field of `/proc/self/status` in KiB (`VmRSS:`, `VmHWM:`), 0 when it cannot be read.
pub fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
