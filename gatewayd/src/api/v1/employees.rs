//! `GET|PUT /api/v1/employees`, `POST /api/v1/employees/import`: the roster.

use super::*;

/// An employee as the API accepts it (`PUT /api/v1/employees`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmployeeIn {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub department: String,
    #[serde(default)]
    pub cards: Vec<String>,
    /// `page` or `device:page`.
    #[serde(default)]
    pub fingerprints: Vec<String>,
    #[serde(default)]
    pub faces: Vec<String>,
    #[serde(default)]
    pub pins: Vec<String>,
    #[serde(default)]
    pub manages: Vec<String>,
}

/// An employee as the API shows it; credentials only to admins.
#[derive(Debug, Serialize)]
pub struct EmployeeView {
    pub id: String,
    pub name: String,
    pub department: String,
    pub manages: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cards: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprints: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faces: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pins: Option<Vec<String>>,
}

pub(super) async fn employees(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<impl IntoResponse> {
    let roster = state.roster()?;
    let admin = p.role() == Role::Admin;
    let list: Vec<EmployeeView> = roster
        .employees()
        .iter()
        .filter(|e| p.sees_employee(&roster, &e.id))
        .map(|e| EmployeeView {
            id: e.id.clone(),
            name: e.name.clone(),
            department: e.department.clone(),
            manages: e.manages.clone(),
            cards: admin.then(|| e.cards.clone()),
            fingerprints: admin.then(|| e.fingerprints.iter().map(ToString::to_string).collect()),
            faces: admin.then(|| e.faces.clone()),
            pins: admin.then(|| e.pins.clone()),
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "employees": list })))
}

/// Puts an imported roster in force: first written to [`crate::reconcile::roster::API_FILE`] in the data dir (so a SIGHUP or a
/// restart keeps it: it wins over `[roster].file`), then the roster tree, then the engine.
pub(super) async fn replace_roster(state: &ApiState, roster: Roster) -> ApiResult<Response> {
    let done = state.attendance.replace_roster(&state.config(), roster).await.map_err(update_error)?;
    Ok(axum::Json(serde_json::json!({ "employees": done.employees, "changed": done.changed })).into_response())
}

/// The checks of a `PUT /api/v1/employees` body: the roster it describes, or every problem found.
pub fn roster_from_employees(list: Vec<EmployeeIn>) -> ApiResult<Roster> {
    let mut employees = Vec::with_capacity(list.len());
    let mut problems = Vec::new();
    for (i, e) in list.into_iter().enumerate() {
        let mut fingerprints = Vec::new();
        for f in &e.fingerprints {
            match crate::reconcile::roster::parse_fingerprint(f) {
                Ok(fp) => fingerprints.push(fp),
                Err(m) => problems.push(format!("employee {} (`{}`): fingerprints: {m}", i + 1, e.id)),
            }
        }
        employees.push(Employee {
            id: e.id,
            name: e.name,
            department: e.department,
            cards: e.cards.iter().map(|c| c.to_ascii_uppercase()).collect(),
            fingerprints,
            faces: e.faces,
            pins: e.pins,
            manages: e.manages,
        });
    }
    // The CSV import is the one validator of employee fields: round-trip through it.
    match Roster::from_employees(employees, &[]) {
        Ok(r) if problems.is_empty() => Roster::parse_csv(&r.to_csv())
            .map_err(|ps| ApiError::bad(ps.iter().map(|p| p.message.clone()).collect::<Vec<_>>().join("\n"))),
        Ok(_) => Err(ApiError::bad(problems.join("\n"))),
        Err(ps) => {
            problems.extend(ps.iter().map(|p| p.message.clone()));
            Err(ApiError::bad(problems.join("\n")))
        }
    }
}

pub(super) async fn put_employees(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    Json(list): Json<Vec<EmployeeIn>>,
) -> ApiResult<Response> {
    require(&p, &[Role::Admin], "change the roster")?;
    let roster = roster_from_employees(list)?;
    replace_roster(&state, roster).await
}

/// `POST /api/v1/employees/import`: a roster CSV (the roster file format), validated whole before anything changes.
pub(super) async fn import_employees(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Body,
) -> ApiResult<Response> {
    require(&p, &[Role::Admin], "import the roster")?;
    let roster = roster_from_csv(&body.0)?;
    replace_roster(&state, roster).await
}

/// The checks of a `POST /api/v1/employees/import` body: UTF-8 roster CSV, an optional byte order mark first.
pub fn roster_from_csv(body: &[u8]) -> ApiResult<Roster> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad("the body is not valid UTF-8"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    Roster::parse_csv(text)
        .map_err(|ps| ApiError::bad(ps.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))
}
