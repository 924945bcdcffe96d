//! Who is calling: bearer tokens, roles and scopes, the per-token rate limit, the request timeout, and the audit entry
//! of every write — one middleware in front of every `/api/v1` route.
//!
//! Order for each request: parse `Authorization: Bearer …` → verify the token (hash, constant-time compare; see
//! [`crate::tokens`]); without a bearer token, on a mutual TLS connection, the client certificate's common name mapped
//! by `[[api.client_cert]]` (read per request, so SIGHUP changes it) → take one unit from the token's bucket (`[api].rate_per_sec`, `rate_burst`) → run the handler within `[api].request_timeout` → for every
//! method other than GET, append an audit entry (who, what, when, from where, the status answered) before answering.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use tokio::sync::watch;

use super::audit::{Actor, AuditLog};
use super::error::ApiError;
use crate::config::{ClientCertRole, Config};
use crate::reconcile::roster::{Roster, RosterStore};
use crate::tokens::{Role, TokenRecord, TokenStore, MAX_DEPARTMENTS, MAX_SCOPE_LEN};

/// The one endpoint a kiosk token may call.
pub const KIOSK_PATH: &str = "/api/v1/qr/current";
/// Most tokens tracked by the limiter (idle buckets are dropped beyond this).
const MAX_BUCKETS: usize = 10_000;

/// The authenticated caller of a request: a token, or a client certificate mapped to a role (then `token` is its
/// scope, with the id `cert:{common name}`).
#[derive(Clone, Debug)]
pub struct Principal {
    pub token: TokenRecord,
    pub peer: String,
    /// `token:{id}` or `cert:{common name}`: the audit identity and the rate limit key.
    pub who: String,
    /// For a manager: the departments it sees and decides for, worked out per request ([`manager_scope`]).
    pub departments: Vec<String>,
}

impl Principal {
    pub fn role(&self) -> Role {
        self.token.role
    }

    /// The audit identity.
    pub fn actor(&self) -> Actor {
        Actor { who: self.who.clone(), role: self.token.role.as_str().into(), from: self.peer.clone() }
    }

    /// The employee an employee token belongs to (for a manager: the manager's own employee id, if it names one).
    pub fn employee(&self) -> Option<&str> {
        self.token.employee.as_deref()
    }

    /// Whether this caller may see data of `department`.
    pub fn sees_department(&self, department: &str) -> bool {
        match self.token.role {
            Role::Admin => true,
            Role::Manager => self.departments.iter().any(|d| d == department),
            Role::Employee | Role::Kiosk => false,
        }
    }

    /// Whether this caller may see data of `employee` (department membership from the roster in force).
    pub fn sees_employee(&self, roster: &Roster, employee: &str) -> bool {
        match self.token.role {
            Role::Admin => true,
            Role::Manager => roster.get(employee).is_some_and(|e| self.sees_department(&e.department)),
            Role::Employee => self.token.employee.as_deref() == Some(employee),
            Role::Kiosk => false,
        }
    }
}

/// The departments a manager sees and decides for, from the roster in force at this request: what the roster's
/// `manages` column gives the manager's employee, narrowed by the token's departments if it names any. A manager token
/// naming no employee keeps the departments it names (it reads them and decides nothing: see
/// [`crate::api::v1`]). An employee missing from the roster manages nothing.
pub fn manager_scope(token: &TokenRecord, manages: Option<&[String]>) -> Vec<String> {
    match (&token.employee, manages) {
        (None, _) => token.departments.clone(),
        (Some(_), None) => Vec::new(),
        (Some(_), Some(m)) => {
            let mut out: Vec<String> =
                m.iter().filter(|d| token.departments.is_empty() || token.departments.contains(d)).cloned().collect();
            out.sort();
            out.dedup();
            out
        }
    }
}

/// Failed token attempts one source address may make in a burst, then one per [`FAILED_PERIOD`].
pub const FAILED_BURST: u32 = 10;
/// How often a source address earns another failed attempt once its burst is spent.
pub const FAILED_PERIOD: Duration = Duration::from_secs(6);

/// A token bucket per token id, and the failed token attempts per source address.
///
/// Failed attempts are counted with `governor` (GCRA, keyed by IP address). A tower layer such as `tower_governor`
/// limits every request, where only failures are to be counted here, so the middleware uses `governor` directly.
/// Once an address runs out it is refused 429 with `Retry-After` before its token is even checked, until it has
/// earned another attempt: a guess made then cannot tell a right token from a wrong one.
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    failures: governor::DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        let burst = NonZeroU32::new(FAILED_BURST).unwrap_or(NonZeroU32::MIN);
        let quota = governor::Quota::with_period(FAILED_PERIOD)
            .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        RateLimiter {
            buckets: Mutex::default(),
            failures: governor::RateLimiter::keyed(quota),
            blocked: Mutex::default(),
        }
    }
}

impl RateLimiter {
    /// How long `addr` must wait before its token is checked again (None: go ahead).
    pub fn blocked(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.blocked.lock().ok()?;
        map.get(&addr).and_then(|until| until.checked_duration_since(now)).filter(|d| !d.is_zero())
    }

    /// Counts a failed token attempt of `addr`; returns how long it must wait when it has run out.
    pub fn failed(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        use governor::clock::Clock;
        let clock = governor::clock::DefaultClock::default();
        match self.failures.check_key(&addr) {
            Ok(()) => None,
            Err(not_until) => {
                let wait = not_until.wait_time_from(clock.now()).max(Duration::from_secs(1));
                if let Ok(mut map) = self.blocked.lock() {
                    if map.len() >= MAX_BUCKETS {
                        map.retain(|_, until| *until > now);
                        self.failures.retain_recent();
                    }
                    map.insert(addr, now + wait);
                }
                Some(wait)
            }
        }
    }

    /// Takes one unit for `key` from a bucket of `burst` refilled at `per_sec`; false when the bucket is empty.
    pub fn allow(&self, key: &str, now: Instant, per_sec: u32, burst: u32) -> bool {
        let (per_sec, burst) = (f64::from(per_sec), f64::from(burst));
        let Ok(mut map) = self.buckets.lock() else { return true };
        if map.len() >= MAX_BUCKETS && !map.contains_key(key) {
            map.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst);
        }
        let (tokens, at) = map.entry(key.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Problems of `[[api.client_cert]]` tables, by index: the same scope rules as tokens, unique common names, and mutual
/// TLS (`api.tls.client_ca`) to verify the certificates with.
pub fn check_client_certs(certs: &[ClientCertRole], has_client_ca: bool) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, c) in certs.iter().enumerate() {
        let mut bad = |m: String| out.push((i, m));
        if !has_client_ca {
            bad("needs mutual TLS on the API: api.tls = { cert, key, client_ca }".into());
        }
        let cn = &c.common_name;
        if cn.is_empty() || cn.len() > MAX_SCOPE_LEN || cn.chars().any(char::is_control) {
            bad(format!("common_name: 1 to {MAX_SCOPE_LEN} characters without control characters"));
        } else if !names.insert(cn.as_str()) {
            bad(format!("common_name `{cn}` is mapped twice"));
        }
        for d in c.departments.iter().chain(c.employee.iter()) {
            if d.trim().is_empty() || d.len() > MAX_SCOPE_LEN || d.chars().any(char::is_control) {
                bad(format!("`{}`: ids must be 1 to {MAX_SCOPE_LEN} characters", d.escape_debug()));
            }
        }
        if c.departments.len() > MAX_DEPARTMENTS {
            bad(format!("at most {MAX_DEPARTMENTS} departments"));
        }
        match c.role {
            Role::Admin if !c.departments.is_empty() || c.employee.is_some() => {
                bad("an admin takes neither departments nor employee".into())
            }
            Role::Manager if c.departments.is_empty() && c.employee.is_none() => {
                bad("a manager needs employee = \"…\" (what it manages in the roster), departments = [\"…\"] or both"
                    .into())
            }
            Role::Employee if c.employee.is_none() => bad("an employee needs employee = \"…\"".into()),
            Role::Employee if !c.departments.is_empty() => bad("an employee takes no departments".into()),
            Role::Kiosk if !c.departments.is_empty() || c.employee.is_some() => {
                bad("a kiosk takes neither departments nor employee".into())
            }
            _ => {}
        }
    }
    out
}

/// The scope a mapped client certificate stands for.
fn certificate_scope(common_name: &str, map: &ClientCertRole) -> TokenRecord {
    TokenRecord {
        id: format!("cert:{common_name}"),
        role: map.role,
        departments: map.departments.clone(),
        employee: map.employee.clone(),
        created_ms: 0,
        revoked_ms: None,
        sha256: String::new(),
    }
}

/// What the authentication middleware reads: the configuration in force, the tokens, the audit log, the limiter.
#[derive(Clone)]
pub struct AuthState {
    pub config: watch::Receiver<Arc<Config>>,
    pub tokens: TokenStore,
    pub audit: AuditLog,
    pub limiter: Arc<RateLimiter>,
    /// The roster in force: a manager's scope is read from it on every request, so a roster change applies at once.
    pub roster: RosterStore,
}

/// The middleware: authenticate, rate-limit, time out, audit writes.
pub async fn authenticate(State(state): State<AuthState>, mut req: Request, next: Next) -> Response {
    let tls = req.extensions().get::<ConnectInfo<super::tls::TlsPeer>>().map(|ConnectInfo(p)| p.clone());
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.to_string())
        .or_else(|| tls.as_ref().map(|p| p.addr.to_string()))
        .unwrap_or_else(|| "unknown".into());
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
        .or_else(|| tls.as_ref().map(|p| p.addr.ip()));
    let api = state.config.borrow().api.clone();
    let (token, who) = match bearer(&req) {
        Some(text) => {
            if let Some(wait) = ip.and_then(|ip| state.limiter.blocked(ip, Instant::now())) {
                return too_many_failures(wait);
            }
            match state.tokens.verify(text) {
                Ok(Some(t)) => {
                    let who = format!("token:{}", t.id);
                    (t, who)
                }
                Ok(None) => {
                    if let Some(wait) = ip.and_then(|ip| state.limiter.failed(ip, Instant::now())) {
                        tracing::warn!(peer = %peer, "failed token attempts rate-limited");
                        return too_many_failures(wait);
                    }
                    return unauthorized("invalid or revoked token");
                }
                Err(e) => return ApiError::internal(e).into_response(),
            }
        }
        None => {
            let client = tls.as_ref().and_then(|p| p.client.clone());
            let mapped =
                client.as_deref().and_then(|cn| api.client_certs.iter().find(|c| c.common_name == cn).map(|m| (cn, m)));
            match (mapped, client.as_deref()) {
                (Some((cn, map)), _) => (certificate_scope(cn, map), format!("cert:{cn}")),
                (None, Some(_)) => {
                    return unauthorized(
                        "missing `Authorization: Bearer <token>`, and this client certificate is not mapped to a role",
                    )
                }
                (None, None) => return unauthorized("missing `Authorization: Bearer <token>`"),
            }
        }
    };
    if !state.limiter.allow(&who, Instant::now(), api.rate_per_sec, api.rate_burst) {
        let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded for this token").into_response();
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let departments = match (token.role, token.employee.as_deref()) {
        (Role::Manager, Some(employee)) => match state.roster.get(employee) {
            Ok(e) => manager_scope(&token, e.as_ref().map(|e| e.manages.as_slice())),
            Err(e) => return ApiError::internal(e).into_response(),
        },
        (Role::Manager, None) => manager_scope(&token, None),
        _ => Vec::new(),
    };
    let principal = Principal { token, peer, who, departments };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    req.extensions_mut().insert(principal.clone());
    let response = if principal.role() == Role::Kiosk && path != KIOSK_PATH {
        ApiError::forbidden("a kiosk token can only read the current QR code").into_response()
    } else {
        match tokio::time::timeout(api.request_timeout(), next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the request took too long").into_response(),
        }
    };
    if method == Method::GET || method == Method::HEAD {
        return response;
    }
    let outcome = response.status().as_u16().to_string();
    let target = response.extensions().get::<AuditTarget>().map_or(path.clone(), |t| t.0.clone());
    match state.audit.append(&principal.actor(), &format!("{method} {path}"), &target, &outcome).await {
        Ok(_) => response,
        Err(e) => ApiError::internal(format!("audit log: {e}")).into_response(),
    }
}

/// Put on a response by a handler to say more in the audit entry's `target` than the path (e.g. a decision's scope).
#[derive(Clone, Debug)]
pub struct AuditTarget(pub String);

fn too_many_failures(wait: Duration) -> Response {
    let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many failed token attempts from this address")
        .into_response();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Shared state for the limiter.
pub fn limiter() -> Arc<RateLimiter> {
    Arc::new(RateLimiter::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn failed_attempts_are_limited_per_address() {
        let l = RateLimiter::default();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let now = Instant::now();
        for _ in 0..FAILED_BURST {
            assert_eq!(l.failed(a, now), None);
        }
        assert!(l.blocked(a, now).is_none(), "not blocked before it runs out");
        let wait = l.failed(a, now).expect("the burst is spent");
        assert!(wait >= Duration::from_secs(1) && wait <= FAILED_PERIOD, "{wait:?}");
        assert!(l.blocked(a, now).is_some());
        assert!(l.blocked(b, now).is_none() && l.failed(b, now).is_none(), "per address");
        assert!(l.blocked(a, now + FAILED_PERIOD).is_none(), "until it earned another attempt");
    }

    #[test]
    fn bucket_limits_and_refills() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| l.allow("a", t0, 20, 60)).count();
        assert_eq!(allowed, 60);
        assert!(l.allow("b", t0, 20, 60), "buckets are per token");
        assert!(!l.allow("a", t0 + Duration::from_millis(10), 20, 60), "not refilled yet");
        assert!(l.allow("a", t0 + Duration::from_secs(1), 20, 60), "refills over time");
    }

    fn manager(departments: &[&str], employee: Option<&str>) -> TokenRecord {
        TokenRecord {
            id: "t".into(),
            role: Role::Manager,
            departments: departments.iter().map(|d| (*d).to_owned()).collect(),
            employee: employee.map(str::to_owned),
            created_ms: 0,
            revoked_ms: None,
            sha256: String::new(),
        }
    }

    #[test]
    fn a_managers_scope_is_its_roster_manages_narrowed_by_the_token() {
        let manages = ["D2".to_owned(), "D1".to_owned(), "D3".to_owned()];
        assert_eq!(manager_scope(&manager(&[], Some("M")), Some(&manages)), ["D1", "D2", "D3"]);
        assert_eq!(manager_scope(&manager(&["D2", "D9"], Some("M")), Some(&manages)), ["D2"], "only narrows");
        assert!(manager_scope(&manager(&["D2"], Some("M")), None).is_empty(), "not in the roster: nothing");
        assert!(manager_scope(&manager(&["D2"], Some("M")), Some(&[])).is_empty(), "manages nothing: nothing");
        assert_eq!(manager_scope(&manager(&["D2"], None), None), ["D2"], "no employee: reads what it names");
    }

    fn map(cn: &str, role: Role, departments: &[&str], employee: Option<&str>) -> ClientCertRole {
        ClientCertRole {
            common_name: cn.into(),
            role,
            departments: departments.iter().map(|d| (*d).to_owned()).collect(),
            employee: employee.map(str::to_owned),
        }
    }

    #[test]
    fn client_cert_mappings_follow_the_token_scope_rules() {
        let good = [
            map("hr-pc", Role::Admin, &[], None),
            map("line-lead", Role::Manager, &["D-ASM"], Some("E7")),
            map("kiosk-e1", Role::Employee, &[], Some("E1")),
            map("line-lead-2", Role::Manager, &[], Some("E8")),
        ];
        assert!(check_client_certs(&good, true).is_empty());
        let problems = check_client_certs(&good[..1], false);
        assert!(problems[0].1.contains("client_ca"), "{problems:?}");
        let bad = [
            map("a", Role::Admin, &["D"], None),
            map("b", Role::Manager, &[], None),
            map("c", Role::Employee, &[], None),
            map("d", Role::Employee, &["D"], Some("E1")),
            map("", Role::Admin, &[], None),
            map("a", Role::Admin, &[], None),
            map("f\n", Role::Admin, &[], None),
        ];
        let problems = check_client_certs(&bad, true);
        let at: Vec<usize> = problems.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, [0, 1, 2, 3, 4, 5, 6], "{problems:?}");
        assert!(problems[5].1.contains("mapped twice"), "{problems:?}");
    }
}
