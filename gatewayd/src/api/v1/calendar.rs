//! `POST /api/v1/calendar/import`: a public-holiday calendar (.ics) joins the `[calendar]` of the rules.
//!
//! The file is read by [`crate::reconcile::rules::ics`] (which events are holidays, which are make-up working days, and
//! the dates each covers, in the site time zone); any problem is 400 and nothing changes. The dates are merged into
//! the rules file that is (or, after a pending reload, will be) in force ([`calendar_merge`]: the admin's comments and
//! layout stay; a date listed in the other list moves), and the new text goes the way of `PUT /api/v1/rules`: checked
//! in full, written to `api-rules.toml` in the data dir, put in force by a reload.

use super::*;
use crate::reconcile::rules::calendar_merge::{self, Outcome};
use crate::reconcile::rules::ics::{self, Classify};

/// Imports are read, merged and written one at a time, so that two at once cannot drop each other's dates.
static IMPORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Comma-separated keywords that make an event a make-up working day (replace the defaults).
    pub workday_keywords: Option<String>,
    /// Comma-separated keywords that make an event a holiday; events matching neither are then ignored.
    pub holiday_keywords: Option<String>,
}

impl ImportQuery {
    fn classify(&self) -> ApiResult<Classify> {
        let mut out = Classify::default();
        if let Some(list) = &self.workday_keywords {
            out.workday_keywords =
                Classify::keywords(list).ok_or_else(|| ApiError::bad("workday_keywords: give at least one keyword"))?;
        }
        if let Some(list) = &self.holiday_keywords {
            out.holiday_keywords = Some(
                Classify::keywords(list).ok_or_else(|| ApiError::bad("holiday_keywords: give at least one keyword"))?,
            );
        }
        Ok(out)
    }
}

#[derive(Serialize)]
struct Answer {
    /// `X-WR-CALNAME` of the file.
    calendar: Option<String>,
    holidays: Outcome,
    workdays: Outcome,
    ignored: Vec<IgnoredView>,
    /// The rules file written, or null when every date was already listed.
    written: Option<String>,
    reloading: bool,
}

#[derive(Serialize)]
struct IgnoredView {
    event: String,
    reason: String,
}

pub(super) async fn import(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> ApiResult<Response> {
    require(&p, &[Role::Admin], "import a calendar")?;
    let classify = q.classify()?;
    let config = state.config();
    let tz = config.timezone();
    let days = ics::parse_bytes(&body.0, &tz, &classify).map_err(|e| ApiError::bad(format!("calendar: {e}")))?;

    let _one_at_a_time = IMPORTS.lock().await;
    let current = match crate::reconcile::rules::file_in_force(&config) {
        None => String::new(),
        Some(f) => std::fs::read_to_string(&f)
            .map_err(|e| ApiError::internal(format!("cannot read the rules in force, {}: {e}", f.display())))?,
    };
    let today = jiff::Timestamp::now().to_zoned(tz).date();
    let note = match &days.name {
        Some(name) => format!("imported {today} from the calendar \"{name}\""),
        None => format!("imported {today} from a calendar file"),
    };
    let merged = calendar_merge::merge(&current, &days.holidays, &days.workdays, &note)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("the rules in force cannot take the dates: {e}")))?;
    let written = if merged.changed() {
        let file = state.attendance.write_rules(&config, &merged.text).map_err(update_error)?;
        state.reload.request();
        Some(file.display().to_string())
    } else {
        None
    };
    let answer = Answer {
        calendar: days.name,
        reloading: written.is_some(),
        written,
        holidays: merged.holidays,
        workdays: merged.workdays,
        ignored: days
            .ignored
            .into_iter()
            .map(|i| IgnoredView { event: i.event.to_string(), reason: i.reason })
            .collect(),
    };
    Ok(axum::Json(answer).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_from_the_query_replace_the_defaults_and_must_name_something() {
        let q = ImportQuery { workday_keywords: Some("Arbeitstag, Ausgleich".into()), holiday_keywords: None };
        let c = q.classify().expect("keywords");
        assert_eq!(c.workday_keywords, ["arbeitstag", "ausgleich"]);
        assert_eq!(c.holiday_keywords, None);
        let q = ImportQuery { workday_keywords: None, holiday_keywords: Some(" ,".into()) };
        assert!(q.classify().is_err());
        let q = ImportQuery { workday_keywords: Some(String::new()), holiday_keywords: None };
        assert!(q.classify().is_err());
        assert_eq!(
            ImportQuery { workday_keywords: None, holiday_keywords: None }.classify().ok(),
            Some(Classify::default())
        );
    }

    /// The example of docs/rules.md: its .ics, imported into its calendar, gives its result.
    #[test]
    fn the_import_example_of_the_rules_reference_is_what_happens() {
        let page = include_str!("../../../../docs/rules.md");
        let section = &page[page.find("## Importing a holiday calendar").expect("the section")..];
        let block = |lang: &str, nth: usize| -> String {
            let open = format!("```{lang}\n");
            let start = section.match_indices(&open).nth(nth).expect("a block").0 + open.len();
            let len = section[start..].find("```").expect("the block's end");
            section[start..start + len].to_owned()
        };
        let ics_text = block("ics", 0).replace('\n', "\r\n");
        let (before, after) = (block("toml", 0), block("toml", 1));
        let tz = TimeZone::get("Asia/Shanghai").expect("tz");
        let days = ics::parse(&ics_text, &tz, &Classify::default()).expect("the example imports");
        let note = format!("imported 2026-11-20 from the calendar \"{}\"", days.name.as_deref().unwrap_or_default());
        let merged = calendar_merge::merge(&before, &days.holidays, &days.workdays, &note).expect("merges");
        assert_eq!(merged.text, after);
        assert_eq!(merged.holidays.already_present, [Date::constant(2026, 10, 1)]);
    }

    #[test]
    fn the_answer_lists_dates_as_text() {
        let outcome = Outcome { added: vec![Date::constant(2026, 10, 1)], ..Outcome::default() };
        let v = serde_json::to_value(&outcome).expect("json");
        assert_eq!(v, serde_json::json!({"added": ["2026-10-01"], "moved": [], "already_present": []}));
    }
}
