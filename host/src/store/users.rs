//! Named users (`users.rs` has the rules): their password hashes, roles and scopes, the
//! run of failed logins that locks one out for a while, and the admin tokens a login
//! issues in their name.

use super::{Backend, NewEvent, Store, StoreError, WriteTx, now_ms, trusted, with_pool, with_write_pool};

/// A user as listed: never the password hash.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct UserRow {
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The scope as JSON text (`null`: the whole fleet).
    #[serde(skip)]
    pub scope: Option<String>,
    /// The tenant the user belongs to (`None`: an operator of the server).
    pub tenant: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// When an admin disabled the user (then nothing of theirs works).
    pub disabled_at: Option<i64>,
    /// Logins are refused without a check until then (ms; 0 or past: not locked).
    pub locked_until: i64,
}

const COLUMNS: &str = "name, role, scope, tenant, created_at, updated_at, disabled_at, locked_until";

/// What a login needs to know about a user.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Login {
    pub password_hash: String,
    pub role: String,
    pub disabled_at: Option<i64>,
    pub failures: i32,
    pub locked_until: i64,
    /// The user's tenant (its events are the tenant's too).
    pub tenant: Option<String>,
}

/// A change to a user; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct UserChange<'a> {
    pub password_hash: Option<&'a str>,
    pub role: Option<&'a str>,
    /// `Some(None)` clears the scope (the whole fleet).
    pub scope: Option<Option<&'a str>>,
    pub disabled: Option<bool>,
}

impl Store {
    pub async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        role: &str,
        scope: Option<&str>,
        tenant: Option<&str>,
        event: &NewEvent,
    ) -> Result<UserRow, StoreError> {
        let now = now_ms();
        let sql = format!(
            "INSERT INTO users (name, password_hash, role, scope, created_at, updated_at, tenant)
             VALUES ($1, $2, $3, $4, $5, $5, $6)
             RETURNING {COLUMNS}"
        );
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row: UserRow = sqlx::query_as(trusted(&sql))
                .bind(name).bind(password_hash).bind(role).bind(scope).bind(now).bind(tenant)
                .fetch_one(&mut *tx).await
                .map_err(|e| StoreError::conflict_or(e, || format!("a user named `{name}`")))?;
            super::record_event!(&mut *tx, event);
            tx.commit().await?;
            Ok(row)
        })
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE name = $1");
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(name).fetch_optional(pool).await?))
    }

    pub async fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM users ORDER BY name");
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).fetch_all(pool).await?))
    }

    /// Change a user, with its event. A new password or disabling ends every session
    /// (login token) of the user; a new role or scope applies to them at their next request.
    pub async fn update_user(
        &self,
        name: &str,
        change: &UserChange<'_>,
        event: &NewEvent,
    ) -> Result<UserRow, StoreError> {
        let now = now_ms();
        let sql = format!(
            "UPDATE users SET
                password_hash = COALESCE($2, password_hash),
                role = COALESCE($3, role),
                scope = CASE WHEN $4 = 1 THEN $5 ELSE scope END,
                disabled_at = CASE WHEN $6 = 1 THEN COALESCE(disabled_at, $1) WHEN $6 = 0 THEN NULL ELSE disabled_at END,
                failures = CASE WHEN $2 IS NULL THEN failures ELSE 0 END,
                locked_until = CASE WHEN $2 IS NULL THEN locked_until ELSE 0 END,
                updated_at = $1
             WHERE name = $7 RETURNING {COLUMNS}"
        );
        let (set_scope, scope) = match change.scope {
            Some(s) => (1i64, s),
            None => (0, None),
        };
        let disabled = change.disabled.map_or(-1i64, i64::from);
        let ends_sessions = change.password_hash.is_some() || change.disabled == Some(true);
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row: Option<UserRow> = sqlx::query_as(trusted(&sql))
                .bind(now).bind(change.password_hash).bind(change.role).bind(set_scope).bind(scope)
                .bind(disabled).bind(name)
                .fetch_optional(&mut *tx).await?;
            let Some(row) = row else { return Err(StoreError::NotFound(format!("user `{name}`"))) };
            if ends_sessions {
                sqlx::query("UPDATE admin_tokens SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL")
                    .bind(now).bind(name).execute(&mut *tx).await?;
            }
            super::record_event!(&mut *tx, event);
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Remove a user and end their sessions.
    pub async fn delete_user(&self, name: &str, event: &NewEvent) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query("DELETE FROM users WHERE name = $1").bind(name).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!("user `{name}`")));
            }
            sqlx::query("UPDATE admin_tokens SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL")
                .bind(now).bind(name).execute(&mut *tx).await?;
            super::record_event!(&mut *tx, event);
            tx.commit().await?;
            Ok(())
        })
    }

    /// The principal an enabled user is (their role and scope), for a token of an OpenID
    /// provider that names them.
    pub async fn user_principal(&self, name: &str) -> Result<Option<super::Principal>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT name, role, scope, tenant, name AS user_name FROM users WHERE name = $1 AND disabled_at IS NULL")
            .bind(name).fetch_optional(pool).await?))
    }

    pub async fn user_login(&self, name: &str) -> Result<Option<Login>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT password_hash, role, disabled_at, failures, locked_until, tenant FROM users WHERE name = $1")
            .bind(name).fetch_optional(pool).await?))
    }

    /// Count a failed login. From the `free`-th failure in a row the user is locked for
    /// `lock_ms(failures)`; `event` (`user.locked`) is written when a lock starts. Returns
    /// the lock's end (0: not locked).
    pub async fn login_failed(
        &self,
        name: &str,
        lock_ms: impl Fn(i32) -> i64,
        event: impl Fn(i64) -> NewEvent,
    ) -> Result<i64, StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row: Option<(i32,)> = sqlx::query_as(
                    "UPDATE users SET failures = failures + 1 WHERE name = $1 RETURNING failures")
                .bind(name).fetch_optional(&mut *tx).await?;
            let Some((failures,)) = row else { return Ok(0) };
            let lock = lock_ms(failures);
            let until = if lock > 0 { now + lock } else { 0 };
            if until > 0 {
                sqlx::query("UPDATE users SET locked_until = $1 WHERE name = $2")
                    .bind(until).bind(name).execute(&mut *tx).await?;
                super::record_event!(&mut *tx, &event(until));
            }
            tx.commit().await?;
            Ok(until)
        })
    }

    /// A login succeeded: the run of failures is over, and the user's new session token is
    /// stored (`name` is the token's, `user` the user's), in one transaction.
    pub async fn login_succeeded(
        &self,
        user: &str,
        token_hash: &str,
        token_name: &str,
        role: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("UPDATE users SET failures = 0, locked_until = 0 WHERE name = $1")
                .bind(user).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO admin_tokens (token_hash, name, role, created_at, expires_at, user_name)
                 VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(token_hash).bind(token_name).bind(role).bind(now).bind(expires_at).bind(user)
                .execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// End one session token of a user (logging out).
    pub async fn end_user_session(&self, token_hash: &str) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query(
                "UPDATE admin_tokens SET revoked_at = $1 WHERE token_hash = $2 AND user_name IS NOT NULL AND revoked_at IS NULL")
            .bind(now_ms()).bind(token_hash).execute(pool).await.map(|_| ())?);
        Ok(())
    }
}
