//! Who is asking: an API token (`Authorization: Bearer TOKEN`) or a logged-in session (a
//! cookie made by logging in with a token). Every route needs one of them and checks the
//! role's permission; a mutation made with a session cookie also needs the session's
//! CSRF token (the `X-CSRF-Token` header, or the `csrf` field of a form).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};

use crate::store::{Permission, Role, Store};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "wavelift_session";
/// A session ends this long after it was made.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    /// The session's CSRF token, when the identity comes from a session cookie.
    pub csrf: Option<String>,
}

#[derive(Debug, Clone)]
struct Session {
    /// The hash of the token it was made with: checked on every request, so a revoked
    /// token ends its sessions.
    token_hash: String,
    csrf: String,
    expires: Instant,
}

/// The logged-in sessions, in memory: a restart logs everyone out.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

/// A refusal: the status and what the client is told.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl Sessions {
    /// Opens a session for a token's holder; returns the session id and its CSRF token.
    pub fn open(&self, token: &str) -> anyhow::Result<(String, String)> {
        let id = random_hex(32)?;
        let csrf = random_hex(32)?;
        let mut sessions = self
            .by_id
            .lock()
            .map_err(|_| anyhow::anyhow!("sessions poisoned"))?;
        sessions.retain(|_, s| s.expires > Instant::now());
        sessions.insert(
            id.clone(),
            Session {
                token_hash: crate::store::token_hash(token),
                csrf: csrf.clone(),
                expires: Instant::now() + SESSION_LIFETIME,
            },
        );
        Ok((id, csrf))
    }

    pub fn close(&self, id: &str) {
        if let Ok(mut sessions) = self.by_id.lock() {
            sessions.remove(id);
        }
    }

    fn get(&self, id: &str) -> Option<Session> {
        let sessions = self.by_id.lock().ok()?;
        sessions
            .get(id)
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The token of an `Authorization` value: the scheme's name is case-insensitive (RFC
/// 9110), so `bearer TOKEN` is a bearer token too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Who sent the request, if anyone: a bearer token first, then the session cookie.
pub async fn identify(
    store: &Store,
    sessions: &Sessions,
    headers: &HeaderMap,
) -> Result<Option<Identity>, Refusal> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value.to_str().ok().and_then(bearer_token).ok_or_else(|| {
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "the Authorization header must be `Bearer TOKEN`",
            )
        })?;
        return match store.token_identity(token).await {
            Ok(Some((name, role))) => Ok(Some(Identity {
                name,
                role,
                csrf: None,
            })),
            Ok(None) => Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unknown or revoked token",
            )),
            Err(err) => Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{err:#}"),
            )),
        };
    }
    let Some(id) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let Some(session) = sessions.get(id) else {
        return Ok(None);
    };
    match store.token_identity_by_hash(&session.token_hash).await {
        Ok(Some((name, role))) => Ok(Some(Identity {
            name,
            role,
            csrf: Some(session.csrf),
        })),
        Ok(None) => {
            // Its token was revoked: the session ends with it.
            sessions.close(id);
            Ok(None)
        }
        Err(err) => Err(Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{err:#}"),
        )),
    }
}

/// The identity if it may do `permission`; for a session's mutation, its CSRF token
/// must come along (`csrf`: the header's or the form field's).
pub fn allow(
    identity: Option<Identity>,
    permission: Permission,
    mutation: bool,
    csrf: Option<&str>,
) -> Result<Identity, Refusal> {
    let Some(identity) = identity else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "log in, or send an API token: Authorization: Bearer TOKEN (wavelift token create)",
        ));
    };
    if !identity.role.may(permission) {
        let what = match permission {
            Permission::Read => "read",
            Permission::Steer => "retry, skip, cancel or abort tasks",
            Permission::Approve => "approve cutovers",
        };
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("the role {} may not {what}", identity.role.name()),
        ));
    }
    if mutation
        && let Some(expected) = &identity.csrf
        && csrf != Some(expected.as_str())
    {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token: send the page's X-CSRF-Token",
        ));
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for value in ["Bearer abc", "bearer abc", "BEARER  abc ", " Bearer abc"] {
            assert_eq!(super::bearer_token(value), Some("abc"), "{value:?}");
        }
        for value in ["Basic abc", "Bearerabc", "abc", ""] {
            assert_eq!(super::bearer_token(value), None, "{value:?}");
        }
    }
}
