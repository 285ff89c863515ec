//! Console sessions (docs/console.md): a browser's login, standing for the admin token it
//! logged in with. Only hashes are stored.

use super::{Backend, Store, StoreError, now_ms, with_pool, with_write_pool};

/// A live session: the token it stands for (hash) and its form token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub token_hash: String,
    pub csrf: String,
    pub expires_at: i64,
}

impl Store {
    /// Store a new session; sessions past their expiry go at the same time.
    pub async fn create_session(
        &self,
        id_hash: &str,
        token_hash: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1").bind(now).execute(pool).await?;
            sqlx::query(
                "INSERT INTO console_sessions (id_hash, token_hash, csrf, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5)")
                .bind(id_hash).bind(token_hash).bind(csrf).bind(now).bind(expires_at).execute(pool).await?;
        });
        Ok(())
    }

    /// The session with this id hash, if it has not expired.
    pub async fn session(&self, id_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT token_hash, csrf, expires_at FROM console_sessions WHERE id_hash = $1 AND expires_at > $2")
            .bind(id_hash).bind(now_ms()).fetch_optional(pool).await?))
    }

    /// Log out: the session is gone.
    pub async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
            .bind(id_hash).execute(pool).await.map(|_| ())?);
        Ok(())
    }
}
