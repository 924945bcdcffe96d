//! Who is calling: bearer tokens, roles and scopes, the per-token rate limit, the request timeout, and the audit entry
//! of every write — one middleware in front of every `/api/v1` route.
//!
//! Order for each request: parse `Authorization: Bearer …` → verify the token (hash, constant-time compare; see
//! [`crate::tokens`]) → take one unit from the token's bucket (`[api].rate_per_sec`, `rate_burst`) → run the handler within `[api].request_timeout` → for every
//! method other than GET, append an audit entry (who, what, when, from where, the status answered) before answering.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::audit::Actor;
use super::v1::{ApiError, ApiState};
use crate::roster::Roster;
use crate::tokens::{Role, TokenRecord};

/// Most tokens tracked by the limiter (idle buckets are dropped beyond this).
const MAX_BUCKETS: usize = 10_000;

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Principal {
    pub token: TokenRecord,
    pub peer: String,
}

impl Principal {
    pub fn role(&self) -> Role {
        self.token.role
    }

    /// The audit identity.
    pub fn actor(&self) -> Actor {
        Actor {
            who: format!("token:{}", self.token.id),
            role: self.token.role.as_str().into(),
            from: self.peer.clone(),
        }
    }

    /// The employee an employee token belongs to.
    pub fn employee(&self) -> Option<&str> {
        self.token.employee.as_deref()
    }

    /// Whether this caller may see data of `department`.
    pub fn sees_department(&self, department: &str) -> bool {
        match self.token.role {
            Role::Admin => true,
            Role::Manager => self.token.departments.iter().any(|d| d == department),
            Role::Employee => false,
        }
    }

    /// Whether this caller may see data of `employee` (department membership from the roster in force).
    pub fn sees_employee(&self, roster: &Roster, employee: &str) -> bool {
        match self.token.role {
            Role::Admin => true,
            Role::Manager => roster.get(employee).is_some_and(|e| self.sees_department(&e.department)),
            Role::Employee => self.token.employee.as_deref() == Some(employee),
        }
    }
}

/// A token bucket per token id.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
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

/// The middleware: authenticate, rate-limit, time out, audit writes.
pub async fn authenticate(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.to_string())
        .or_else(|| req.extensions().get::<ConnectInfo<super::tls::TlsPeer>>().map(|ConnectInfo(p)| p.0.to_string()))
        .unwrap_or_else(|| "unknown".into());
    let Some(text) = bearer(&req) else {
        return unauthorized("missing `Authorization: Bearer <token>`");
    };
    let token = match state.tokens.verify(text) {
        Ok(Some(t)) => t,
        Ok(None) => return unauthorized("invalid or revoked token"),
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let api = state.config.borrow().api.clone();
    if !state.limiter.allow(&token.id, Instant::now(), api.rate_per_sec, api.rate_burst) {
        let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded for this token").into_response();
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let principal = Principal { token, peer };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    req.extensions_mut().insert(principal.clone());
    let response = match tokio::time::timeout(api.request_timeout(), next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the request took too long").into_response(),
    };
    if method == Method::GET || method == Method::HEAD {
        return response;
    }
    let outcome = response.status().as_u16().to_string();
    match state.audit.append(&principal.actor(), &format!("{method} {path}"), &path, &outcome).await {
        Ok(_) => response,
        Err(e) => ApiError::internal(format!("audit log: {e}")).into_response(),
    }
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
    fn bucket_limits_and_refills() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| l.allow("a", t0, 20, 60)).count();
        assert_eq!(allowed, 60);
        assert!(l.allow("b", t0, 20, 60), "buckets are per token");
        assert!(!l.allow("a", t0 + Duration::from_millis(10), 20, 60), "not refilled yet");
        assert!(l.allow("a", t0 + Duration::from_secs(1), 20, 60), "refills over time");
    }
}
