//! Public-holiday calendars in iCalendar form (RFC 5545 `.ics`), read into the dates `[calendar]` lists: holidays and
//! make-up working days. Pure: text in, dates or problems out (`POST /api/v1/calendar/import` does the I/O).
//!
//! The file is parsed with the `icalendar` crate (unfolding, parameters, escapes); this module decides what each
//! `VEVENT` means.
//!
//! # Which events are holidays, which are working days
//! Governments and calendar apps publish these calendars in a few forms (seen in the wild: Apple's 中国大陆节假日 marks
//! every day off and make-up day with `X-APPLE-SPECIAL-DAY` and also lists festivals and solar terms; holiday-cn writes
//! `元旦假期` and `上班(补春节假期)`; others `春节 假期 第1天/共8天` and `春节 补班 第1天/共2天`, `国庆节（休）` and
//! `国庆节（班）`; Google's holiday calendars say `Public holiday` or `Observance` in the description). The rule, per
//! event, first match wins:
//! 1. `STATUS:CANCELLED`: ignored.
//! 2. `X-APPLE-SPECIAL-DAY:WORK-HOLIDAY`: a holiday; `ALTERNATE-WORKDAY`: a make-up working day; any other value:
//!    ignored. When any event of the file carries one of these two marks, the file is read by the marks alone and an
//!    event without a mark is ignored (it is a festival, a solar term or an observance, not a day off).
//! 3. `SUMMARY` or `CATEGORIES` containing a working-day keyword ([`DEFAULT_WORKDAY_KEYWORDS`], case-insensitive; a
//!    caller can replace the list): a make-up working day. This comes before holidays because make-up days are often
//!    named after their holiday (`上班(补春节假期)`).
//! 4. With holiday keywords given by the caller: `SUMMARY` or `CATEGORIES` containing one is a holiday, anything else
//!    is ignored.
//! 5. Without them: a `DESCRIPTION` that starts with `Observance` or `纪念日` is ignored (an observance, not a day off);
//!    every other event is a holiday (a public-holiday calendar lists days off).
//!
//! # Which dates an event covers
//! - All-day events (`DTSTART;VALUE=DATE`, or a bare `YYYYMMDD`): from `DTSTART` up to `DTEND`, exclusive (RFC 5545),
//!   or for `DURATION` days; neither is one day. A `DTEND` equal to `DTSTART` is read as one day (some feeds write it).
//! - Timed events (some feeds write a make-up day as `09:00`–`18:00`): every date of the site time zone that the event
//!   overlaps, its end exclusive. A UTC time (`…Z`) and a time with `TZID` (an IANA name such as `Asia/Shanghai`) are
//!   converted to the site time zone; a floating time is read as the site's wall clock. A `TZID` that is not an IANA
//!   time zone is refused.
//! - An event ending before it starts, lasting more than [`MAX_EVENT_DAYS`] days, without `DTSTART`, or with a
//!   recurrence (`RRULE`, `RDATE`: expand it into one event per date first) is a problem, as is a date that the file
//!   makes both a holiday and a working day, or a file naming more than [`MAX_DATES`] dates. Problems name the event:
//!   its line, `UID` and `SUMMARY`. Every problem is collected (up to [`MAX_PROBLEMS`]); one problem means nothing is
//!   imported.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use icalendar::parser::{read_components, unfold, Component, Property};
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Span, Zoned};

/// Keywords that make an event a make-up working day unless the caller gives its own: `班` covers `补班`, `上班`,
/// `（班）` and `班｜`.
pub const DEFAULT_WORKDAY_KEYWORDS: &[&str] =
    &["班", "makeup work", "make-up work", "make up work", "working day", "workday", "work day"];
/// The longest event, in days.
pub const MAX_EVENT_DAYS: i64 = 366;
/// The most dates one file may name (ten years of days; a public-holiday calendar names a few dozen a year).
pub const MAX_DATES: usize = 3660;
/// At most this many problems are reported.
pub const MAX_PROBLEMS: usize = 20;

/// How events are told apart (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classify {
    /// Lower-case keywords of make-up working days.
    pub workday_keywords: Vec<String>,
    /// Lower-case keywords of holidays; `None`: every event that is not a working day or an observance is a holiday.
    pub holiday_keywords: Option<Vec<String>>,
}

impl Default for Classify {
    fn default() -> Self {
        Classify {
            workday_keywords: DEFAULT_WORKDAY_KEYWORDS.iter().map(|k| (*k).to_owned()).collect(),
            holiday_keywords: None,
        }
    }
}

impl Classify {
    /// Keywords from a comma-separated list (blank entries dropped, lower-cased); `None` when nothing is left.
    pub fn keywords(list: &str) -> Option<Vec<String>> {
        let words: Vec<String> = list.split(',').map(|w| w.trim().to_lowercase()).filter(|w| !w.is_empty()).collect();
        (!words.is_empty()).then_some(words)
    }
}

/// Where an event is in the file, for problems and answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventRef {
    /// 1-based position among the file's events.
    pub index: usize,
    /// The line of its `BEGIN:VEVENT` in the file as sent.
    pub line: Option<usize>,
    pub uid: Option<String>,
    pub summary: Option<String>,
}

impl fmt::Display for EventRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event {}", self.index)?;
        if let Some(line) = self.line {
            write!(f, " at line {line}")?;
        }
        match (&self.uid, &self.summary) {
            (Some(u), Some(s)) => write!(f, " (UID `{u}`, SUMMARY `{s}`)"),
            (Some(u), None) => write!(f, " (UID `{u}`)"),
            (None, Some(s)) => write!(f, " (SUMMARY `{s}`)"),
            (None, None) => Ok(()),
        }
    }
}

/// An event that was read but names no holiday or working day, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    pub event: EventRef,
    pub reason: String,
}

/// What a calendar file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CalendarDays {
    /// `X-WR-CALNAME`, when the file has one.
    pub name: Option<String>,
    pub holidays: BTreeSet<Date>,
    pub workdays: BTreeSet<Date>,
    pub ignored: Vec<Ignored>,
}

/// Why a file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IcsError {
    #[error("not an iCalendar file: it does not begin with BEGIN:VCALENDAR")]
    NotCalendar,
    #[error("not UTF-8 text (line {0})")]
    NotUtf8(usize),
    #[error("not valid iCalendar at {0}")]
    Syntax(String),
    #[error("the calendar has no event (VEVENT)")]
    NoEvents,
    /// One problem per line, each naming its event.
    #[error("{}", .0.join("\n"))]
    Events(Vec<String>),
    #[error(
        "the calendar names no holiday and no make-up working day: all of its {0} events were ignored \
         (festivals, observances or cancelled events)"
    )]
    NothingToImport(usize),
}

/// What one event means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Holiday,
    Workday,
}

/// Reads a calendar file as sent. A file that is UTF-8 only once unfolded (a producer folded a line inside a
/// character, which RFC 5545 allows) is unfolded first; its lines are then counted after unfolding.
pub fn parse_bytes(bytes: &[u8], tz: &TimeZone, classify: &Classify) -> Result<CalendarDays, IcsError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text, tz, classify),
        Err(e) => {
            let mut joined = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                let rest = &bytes[i..];
                let fold = [&b"\r\n "[..], b"\r\n\t", b"\n ", b"\n\t"].into_iter().find(|f| rest.starts_with(f));
                match fold {
                    Some(f) => i += f.len(),
                    None => {
                        joined.push(bytes[i]);
                        i += 1;
                    }
                }
            }
            match String::from_utf8(joined) {
                Ok(text) => parse(&text, tz, classify),
                Err(_) => {
                    let line = bytes[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count() + 1;
                    Err(IcsError::NotUtf8(line))
                }
            }
        }
    }
}

/// Reads a calendar file. `tz` is the site time zone (timed events take their dates there).
pub fn parse(text: &str, tz: &TimeZone, classify: &Classify) -> Result<CalendarDays, IcsError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Logical lines (after unfolding) start at the physical lines that do not begin with a space or tab.
    let logical_starts: Vec<usize> = text
        .split('\n')
        .enumerate()
        .filter(|(i, l)| *i == 0 || !l.starts_with([' ', '\t']))
        .map(|(i, _)| i + 1)
        .collect();
    let first = text.trim_start().lines().next().unwrap_or("").trim_end();
    if !first.eq_ignore_ascii_case("BEGIN:VCALENDAR") {
        return Err(IcsError::NotCalendar);
    }
    let unfolded = unfold(text.trim_start_matches(['\r', '\n']).trim_end());
    let skipped = text.len() - text.trim_start_matches(['\r', '\n']).len();
    let leading_lines = text[..skipped].matches('\n').count();
    let physical = |logical: usize| logical_starts.get(logical + leading_lines).copied().unwrap_or(logical + 1);
    // The parser reports a bad line inside a component at the component's BEGIN: find such lines first.
    for (i, line) in unfolded.split('\n').enumerate() {
        let line = line.trim_end_matches('\r');
        let name = line.split([':', ';']).next().unwrap_or("");
        let named = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if line.is_empty() {
            return Err(IcsError::Syntax(format!("line {}: an empty line inside the calendar", physical(i))));
        }
        if !line.contains(':') || !named {
            return Err(IcsError::Syntax(format!(
                "line {} (`{}`): not a content line `NAME:value` (or `NAME;PARAM=…:value`)",
                physical(i),
                clean(line)
            )));
        }
    }
    let roots = read_components(&unfolded).map_err(|e| IcsError::Syntax(syntax_error(&e, &physical)))?;
    let mut events: Vec<&Component<'_>> = Vec::new();
    let mut name = None;
    for root in &roots {
        if !root.name.as_str().eq_ignore_ascii_case("VCALENDAR") {
            return Err(IcsError::NotCalendar);
        }
        name = name.or_else(|| prop(&root.properties, "X-WR-CALNAME").map(|p| clean(p.val.as_str())));
        events.extend(root.components.iter().filter(|c| c.name.as_str().eq_ignore_ascii_case("VEVENT")));
    }
    if events.is_empty() {
        return Err(IcsError::NoEvents);
    }
    // The lines of the events' BEGIN:VEVENT, in file order (when they can be matched one to one).
    let begin_lines: Vec<usize> = unfolded
        .split('\n')
        .enumerate()
        .filter(|(_, l)| l.trim().eq_ignore_ascii_case("BEGIN:VEVENT"))
        .filter_map(|(i, _)| logical_starts.get(i + leading_lines).copied())
        .collect();
    let lines_known = begin_lines.len() == events.len();
    let marked = events.iter().any(|e| apple_mark(e).is_some_and(|m| m.is_some()));

    let mut out = CalendarDays { name, ..CalendarDays::default() };
    let mut problems: Vec<String> = Vec::new();
    // Which event first made each date a holiday or a working day.
    let mut seen: BTreeMap<Date, (Kind, usize)> = BTreeMap::new();
    let mut refs: Vec<EventRef> = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        let at = EventRef {
            index: i + 1,
            line: if lines_known { begin_lines.get(i).copied() } else { None },
            uid: prop(&event.properties, "UID").map(|p| clean(p.val.as_str())),
            summary: prop(&event.properties, "SUMMARY").map(|p| clean(p.val.as_str())),
        };
        refs.push(at.clone());
        let kind = match classify_event(event, marked, classify) {
            Ok(kind) => kind,
            Err(reason) => {
                out.ignored.push(Ignored { event: at, reason });
                continue;
            }
        };
        let dates = match event_dates(event, tz) {
            Ok(dates) => dates,
            Err(problem) => {
                problems.push(format!("{at}: {problem}"));
                continue;
            }
        };
        for date in dates {
            match seen.get(&date) {
                Some((k, other)) if *k != kind => {
                    let (h, w) = if kind == Kind::Holiday { (&at, &refs[*other]) } else { (&refs[*other], &at) };
                    problems.push(format!("{date} is a holiday in {h} and a make-up working day in {w}"));
                }
                Some(_) => {}
                None => {
                    seen.insert(date, (kind, i));
                    match kind {
                        Kind::Holiday => out.holidays.insert(date),
                        Kind::Workday => out.workdays.insert(date),
                    };
                }
            }
        }
        if seen.len() > MAX_DATES {
            problems.push(format!(
                "the calendar names more than {MAX_DATES} dates (at {at}): a public-holiday calendar names a few dozen a \
                 year"
            ));
            break;
        }
        if problems.len() > MAX_PROBLEMS {
            break;
        }
    }
    if !problems.is_empty() {
        if problems.len() > MAX_PROBLEMS {
            problems.truncate(MAX_PROBLEMS);
            problems.push(format!("(more problems after the first {MAX_PROBLEMS})"));
        }
        return Err(IcsError::Events(problems));
    }
    if out.holidays.is_empty() && out.workdays.is_empty() {
        return Err(IcsError::NothingToImport(out.ignored.len()));
    }
    Ok(out)
}

/// The first property called `name` (names are case-insensitive).
fn prop<'a, 'p>(props: &'a [Property<'p>], name: &str) -> Option<&'a Property<'p>> {
    props.iter().find(|p| p.name.as_str().eq_ignore_ascii_case(name))
}

fn param<'a>(p: &'a Property<'_>, name: &str) -> Option<&'a str> {
    p.params.iter().find(|x| x.key.as_str().eq_ignore_ascii_case(name)).and_then(|x| x.val.as_ref()).map(|v| v.as_str())
}

/// A value for messages: control characters become spaces, at most 80 characters.
fn clean(text: &str) -> String {
    let text: String = text.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// `Some(Some(kind))` for an event marked WORK-HOLIDAY or ALTERNATE-WORKDAY, `Some(None)` for another mark, `None`
/// without a mark.
fn apple_mark(event: &Component<'_>) -> Option<Option<Kind>> {
    let mark = prop(&event.properties, "X-APPLE-SPECIAL-DAY")?;
    let value = mark.val.as_str().trim();
    Some(if value.eq_ignore_ascii_case("WORK-HOLIDAY") {
        Some(Kind::Holiday)
    } else if value.eq_ignore_ascii_case("ALTERNATE-WORKDAY") {
        Some(Kind::Workday)
    } else {
        None
    })
}

fn classify_event(event: &Component<'_>, marked: bool, classify: &Classify) -> Result<Kind, String> {
    let props = &event.properties;
    if prop(props, "STATUS").is_some_and(|s| s.val.as_str().trim().eq_ignore_ascii_case("CANCELLED")) {
        return Err("cancelled (STATUS:CANCELLED)".into());
    }
    match apple_mark(event) {
        Some(Some(kind)) => return Ok(kind),
        Some(None) => return Err("X-APPLE-SPECIAL-DAY marks neither WORK-HOLIDAY nor ALTERNATE-WORKDAY".into()),
        None if marked => {
            return Err(
                "no X-APPLE-SPECIAL-DAY mark in a calendar that marks its days off (a festival or an observance)"
                    .into(),
            )
        }
        None => {}
    }
    let mut words = String::new();
    for p in props.iter().filter(|p| {
        p.name.as_str().eq_ignore_ascii_case("SUMMARY") || p.name.as_str().eq_ignore_ascii_case("CATEGORIES")
    }) {
        words.push_str(&p.val.as_str().to_lowercase());
        words.push('\n');
    }
    let has = |list: &[String]| list.iter().any(|k| words.contains(k.as_str()));
    if has(&classify.workday_keywords) {
        return Ok(Kind::Workday);
    }
    if let Some(holiday) = &classify.holiday_keywords {
        return if has(holiday) { Ok(Kind::Holiday) } else { Err("matches no holiday keyword".into()) };
    }
    let description =
        prop(props, "DESCRIPTION").map(|p| p.val.as_str().trim_start().to_lowercase()).unwrap_or_default();
    if description.starts_with("observance") || description.starts_with("纪念日") {
        return Err("an observance, not a day off (DESCRIPTION)".into());
    }
    Ok(Kind::Holiday)
}

/// A `DTSTART`, `DTEND` value.
#[derive(Clone, Debug, PartialEq)]
enum When {
    Date(Date),
    /// A time, placed in time.
    Time(Zoned),
}

fn when(p: &Property<'_>, tz: &TimeZone) -> Result<When, String> {
    let name = p.name.as_str().to_uppercase();
    let value = p.val.as_str().trim();
    let is_date = param(p, "VALUE").is_some_and(|v| v.eq_ignore_ascii_case("DATE"));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let shown = clean(value);
    if is_date || (value.len() == 8 && digits(value)) {
        let date = (value.len() == 8 && digits(value)).then(|| Date::strptime("%Y%m%d", value).ok()).flatten();
        return date.map(When::Date).ok_or_else(|| format!("{name} `{shown}` is not a date (YYYYMMDD)"));
    }
    let (local, utc) = match value.strip_suffix(['Z', 'z']) {
        Some(v) => (v, true),
        None => (value, false),
    };
    let shaped = local.len() == 15 && local.as_bytes()[8] == b'T' && digits(&local[..8]) && digits(&local[9..]);
    let dt = shaped
        .then(|| DateTime::strptime("%Y%m%dT%H%M%S", local).ok())
        .flatten()
        .ok_or_else(|| format!("{name} `{shown}` is neither a date (YYYYMMDD) nor a date-time (YYYYMMDDTHHMMSS)"))?;
    let zone = if utc {
        TimeZone::UTC
    } else if let Some(id) = param(p, "TZID") {
        TimeZone::get(id.trim()).map_err(|_| {
            format!("{name} has TZID `{}`, which is not a time zone this gateway knows (write an IANA name such as Asia/Shanghai)", clean(id))
        })?
    } else {
        tz.clone()
    };
    let zoned = dt.to_zoned(zone).map_err(|e| format!("{name} `{shown}`: {e}"))?;
    Ok(When::Time(zoned.with_time_zone(tz.clone())))
}

/// The dates an event covers (see the module documentation).
fn event_dates(event: &Component<'_>, tz: &TimeZone) -> Result<Vec<Date>, String> {
    let props = &event.properties;
    for repeat in ["RRULE", "RDATE"] {
        if prop(props, repeat).is_some() {
            return Err(format!("repeats ({repeat}): recurring events are not imported, list each date as an event"));
        }
    }
    let start = when(prop(props, "DTSTART").ok_or("has no DTSTART: an event without a date")?, tz)?;
    let end = prop(props, "DTEND").map(|p| when(p, tz)).transpose()?;
    let duration = match prop(props, "DURATION") {
        None => None,
        Some(p) => {
            let text = p.val.as_str().trim();
            let span: Span =
                text.parse().map_err(|_| format!("DURATION `{}` is not an ISO 8601 duration", clean(text)))?;
            if span.is_negative() {
                return Err(format!("DURATION `{}` is negative", clean(text)));
            }
            Some(span)
        }
    };
    if end.is_some() && duration.is_some() {
        return Err("has both DTEND and DURATION".into());
    }
    // The first date and the day after the last.
    let (first, after) = match (&start, end) {
        (When::Date(s), None) => {
            let after = match duration {
                None => s.tomorrow().map_err(|e| e.to_string())?,
                Some(span) => {
                    let end =
                        s.to_datetime(jiff::civil::Time::midnight()).checked_add(span).map_err(|e| e.to_string())?;
                    if end.time() == jiff::civil::Time::midnight() && end.date() > *s {
                        end.date()
                    } else {
                        end.date().tomorrow().map_err(|e| e.to_string())?
                    }
                }
            };
            (*s, after)
        }
        (When::Date(s), Some(When::Date(e))) => match e.cmp(s) {
            std::cmp::Ordering::Less => return Err(format!("ends ({e}) before it starts ({s})")),
            std::cmp::Ordering::Equal => (*s, s.tomorrow().map_err(|e| e.to_string())?),
            std::cmp::Ordering::Greater => (*s, e),
        },
        (When::Date(_), Some(When::Time(_))) => {
            return Err("DTSTART is a date but DTEND a date-time: write both the same way".into())
        }
        (When::Time(_), Some(When::Date(_))) => {
            return Err("DTSTART is a date-time but DTEND a date: write both the same way".into())
        }
        (When::Time(s), end) => {
            let e = match (end, duration) {
                (Some(When::Time(e)), _) => e,
                (_, Some(span)) => s.checked_add(span).map_err(|e| e.to_string())?,
                _ => s.clone(),
            };
            if e < *s {
                return Err(format!(
                    "ends ({}) before it starts ({})",
                    e.strftime("%Y-%m-%d %H:%M:%S"),
                    s.strftime("%Y-%m-%d %H:%M:%S")
                ));
            }
            // The end is exclusive: an event that ends at midnight does not cover the next date.
            let last = if e > *s { e.checked_sub(Span::new().nanoseconds(1)).map_err(|e| e.to_string())? } else { e };
            (s.date(), last.date().tomorrow().map_err(|e| e.to_string())?)
        }
    };
    let days = i64::from((after - first).get_days());
    if days > MAX_EVENT_DAYS {
        return Err(format!("spans {days} days, from {first}: at most {MAX_EVENT_DAYS} (is a date wrong?)"));
    }
    let mut dates = Vec::with_capacity(usize::try_from(days).unwrap_or(0));
    let mut d = first;
    while d < after {
        dates.push(d);
        d = match d.tomorrow() {
            Ok(next) => next,
            Err(_) => break,
        };
    }
    Ok(dates)
}

/// A short message from the parser's verbose error, with the line as sent (`physical` maps a 0-based line of the
/// unfolded text to the 1-based line of the file).
fn syntax_error(verbose: &str, physical: &dyn Fn(usize) -> usize) -> String {
    // `convert_error` writes entries like "0: at line 3, in Tag:\nEND:VTODO\n    ^": the first is the innermost.
    let mut rows = verbose.lines();
    while let Some(row) = rows.next() {
        let Some(rest) = row.split_once("at line ").map(|(_, r)| r) else { continue };
        let number: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(n) = number.parse::<usize>() else { continue };
        let text = rows.next().map(clean).unwrap_or_default();
        let upper = text.to_ascii_uppercase();
        let what = if verbose.contains("mismatching end") && upper.starts_with("END") {
            "an END that does not match the open BEGIN".to_owned()
        } else if upper.starts_with("BEGIN:") {
            "the component that begins here cannot be read (is its END missing?)".to_owned()
        } else {
            "cannot read this line as part of the calendar".to_owned()
        };
        return format!("line {} (`{text}`): {what}", physical(n.saturating_sub(1)));
    }
    "the end of the file: it ends inside a component (is an END line missing?)".into()
}

#[cfg(test)]
mod tests;
