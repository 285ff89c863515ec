//! Users: named people who log in with a password and act with a role, optionally
//! narrowed by a scope (`scope.rs`). A login issues an admin token that expires and
//! stands for the user: the API, the CLI and the console then work as with any token,
//! and each request reads the user's role and scope again, so a change or a disable
//! applies at once (docs/security.md, "Users and scoped roles").
//!
//! Passwords are hashed with argon2id (OWASP's recommended parameters: 19 MiB, 2
//! passes). Guessing is slowed three ways: a user is locked for a while after
//! [`FREE_FAILURES`] failures in a row (doubling to [`MAX_LOCK`]), checks run at most
//! one per core at once (a flood of logins waits or is refused, and never takes the CPU
//! from devices), and an unknown name costs the same check as a known one, so timing does
//! not tell which names exist.

use crate::auth::Role;
use crate::error::{Error, Kind, Result};
use crate::scope::Scope;
use crate::store::{NewEvent, Store, UserChange, UserRow, now_ms};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Shortest password accepted (NIST SP 800-63B asks at least 8; admins of a fleet get 12).
pub const MIN_PASSWORD: usize = 12;
/// Longest password checked: argon2 takes any length, a request body should not.
pub const MAX_PASSWORD: usize = 1024;
/// What a user name may be: 1-64 letters, digits and `. _ @ -`.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9._@-]{1,64}$";
/// Failed logins in a row before the user is locked.
pub const FREE_FAILURES: i32 = 5;
/// The longest lock (the lock doubles with each failure after the free ones).
pub const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// How long a login token lasts by default, and at most.
pub const SESSION: Duration = Duration::from_secs(12 * 3600);
pub const MAX_SESSION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a login waits for a free check before it is refused as busy.
const CHECK_WAIT: Duration = Duration::from_secs(3);

/// Password checks running at once: one per core.
static CHECKS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// A hash no password matches, checked for unknown names so they cost what known ones do.
static DECOY: LazyLock<String> = LazyLock::new(|| {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source");
    hash(&hex::encode(bytes)).expect("argon2 hashes")
});

/// Why `name` cannot be a user's name, if it cannot.
pub fn name_problem(name: &str) -> Option<String> {
    (name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b)))
        .then(|| format!("user name `{}`: use 1-64 letters, digits and . _ @ -", name.escape_debug()))
}

/// Why `password` cannot be a password, if it cannot.
pub fn password_problem(password: &str) -> Option<String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        Some(format!("the password has {n} characters: use at least {MIN_PASSWORD}"))
    } else if password.len() > MAX_PASSWORD {
        Some(format!("the password has {} bytes: use at most {MAX_PASSWORD}", password.len()))
    } else {
        None
    }
}

fn hash(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(format!("hashing a password: {e}")))
}

fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Run a password hash or check off the async threads, one per core at most.
async fn checked<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let _permit = tokio::time::timeout(CHECK_WAIT, CHECKS.acquire())
        .await
        .map_err(|_| {
            Error::new(Kind::Busy(Duration::from_secs(1)), "busy", "too many password checks at once: try again")
        })?
        .map_err(|_| Error::internal("the password check queue closed"))?;
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::internal(format!("password check: {e}")))
}

/// How long a user is locked after `failures` failed logins in a row.
pub fn lock_ms(failures: i32) -> i64 {
    if failures < FREE_FAILURES {
        return 0;
    }
    let doubling = (failures - FREE_FAILURES).min(20) as u32;
    (1000i64 << doubling).min(MAX_LOCK.as_millis() as i64)
}

/// A user's event; a tenant's user's is the tenant's too (its callers read it).
fn event(kind: &str, name: &str, actor: &str, tenant: Option<&str>, data: serde_json::Value) -> NewEvent {
    NewEvent {
        event_type: format!("user.{kind}"),
        actor: Some(actor.to_string()),
        target: Some(format!("user/{name}")),
        data: Some(data.to_string()),
        tenant: tenant.map(str::to_string),
        ..NewEvent::default()
    }
}

/// The tenant of user `name`, if it has one (and exists).
async fn tenant_of(store: &Store, name: &str) -> Result<Option<String>> {
    Ok(store.user(name).await?.and_then(|u| u.tenant))
}

/// The JSON a user's event carries: never the password or its hash.
fn summary(name: &str, role: Role, scope: Option<&Scope>) -> serde_json::Value {
    serde_json::json!({ "user": name, "role": role.as_str(), "scope": scope })
}

fn scope_json(scope: Option<&Scope>) -> Option<String> {
    scope.map(|s| serde_json::to_string(s).expect("a scope serializes"))
}

/// What is stored for a user without a password: no PHC string, so no password matches
/// (they sign in through the OpenID provider only).
const NO_PASSWORD: &str = "!";

/// A new user; without a password, one who signs in through the OpenID provider only.
pub async fn create(
    store: &Store,
    name: &str,
    password: Option<&str>,
    role: Role,
    scope: Option<&Scope>,
    tenant: Option<&str>,
    actor: &str,
) -> Result<UserRow> {
    if let Some(p) = name_problem(name).or_else(|| password.and_then(password_problem)) {
        return Err(Error::invalid("invalid", p));
    }
    if let Some(t) = tenant {
        crate::tenants::exists(store, t).await?;
    }
    if let Some(p) = scope.and_then(|s| s.problem(true)) {
        return Err(Error::invalid("invalid", p));
    }
    let hashed = match password {
        Some(p) => {
            let p = p.to_string();
            checked(move || hash(&p)).await??
        }
        None => NO_PASSWORD.to_string(),
    };
    let mut data = summary(name, role, scope);
    data["tenant"] = serde_json::json!(tenant);
    let e = event("created", name, actor, tenant, data);
    Ok(store.create_user(name, &hashed, role.as_str(), scope_json(scope).as_deref(), tenant, &e).await?)
}

/// What an admin changes about a user.
#[derive(Debug, Default)]
pub struct Change {
    pub password: Option<String>,
    pub role: Option<Role>,
    /// `Some(None)`: the whole fleet.
    pub scope: Option<Option<Scope>>,
    pub disabled: Option<bool>,
}

pub async fn update(store: &Store, name: &str, change: Change, actor: &str) -> Result<UserRow> {
    if let Some(p) = change.password.as_deref().and_then(password_problem) {
        return Err(Error::invalid("invalid", p));
    }
    if let Some(Some(p)) = change.scope.as_ref().map(|s| s.as_ref().and_then(|s| s.problem(true))) {
        return Err(Error::invalid("invalid", p));
    }
    let hashed = match change.password {
        Some(p) => Some(checked(move || hash(&p)).await??),
        None => None,
    };
    let scope = change.scope.as_ref().map(|s| scope_json(s.as_ref()));
    let mut data = serde_json::json!({ "user": name });
    if let Some(r) = change.role {
        data["role"] = r.as_str().into();
    }
    if let Some(s) = &change.scope {
        data["scope"] = serde_json::to_value(s).expect("a scope serializes");
    }
    if let Some(d) = change.disabled {
        data["disabled"] = d.into();
    }
    if hashed.is_some() {
        data["password_changed"] = true.into();
    }
    let e = event("updated", name, actor, tenant_of(store, name).await?.as_deref(), data);
    let change = UserChange {
        password_hash: hashed.as_deref(),
        role: change.role.map(Role::as_str),
        scope: scope.as_ref().map(|s| s.as_deref()),
        disabled: change.disabled,
    };
    Ok(store.update_user(name, &change, &e).await?)
}

pub async fn remove(store: &Store, name: &str, actor: &str) -> Result<()> {
    let e =
        event("removed", name, actor, tenant_of(store, name).await?.as_deref(), serde_json::json!({ "user": name }));
    Ok(store.delete_user(name, &e).await?)
}

/// A login's answer: the token (shown once) and when it expires.
pub struct Session {
    pub token: String,
    pub expires_at: i64,
    pub role: Role,
}

/// Check a user's password and issue a login token lasting `ttl` (at most
/// [`MAX_SESSION`]). Every refusal but a lock says the same, so it does not tell whether
/// the name exists.
pub async fn login(store: &Store, name: &str, password: &str, ttl: Option<Duration>) -> Result<Session> {
    let wrong = || Error::unauthenticated("unknown user or wrong password");
    if name_problem(name).is_some() || password.len() > MAX_PASSWORD {
        return Err(wrong());
    }
    let now = now_ms();
    let found = store.user_login(name).await?;
    if let Some(l) = found.as_ref().filter(|l| l.locked_until > now) {
        let secs = ((l.locked_until - now) as u64).div_ceil(1000);
        return Err(Error::new(
            Kind::Held(Duration::from_secs(secs)),
            "locked",
            format!("too many failed logins for this user: try again in {secs} s"),
        ));
    }
    let known = found.is_some();
    let tenant = found.as_ref().and_then(|l| l.tenant.clone());
    // An unknown name is checked against the decoy hash, so it costs what a known one
    // does; the decoy is made (itself a hash) inside the check, off the async threads.
    let stored = found.as_ref().map(|l| l.password_hash.clone());
    let given = password.to_string();
    let ok = checked(move || verify(&given, stored.as_deref().unwrap_or(&DECOY))).await?;
    let Some(login) = found.filter(|_| ok) else {
        if known {
            let until = store
                .login_failed(name, lock_ms, |until| {
                    event("locked", name, name, tenant.as_deref(), serde_json::json!({ "user": name, "until": until }))
                })
                .await?;
            if until > 0 {
                tracing::warn!(target: "users", user = name, until, "user locked after failed logins");
            }
        }
        tracing::info!(target: "users", user = name, "login refused");
        return Err(wrong());
    };
    if login.disabled_at.is_some() {
        tracing::info!(target: "users", user = name, "login refused: the user is disabled");
        return Err(wrong());
    }
    let role = Role::parse(&login.role).ok_or_else(|| Error::internal(format!("stored role `{}`", login.role)))?;
    let ttl = ttl.unwrap_or(SESSION).min(MAX_SESSION);
    let expires_at = now + ttl.as_millis() as i64;
    let (token, token_hash) = crate::auth::new_token("user");
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).expect("the OS random source");
    let token_name = format!("login:{name}:{}", hex::encode(tag));
    store.login_succeeded(name, &token_hash, &token_name, role.as_str(), expires_at).await?;
    let data = serde_json::json!({ "user": name, "expires_at": expires_at });
    let logged = event("logged_in", name, name, login.tenant.as_deref(), data);
    if let Err(e) = store.append_event(&logged).await {
        tracing::error!(target: "users", error = %e, "user.logged_in not written");
    }
    Ok(Session { token, expires_at, role })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_double_after_the_free_failures() {
        assert_eq!(lock_ms(FREE_FAILURES - 1), 0);
        assert_eq!(lock_ms(FREE_FAILURES), 1000);
        assert_eq!(lock_ms(FREE_FAILURES + 3), 8000);
        assert_eq!(lock_ms(1000), MAX_LOCK.as_millis() as i64);
    }

    #[test]
    fn hashes_verify_only_their_password() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse battery", &h));
        assert!(!verify("correct horse batterx", &h));
        assert!(!verify("anything", &DECOY));
        assert!(!verify("anything", "not a PHC string"));
        assert!(!verify("!", NO_PASSWORD) && !verify("", NO_PASSWORD));
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(name_problem("alice@example.com").is_none());
        assert!(name_problem("a/b").is_some());
        assert!(name_problem("").is_some());
        assert!(password_problem("short").unwrap().contains("at least 12"));
        assert!(password_problem(&"x".repeat(2000)).unwrap().contains("at most"));
        assert!(password_problem("twelve chars").is_none());
    }
}
