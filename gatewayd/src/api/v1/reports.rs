//! `GET /api/v1/reports/export` (CSV) and `GET /api/v1/reports/summary`.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub format: Option<String>,
    pub department: Option<String>,
    pub employee: Option<String>,
}

/// One CSV cell: quoted when needed; a leading `=`, `+`, `-` or `@` is prefixed with `'` so spreadsheets do not run it.
pub fn csv_cell(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_owned() };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The export header.
pub const EXPORT_COLUMNS: [&str; 16] = [
    "record_id",
    "employee_id",
    "name",
    "department",
    "work_date",
    "shift_id",
    "clock_in",
    "clock_out",
    "statuses",
    "late_minutes",
    "early_leave_minutes",
    "worked_minutes",
    "overtime_minutes",
    "closed",
    "revision",
    "rules_version",
];

pub(super) async fn export(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Response> {
    if q.format.as_deref().is_some_and(|f| f != "csv") {
        return Err(ApiError::bad("format: only `csv` is supported"));
    }
    let (from, to) = (parse_date("from", &q.from)?, parse_date("to", &q.to)?);
    let days = (to - from).get_days();
    if !(0..MAX_EXPORT_DAYS).contains(&i64::from(days)) {
        return Err(ApiError::bad(format!("from..to must be 1 to {MAX_EXPORT_DAYS} days, from first to last")));
    }
    let f = RecordFilter {
        from: Some(q.from.clone()),
        to: Some(q.to.clone()),
        employee: q.employee.clone(),
        department: q.department.clone(),
        limit: Some(usize::MAX),
    };
    let roster = state.roster()?;
    check_filters(&p, &roster, f.employee.as_deref(), f.department.as_deref())?;
    let employee = if p.role() == Role::Employee { p.employee().map(str::to_owned) } else { f.employee.clone() };
    let query = RecordQuery { from: Some(from), to: Some(to), employee, department: f.department.clone(), limit: 0 };
    let mut list = state.attendance.records.query(&query, &roster).map_err(ApiError::internal)?;
    list.retain(|r| p.sees_employee(&roster, &r.employee_id));
    let tz = state.config().timezone();
    let mut out = String::from("\u{feff}");
    out.push_str(&EXPORT_COLUMNS.join(","));
    out.push_str("\r\n");
    for r in list {
        let e = roster.get(&r.employee_id);
        let cells = [
            r.record_id.clone(),
            r.employee_id.clone(),
            e.map(|e| e.name.clone()).unwrap_or_default(),
            e.map(|e| e.department.clone()).unwrap_or_default(),
            r.work_date.clone(),
            r.shift_id.clone(),
            local_time(r.clock_in_ms, &tz).unwrap_or_default(),
            local_time(r.clock_out_ms, &tz).unwrap_or_default(),
            r.statuses.join("|"),
            r.late_minutes.to_string(),
            r.early_leave_minutes.to_string(),
            r.worked_minutes.to_string(),
            r.overtime_minutes.to_string(),
            r.closed.to_string(),
            r.revision.to_string(),
            r.rules_version.to_string(),
        ];
        out.push_str(&cells.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    let name = format!("attachment; filename=\"attendance-{from}-{to}.csv\"");
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, name)], out)
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryQuery {
    /// `YYYY-MM`.
    pub month: String,
    pub department: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct LateEntry {
    pub employee_id: String,
    pub name: String,
    pub department: String,
    pub late_count: u32,
    pub late_minutes: i64,
}

/// The month summary of records in scope: attendance rate (workday records without `absent`, of all workday records
/// but those of a whole day's leave), the ten employees late most often, overtime minutes per department.
pub fn summarize(records: &[AttendanceRecord], roster: &Roster) -> serde_json::Value {
    let mut expected = 0u64;
    let mut attended = 0u64;
    let mut late: BTreeMap<String, LateEntry> = BTreeMap::new();
    let mut overtime: BTreeMap<String, i64> = BTreeMap::new();
    for r in records {
        let has = |s: &str| r.statuses.iter().any(|x| x == s);
        let department = roster.get(&r.employee_id).map(|e| e.department.clone()).unwrap_or_default();
        // A whole day's leave (`on_leave`, nothing worked, not absent for the rest of the shift) is not expected.
        let whole_leave = has("on_leave") && !has("absent") && r.clock_in_ms.is_none();
        if !has("rest_day_work") && !whole_leave {
            expected += 1;
            if !has("absent") {
                attended += 1;
            }
        }
        if has("late") {
            let e = late.entry(r.employee_id.clone()).or_insert_with(|| LateEntry {
                employee_id: r.employee_id.clone(),
                name: roster.get(&r.employee_id).map(|e| e.name.clone()).unwrap_or_default(),
                department: department.clone(),
                ..LateEntry::default()
            });
            e.late_count += 1;
            e.late_minutes += i64::from(r.late_minutes);
        }
        *overtime.entry(department).or_default() += i64::from(r.overtime_minutes);
    }
    let mut top: Vec<LateEntry> = late.into_values().collect();
    top.sort_by(|a, b| b.late_count.cmp(&a.late_count).then(b.late_minutes.cmp(&a.late_minutes)));
    top.truncate(10);
    let rate = if expected == 0 { None } else { Some(attended as f64 / expected as f64) };
    let by_department: Vec<serde_json::Value> =
        overtime.into_iter().map(|(d, m)| serde_json::json!({ "department": d, "overtime_minutes": m })).collect();
    serde_json::json!({
        "records": records.len(),
        "expected_days": expected,
        "attended_days": attended,
        "attendance_rate": rate,
        "late_top10": top,
        "overtime_by_department": by_department,
    })
}

/// The attendance cycle that starts in the month of `month` (any date of it): from `start_day` of that month to the
/// day before `start_day` of the next month (`[reports] cycle_start_day`, 1 to 28; 1 is the natural month).
pub fn cycle(month: Date, start_day: u8) -> ApiResult<(Date, Date)> {
    let day = i8::try_from(start_day.clamp(1, 28)).unwrap_or(1);
    let from = month.first_of_month().with().day(day).build().map_err(ApiError::internal)?;
    let next = from.checked_add(jiff::Span::new().months(1)).map_err(|e| ApiError::bad(format!("month: {e}")))?;
    let to = next.yesterday().map_err(ApiError::internal)?;
    Ok((from, to))
}

/// `cycle_start_day` of the rules in force (1 without rules).
fn cycle_start_day(state: &ApiState) -> ApiResult<u8> {
    let records = &state.attendance.records;
    let version = records.current_rules().map_err(ApiError::internal)?;
    let text = records.rules_versions().map_err(ApiError::internal)?.remove(&version).unwrap_or_default();
    if text.is_empty() {
        return Ok(1);
    }
    let path = std::path::PathBuf::from(format!("rules version {version}"));
    Ok(crate::reconcile::rules::Rules::parse(&path, &text).map(|r| r.cycle_start_day).unwrap_or(1))
}

pub(super) async fn summary(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<SummaryQuery>,
) -> ApiResult<Response> {
    let month = parse_date("month", &format!("{}-01", q.month))
        .map_err(|_| ApiError::bad(format!("month: `{}` is not YYYY-MM", q.month)))?;
    let (first, last) = cycle(month, cycle_start_day(&state)?)?;
    let roster = state.roster()?;
    check_filters(&p, &roster, None, q.department.as_deref())?;
    let employee = if p.role() == Role::Employee { p.employee().map(str::to_owned) } else { None };
    let query = RecordQuery { from: Some(first), to: Some(last), employee, department: q.department.clone(), limit: 0 };
    let mut list = state.attendance.records.query(&query, &roster).map_err(ApiError::internal)?;
    list.retain(|r| p.sees_employee(&roster, &r.employee_id));
    let mut body = summarize(&list, &roster);
    body["month"] = serde_json::Value::String(q.month.clone());
    body["from"] = serde_json::Value::String(first.to_string());
    body["to"] = serde_json::Value::String(last.to_string());
    Ok(axum::Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_cell("-1,2"), "\"'-1,2\"");
    }

    #[test]
    fn a_cycle_runs_from_its_start_day_to_the_day_before_it_next_month() {
        let d = |t: &str| t.parse::<Date>().expect("date");
        let cases = [
            ("2026-11-01", 1, "2026-11-01", "2026-11-30"),
            ("2026-02-01", 1, "2026-02-01", "2026-02-28"),
            ("2028-02-01", 1, "2028-02-01", "2028-02-29"),
            ("2026-11-01", 26, "2026-11-26", "2026-12-25"),
            ("2026-12-01", 26, "2026-12-26", "2027-01-25"),
            ("2026-12-01", 1, "2026-12-01", "2026-12-31"),
            ("2026-01-01", 28, "2026-01-28", "2026-02-27"),
            ("2026-02-01", 28, "2026-02-28", "2026-03-27"),
            ("2026-02-01", 2, "2026-02-02", "2026-03-01"),
        ];
        for (month, start, from, to) in cases {
            let got = cycle(d(month), start).expect("a cycle");
            assert_eq!(got, (d(from), d(to)), "{month} from day {start}");
        }
        assert!(cycle(Date::constant(9999, 12, 1), 1).is_err());
    }

    #[test]
    fn summary_counts() {
        let roster = Roster::parse_csv("employee,name,department\nE1,Ann,D-A\nE2,Bob,D-B\n").expect("roster parses");
        let rec = |e: &str, statuses: &[&str], late: i32, ot: i32| AttendanceRecord {
            employee_id: e.into(),
            statuses: statuses.iter().map(|s| (*s).to_owned()).collect(),
            late_minutes: late,
            overtime_minutes: ot,
            ..AttendanceRecord::default()
        };
        let list = [
            rec("E1", &["late"], 5, 0),
            rec("E1", &["late"], 7, 30),
            rec("E2", &["absent"], 0, 0),
            rec("E2", &["rest_day_work"], 0, 60),
            rec("E2", &["on_leave"], 0, 0),
        ];
        let s = summarize(&list, &roster);
        assert_eq!(s["expected_days"], 3);
        assert_eq!(s["attended_days"], 2);
        assert_eq!(s["late_top10"][0]["employee_id"], "E1");
        assert_eq!(s["late_top10"][0]["late_minutes"], 12);
        assert_eq!(s["overtime_by_department"][0]["department"], "D-A");
        assert_eq!(s["overtime_by_department"][1]["overtime_minutes"], 60);
    }
}
