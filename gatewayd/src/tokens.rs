//! API tokens: created by `gatewayd token create`, stored hashed, checked on every API request.
//!
//! A token is `gw_{id}_{secret}`: `id` is 8 random bytes (hex) naming the token in lists, audit entries and revocation;
//! `secret` is 32 random bytes (hex). Only SHA-256 of the whole token is stored, so the store never holds a usable token.
//!
//! # Key layout (sled tree `api_tokens`)
//! | key | value                        |
//! |-----|------------------------------|
//! | id  | [`TokenRecord`] as JSON      |
//!
//! # Timing
//! [`TokenStore::verify`] always hashes the presented text and always compares 32 bytes in constant time (`subtle`),
//! against a fixed dummy hash when the id is unknown or malformed, so the time taken does not tell whether an id exists
//! or how much of a secret matched.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest department or employee id a token may name.
pub const MAX_SCOPE_LEN: usize = 128;
/// Most departments one token may name.
pub const MAX_DEPARTMENTS: usize = 64;

/// The four roles of SPEC section 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Rules, roster, devices, tokens, export of everything; never edits or approves punches.
    Admin,
    /// Sees and decides for the departments its employee manages in the roster (narrowed by its departments).
    Manager,
    /// Own punches and records, make-up requests, own GPS/QR punches.
    Employee,
    /// Reads the current rotating QR code (`GET /api/v1/qr/current`), nothing else.
    Kiosk,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::Employee => "employee",
            Role::Kiosk => "kiosk",
        }
    }
}

/// What a token may do, as stored (without the secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub role: Role,
    /// For managers: narrows the departments the roster's `manages` column gives its employee (or, for a manager token
    /// naming no employee, the departments it reads: such a token decides nothing).
    #[serde(default)]
    pub departments: Vec<String>,
    /// For employees: who they are. For managers: whose `manages` column is the scope; required to decide.
    #[serde(default)]
    pub employee: Option<String>,
    pub created_ms: i64,
    #[serde(default)]
    pub revoked_ms: Option<i64>,
    /// SHA-256 of the token, hex.
    pub sha256: String,
}

/// What `token create` asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub role: Role,
    #[serde(default)]
    pub departments: Vec<String>,
    #[serde(default)]
    pub employee: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("tokens: {0}")]
    Sled(#[from] sled::Error),
    #[error("tokens: stored token {id} cannot be decoded: {message}")]
    Decode { id: String, message: String },
    #[error("token {0} does not exist")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

impl NewToken {
    /// Checks the role's scope: managers need their employee or departments, employees an employee id, admins
    /// neither.
    pub fn validate(&self) -> Result<(), TokenError> {
        let bad = |m: &str| Err(TokenError::Invalid(m.to_owned()));
        for d in self.departments.iter().chain(self.employee.iter()) {
            if d.trim().is_empty() || d.len() > MAX_SCOPE_LEN || d.chars().any(char::is_control) {
                return Err(TokenError::Invalid(format!(
                    "`{}`: ids must be 1 to {MAX_SCOPE_LEN} characters without control characters",
                    d.escape_debug()
                )));
            }
        }
        if self.departments.len() > MAX_DEPARTMENTS {
            return bad("too many departments");
        }
        match self.role {
            Role::Admin if !self.departments.is_empty() || self.employee.is_some() => {
                bad("an admin token takes neither --department nor --employee")
            }
            Role::Manager if self.departments.is_empty() && self.employee.is_none() => {
                bad("a manager token needs --employee (its scope is what that employee manages in the roster), --department or both")
            }
            Role::Employee if self.employee.is_none() => bad("an employee token needs --employee"),
            Role::Employee if !self.departments.is_empty() => bad("an employee token takes no --department"),
            Role::Kiosk if !self.departments.is_empty() || self.employee.is_some() => {
                bad("a kiosk token takes neither --department nor --employee")
            }
            _ => Ok(()),
        }
    }
}

/// The tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenStore {
    db: sled::Db,
    tree: sled::Tree,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").field("tokens", &self.tree.len()).finish()
    }
}

fn sha256(text: &[u8]) -> [u8; 32] {
    Sha256::digest(text).into()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Splits `gw_{id}_{secret}` into its id, if well formed.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("gw_")?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == 16 && secret.len() == 64 && rest.bytes().all(|b| b == b'_' || b.is_ascii_hexdigit());
    ok.then_some(id)
}

impl TokenStore {
    pub fn open(db: &sled::Db) -> Result<TokenStore, TokenError> {
        Ok(TokenStore { db: db.clone(), tree: db.open_tree("api_tokens")? })
    }

    /// Creates a token; returns its record and the token text (shown once, never stored). Durable when this returns.
    pub fn create(&self, new: &NewToken, now_ms: i64) -> Result<(TokenRecord, String), TokenError> {
        new.validate()?;
        let mut rng = rand::rng();
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        let token = format!("gw_{}_{}", hex::encode(id), hex::encode(secret));
        let mut departments = new.departments.clone();
        departments.sort();
        departments.dedup();
        let record = TokenRecord {
            id: hex::encode(id),
            role: new.role,
            departments,
            employee: new.employee.clone(),
            created_ms: now_ms,
            revoked_ms: None,
            sha256: hex::encode(sha256(token.as_bytes())),
        };
        self.tree.insert(record.id.as_bytes(), serde_json::to_vec(&record).unwrap_or_default())?;
        self.db.flush()?;
        Ok((record, token))
    }

    /// Every token, by id (revoked ones included, marked).
    pub fn list(&self) -> Result<Vec<TokenRecord>, TokenError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            out.push(Self::decode(&k, &v)?);
        }
        Ok(out)
    }

    fn decode(k: &[u8], v: &[u8]) -> Result<TokenRecord, TokenError> {
        serde_json::from_slice(v)
            .map_err(|e| TokenError::Decode { id: String::from_utf8_lossy(k).into_owned(), message: e.to_string() })
    }

    /// Revokes a token (the record stays, so audit entries keep naming it). Durable when this returns.
    pub fn revoke(&self, id: &str, now_ms: i64) -> Result<TokenRecord, TokenError> {
        let v = self.tree.get(id.as_bytes())?.ok_or_else(|| TokenError::NotFound(id.to_owned()))?;
        let mut record = Self::decode(id.as_bytes(), &v)?;
        if record.revoked_ms.is_none() {
            record.revoked_ms = Some(now_ms);
            self.tree.insert(id.as_bytes(), serde_json::to_vec(&record).unwrap_or_default())?;
            self.db.flush()?;
        }
        Ok(record)
    }

    /// The record of a presented token, if it is valid and not revoked.
    pub fn verify(&self, token: &str) -> Result<Option<TokenRecord>, TokenError> {
        let presented = sha256(token.as_bytes());
        let record = match token_id(token) {
            Some(id) => match self.tree.get(id.as_bytes())? {
                Some(v) => Some(Self::decode(id.as_bytes(), &v)?),
                None => None,
            },
            None => None,
        };
        let stored = record.as_ref().and_then(|r| unhex32(&r.sha256)).unwrap_or([0xa5; 32]);
        let equal: bool = presented.ct_eq(&stored).into();
        Ok(record.filter(|r| equal && r.revoked_ms.is_none()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> TokenStore {
        let db = sled::Config::new().temporary(true).open().unwrap();
        TokenStore::open(&db).unwrap()
    }

    #[test]
    fn create_verify_revoke() {
        let s = store();
        let new = NewToken { role: Role::Manager, departments: vec!["D-B".into(), "D-A".into()], employee: None };
        let (rec, token) = s.create(&new, 1).unwrap();
        assert_eq!(rec.departments, vec!["D-A".to_owned(), "D-B".to_owned()]);
        assert!(!s.list().unwrap()[0].sha256.contains(&token[20..]), "the secret is not stored");
        assert_eq!(s.verify(&token).unwrap().unwrap().id, rec.id);
        let mut wrong = token.clone();
        wrong.pop();
        wrong.push(if token.ends_with('0') { '1' } else { '0' });
        assert!(s.verify(&wrong).unwrap().is_none());
        assert!(s.verify("").unwrap().is_none());
        assert!(s.verify("gw_zz").unwrap().is_none());
        s.revoke(&rec.id, 2).unwrap();
        assert!(s.verify(&token).unwrap().is_none());
        assert!(matches!(s.revoke("nope", 3), Err(TokenError::NotFound(_))));
    }

    #[test]
    fn scopes_are_checked() {
        let s = store();
        for bad in [
            NewToken { role: Role::Manager, departments: vec![], employee: None },
            NewToken { role: Role::Employee, departments: vec![], employee: None },
            NewToken { role: Role::Admin, departments: vec!["D".into()], employee: None },
            NewToken { role: Role::Employee, departments: vec![], employee: Some("\n".into()) },
        ] {
            assert!(matches!(s.create(&bad, 1), Err(TokenError::Invalid(_))), "{bad:?}");
        }
        let by_roster = NewToken { role: Role::Manager, departments: vec![], employee: Some("M1".into()) };
        assert!(s.create(&by_roster, 1).is_ok(), "a manager's scope may come from the roster alone");
    }
}
