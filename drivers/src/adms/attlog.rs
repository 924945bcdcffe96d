//! ATTLOG upload bodies of the ZKTeco PUSH protocol: one attendance record per line, fields separated by tabs:
//! `PIN, YYYY-MM-DD HH:MM:SS, status, verify, workcode, reserved…`. At least four fields; more are tolerated.
//!
//! Pure functions (fuzzed by `fuzz/fuzz_targets/adms_attlog.rs`): decode the body (UTF-8, else GB18030, the superset
//! of the GB2312 and GBK that Chinese firmware sends), split it into records and per-line errors, and turn a record into
//! a [`DevicePunch`].

use std::borrow::Cow;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;

use crate::sink::{DevicePunch, Method, Subject};

/// Longest line looked at; longer lines are errors.
pub const MAX_LINE: usize = 1024;

/// One attendance record as the device wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttRecord {
    /// 1-based line number in the upload.
    pub line: usize,
    /// The user's PIN on the device: the employee id.
    pub pin: String,
    /// Device-local time (site time zone).
    pub time: DateTime,
    /// The in/out state key the person pressed (0 check-in, 1 check-out, 2 break-out, …): a hint only.
    pub status: u32,
    /// How the person verified (see [`verify_method`]).
    pub verify: u32,
    /// The work code, when the device sends one.
    pub workcode: Option<String>,
}

/// A line that is not a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

/// Decodes an upload body: UTF-8 when it is valid UTF-8, else GB18030 (GB2312/GBK compatible).
pub fn decode_body(body: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(body) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            let (text, _, _) = encoding_rs::GB18030.decode(body);
            text
        }
    }
}

/// Maps a ZKTeco verify code to a method (SPEC 3.2). Code 0 and combinations are [`Method::Other`]; the code is kept as
/// the `verify` attribute either way.
pub fn verify_method(code: u32) -> Method {
    match code {
        1 => Method::Fingerprint,
        2 => Method::Pin,
        3 => Method::Password,
        4 => Method::Card,
        15 => Method::Face,
        25 => Method::Palm,
        _ => Method::Other,
    }
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Parses one line (without its line ending).
pub fn parse_line(line_no: usize, line: &str) -> Result<AttRecord, LineError> {
    let err = |reason: String| LineError { line: line_no, reason };
    if line.len() > MAX_LINE {
        return Err(err(format!("line is longer than {MAX_LINE} bytes")));
    }
    let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
    if fields.len() < 4 {
        return Err(err(format!(
            "{} tab-separated fields, at least 4 needed (PIN, time, status, verify)",
            fields.len()
        )));
    }
    let pin = fields[0];
    if pin.is_empty() {
        return Err(err("empty PIN".into()));
    }
    if pin.chars().any(char::is_control) || pin.len() > 64 {
        return Err(err(format!("PIN `{}` is not a user id", short(pin))));
    }
    let time = DateTime::strptime("%Y-%m-%d %H:%M:%S", fields[1])
        .map_err(|_| err(format!("time `{}` is not YYYY-MM-DD HH:MM:SS", short(fields[1]))))?;
    let status: u32 = fields[2].parse().map_err(|_| err(format!("status `{}` is not a number", short(fields[2]))))?;
    let verify: u32 = fields[3].parse().map_err(|_| err(format!("verify `{}` is not a number", short(fields[3]))))?;
    let workcode = fields.get(4).filter(|w| !w.is_empty() && **w != "0").map(|w| short(w));
    Ok(AttRecord { line: line_no, pin: pin.to_owned(), time, status, verify, workcode })
}

/// Splits a decoded body into records and line errors. Empty lines are skipped.
pub fn parse_attlog(text: &str) -> (Vec<AttRecord>, Vec<LineError>) {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(i + 1, line) {
            Ok(r) => records.push(r),
            Err(e) => errors.push(e),
        }
    }
    (records, errors)
}

/// Turns a record into a punch of `device_id`. The device time is read in the site time zone; no `device_seq`, so the
/// punch id is a hash of the content and a re-upload of the same record is recognised.
pub fn to_punch(
    device_id: &str,
    rec: &AttRecord,
    tz: &TimeZone,
    received_ms: i64,
    realtime: bool,
) -> Result<DevicePunch, LineError> {
    let zoned = rec.time.to_zoned(tz.clone()).map_err(|e| LineError {
        line: rec.line,
        reason: format!("time {} does not exist in the site time zone: {e}", rec.time),
    })?;
    let mut attributes =
        vec![("status".to_owned(), rec.status.to_string()), ("verify".to_owned(), rec.verify.to_string())];
    if let Some(w) = &rec.workcode {
        attributes.push(("workcode".to_owned(), w.clone()));
    }
    Ok(DevicePunch {
        device_id: device_id.to_owned(),
        device_seq: None,
        method: verify_method(rec.verify),
        subject: Subject::Employee(rec.pin.clone()),
        device_time_ms: zoned.timestamp().as_millisecond(),
        received_time_ms: received_ms,
        realtime,
        geo: None,
        score: None,
        attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn records_with_four_to_many_fields() {
        let body = "1001\t2026-11-22 08:59:30\t0\t15\t0\t0\t0\t0\t0\t0\n\
                    1002\t2026-11-22 09:00:01\t1\t1\r\n\
                    \n\
                    1003\t2026-11-22 09:00:02\t0\t4\t7\n";
        let (records, errors) = parse_attlog(body);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].pin, "1001");
        assert_eq!(verify_method(records[0].verify), Method::Face);
        assert_eq!((records[1].status, records[1].verify, records[1].line), (1, 1, 2));
        assert_eq!(records[2].workcode.as_deref(), Some("7"));
    }

    #[test]
    fn malformed_lines_are_reported_with_their_numbers() {
        let body = "1001\t2026-11-22 08:59:30\t0\n\
                    \t2026-11-22 08:59:30\t0\t1\n\
                    1001\t2026-13-22 08:59:30\t0\t1\n\
                    1001\t2026-11-22T08:59:30\t0\t1\n\
                    1001\t2026-11-22 08:59:30\tin\t1\n\
                    1001\t2026-11-22 08:59:30\t0\tface\n\
                    1001 2026-11-22 08:59:30 0 1\n\
                    1004\t2026-11-22 08:59:30\t0\t1\n";
        let (records, errors) = parse_attlog(body);
        assert_eq!(records.len(), 1);
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6, 7]);
        assert!(errors[0].reason.contains("at least 4"));
    }

    #[test]
    fn gb2312_bodies_decode() {
        // "张三" in GB2312 as the PIN field.
        let mut body = vec![0xd5, 0xc5, 0xc8, 0xfd];
        body.extend_from_slice(b"\t2026-11-22 08:59:30\t0\t1\n");
        let text = decode_body(&body);
        let (records, errors) = parse_attlog(&text);
        assert!(errors.is_empty());
        assert_eq!(records[0].pin, "张三");
    }

    #[test]
    fn verify_codes_map_to_methods() {
        let expect = [
            (1, Method::Fingerprint),
            (2, Method::Pin),
            (3, Method::Password),
            (4, Method::Card),
            (15, Method::Face),
            (25, Method::Palm),
            (0, Method::Other),
            (9, Method::Other),
        ];
        for (code, method) in expect {
            assert_eq!(verify_method(code), method, "code {code}");
        }
    }

    #[test]
    fn punches_use_site_time_and_keep_the_hints() {
        let tz = TimeZone::get("Asia/Shanghai").unwrap_or(TimeZone::UTC);
        let (records, _) = parse_attlog("1001\t2026-11-22 08:59:30\t1\t0\t3\n");
        let p = to_punch("zk-1", &records[0], &tz, 0, false).unwrap();
        assert_eq!(p.device_time_ms, "2026-11-22T00:59:30Z".parse::<jiff::Timestamp>().unwrap().as_millisecond());
        assert_eq!(p.method, Method::Other);
        assert_eq!(p.device_seq, None);
        assert!(p.attributes.contains(&("verify".into(), "0".into())));
        assert!(p.attributes.contains(&("status".into(), "1".into())));
        assert!(p.attributes.contains(&("workcode".into(), "3".into())));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let text = decode_body(&bytes);
            let (records, _) = parse_attlog(&text);
            let tz = TimeZone::UTC;
            for r in &records {
                let _ = to_punch("d", r, &tz, 0, true);
            }
        }

        #[test]
        fn never_panics_on_near_records(pin in "[0-9A-Za-z\t ]{0,8}", y in 0u32..10000, mo in 0u32..15, d in 0u32..35,
                                        h in 0u32..30, extra in "[\t0-9a-z]{0,30}") {
            let line = format!("{pin}\t{y:04}-{mo:02}-{d:02} {h:02}:00:00\t0\t1{extra}");
            let (records, _) = parse_attlog(&line);
            for r in &records {
                let _ = to_punch("d", r, &TimeZone::UTC, 0, true);
            }
        }
    }
}
