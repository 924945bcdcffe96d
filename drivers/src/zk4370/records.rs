//! The data of 4370 packets: the packed time, attendance records (8, 16 and 40 bytes), real-time attendance events,
//! the free-sizes block, buffered reads and user records. Pure functions, fuzzed by `fuzz/fuzz_targets/zk4370.rs`.
//!
//! Times on the terminal are its local wall-clock time; the driver reads them in the device's time zone.
//! - The *packed time* (`CMD_GET_TIME`/`CMD_SET_TIME`, attendance records) is one u32 LE:
//!   `((year % 100) * 12 * 31 + (month - 1) * 31 + day - 1) * 86400 + (hour * 60 + minute) * 60 + second`, year 2000
//!   and later.
//! - Real-time events carry six bytes instead: year - 2000, month, day, hour, minute, second.
//!
//! An attendance log read returns a buffer that starts with the byte size of the records (u32 LE); every record has the
//! same size, which the record count (from `CMD_GET_FREE_SIZES`) gives:
//! - 8 bytes (old black-and-white firmware): uid u16, verify u8, time u32, state u8. The user is only known by the
//!   terminal's internal uid, which is taken as the user id;
//! - 16 bytes: user id u32, time u32, verify u8, state u8, reserved 2, work code u32;
//! - 40 bytes (TFT and later firmware): uid u16, user id (24 bytes, NUL-padded text), verify u8, time u32, state u8,
//!   reserved 8.
//!
//! `verify` is how the person identified (the same codes as the PUSH protocol: 1 fingerprint, 15 face, 4 card, …) and
//! `state` the in/out key they pressed (a hint only).

use std::borrow::Cow;

use jiff::civil::{date, DateTime};

/// The size of one user record in the 72-byte format (TFT firmware).
pub const USER_RECORD_LEN: usize = 72;
/// The table code of users in a buffered read (`CMD_USERTEMP_RRQ` with this function code).
pub const FCT_USER: i32 = 5;

/// Data that is not what the protocol says.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("packed time {0} is not a date")]
    PackedTime(u32),
    #[error("time {0:?} is not a date")]
    TimeBytes([u8; 6]),
    #[error("time {0} cannot be packed (years 2000 to 2099 only)")]
    Unpackable(String),
    #[error("{len} bytes of records do not divide into {count} records of 8, 16 or 40 bytes")]
    Layout { len: usize, count: u32 },
    #[error("the buffer says {said} bytes of records but holds {held}")]
    BufferSize { said: usize, held: usize },
    #[error("a record has no user id")]
    NoUser,
    #[error("user id `{0}` contains control characters")]
    BadUser(String),
    #[error("an attendance event of {0} bytes has no known layout")]
    EventLength(usize),
    #[error("{what}: {len} bytes, {need} needed")]
    Short { what: &'static str, len: usize, need: usize },
}

/// Packs a terminal-local time.
pub fn pack_time(t: DateTime) -> Result<u32, RecordError> {
    if !(2000..=2099).contains(&t.year()) {
        return Err(RecordError::Unpackable(t.to_string()));
    }
    let days = (i64::from(t.year()) % 100) * 12 * 31 + (i64::from(t.month()) - 1) * 31 + i64::from(t.day()) - 1;
    let secs = days * 86_400 + (i64::from(t.hour()) * 60 + i64::from(t.minute())) * 60 + i64::from(t.second());
    u32::try_from(secs).map_err(|_| RecordError::Unpackable(t.to_string()))
}

/// Unpacks a packed time.
pub fn unpack_time(packed: u32) -> Result<DateTime, RecordError> {
    let mut t = packed;
    let second = (t % 60) as i8;
    t /= 60;
    let minute = (t % 60) as i8;
    t /= 60;
    let hour = (t % 24) as i8;
    t /= 24;
    let day = (t % 31 + 1) as i8;
    t /= 31;
    let month = (t % 12 + 1) as i8;
    t /= 12;
    let year = 2000 + t as i16;
    DateTime::new(year, month, day, hour, minute, second, 0).map_err(|_| RecordError::PackedTime(packed))
}

/// Reads the six time bytes of a real-time event.
pub fn time_from_bytes(b: [u8; 6]) -> Result<DateTime, RecordError> {
    let small = |v: u8| i8::try_from(v).map_err(|_| RecordError::TimeBytes(b));
    DateTime::new(2000 + i16::from(b[0]), small(b[1])?, small(b[2])?, small(b[3])?, small(b[4])?, small(b[5])?, 0)
        .map_err(|_| RecordError::TimeBytes(b))
}

/// The six time bytes of a real-time event.
pub fn time_to_bytes(t: DateTime) -> Result<[u8; 6], RecordError> {
    let y = t.year() - 2000;
    if !(0..=255).contains(&y) {
        return Err(RecordError::Unpackable(t.to_string()));
    }
    let b = |v: i8| v as u8;
    Ok([y as u8, b(t.month()), b(t.day()), b(t.hour()), b(t.minute()), b(t.second())])
}

/// The record sizes of the attendance log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Short8,
    Mid16,
    Long40,
}

impl Layout {
    /// The bytes of one record.
    pub fn record_len(self) -> usize {
        match self {
            Layout::Short8 => 8,
            Layout::Mid16 => 16,
            Layout::Long40 => 40,
        }
    }

    fn of(len: usize) -> Option<Layout> {
        match len {
            8 => Some(Layout::Short8),
            16 => Some(Layout::Mid16),
            40 => Some(Layout::Long40),
            _ => None,
        }
    }
}

/// One attendance record or event, as the terminal keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttRecord {
    /// The user id (PIN) on the terminal: the employee id.
    pub user_id: String,
    /// How the person identified (PUSH verify codes).
    pub verify: u8,
    /// The in/out state key (a hint).
    pub state: u8,
    /// Terminal-local time.
    pub time: DateTime,
    /// The work code, when the layout has one and it is not 0.
    pub workcode: Option<u32>,
}

fn text(bytes: &[u8]) -> Cow<'_, str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    crate::adms::attlog::decode_body(&bytes[..end])
}

fn user_id(bytes: &[u8]) -> Result<String, RecordError> {
    let id = text(bytes);
    let id = id.trim();
    if id.is_empty() {
        return Err(RecordError::NoUser);
    }
    if id.chars().any(char::is_control) || id.len() > 64 {
        return Err(RecordError::BadUser(id.chars().take(40).collect()));
    }
    Ok(id.to_owned())
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Reads one record of `layout` (`bytes` is exactly one record long).
pub fn parse_record(layout: Layout, bytes: &[u8]) -> Result<AttRecord, RecordError> {
    if bytes.len() != layout.record_len() {
        return Err(RecordError::Short { what: "attendance record", len: bytes.len(), need: layout.record_len() });
    }
    match layout {
        Layout::Short8 => {
            let uid = u16_at(bytes, 0);
            if uid == 0 {
                return Err(RecordError::NoUser);
            }
            Ok(AttRecord {
                user_id: uid.to_string(),
                verify: bytes[2],
                state: bytes[7],
                time: unpack_time(u32_at(bytes, 3))?,
                workcode: None,
            })
        }
        Layout::Mid16 => {
            let id = u32_at(bytes, 0);
            if id == 0 {
                return Err(RecordError::NoUser);
            }
            let workcode = Some(u32_at(bytes, 12)).filter(|w| *w != 0);
            Ok(AttRecord {
                user_id: id.to_string(),
                verify: bytes[8],
                state: bytes[9],
                time: unpack_time(u32_at(bytes, 4))?,
                workcode,
            })
        }
        Layout::Long40 => Ok(AttRecord {
            user_id: user_id(&bytes[2..26])?,
            verify: bytes[26],
            time: unpack_time(u32_at(bytes, 27))?,
            state: bytes[31],
            workcode: None,
        }),
    }
}

/// Writes one record in `layout`. `uid` is the terminal's internal user number (8- and 40-byte layouts); the 8- and
/// 16-byte layouts need a numeric user id.
pub fn encode_record(layout: Layout, uid: u16, r: &AttRecord) -> Result<Vec<u8>, RecordError> {
    let time = pack_time(r.time)?.to_le_bytes();
    let numeric = || r.user_id.parse::<u32>().map_err(|_| RecordError::BadUser(r.user_id.clone()));
    let mut out = Vec::with_capacity(layout.record_len());
    match layout {
        Layout::Short8 => {
            let id = u16::try_from(numeric()?).map_err(|_| RecordError::BadUser(r.user_id.clone()))?;
            out.extend_from_slice(&id.to_le_bytes());
            out.push(r.verify);
            out.extend_from_slice(&time);
            out.push(r.state);
        }
        Layout::Mid16 => {
            out.extend_from_slice(&numeric()?.to_le_bytes());
            out.extend_from_slice(&time);
            out.extend_from_slice(&[r.verify, r.state, 0, 0]);
            out.extend_from_slice(&r.workcode.unwrap_or(0).to_le_bytes());
        }
        Layout::Long40 => {
            out.extend_from_slice(&uid.to_le_bytes());
            out.extend_from_slice(&padded(&r.user_id, 24));
            out.push(r.verify);
            out.extend_from_slice(&time);
            out.push(r.state);
            out.extend_from_slice(&[0, 0, 0, 0, 0xFF, 0, 0, 0]);
        }
    }
    Ok(out)
}

fn padded(s: &str, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s.as_bytes().iter().copied().take(len.saturating_sub(1)).collect();
    v.resize(len, 0);
    v
}

/// The records of an attendance log buffer (`size: u32 LE`, then the records), given the record count the terminal
/// reported. The layout is the one whose size times `count` is the buffer's size. Each record is read on its own: a
/// record that does not read is an `Err` in its place, the others are kept.
pub fn parse_log(buffer: &[u8], count: u32) -> Result<(Layout, Vec<Result<AttRecord, RecordError>>), RecordError> {
    if buffer.len() < 4 {
        return Err(RecordError::Short { what: "attendance log buffer", len: buffer.len(), need: 4 });
    }
    let said = u32_at(buffer, 0) as usize;
    let body = &buffer[4..];
    if said != body.len() {
        return Err(RecordError::BufferSize { said, held: body.len() });
    }
    if count == 0 || said == 0 {
        return if said == 0 {
            Ok((Layout::Long40, Vec::new()))
        } else {
            Err(RecordError::Layout { len: said, count })
        };
    }
    let layout = (said.is_multiple_of(count as usize))
        .then(|| Layout::of(said / count as usize))
        .flatten()
        .ok_or(RecordError::Layout { len: said, count })?;
    Ok((layout, body.chunks(layout.record_len()).map(|r| parse_record(layout, r)).collect()))
}

/// A log buffer of `records` in `layout` (the simulator's side of [`parse_log`]); uids are numbered from 1.
pub fn encode_log(layout: Layout, records: &[AttRecord]) -> Result<Vec<u8>, RecordError> {
    let mut body = Vec::with_capacity(records.len() * layout.record_len());
    for (i, r) in records.iter().enumerate() {
        body.extend(encode_record(layout, (i % 0xFFFF + 1) as u16, r)?);
    }
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend(body);
    Ok(out)
}

/// The attendance records of a real-time `EF_ATTLOG` event. Firmware sends one record of 10, 12, 14, 32, 36 or 37
/// bytes, or several of 52 bytes each: a user id (2 or 4 bytes numeric, or 24 bytes of text), verify, state, the six
/// time bytes, and padding.
pub fn parse_event(data: &[u8]) -> Result<Vec<AttRecord>, RecordError> {
    let one = |b: &[u8], id_len: usize| -> Result<AttRecord, RecordError> {
        let user_id = match id_len {
            2 => Some(u16_at(b, 0)).filter(|v| *v != 0).map(|v| v.to_string()).ok_or(RecordError::NoUser)?,
            4 => Some(u32_at(b, 0)).filter(|v| *v != 0).map(|v| v.to_string()).ok_or(RecordError::NoUser)?,
            _ => user_id(&b[..24])?,
        };
        let mut t = [0u8; 6];
        t.copy_from_slice(&b[id_len + 2..id_len + 8]);
        Ok(AttRecord { user_id, verify: b[id_len], state: b[id_len + 1], time: time_from_bytes(t)?, workcode: None })
    };
    match data.len() {
        10 | 14 => Ok(vec![one(data, 2)?]),
        12 => Ok(vec![one(data, 4)?]),
        32 | 36 | 37 => Ok(vec![one(data, 24)?]),
        n if n >= 52 && n % 52 == 0 => data.chunks(52).map(|c| one(c, 24)).collect(),
        n => Err(RecordError::EventLength(n)),
    }
}

/// A 32-byte `EF_ATTLOG` event for one record (the simulator's side of [`parse_event`]).
pub fn encode_event(r: &AttRecord) -> Result<Vec<u8>, RecordError> {
    let mut out = padded(&r.user_id, 24);
    out.push(r.verify);
    out.push(r.state);
    out.extend_from_slice(&time_to_bytes(r.time)?);
    Ok(out)
}

/// What `CMD_GET_FREE_SIZES` reports (its first 80 bytes are twenty i32 LE; faces follow in longer answers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreeSizes {
    pub users: u32,
    pub fingers: u32,
    pub records: u32,
    pub faces: u32,
}

impl FreeSizes {
    pub fn parse(data: &[u8]) -> Result<FreeSizes, RecordError> {
        if data.len() < 80 {
            return Err(RecordError::Short { what: "free sizes", len: data.len(), need: 80 });
        }
        let faces = if data.len() >= 84 { u32_at(data, 80) } else { 0 };
        Ok(FreeSizes { users: u32_at(data, 16), fingers: u32_at(data, 24), records: u32_at(data, 32), faces })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 92];
        out[16..20].copy_from_slice(&self.users.to_le_bytes());
        out[24..28].copy_from_slice(&self.fingers.to_le_bytes());
        out[32..36].copy_from_slice(&self.records.to_le_bytes());
        out[80..84].copy_from_slice(&self.faces.to_le_bytes());
        out
    }
}

/// The data of `CMD_PREPARE_BUFFER`: read the table of `command` (`CMD_ATTLOG_RRQ`, or `CMD_USERTEMP_RRQ` with
/// function code [`FCT_USER`]).
pub fn prepare_buffer(command: u16, fct: i32, ext: i32) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&command.to_le_bytes());
    out.extend_from_slice(&fct.to_le_bytes());
    out.extend_from_slice(&ext.to_le_bytes());
    out
}

/// Reads a `CMD_PREPARE_BUFFER` request: `(command, fct, ext)`.
pub fn parse_prepare_buffer(data: &[u8]) -> Result<(u16, i32, i32), RecordError> {
    if data.len() < 11 {
        return Err(RecordError::Short { what: "prepare buffer request", len: data.len(), need: 11 });
    }
    Ok((u16_at(data, 1), u32_at(data, 3) as i32, u32_at(data, 7) as i32))
}

/// The size of a prepared buffer, from the `CMD_ACK_OK` answer to `CMD_PREPARE_BUFFER` (u32 LE after one byte).
pub fn prepared_size(data: &[u8]) -> Result<u32, RecordError> {
    if data.len() < 5 {
        return Err(RecordError::Short { what: "prepared buffer size", len: data.len(), need: 5 });
    }
    Ok(u32_at(data, 1))
}

/// The data of `CMD_READ_BUFFER`: `size` bytes from `start`.
pub fn read_buffer(start: u32, size: u32) -> Vec<u8> {
    let mut out = start.to_le_bytes().to_vec();
    out.extend_from_slice(&size.to_le_bytes());
    out
}

/// Reads a `CMD_READ_BUFFER` request: `(start, size)`.
pub fn parse_read_buffer(data: &[u8]) -> Result<(u32, u32), RecordError> {
    if data.len() < 8 {
        return Err(RecordError::Short { what: "read buffer request", len: data.len(), need: 8 });
    }
    Ok((u32_at(data, 0), u32_at(data, 4)))
}

/// A user on the terminal (72-byte format): internal number, user id (PIN), name, card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u16,
    pub user_id: String,
    pub name: String,
    pub card: u32,
    pub privilege: u8,
}

impl User {
    /// The `CMD_USER_WRQ` data: uid u16, privilege u8, password 8, name 24, card u32, 1 reserved, group 7, 1 reserved,
    /// user id 24. Names longer than 23 bytes are cut at a character boundary.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(USER_RECORD_LEN);
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.push(self.privilege);
        out.extend_from_slice(&[0u8; 8]);
        out.extend_from_slice(&padded(cut(&self.name, 23), 24));
        out.extend_from_slice(&self.card.to_le_bytes());
        out.push(0);
        out.extend_from_slice(&padded("1", 7));
        out.push(0);
        out.extend_from_slice(&padded(cut(&self.user_id, 23), 24));
        out
    }

    pub fn parse(b: &[u8]) -> Result<User, RecordError> {
        if b.len() < USER_RECORD_LEN {
            return Err(RecordError::Short { what: "user record", len: b.len(), need: USER_RECORD_LEN });
        }
        Ok(User {
            uid: u16_at(b, 0),
            privilege: b[2],
            name: text(&b[11..35]).trim().to_owned(),
            card: u32_at(b, 35),
            user_id: user_id(&b[48..72])?,
        })
    }
}

/// A name or user id as the terminal keeps it: at most 23 bytes, cut at a character boundary.
pub fn terminal_text(s: &str) -> &str {
    cut(s, 23)
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The users of a user table buffer (`size: u32 LE`, then 72-byte records).
pub fn parse_users(buffer: &[u8]) -> Result<Vec<Result<User, RecordError>>, RecordError> {
    if buffer.len() < 4 {
        return Err(RecordError::Short { what: "user buffer", len: buffer.len(), need: 4 });
    }
    let said = u32_at(buffer, 0) as usize;
    let body = &buffer[4..];
    if said != body.len() || !said.is_multiple_of(USER_RECORD_LEN) {
        return Err(RecordError::BufferSize { said, held: body.len() });
    }
    Ok(body.chunks(USER_RECORD_LEN).map(User::parse).collect())
}

/// The earliest time the packed format holds.
pub fn earliest() -> DateTime {
    date(2000, 1, 1).at(0, 0, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime {
        s.parse().unwrap()
    }

    fn rec(user: &str, time: &str) -> AttRecord {
        AttRecord { user_id: user.into(), verify: 15, state: 1, time: t(time), workcode: None }
    }

    #[test]
    fn packed_time_round_trips_and_matches_the_formula() {
        let at = t("2026-11-22T08:59:30");
        let packed = pack_time(at).unwrap();
        assert_eq!(packed, ((26 * 12 * 31 + 10 * 31 + 21) * 86_400 + (8 * 60 + 59) * 60 + 30) as u32);
        assert_eq!(unpack_time(packed).unwrap(), at);
        assert_eq!(unpack_time(0).unwrap(), earliest());
        // Day 31 of a 30-day month is in the format's range but is no date.
        let bad = ((26 * 12 * 31 + 10 * 31 + 30) * 86_400) as u32;
        assert_eq!(unpack_time(bad), Err(RecordError::PackedTime(bad)));
        assert!(pack_time(t("1999-12-31T23:59:59")).is_err());
        assert!(pack_time(t("2100-01-01T00:00:00")).is_err());
    }

    #[test]
    fn event_time_bytes() {
        let at = t("2026-02-03T04:05:06");
        assert_eq!(time_to_bytes(at).unwrap(), [26, 2, 3, 4, 5, 6]);
        assert_eq!(time_from_bytes([26, 2, 3, 4, 5, 6]).unwrap(), at);
        assert!(time_from_bytes([26, 2, 30, 4, 5, 6]).is_err());
        assert!(time_from_bytes([26, 13, 1, 0, 0, 0]).is_err());
        assert!(time_from_bytes([26, 200, 1, 0, 0, 0]).is_err());
    }

    #[test]
    fn every_layout_round_trips() {
        let records = vec![rec("1001", "2026-11-22T08:59:30"), rec("42", "2026-11-22T09:00:00")];
        for layout in [Layout::Short8, Layout::Mid16, Layout::Long40] {
            let buffer = encode_log(layout, &records).unwrap();
            assert_eq!(buffer.len(), 4 + 2 * layout.record_len());
            let (got_layout, got) = parse_log(&buffer, 2).unwrap();
            assert_eq!(got_layout, layout);
            let got: Vec<AttRecord> = got.into_iter().map(Result::unwrap).collect();
            assert_eq!(got, records, "{layout:?}");
        }
        // Text user ids only fit the 40-byte layout.
        let named = rec("EMP-7", "2026-11-22T08:00:00");
        assert!(encode_record(Layout::Mid16, 1, &named).is_err());
        assert_eq!(parse_record(Layout::Long40, &encode_record(Layout::Long40, 1, &named).unwrap()).unwrap(), named);
    }

    #[test]
    fn malformed_logs_are_errors_and_bad_records_stand_alone() {
        assert!(matches!(parse_log(&[1, 0], 1), Err(RecordError::Short { .. })));
        assert_eq!(parse_log(&[9, 0, 0, 0, 1], 1), Err(RecordError::BufferSize { said: 9, held: 1 }));
        let mut three = encode_log(Layout::Long40, &[rec("1", "2026-01-01T00:00:00")]).unwrap();
        assert_eq!(parse_log(&three, 3), Err(RecordError::Layout { len: 40, count: 3 }));
        assert_eq!(parse_log(&[0, 0, 0, 0], 0).unwrap().1.len(), 0);
        // A record with no user id and one with a time that is no date: errors in place, the good one kept.
        let good = encode_record(Layout::Long40, 1, &rec("7", "2026-01-01T00:00:00")).unwrap();
        let mut no_user = good.clone();
        no_user[2..26].fill(0);
        let mut bad_time = good.clone();
        let feb_31 = ((26 * 12 * 31 + 31 + 30) * 86_400) as u32;
        bad_time[27..31].copy_from_slice(&feb_31.to_le_bytes());
        let mut control = good.clone();
        control[2] = 0x07;
        three = (160u32).to_le_bytes().to_vec();
        for r in [&good, &no_user, &bad_time, &control] {
            three.extend_from_slice(r);
        }
        let (_, got) = parse_log(&three, 4).unwrap();
        assert!(got[0].is_ok());
        assert_eq!(got[1], Err(RecordError::NoUser));
        assert!(matches!(got[2], Err(RecordError::PackedTime(_))));
        assert!(matches!(got[3], Err(RecordError::BadUser(_))));
    }

    #[test]
    fn events_of_every_length() {
        let r = rec("1001", "2026-11-22T08:59:30");
        let long = encode_event(&r).unwrap();
        assert_eq!(long.len(), 32);
        assert_eq!(parse_event(&long).unwrap(), vec![r.clone()]);
        let mut padded36 = long.clone();
        padded36.extend_from_slice(&[0; 4]);
        assert_eq!(parse_event(&padded36).unwrap(), vec![r.clone()]);
        let mut two = long.clone();
        two.resize(52, 0);
        two.extend_from_slice(&two.clone());
        assert_eq!(parse_event(&two).unwrap().len(), 2);
        let mut short = 1001u16.to_le_bytes().to_vec();
        short.extend_from_slice(&[15, 1, 26, 11, 22, 8, 59, 30]);
        assert_eq!(parse_event(&short).unwrap(), vec![r.clone()]);
        let mut mid = 1001u32.to_le_bytes().to_vec();
        mid.extend_from_slice(&[15, 1, 26, 11, 22, 8, 59, 30]);
        assert_eq!(parse_event(&mid).unwrap(), vec![r]);
        assert_eq!(parse_event(&[0; 11]), Err(RecordError::EventLength(11)));
        assert_eq!(parse_event(&[0; 10]), Err(RecordError::NoUser));
    }

    #[test]
    fn free_sizes_buffers_and_users() {
        let sizes = FreeSizes { users: 3, fingers: 5, records: 500, faces: 2 };
        assert_eq!(FreeSizes::parse(&sizes.encode()).unwrap(), sizes);
        assert!(FreeSizes::parse(&[0; 79]).is_err());
        let req = prepare_buffer(13, 0, 0);
        assert_eq!(req, [1, 13, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_prepare_buffer(&req).unwrap(), (13, 0, 0));
        assert!(parse_prepare_buffer(&req[..10]).is_err());
        assert_eq!(parse_read_buffer(&read_buffer(100, 200)).unwrap(), (100, 200));
        assert!(parse_read_buffer(&[0; 7]).is_err());
        assert_eq!(prepared_size(&[0, 40, 0, 0, 0]).unwrap(), 40);
        assert!(prepared_size(&[0, 1]).is_err());

        let u = User { uid: 7, user_id: "1001".into(), name: "张三".into(), card: 0x04A1B2C3, privilege: 0 };
        let bytes = u.encode();
        assert_eq!(bytes.len(), USER_RECORD_LEN);
        assert_eq!(User::parse(&bytes).unwrap(), u);
        let long = User { name: "é".repeat(20), ..u.clone() };
        assert_eq!(User::parse(&long.encode()).unwrap().name, "é".repeat(11));
        let mut table = ((2 * USER_RECORD_LEN) as u32).to_le_bytes().to_vec();
        table.extend_from_slice(&bytes);
        table.extend_from_slice(&[0; USER_RECORD_LEN]);
        let users = parse_users(&table).unwrap();
        assert_eq!(users[0].as_ref().unwrap(), &u);
        assert_eq!(users[1], Err(RecordError::NoUser));
        assert!(parse_users(&table[..10]).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), count in 0u32..20) {
            let _ = parse_log(&bytes, count);
            let _ = parse_event(&bytes);
            let _ = parse_users(&bytes);
            let _ = FreeSizes::parse(&bytes);
            let _ = User::parse(&bytes);
            for layout in [Layout::Short8, Layout::Mid16, Layout::Long40] {
                let _ = parse_record(layout, &bytes);
            }
        }

        #[test]
        fn packed_times_round_trip(secs in 0i64..(100 * 365 * 86_400)) {
            let at = earliest().checked_add(jiff::SignedDuration::from_secs(secs)).unwrap();
            prop_assume!(at.year() <= 2099);
            prop_assert_eq!(unpack_time(pack_time(at).unwrap()).unwrap(), at);
        }
    }
}
