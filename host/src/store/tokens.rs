//! Stored credentials: device access tokens and admin tokens, by SHA-256 only.

use super::devices::DeviceRow;
use super::{Backend, NewEvent, Store, StoreError, WriteTx, now_ms, with_pool, with_write_pool};

impl Store {
    pub async fn insert_device_credential(
        &self,
        device: i64,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query(
                "INSERT INTO device_credentials (token_hash, device, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(token_hash).bind(device).bind(now_ms()).bind(expires_at).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// The device a live (unexpired, unrevoked) credential belongs to, unless removed.
    pub async fn device_for_credential(&self, token_hash: &str) -> Result<Option<DeviceRow>, StoreError> {
        if let Some(direct) = self.direct() {
            return direct.read(|c| super::direct::device_for_credential(c, token_hash, now_ms()));
        }
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT d.id, d.device_type, d.device_id, d.name, d.owner, d.ownership, d.status, d.metadata,
                        d.push_token, d.session, d.enrolled_at, d.last_seen_at, d.tenant
                 FROM device_credentials c JOIN devices d ON d.id = c.device
                 WHERE c.token_hash = $1 AND c.revoked_at IS NULL AND c.expires_at > $2 AND d.status <> 'removed'")
            .bind(token_hash).bind(now_ms()).fetch_optional(pool).await?))
    }

    /// Replace a live credential with a new one. The old one stays valid until
    /// `old_valid_until` (if it would live longer), so a device whose refresh answer was
    /// lost in transit, or that has requests in flight, is not locked out.
    pub async fn refresh_device_credential(
        &self,
        device: i64,
        old_hash: &str,
        new_hash: &str,
        expires_at: i64,
        old_valid_until: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO device_credentials (token_hash, device, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(new_hash).bind(device).bind(now).bind(expires_at).execute(&mut *tx).await?;
            sqlx::query(
                "UPDATE device_credentials SET expires_at = CASE WHEN expires_at > $1 THEN $1 ELSE expires_at END
                 WHERE token_hash = $2 AND device = $3")
                .bind(old_valid_until).bind(old_hash).bind(device).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Revoke every credential of a device, writing `event` with it; returns how many were
    /// live.
    pub async fn revoke_device_credentials(&self, device: i64, event: Option<&NewEvent>) -> Result<u64, StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                    "UPDATE device_credentials SET revoked_at = $1 WHERE device = $2 AND revoked_at IS NULL")
                .bind(now_ms()).bind(device).execute(&mut *tx).await?.rows_affected();
            // Its LwM2M registration ends with them, in the same commit.
            sqlx::query("DELETE FROM coap_registrations WHERE device = $1").bind(device).execute(&mut *tx).await?;
            if let Some(e) = event {
                super::record_event!(&mut *tx, e);
            }
            tx.commit().await?;
            Ok(n)
        })
    }

    /// Store a new admin token; `expires_at` (ms) `None` for one that does not expire. A
    /// live token of the same name is a conflict (tokens are revoked by name).
    pub async fn insert_admin_token(
        &self,
        token_hash: &str,
        name: &str,
        role: &str,
        scope: Option<&str>,
        tenant: Option<&str>,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let r = with_write_pool!(self, pool => sqlx::query(
                "INSERT INTO admin_tokens (token_hash, name, role, created_at, expires_at, scope, tenant)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(token_hash).bind(name).bind(role).bind(now_ms()).bind(expires_at).bind(scope).bind(tenant)
            .execute(pool).await.map(|_| ()));
        r.map_err(|e| StoreError::conflict_or(e, || format!("a live admin token named `{name}`")))
    }

    /// Make `token_hash` the live token called `name`, revoking the one it replaces, in one
    /// transaction (the bootstrap token when `DROVER_ADMIN_TOKEN` changes).
    pub async fn replace_admin_token(&self, token_hash: &str, name: &str, role: &str) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("UPDATE admin_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
                .bind(now).bind(name).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO admin_tokens (token_hash, name, role, created_at) VALUES ($1, $2, $3, $4)")
                .bind(token_hash).bind(name).bind(role).bind(now).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The principal of a live (unrevoked, unexpired) admin token. A user's login token
    /// carries the user's current role and scope, and nothing while the user is disabled
    /// or removed.
    pub async fn admin_for_token(&self, token_hash: &str) -> Result<Option<Principal>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT CASE WHEN t.user_name IS NULL THEN t.name ELSE t.user_name END AS name,
                        CASE WHEN t.user_name IS NULL THEN t.role ELSE u.role END AS role,
                        CASE WHEN t.user_name IS NULL THEN t.scope ELSE u.scope END AS scope,
                        CASE WHEN t.user_name IS NULL THEN t.tenant ELSE u.tenant END AS tenant,
                        t.user_name AS user_name
                 FROM admin_tokens t LEFT JOIN users u ON u.name = t.user_name
                 WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2)
                   AND (t.user_name IS NULL OR (u.name IS NOT NULL AND u.disabled_at IS NULL))")
            .bind(token_hash).bind(now_ms()).fetch_optional(pool).await?))
    }

    /// Whether a token with this hash was ever stored (live, expired or revoked).
    pub async fn admin_token_known(&self, token_hash: &str) -> Result<bool, StoreError> {
        let (n,): (i64,) = with_pool!(self, pool => sqlx::query_as(
                "SELECT COUNT(*) FROM admin_tokens WHERE token_hash = $1")
            .bind(token_hash).fetch_one(pool).await?);
        Ok(n > 0)
    }

    /// Every admin token, live first, then by name; never the hash.
    pub async fn admin_tokens(&self) -> Result<Vec<AdminTokenRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT name, role, scope, tenant, user_name, created_at, expires_at, revoked_at FROM admin_tokens
                 ORDER BY CASE WHEN revoked_at IS NULL THEN 0 ELSE 1 END, name, created_at DESC")
            .fetch_all(pool).await?))
    }

    /// Revoke the live token called `name`. Refused when it is the last live, unexpired
    /// token with the admin role: nobody could manage tokens afterwards.
    pub async fn revoke_admin_token(&self, name: &str) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            // Role, scope, user, tenant.
            type Live = (String, Option<String>, Option<String>, Option<String>);
            let row: Option<Live> = sqlx::query_as(
                    "SELECT role, scope, user_name, tenant FROM admin_tokens WHERE name = $1 AND revoked_at IS NULL")
                .bind(name).fetch_optional(&mut *tx).await?;
            let Some((role, scope, user, tenant)) = row else {
                return Err(StoreError::NotFound(format!("live admin token `{name}`")));
            };
            // Only an unscoped admin token of no tenant that is nobody's login can manage
            // tokens for good.
            if role == "admin" && scope.is_none() && user.is_none() && tenant.is_none() {
                let (others,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM admin_tokens WHERE role = 'admin' AND name <> $1
                           AND scope IS NULL AND user_name IS NULL AND tenant IS NULL
                           AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)")
                    .bind(name).bind(now).fetch_one(&mut *tx).await?;
                if others == 0 {
                    return Err(StoreError::Refused(format!(
                        "`{name}` is the last live admin token: create another admin token first")));
                }
            }
            sqlx::query("UPDATE admin_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
                .bind(now).bind(name).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }
}

/// Who a live admin token stands for: the token itself (by name), or the user whose
/// login issued it, with the role and scope (JSON) that apply now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Principal {
    pub name: String,
    pub role: String,
    pub scope: Option<String>,
    /// The tenant it is confined to; `None`: one of the server's operators (every tenant).
    pub tenant: Option<String>,
    pub user_name: Option<String>,
}

/// An admin token as listed: never its hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AdminTokenRow {
    pub name: String,
    pub role: String,
    /// JSON (`scope.rs`); `None`: the whole fleet.
    pub scope: Option<String>,
    pub tenant: Option<String>,
    /// The user a login token stands for.
    pub user_name: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// An enrollment token to store (its hash; the token is shown once).
#[derive(Debug, Clone)]
pub struct NewEnrollmentToken<'a> {
    pub token_hash: &'a str,
    pub device_type: &'a str,
    /// The admin's actor name.
    pub created_by: &'a str,
    pub expires_at: i64,
    pub uses: i64,
    /// Claims only the devices of this import.
    pub import_batch: Option<&'a str>,
    /// The tenant the devices it enrolls join.
    pub tenant: &'a str,
}

impl Store {
    pub async fn insert_enrollment_token(&self, t: &NewEnrollmentToken<'_>) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query(
                "INSERT INTO enrollment_tokens (token_hash, device_type, created_by, created_at, expires_at, uses_left, import_batch, tenant)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(t.token_hash).bind(t.device_type).bind(t.created_by).bind(now_ms()).bind(t.expires_at).bind(t.uses)
            .bind(t.import_batch).bind(t.tenant)
            .execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Use up one enrollment of a token for `device_type`, returning the tenant the token
    /// enrolls into. `None` when the token is unknown, expired, used up or for another
    /// type. One statement, so two devices racing for the last use cannot both win. A
    /// token made for one import claims only identities of `import_batch` (the identity's
    /// import; `None` for a new identity), and a pre-registered identity only with a token
    /// of its own tenant (`tenant`; `None` for a new identity): a token of one tenant
    /// never claims a device another tenant imported.
    pub async fn consume_enrollment_token(
        &self,
        token_hash: &str,
        device_type: &str,
        import_batch: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query_as::<_, (String,)>(
                "UPDATE enrollment_tokens SET uses_left = uses_left - 1
                 WHERE token_hash = $1 AND device_type = $2 AND uses_left > 0 AND expires_at > $3
                   AND (import_batch IS NULL OR import_batch = $4)
                   AND (CAST($5 AS TEXT) IS NULL OR tenant = $5)
                 RETURNING tenant")
            .bind(token_hash).bind(device_type).bind(now_ms()).bind(import_batch).bind(tenant)
            .fetch_optional(pool).await?)
        .map(|(t,)| t))
    }
}

/// A certificate issued to a device (`identity.rs`), with the state of its credential.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct CertificateRow {
    /// The certificate's serial number (hex).
    pub serial: String,
    /// Valid from, until (ms since the epoch).
    pub not_before: i64,
    pub not_after: i64,
    pub issued_at: i64,
    /// When it was revoked (alone, or with every credential of the device).
    pub revoked_at: Option<i64>,
}

/// Where the device CA's key is sealed (the sealing binds it to this name).
const DEVICE_CA_PLACE: &str = "device-ca/key";
const SCEP_RA_PLACE: &str = "scep-ra/key";

impl Store {
    /// The device CA kept in the database: its certificate and its private key (PEM).
    pub async fn device_ca(&self) -> Result<Option<(String, String)>, StoreError> {
        let row: Option<(String, String)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT cert_pem, key_sealed FROM device_ca WHERE id = 1")
            .fetch_optional(pool).await?);
        match row {
            None => Ok(None),
            Some((cert, key)) => Ok(Some((cert, self.sealer.open(DEVICE_CA_PLACE, &key)?))),
        }
    }

    /// The SCEP RA (`scep.rs`): its certificate (PEM) and its key (PKCS#8, hex), kept as
    /// row 2 of the CA's table and sealed the same way.
    pub async fn scep_ra(&self) -> Result<Option<(String, String)>, StoreError> {
        let row: Option<(String, String)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT cert_pem, key_sealed FROM device_ca WHERE id = 2")
            .fetch_optional(pool).await?);
        match row {
            None => Ok(None),
            Some((cert, key)) => Ok(Some((cert, self.sealer.open(SCEP_RA_PLACE, &key)?))),
        }
    }

    /// Keep a new SCEP RA: in place of `replacing` (the certificate kept before, when it
    /// was stale), or as the first. Another replica's that won the race stays.
    pub async fn put_scep_ra(&self, cert_pem: &str, key: &str, replacing: Option<&str>) -> Result<(), StoreError> {
        let sealed = self.sealer.seal(SCEP_RA_PLACE, key);
        with_write_pool!(self, pool => match replacing {
            None => sqlx::query(
                    "INSERT INTO device_ca (id, cert_pem, key_sealed, created_at) VALUES (2, $1, $2, $3)
                     ON CONFLICT (id) DO NOTHING")
                .bind(cert_pem).bind(sealed).bind(now_ms()).execute(pool).await.map(|_| ())?,
            Some(old) => sqlx::query(
                    "UPDATE device_ca SET cert_pem = $1, key_sealed = $2, created_at = $3 WHERE id = 2 AND cert_pem = $4")
                .bind(cert_pem).bind(sealed).bind(now_ms()).bind(old).execute(pool).await.map(|_| ())?,
        });
        Ok(())
    }

    /// Keep a newly made device CA, unless another replica kept one first (then read
    /// that one back with [`Store::device_ca`]).
    pub async fn insert_device_ca(&self, cert_pem: &str, key_pem: &str) -> Result<(), StoreError> {
        let sealed = self.sealer.seal(DEVICE_CA_PLACE, key_pem);
        with_write_pool!(self, pool => sqlx::query(
                "INSERT INTO device_ca (id, cert_pem, key_sealed, created_at) VALUES (1, $1, $2, $3)
                 ON CONFLICT (id) DO NOTHING")
            .bind(cert_pem).bind(sealed).bind(now_ms()).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Record a certificate issued to `device`, and make it one of its credentials
    /// (`credential`: `identity::credential_of` the certificate), valid until `not_after`;
    /// `event` is written with it.
    pub async fn insert_device_certificate(
        &self,
        device: i64,
        serial: &str,
        credential: &str,
        (not_before, not_after): (i64, i64),
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO device_credentials (token_hash, device, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(credential).bind(device).bind(now).bind(not_after).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO device_certificates (serial, device, credential, not_before, not_after, issued_at)
                 VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(serial).bind(device).bind(credential).bind(not_before).bind(not_after).bind(now)
                .execute(&mut *tx).await?;
            super::record_event!(&mut *tx, event);
            tx.commit().await?;
        });
        Ok(())
    }

    /// The certificates issued to a device, newest first.
    pub async fn device_certificates(&self, device: i64) -> Result<Vec<CertificateRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT k.serial, k.not_before, k.not_after, k.issued_at, c.revoked_at
                 FROM device_certificates k JOIN device_credentials c ON c.token_hash = k.credential
                 WHERE k.device = $1 ORDER BY k.issued_at DESC, k.serial")
            .bind(device).fetch_all(pool).await?))
    }

    /// Revoke one certificate of a device, writing `event` with it. `false`: the device
    /// has no live certificate with that serial.
    pub async fn revoke_device_certificate(
        &self,
        device: i64,
        serial: &str,
        event: Option<&NewEvent>,
    ) -> Result<bool, StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                    "UPDATE device_credentials SET revoked_at = $1
                     WHERE revoked_at IS NULL AND token_hash =
                         (SELECT credential FROM device_certificates WHERE device = $2 AND serial = $3)")
                .bind(now_ms()).bind(device).bind(serial).execute(&mut *tx).await?.rows_affected();
            if n > 0 && let Some(e) = event {
                super::record_event!(&mut *tx, e);
            }
            tx.commit().await?;
            Ok(n > 0)
        })
    }
}

/// A certificate issued to an enrollment whose device is not known yet (an Apple
/// enrollment profile's SCEP payload): `docs/security.md`, "Certificates before
/// identities".
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingCertificate {
    pub credential: String,
    pub serial: String,
    pub device_type: String,
    /// The enrollment token that was the challenge: the claim uses it up.
    pub token_hash: String,
    pub not_before: i64,
    pub not_after: i64,
    /// After this the certificate claims nothing.
    pub claim_by: i64,
}

impl Store {
    /// The tenant of an enrollment token for `device_type` that is live (known, unexpired,
    /// a use left), without using it: a pending certificate's challenge is checked at issue
    /// and used up by the claim, which alone knows the identity it claims. `None`: dead.
    pub async fn live_enrollment_token(
        &self,
        token_hash: &str,
        device_type: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT tenant FROM enrollment_tokens
                 WHERE token_hash = $1 AND device_type = $2 AND uses_left > 0 AND expires_at > $3")
            .bind(token_hash).bind(device_type).bind(now_ms()).fetch_optional(pool).await?);
        Ok(row.map(|(t,)| t))
    }

    pub async fn insert_pending_certificate(&self, p: &PendingCertificate) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query(
                "INSERT INTO pending_certificates
                     (credential, serial, device_type, token_hash, not_before, not_after, claim_by, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&p.credential).bind(&p.serial).bind(&p.device_type).bind(&p.token_hash)
            .bind(p.not_before).bind(p.not_after).bind(p.claim_by).bind(now_ms())
            .execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// The pending certificate whose credential is `credential`, while it may claim.
    pub async fn pending_certificate(&self, credential: &str) -> Result<Option<PendingCertificate>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT credential, serial, device_type, token_hash, not_before, not_after, claim_by
                 FROM pending_certificates WHERE credential = $1 AND claim_by > $2")
            .bind(credential).bind(now_ms()).fetch_optional(pool).await?))
    }

    /// Take a pending certificate for one claim: from now on no other request can claim
    /// with it (its `claim_by` is kept negated) until the claim binds it or gives it back.
    /// `None`: unknown, past its window, or taken by another request.
    pub async fn take_pending_certificate(&self, credential: &str) -> Result<Option<PendingCertificate>, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query_as(
                "UPDATE pending_certificates SET claim_by = -claim_by WHERE credential = $1 AND claim_by > $2
                 RETURNING credential, serial, device_type, token_hash, not_before, not_after, -claim_by AS claim_by")
            .bind(credential).bind(now_ms()).fetch_optional(pool).await?))
    }

    /// Give back a pending certificate whose claim failed (a refused identity, a plugin
    /// error), so the device may try again within its window.
    pub async fn release_pending_certificate(&self, credential: &str) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query(
                "UPDATE pending_certificates SET claim_by = -claim_by WHERE credential = $1 AND claim_by < 0")
            .bind(credential).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Bind a taken pending certificate to the device that claimed it: it becomes one of
    /// the device's credentials as if issued to it, with `event`, and is pending no more.
    pub async fn bind_pending_certificate(
        &self,
        p: &PendingCertificate,
        device: i64,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("DELETE FROM pending_certificates WHERE credential = $1")
                .bind(&p.credential).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO device_credentials (token_hash, device, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(&p.credential).bind(device).bind(now).bind(p.not_after).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO device_certificates (serial, device, credential, not_before, not_after, issued_at)
                 VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(&p.serial).bind(device).bind(&p.credential).bind(p.not_before).bind(p.not_after).bind(now)
                .execute(&mut *tx).await?;
            super::record_event!(&mut *tx, event);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Delete pending certificates past their claim window. Returns how many.
    pub async fn sweep_pending_certificates(&self) -> Result<u64, StoreError> {
        // A taken one (claim_by negated) is swept once its window has passed too.
        Ok(with_write_pool!(self, pool => sqlx::query(
                "DELETE FROM pending_certificates WHERE claim_by <= $1 AND -claim_by <= $1")
            .bind(now_ms()).execute(pool).await?.rows_affected()))
    }
}
