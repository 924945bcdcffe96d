//! Adds holidays and make-up working days to the `[calendar]` of a rules text, keeping everything else of the text as
//! the admin wrote it (comments, order, layout), with `toml_edit`. Pure: text in, text out.
//!
//! - A date already listed where it belongs is left alone (never listed twice).
//! - A date added as a holiday that is listed in `workdays` is moved out of `workdays` (and the reverse): the newer
//!   word wins, and the caller is told which dates moved.
//! - New dates go at the end of their array, after a comment line saying where they came from. A multi-line array gets
//!   one date per line with the indentation of its last entry; a one-line array stays on one line while it has at most
//!   [`INLINE_MAX`] entries, else it is laid out one entry per line. A missing `[calendar]` table or array is created.
//!
//! The result is not validated here; the caller checks the whole text with [`super::Rules::parse`] before writing it.

use std::collections::BTreeSet;

use jiff::civil::Date;
use toml_edit::{Array, DocumentMut, Item, Table, TableLike, Value};

use super::parse_date;

/// The most entries a one-line array keeps on one line.
pub const INLINE_MAX: usize = 4;

/// What happened to the dates of one kind (holidays or working days).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// Dates that were in neither list.
    pub added: Vec<Date>,
    /// Dates that were in the other list and were moved into this one.
    pub moved: Vec<Date>,
    /// Dates that were already in this list.
    pub already_present: Vec<Date>,
}

impl Outcome {
    fn changed(&self) -> bool {
        !self.added.is_empty() || !self.moved.is_empty()
    }
}

/// A rules text with the dates merged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    /// The new text (the old text when nothing changed).
    pub text: String,
    pub holidays: Outcome,
    pub workdays: Outcome,
}

impl Merged {
    pub fn changed(&self) -> bool {
        self.holidays.changed() || self.workdays.changed()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MergeError {
    #[error("the rules text is not TOML: {0}")]
    Toml(String),
    #[error("`calendar` in the rules is not a table")]
    NotTable,
    #[error("`calendar.{0}` in the rules is not an array")]
    NotArray(&'static str),
}

/// Merges `holidays` and `workdays` into `text`'s `[calendar]`. `note` is written as a comment line above the dates
/// added to each array (control characters become spaces).
pub fn merge(
    text: &str,
    holidays: &BTreeSet<Date>,
    workdays: &BTreeSet<Date>,
    note: &str,
) -> Result<Merged, MergeError> {
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| MergeError::Toml(e.to_string()))?;
    let calendar = doc.entry("calendar").or_insert_with(|| Item::Table(Table::new()));
    let calendar = calendar.as_table_like_mut().ok_or(MergeError::NotTable)?;
    let listed_holidays = listed(calendar, "holidays")?;
    let listed_workdays = listed(calendar, "workdays")?;
    let holiday_outcome = sort(holidays, &listed_holidays, &listed_workdays);
    let workday_outcome = sort(workdays, &listed_workdays, &listed_holidays);
    let merged = |text: String| Merged { text, holidays: holiday_outcome.clone(), workdays: workday_outcome.clone() };
    if !holiday_outcome.changed() && !workday_outcome.changed() {
        return Ok(merged(text.to_owned()));
    }
    let note: String = note.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    for (name, mine, theirs) in
        [("holidays", &holiday_outcome, &workday_outcome), ("workdays", &workday_outcome, &holiday_outcome)]
    {
        let mut new: Vec<Date> = mine.added.iter().chain(&mine.moved).copied().collect();
        if new.is_empty() && theirs.moved.is_empty() {
            continue;
        }
        let array = array_mut(calendar, name)?;
        if !theirs.moved.is_empty() {
            array.retain(|v| !v.as_str().and_then(|s| parse_date(s).ok()).is_some_and(|d| theirs.moved.contains(&d)));
            // A one-line array keeps no space after its `[`.
            if let Some(first) = array.get_mut(0) {
                if !first.decor().prefix().and_then(|p| p.as_str()).is_some_and(|p| p.contains('\n')) {
                    first.decor_mut().set_prefix("");
                }
            }
        }
        new.sort_unstable();
        append(array, &new, &note);
    }
    Ok(merged(doc.to_string()))
}

/// The dates an array lists (entries that are not dates are left to the rules validation).
fn listed(calendar: &dyn TableLike, name: &'static str) -> Result<BTreeSet<Date>, MergeError> {
    match calendar.get(name) {
        None => Ok(BTreeSet::new()),
        Some(item) => {
            let array = item.as_array().ok_or(MergeError::NotArray(name))?;
            Ok(array.iter().filter_map(|v| v.as_str().and_then(|s| parse_date(s).ok())).collect())
        }
    }
}

fn array_mut<'t>(calendar: &'t mut dyn TableLike, name: &'static str) -> Result<&'t mut Array, MergeError> {
    calendar
        .entry(name)
        .or_insert(Item::Value(Value::Array(Array::new())))
        .as_array_mut()
        .ok_or(MergeError::NotArray(name))
}

fn sort(dates: &BTreeSet<Date>, mine: &BTreeSet<Date>, theirs: &BTreeSet<Date>) -> Outcome {
    let mut out = Outcome::default();
    for d in dates {
        if mine.contains(d) {
            out.already_present.push(*d);
        } else if theirs.contains(d) {
            out.moved.push(*d);
        } else {
            out.added.push(*d);
        }
    }
    out
}

/// Appends `dates` to `array` in its layout (see the module documentation).
fn append(array: &mut Array, dates: &[Date], note: &str) {
    if dates.is_empty() {
        return;
    }
    let prefix_of = |v: &Value| v.decor().prefix().and_then(|p| p.as_str()).unwrap_or("").to_owned();
    let multiline = array.iter().any(|v| prefix_of(v).contains('\n'))
        || array.trailing().as_str().is_some_and(|t| t.contains('\n'));
    if !multiline && array.len() + dates.len() <= INLINE_MAX {
        for d in dates {
            let mut v = Value::from(d.to_string());
            v.decor_mut().set_prefix(if array.is_empty() { "" } else { " " });
            v.decor_mut().set_suffix("");
            array.push_formatted(v);
        }
        return;
    }
    let indent = match array.iter().last().map(prefix_of) {
        Some(p) if multiline => p.rsplit('\n').next().unwrap_or("").to_owned(),
        _ => "    ".to_owned(),
    };
    if !multiline {
        for v in array.iter_mut() {
            v.decor_mut().set_prefix(format!("\n{indent}"));
            v.decor_mut().set_suffix("");
        }
    }
    // What stood after the last entry (a comment on its line, or comment lines before `]`) stays where it was.
    let trailing = array.trailing().as_str().unwrap_or("").to_owned();
    let kept = match trailing.rfind('\n') {
        Some(i) => trailing[..i].to_owned(),
        None => trailing.trim_end().to_owned(),
    };
    for (i, d) in dates.iter().enumerate() {
        let mut v = Value::from(d.to_string());
        let prefix = if i == 0 { format!("{kept}\n{indent}# {note}\n{indent}") } else { format!("\n{indent}") };
        v.decor_mut().set_prefix(prefix);
        v.decor_mut().set_suffix("");
        array.push_formatted(v);
    }
    array.set_trailing("\n");
    array.set_trailing_comma(true);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::reconcile::rules::Rules;

    fn d(t: &str) -> Date {
        t.parse().expect("date")
    }

    fn set(list: &[&str]) -> BTreeSet<Date> {
        list.iter().map(|t| d(t)).collect()
    }

    const NOTE: &str = "imported 2026-12-05 from 中国法定节假日 2026";

    fn merge_ok(text: &str, holidays: &[&str], workdays: &[&str]) -> Merged {
        let m = merge(text, &set(holidays), &set(workdays), NOTE).expect("merges");
        let rules = Rules::parse(Path::new("rules.toml"), &m.text).unwrap_or_else(|p| panic!("{p:?}\n{}", m.text));
        for h in holidays {
            assert!(rules.holidays.contains(&d(h)), "{h} in\n{}", m.text);
        }
        for w in workdays {
            assert!(rules.makeup_workdays.contains(&d(w)), "{w} in\n{}", m.text);
        }
        m
    }

    #[test]
    fn dates_join_a_multi_line_calendar_and_the_comments_stay() {
        let text = "# Site rules, kept by HR.\ndedupe_window = \"5m\" # merge double taps\n\n[calendar]\n\
                    # National Day\nholidays = [\n  \"2026-10-01\", # Thursday\n  \"2026-10-02\",\n  # more below\n]\n\
                    workdays = [\"2026-10-10\"]\n\n# end of file\n";
        let m = merge_ok(text, &["2026-10-02", "2026-10-03"], &["2026-09-20"]);
        assert_eq!(
            m.text,
            "# Site rules, kept by HR.\ndedupe_window = \"5m\" # merge double taps\n\n[calendar]\n\
             # National Day\nholidays = [\n  \"2026-10-01\", # Thursday\n  \"2026-10-02\",\n  # more below\n  \
             # imported 2026-12-05 from 中国法定节假日 2026\n  \"2026-10-03\",\n]\n\
             workdays = [\"2026-10-10\", \"2026-09-20\"]\n\n# end of file\n"
        );
        assert_eq!(m.holidays.added, [d("2026-10-03")]);
        assert_eq!(m.holidays.already_present, [d("2026-10-02")]);
        assert_eq!(m.workdays.added, [d("2026-09-20")]);
        assert!(m.changed());
    }

    #[test]
    fn a_missing_calendar_is_created_after_the_rest() {
        let text = "[[shift]]\nid = \"day\"\nstart = \"09:00\"\nend = \"18:00\"\n";
        let m = merge_ok(text, &["2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04", "2026-10-05"], &[]);
        assert_eq!(
            m.text,
            "[[shift]]\nid = \"day\"\nstart = \"09:00\"\nend = \"18:00\"\n\n[calendar]\nholidays = [\n    \
             # imported 2026-12-05 from 中国法定节假日 2026\n    \"2026-10-01\",\n    \"2026-10-02\",\n    \
             \"2026-10-03\",\n    \"2026-10-04\",\n    \"2026-10-05\",\n]\n"
        );
        let small = merge_ok("", &["2026-10-01"], &["2026-10-10"]);
        assert_eq!(small.text, "[calendar]\nholidays = [\"2026-10-01\"]\nworkdays = [\"2026-10-10\"]\n");
    }

    #[test]
    fn a_date_of_the_other_list_is_moved_and_reported() {
        let text =
            "[calendar]\nholidays = [\"2026-10-01\", \"2026-10-08\"]\nworkdays = [\"2026-10-10\", \"2026-10-11\"]\n";
        let m = merge_ok(text, &["2026-10-10"], &["2026-10-08"]);
        assert_eq!(
            m.text,
            "[calendar]\nholidays = [\"2026-10-01\", \"2026-10-10\"]\nworkdays = [\"2026-10-11\", \"2026-10-08\"]\n"
        );
        assert_eq!(m.holidays, Outcome { moved: vec![d("2026-10-10")], ..Outcome::default() });
        assert_eq!(m.workdays, Outcome { moved: vec![d("2026-10-08")], ..Outcome::default() });
    }

    #[test]
    fn nothing_new_leaves_the_text_as_it_was() {
        let text = "[calendar] # the site's\nholidays = [ \"2026-10-01\" ]\n";
        let m = merge(text, &set(&["2026-10-01"]), &BTreeSet::new(), NOTE).expect("merges");
        assert!(!m.changed());
        assert_eq!(m.text, text);
        assert_eq!(m.holidays.already_present, [d("2026-10-01")]);
    }

    #[test]
    fn a_one_line_array_that_grows_is_laid_out_one_date_per_line() {
        let text = "[calendar]\nholidays = [\"2026-10-01\", \"2026-10-02\"]\n";
        let m = merge_ok(text, &["2026-10-03", "2026-10-04", "2026-10-05"], &[]);
        assert_eq!(
            m.text,
            "[calendar]\nholidays = [\n    \"2026-10-01\",\n    \"2026-10-02\",\n    \
             # imported 2026-12-05 from 中国法定节假日 2026\n    \"2026-10-03\",\n    \"2026-10-04\",\n    \
             \"2026-10-05\",\n]\n"
        );
    }

    #[test]
    fn inline_and_dotted_calendars_are_tables_too() {
        let m = merge_ok("calendar = { holidays = [\"2026-10-01\"] }\n", &["2026-10-02"], &[]);
        assert_eq!(m.text, "calendar = { holidays = [\"2026-10-01\", \"2026-10-02\"] }\n");
        let m = merge_ok("calendar.holidays = [\"2026-10-01\"]\n", &["2026-10-02"], &["2026-10-10"]);
        assert_eq!(
            m.text,
            "calendar.holidays = [\"2026-10-01\", \"2026-10-02\"]\ncalendar.workdays = [\"2026-10-10\"]\n"
        );
    }

    #[test]
    fn the_note_cannot_break_out_of_its_comment() {
        let m = merge(
            "",
            &set(&["2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04", "2026-10-05"]),
            &BTreeSet::new(),
            "a\nholidays = 1",
        )
        .expect("merges");
        assert!(m.text.contains("# a holidays = 1\n"), "{}", m.text);
        Rules::parse(Path::new("rules.toml"), &m.text).expect("still valid");
    }

    proptest::proptest! {
        /// Whatever was listed and whatever is merged, the result is valid rules whose calendar is the old one with
        /// the new dates moved in, and merging the same dates again changes nothing.
        #[test]
        fn the_merged_calendar_is_the_old_one_overridden_by_the_new_dates(
            old in proptest::collection::vec(0u8..3, 0..40),
            new in proptest::collection::vec(0u8..3, 0..40),
            multiline in proptest::bool::ANY,
        ) {
            let day = |i: usize| d("2026-09-01").checked_add(jiff::Span::new().days(i as i64)).expect("date");
            let pick = |tags: &[u8], tag: u8| -> BTreeSet<Date> {
                tags.iter().enumerate().filter(|(_, t)| **t == tag).map(|(i, _)| day(i)).collect()
            };
            let (old_h, old_w, new_h, new_w) = (pick(&old, 1), pick(&old, 2), pick(&new, 1), pick(&new, 2));
            let list = |s: &BTreeSet<Date>| {
                let sep = if multiline { "\n  " } else { " " };
                let items: Vec<String> = s.iter().map(|d| format!("{sep}\"{d}\",")).collect();
                format!("[{}{}]", items.concat(), if multiline { "\n" } else { "" })
            };
            let text = format!("# rules\n[calendar]\nholidays = {}\nworkdays = {} # make-up days\n", list(&old_h), list(&old_w));
            let m = merge(&text, &new_h, &new_w, NOTE).expect("merges");
            let rules = Rules::parse(Path::new("rules.toml"), &m.text).expect("valid");
            let want_h: BTreeSet<Date> = old_h.difference(&new_w).chain(&new_h).copied().collect();
            let want_w: BTreeSet<Date> = old_w.difference(&new_h).chain(&new_w).copied().collect();
            proptest::prop_assert_eq!(&rules.holidays, &want_h, "{}", m.text);
            proptest::prop_assert_eq!(&rules.makeup_workdays, &want_w, "{}", m.text);
            proptest::prop_assert!(m.text.starts_with("# rules\n") && m.text.contains("# make-up days"), "{}", m.text);
            let again = merge(&m.text, &new_h, &new_w, NOTE).expect("merges");
            proptest::prop_assert!(!again.changed());
            proptest::prop_assert_eq!(again.text, m.text);
        }
    }

    #[test]
    fn texts_that_cannot_take_dates_are_errors() {
        let one = set(&["2026-10-01"]);
        let none = BTreeSet::new();
        assert!(matches!(merge("[calendar\n", &one, &none, NOTE), Err(MergeError::Toml(_))));
        assert_eq!(merge("calendar = 3\n", &one, &none, NOTE), Err(MergeError::NotTable));
        assert_eq!(merge("[calendar]\nholidays = \"x\"\n", &one, &none, NOTE), Err(MergeError::NotArray("holidays")));
        assert_eq!(merge("[calendar]\nworkdays = {}\n", &one, &none, NOTE), Err(MergeError::NotArray("workdays")));
    }
}
