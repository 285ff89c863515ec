//! Who may claim a device identity: the rule every enrollment path applies (the HTTP
//! agent, LwM2M registration), pure so it can be read and tested in one place.
//!
//! An identity is a `(device type, device id)`. A device id is usually printed on the
//! device (an IMEI, a serial, a MAC), so knowing it proves nothing. Hence:
//!
//! * **New** (never seen, or removed): with an enrollment token not made for an import,
//!   or without a token under open self-enrollment. A removed identity enrolled again is a
//!   new device: nothing that was granted to the old one passes to it
//!   (`Store::enroll_device`).
//! * **Pre-registered** (an admin imported it): with an enrollment token for its type that
//!   is either general or made for its import. Without a token only if the import said
//!   devices may claim their own identities (`self_enroll`): otherwise anyone who read a
//!   serial from a CSV, a box or a shipping list could enroll that device and receive what
//!   the admin queued for it. Open self-enrollment does not change this.
//! * **Enrolled** (active, unreachable): refused, `already_enrolled`. Removing it first is
//!   an admin's act.
//!
//! Around the rule, the enrollment service every front uses: [`admit`] (the rule, the
//! token, the device row, the event) for the HTTP agent and LwM2M registration alike;
//! [`enroll`] and [`refresh`] issue device credentials; [`revoke`], [`remove`] and
//! [`restore`] are the admin's acts, [`import_csv`] the bulk pre-registration.

use crate::core::Core;
use crate::device::{Ownership, Status};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::plugins::types::{Channel, Enrollment};
use crate::plugins::{LoadedPlugin, Source};
use crate::store::{Claim, DeviceRow, NewDevice, StoreError};

/// Credentials issued at enrollment or refresh live this long.
pub const CREDENTIAL_DAYS: i64 = 90;

/// After a refresh the old credential keeps working this long (requests in flight, an
/// answer lost in transit).
const OLD_CREDENTIAL_GRACE_SECS: i64 = 300;

/// A day, in the units credentials and tokens are counted in.
pub const DAY_SECS: i64 = 86_400;
const DAY_MS: i64 = DAY_SECS * 1000;

/// A device id is at most this long (it is printed on devices and typed by admins).
pub const MAX_DEVICE_ID: usize = 128;

/// What an enrollment brings to the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// An enrollment token (checked and used up by the store, for the import batch
    /// `Decision::Token` names).
    Token,
    /// Nothing: self-enrollment.
    None,
    /// A credential an admin provisioned for this very identity (a LwM2M device's
    /// pre-shared key, checked by the DTLS handshake): the admin's word admits it.
    Provisioned,
}

/// The rule's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Enroll, using up one use of the token, which must be general or made for this
    /// import batch (`None`: general only), and of this tenant (a pre-registered
    /// identity's; `None`: a new identity joins the token's tenant).
    Token { import_batch: Option<String>, tenant: Option<String> },
    /// Enroll without a token.
    Open,
    /// The identity is enrolled already.
    AlreadyEnrolled,
    /// Refused; the message says what would be accepted.
    Refused(&'static str),
}

/// Decide whether an enrollment with `credential` may claim an identity in `claim`
/// (`None`: never seen), on a server with `open_enrollment`.
pub fn decide(claim: Option<&Claim>, credential: Credential, open_enrollment: bool) -> Decision {
    let status = claim.map(|c| c.status);
    match (status, credential) {
        (Some(Status::Active | Status::Unreachable), _) => Decision::AlreadyEnrolled,
        (_, Credential::Provisioned) => Decision::Open,
        (Some(Status::Registered), Credential::Token) => Decision::Token {
            import_batch: claim.and_then(|c| c.import_batch.clone()),
            tenant: claim.map(|c| c.tenant.clone()),
        },
        (Some(Status::Registered), Credential::None) if claim.is_some_and(|c| c.self_enroll) => Decision::Open,
        (Some(Status::Registered), Credential::None) => Decision::Refused(
            "this device was pre-registered by an admin: enroll it with an enrollment token (or the admin imports it \
             with self-enrollment allowed)",
        ),
        (_, Credential::Token) => Decision::Token { import_batch: None, tenant: None },
        (_, Credential::None) if open_enrollment => Decision::Open,
        (_, Credential::None) => Decision::Refused(
            "self-enrollment is switched off on this server: enroll with an enrollment token from an admin",
        ),
    }
}

/// A device credential just issued: shown to the device once, stored as a hash.
pub struct Issued {
    pub device: DeviceRow,
    pub token: String,
    pub expires_in_secs: i64,
}

/// Let a device the plugin has accepted (`e`) claim its identity, by the rule: with the
/// enrollment `token` it brought, if any. Creates (or claims) the device row and tells
/// `DeviceEnrolled`; `channel` names the front for the event and the log.
pub async fn admit(
    core: &Core,
    device_type: &str,
    e: &Enrollment,
    token: Option<&str>,
    channel: &'static str,
) -> Result<DeviceRow> {
    let credential = if token.is_some() { Credential::Token } else { Credential::None };
    let hash = token.map(crate::auth::hash_token);
    admit_with(core, device_type, e, credential, hash.as_deref(), channel).await
}

/// [`admit`] a device whose identity a credential the admin provisioned for it proved
/// (a LwM2M device's pre-shared key, over DTLS).
pub async fn admit_provisioned(
    core: &Core,
    device_type: &str,
    e: &Enrollment,
    channel: &'static str,
) -> Result<DeviceRow> {
    admit_with(core, device_type, e, Credential::Provisioned, None, channel).await
}

async fn admit_with(
    core: &Core,
    device_type: &str,
    e: &Enrollment,
    credential: Credential,
    token_hash: Option<&str>,
    channel: &'static str,
) -> Result<DeviceRow> {
    let claim = core.store.claim_of(device_type, &e.device_id).await?;
    // A pre-registered identity keeps its tenant (`Store::enroll_device`); a new one joins
    // its token's, or the default tenant when it came without one.
    let tenant = match decide(claim.as_ref(), credential, core.open_enrollment) {
        Decision::AlreadyEnrolled => return Err(already_enrolled(device_type, &e.device_id)),
        Decision::Refused(why) => return Err(Error::forbidden(why)),
        Decision::Open => crate::tenants::DEFAULT.to_string(),
        Decision::Token { import_batch, tenant } => core
            .store
            .consume_enrollment_token(
                token_hash.unwrap_or_default(),
                device_type,
                import_batch.as_deref(),
                tenant.as_deref(),
            )
            .await?
            .ok_or_else(|| {
                Error::unauthenticated(format!(
                    "the enrollment token is unknown, expired, used up, not for {device_type} devices, or made \
                         for an import or a tenant this device is not in"
                ))
            })?,
    };
    // A tenant's own device type takes that tenant's devices only (`plugin_owners`).
    if !crate::tenants::may_use_type(&core.store, device_type, &tenant).await? {
        return Err(Error::not_found(format!("no device type `{device_type}` takes this enrollment")));
    }
    let device = core
        .store
        .enroll_device(
            &NewDevice {
                device_type: device_type.to_string(),
                name: e.name.clone().unwrap_or_else(|| e.device_id.clone()),
                device_id: e.device_id.clone(),
                owner: e.owner.clone(),
                ownership: e.ownership.into(),
                metadata: e.metadata.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect(),
                push_token: e.push.as_ref().map(crate::push_token::to_json),
                tenant,
            },
            channel,
        )
        .await
        .map_err(|err| match err {
            StoreError::Conflict(_) => already_enrolled(device_type, &e.device_id),
            other => other.into(),
        })?;
    tracing::info!(device_type, device_id = %device.device_id, channel, "device enrolled");
    core.events.publish(Event::DeviceEnrolled {
        device: device.id,
        device_type: device.device_type.clone(),
        device_id: device.device_id.clone(),
        channel,
    });
    Ok(device)
}

/// Enroll a device from its enrollment request (`body` over `channel`): the plugin
/// validates it first (a refused request uses up no token), then [`admit`], then a
/// credential is issued. A fault the body causes is charged to `source` (the peer: there
/// is no device yet).
pub async fn enroll(
    core: &Core,
    plugin: &LoadedPlugin,
    device_type: &str,
    source: Source,
    channel: Channel,
    body: &[u8],
    token: Option<&str>,
) -> Result<Issued> {
    crate::delivery::bounded(body)?;
    let e = plugin.enroll(source, channel, body.to_vec()).await?;
    let device = admit(core, device_type, &e, token, "http").await?;
    let token = issue_token(core, &device).await?;
    Ok(Issued { device, token, expires_in_secs: CREDENTIAL_DAYS * DAY_SECS })
}

/// A new bearer credential for `device`, valid `CREDENTIAL_DAYS`: shown once, stored as a
/// hash.
async fn issue_token(core: &Core, device: &DeviceRow) -> Result<String> {
    let (token, hash) = crate::auth::new_token("dev");
    let expires_at = crate::store::now_ms() + CREDENTIAL_DAYS * DAY_MS;
    core.store.insert_device_credential(device.id, &hash, expires_at).await?;
    Ok(token)
}

/// One request of a device type's enrollment exchange (`device-type-enrolling`, e.g.
/// Windows MS-MDE2), to `/agent/v1/{type}/enroll/…`: the plugin reads it and either
/// answers it itself (discovery, policy) or asks for a device to be admitted, by the same
/// rule and with the same token check as [`enroll`]. The host then issues the credential
/// (a certificate for the CSR the request carried, else a bearer token) and the plugin
/// writes the answer in the device's format, or the protocol's fault for a refusal. A
/// CSR is read before any token is used up. `token` is the one the HTTP request carried;
/// the plugin's (a WS-Security password) comes first.
pub async fn exchange(
    core: &Core,
    plugin: &LoadedPlugin,
    device_type: &str,
    source: Source,
    channel: Channel,
    body: &[u8],
    token: Option<&str>,
) -> Result<crate::plugins::types::HttpResponse> {
    use crate::plugins::{EnrollContext, EnrollStep, ExchangeIssued, Refusal};
    crate::delivery::bounded(body)?;
    // A token the request carries (`?token=`: a profile link) is refused here, dead, rather
    // than built into what the device installs and refused later where it can say less;
    // a live one says whose settings the plugin reads (its tenant's, over the server's).
    let config = match token {
        None => None,
        Some(t) => {
            let Some(tenant) = core.store.live_enrollment_token(&crate::auth::hash_token(t), device_type).await? else {
                return Err(dead_token(device_type));
            };
            core.settings.tenant_config(&plugin.manifest.name, &tenant)
        }
    };
    let context =
        || EnrollContext { agent_url: format!("{}/agent/v1/{device_type}", core.public_url.trim_end_matches('/')) };
    let admission = match plugin.enroll_step(source, context(), channel.clone(), body.to_vec(), config).await? {
        EnrollStep::Reply(answer) => return Ok(answer),
        EnrollStep::Admit(admission) => admission,
    };
    let token = admission.token.as_deref().or(token);
    let issued = async {
        let csr = admission.csr.as_deref().map(csr).transpose()?;
        let device = admit(core, device_type, &admission.enrollment, token, "http").await?;
        Ok::<_, Error>(match csr {
            Some(csr) => {
                let issued = sign(core, &csr, &device, "enrollment_exchange").await?;
                ExchangeIssued {
                    device_id: device.device_id,
                    certificate: Some(issued.cert_der),
                    ca_certificate: core.device_ca.cert_der().to_vec(),
                    access_token: None,
                    expires_in_secs: ((issued.not_after - crate::store::now_ms()) / 1000).max(0) as u64,
                }
            }
            None => {
                let token = issue_token(core, &device).await?;
                ExchangeIssued {
                    device_id: device.device_id,
                    certificate: None,
                    ca_certificate: core.device_ca.cert_der().to_vec(),
                    access_token: Some(token),
                    expires_in_secs: (CREDENTIAL_DAYS * DAY_SECS) as u64,
                }
            }
        })
    }
    .await;
    // The device is told why it was refused in its own protocol; Drover's own failures
    // (the database) are not the device's business and stay a 5xx.
    let outcome = match issued {
        Ok(issued) => Ok(issued),
        Err(e) => {
            let status = match e.kind {
                crate::error::Kind::Invalid => 400,
                crate::error::Kind::Unauthenticated => 401,
                crate::error::Kind::Forbidden => 403,
                crate::error::Kind::Conflict => 409,
                _ => return Err(e),
            };
            tracing::info!(device_type, device_id = %admission.enrollment.device_id, code = e.code, "enrollment refused: {}", e.message);
            Err(Refusal { status, code: e.code.to_string(), message: e.message })
        }
    };
    Ok(plugin.enrolled(source, context(), channel, body.to_vec(), outcome).await?)
}

/// Issue a new credential to a device that holds a live one (`old_hash`); the old one is
/// shortened to a grace period.
pub async fn refresh(core: &Core, device: &DeviceRow, old_hash: &str) -> Result<Issued> {
    let (token, hash) = crate::auth::new_token("dev");
    let now = crate::store::now_ms();
    core.store
        .refresh_device_credential(
            device.id,
            old_hash,
            &hash,
            now + CREDENTIAL_DAYS * DAY_MS,
            now + OLD_CREDENTIAL_GRACE_SECS * 1000,
        )
        .await?;
    tracing::info!(device_type = %device.device_type, device_id = %device.device_id, "device credential refreshed");
    Ok(Issued { device: device.clone(), token, expires_in_secs: CREDENTIAL_DAYS * DAY_SECS })
}

/// Revoke every credential of a device (lost or stolen): it can no longer call in, and
/// its live sessions end (the fronts hear `CredentialsRevoked`). Its operations stay
/// queued. Returns how many live credentials were revoked.
pub async fn revoke(core: &Core, device: &DeviceRow, actor: &str) -> Result<u64> {
    let event = Event::CredentialsRevoked {
        device: device.id,
        device_type: device.device_type.clone(),
        device_id: device.device_id.clone(),
    };
    let revoked = core.store.revoke_device_credentials(device.id, Some(&event.record())).await?;
    tracing::info!(device_type = %device.device_type, device_id = %device.device_id, revoked, actor, "device credentials revoked");
    core.events.publish(event);
    Ok(revoked)
}

/// Disenroll a device (an admin's removal, or its own check-out): every live operation
/// cancelled, its credentials revoked, status `removed`, its sessions ended. Its history
/// is kept. Returns how many operations were cancelled.
pub async fn remove(core: &Core, device: &DeviceRow, actor: &str) -> Result<u64> {
    let removed = Event::DeviceRemoved {
        device: device.id,
        device_type: device.device_type.clone(),
        device_id: device.device_id.clone(),
    };
    let cancelled = core.store.disenroll(device.id, actor, &removed.record()).await?;
    tracing::info!(device_type = %device.device_type, device_id = %device.device_id, cancelled, actor, "device removed");
    if cancelled > 0 {
        core.events.publish(Event::OperationsCancelled {
            operation: None,
            activity: None,
            device: Some(device.id),
            count: cancelled,
            actor: actor.to_string(),
        });
    }
    core.events.publish(removed);
    crate::analytics::device_removed(core, device.id).await;
    Ok(cancelled)
}

/// Change what an admin says about a device: its display name, its owner (`Some(None)`
/// clears it), its ownership. Policies that read them apply anew before this returns.
pub async fn update(
    core: &Core,
    device: &DeviceRow,
    name: Option<&str>,
    owner: Option<Option<&str>>,
    ownership: Option<Ownership>,
    actor: &str,
) -> Result<()> {
    if let Some(n) = name
        && (n.trim().is_empty() || n.chars().count() > 128)
    {
        return Err(Error::invalid("invalid", "`name` must be 1 to 128 characters"));
    }
    if owner.flatten().is_some_and(|o| o.chars().count() > 128) {
        return Err(Error::invalid("invalid", "`owner` must be at most 128 characters"));
    }
    let event = crate::store::NewEvent {
        event_type: "device.updated".into(),
        actor: Some(actor.into()),
        target: Some(format!("device/{}/{}", device.device_type, device.device_id)),
        data: Some(
            serde_json::json!({ "device": device.id, "type": device.device_type, "id": device.device_id,
                "name": name, "owner": owner, "ownership": ownership })
            .to_string(),
        ),
        device: Some(device.id),
        ..Default::default()
    };
    core.store.update_device(device.id, name, owner, ownership, &event).await?;
    crate::policies::recompute(core, crate::policies::Scope::Devices(vec![device.id])).await?;
    Ok(())
}

/// Bring a removed device back as it was (tags, static groups), `registered` until it
/// enrolls again with an enrollment token.
pub async fn restore(core: &Core, device: &DeviceRow) -> Result<DeviceRow> {
    let restored = Event::DeviceStatusChanged {
        device: device.id,
        device_type: device.device_type.clone(),
        device_id: device.device_id.clone(),
        status: Status::Registered,
    };
    if !core.store.restore_device(device.id, &restored.record()).await? {
        return Err(Error::conflict(
            "not_removed",
            format!(
                "device {}/{} is {}, not removed: there is nothing to restore",
                device.device_type, device.device_id, device.status
            ),
        ));
    }
    core.events.publish(restored);
    core.store.device_by_key(device.id).await?.ok_or_else(|| Error::not_found("the restored device is gone"))
}

/// What a bulk pre-registration did.
pub struct Imported {
    /// Data rows read.
    pub rows: usize,
    /// Devices new to the server.
    pub registered: u64,
    /// This import's id: an enrollment token made with it claims only these devices.
    pub batch: String,
}

/// Bulk pre-registration from CSV: a header row with `device_type` and `device_id`, and
/// optionally `name`, `owner`, `ownership` (BYOD or COPE), and for LwM2M devices `psk`
/// (hex) with `psk_identity` (default: the device id): the key it registers with over
/// DTLS. Every row is checked before any is stored; an error names the line. Devices are
/// `registered` until they enroll, with an enrollment token unless `self_enroll` (or, over
/// DTLS, their key).
pub async fn import_csv(core: &Core, csv_text: &[u8], self_enroll: bool, tenant: &str) -> Result<Imported> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(csv_text);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| Error::invalid("malformed_csv", format!("header row: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let (Some(ty_col), Some(id_col)) = (col("device_type"), col("device_id")) else {
        return Err(Error::invalid("malformed_csv", "the header row needs `device_type` and `device_id` columns"));
    };
    let (name_col, owner_col, own_col) = (col("name"), col("owner"), col("ownership"));
    let (psk_col, psk_identity_col) = (col("psk"), col("psk_identity"));
    let mut devices = Vec::new();
    // (line, index in `devices`, identity, key) of the rows that give a key.
    let mut keys: Vec<(usize, usize, String, Vec<u8>)> = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let r = record.map_err(|e| Error::invalid("malformed_csv", format!("line {line}: {e}")))?;
        let get = |c: Option<usize>| c.and_then(|c| r.get(c)).filter(|v| !v.is_empty()).map(str::to_string);
        let empty = |what: &str| Error::invalid("invalid", format!("line {line}: `{what}` is empty"));
        let device_type = get(Some(ty_col)).ok_or_else(|| empty("device_type"))?;
        let device_id = get(Some(id_col)).ok_or_else(|| empty("device_id"))?;
        if core.registry.device_type(&device_type).is_none()
            || !crate::tenants::may_use_type(&core.store, &device_type, tenant).await?
        {
            return Err(Error::invalid(
                "unknown_device_type",
                format!("line {line}: no device type `{device_type}` is loaded"),
            ));
        }
        if device_id.len() > MAX_DEVICE_ID {
            return Err(Error::invalid(
                "invalid",
                format!("line {line}: `device_id` is longer than {MAX_DEVICE_ID} characters"),
            ));
        }
        // Case does not matter in a spreadsheet; the error names the value as written.
        let ownership = match get(own_col) {
            None => Ownership::Cope,
            Some(o) => Ownership::parse(&o.to_ascii_uppercase()).map_err(|_| {
                Error::invalid("invalid", format!("line {line}: {}", Ownership::parse(&o).unwrap_err()))
            })?,
        };
        if let Some(hex_key) = get(psk_col) {
            let key = hex::decode(&hex_key)
                .map_err(|e| Error::invalid("invalid", format!("line {line}: `psk`: hex digits expected ({e})")))?;
            let identity = get(psk_identity_col).unwrap_or_else(|| device_id.clone());
            check_psk(core, &device_type, &identity, Some(&key))
                .map_err(|(_, why)| Error::invalid("invalid", format!("line {line}: {why}")))?;
            if let Some((first, ..)) = keys.iter().find(|k| k.2 == identity) {
                return Err(Error::invalid(
                    "invalid",
                    format!("line {line}: PSK identity `{identity}` is line {first}'s too"),
                ));
            }
            // A key given for a device the server already has replaces that device's key:
            // only for a device of the importer's tenant.
            if let Some(d) = core.store.device(&device_type, &device_id).await?
                && d.tenant != tenant
            {
                return Err(Error::conflict(
                    "conflict",
                    format!("line {line}: device {device_type}/{device_id} exists and is not in tenant `{tenant}`"),
                ));
            }
            if let Some(holder) = core.store.psk_holder(&identity).await?
                && core.store.device(&device_type, &device_id).await?.is_none_or(|d| d.id != holder)
            {
                return Err(Error::conflict(
                    "conflict",
                    format!("line {line}: PSK identity `{identity}` is another device's"),
                ));
            }
            keys.push((line, devices.len(), identity, key));
        } else if get(psk_identity_col).is_some() {
            return Err(Error::invalid("invalid", format!("line {line}: `psk_identity` without a `psk`")));
        }
        devices.push(NewDevice {
            name: get(name_col).unwrap_or_else(|| device_id.clone()),
            device_type,
            device_id,
            owner: get(owner_col),
            ownership,
            metadata: Default::default(),
            push_token: None,
            tenant: tenant.to_string(),
        });
    }
    let batch = format!("imp_{}", &crate::auth::new_token("batch").1[..16]);
    let registered = core.store.register_devices(&devices, self_enroll, &batch).await?;
    for (line, index, identity, key) in keys {
        let d = &devices[index];
        let device = core
            .store
            .device(&d.device_type, &d.device_id)
            .await?
            .ok_or_else(|| Error::internal(format!("line {line}: the device just imported is gone")))?;
        provision_psk(core, &device, Some(identity), Some(key), "import").await.map_err(|e| {
            Error::new(
                e.kind,
                e.code,
                format!(
                    "line {line}: {} (every device was imported; the keys of the lines before it were given)",
                    e.message
                ),
            )
        })?;
    }
    Ok(Imported { rows: devices.len(), registered, batch })
}

fn already_enrolled(device_type: &str, device_id: &str) -> Error {
    Error::conflict(
        "already_enrolled",
        format!("device {device_type}/{device_id} is already enrolled; an admin removes it first to enroll it again"),
    )
}

/// Sign a device certificate for the key in `csr` (`identity.rs`). The request is
/// authenticated either as an enrolled device (its token, or its current certificate:
/// renewal), whose id a CN in the CSR must then name, or by an enrollment token as a
/// one-time challenge (SCEP-style), which claims the identity the CN names by the same rule
/// as any enrollment. The certificate becomes one of the device's credentials.
pub async fn certify(
    core: &Core,
    device_type: &str,
    csr_body: &[u8],
    by: CertifyAs<'_>,
) -> Result<(DeviceRow, crate::identity::Issued)> {
    let csr = csr(csr_body)?;
    let device = match by {
        CertifyAs::Device(device) => {
            csr.for_device(&device.device_type, &device.device_id).map_err(|e| Error::forbidden(e.to_string()))?;
            device.clone()
        }
        CertifyAs::Challenge(token) => {
            let Some(id) = csr.common_name.clone().filter(|id| !id.is_empty() && id.len() <= MAX_DEVICE_ID) else {
                return Err(Error::invalid(
                    "invalid_csr",
                    format!(
                        "with an enrollment token, the CSR's CN names the device (1 to {MAX_DEVICE_ID} characters)"
                    ),
                ));
            };
            let e = Enrollment {
                device_id: id,
                name: None,
                ownership: crate::plugins::types::Ownership::Cope,
                owner: None,
                metadata: vec![],
                push: None,
            };
            admit(core, device_type, &e, Some(token), "certificate").await?
        }
    };
    let by = match by {
        CertifyAs::Device(_) => "renewal",
        CertifyAs::Challenge(_) => "enrollment_token",
    };
    let issued = sign(core, &csr, &device, by).await?;
    Ok((device, issued))
}

/// Sign `csr`'s key for `device` and keep the certificate as one of its credentials;
/// `by` says in the event how the request was authenticated.
async fn sign(
    core: &Core,
    csr: &crate::identity::Csr,
    device: &DeviceRow,
    by: &'static str,
) -> Result<crate::identity::Issued> {
    let issued = core
        .device_ca
        .issue(csr, &device.device_type, &device.device_id)
        .map_err(|e| Error::internal(format!("{e:#}")))?;
    let event = certificate_issued(device, &issued.serial, issued.not_after, by);
    core.store
        .insert_device_certificate(
            device.id,
            &issued.serial,
            &issued.credential,
            (issued.not_before, issued.not_after),
            &event,
        )
        .await?;
    tracing::info!(device_type = %device.device_type, device_id = %device.device_id, serial = %issued.serial, "device certificate issued");
    Ok(issued)
}

/// `device.certificate_issued`: in the log (webhooks, the stream), not on the in-process
/// bus (no front acts on it).
fn certificate_issued(device: &DeviceRow, serial: &str, not_after: i64, by: &str) -> crate::store::NewEvent {
    crate::store::NewEvent {
        event_type: "device.certificate_issued".into(),
        target: Some(format!("device/{}/{}", device.device_type, device.device_id)),
        data: Some(
            serde_json::json!({
                "device": device.id, "type": device.device_type, "id": device.device_id,
                "serial": serial, "not_after": not_after, "by": by,
            })
            .to_string(),
        ),
        device: Some(device.id),
        ..Default::default()
    }
}

/// How long a pending certificate may claim its device: an enrollment profile's SCEP
/// request and its first check-in are seconds apart; a certificate whose check-in never
/// came is swept after this.
pub const PENDING_CLAIM_SECS: i64 = 3600;

/// Sign a certificate for an enrollment whose device is not known yet (an Apple
/// enrollment profile's SCEP payload; docs/security.md, "Certificates before
/// identities"). The challenge `token` must be a live enrollment token for `device_type`,
/// but is not used up: the claim uses it, by the rule for the identity the first check-in
/// names ([`claim_pending`]). The CSR's subject is not read.
pub async fn certify_pending(
    core: &Core,
    device_type: &str,
    csr_body: &[u8],
    token: &str,
) -> Result<crate::identity::Issued> {
    let csr = csr(csr_body)?;
    let token_hash = crate::auth::hash_token(token);
    if core.store.live_enrollment_token(&token_hash, device_type).await?.is_none() {
        return Err(dead_token(device_type));
    }
    let enrollment = &crate::auth::new_token("enr").1[..16];
    let issued =
        core.device_ca.issue_pending(&csr, device_type, enrollment).map_err(|e| Error::internal(format!("{e:#}")))?;
    core.store
        .insert_pending_certificate(&crate::store::PendingCertificate {
            credential: issued.credential.clone(),
            serial: issued.serial.clone(),
            device_type: device_type.to_string(),
            token_hash,
            not_before: issued.not_before,
            not_after: issued.not_after,
            claim_by: crate::store::now_ms() + PENDING_CLAIM_SECS * 1000,
        })
        .await?;
    Ok(issued)
}

/// A request made with a pending certificate (its credential `credential`, at a path of
/// `device_type`, `plugin`'s): the plugin reads it as an enrollment request (an Apple
/// `Authenticate`), the identity it names is claimed by the rule with the certificate's
/// enrollment token, and the certificate becomes that device's credential. The caller
/// then handles the request as the device's. The certificate is taken for the claim
/// first, so two requests racing with it cannot both claim (nor the second leave a device
/// behind); a claim that fails gives it back for the device's next try.
pub async fn claim_pending(
    core: &Core,
    plugin: &LoadedPlugin,
    device_type: &str,
    credential: &str,
    source: Source,
    channel: Channel,
    body: &[u8],
) -> Result<DeviceRow> {
    crate::delivery::bounded(body)?;
    let Some(pending) = core.store.take_pending_certificate(credential).await? else {
        return Err(Error::unauthenticated(
            "this certificate's enrollment was claimed already, is being claimed, or its hour to claim has passed",
        ));
    };
    let claimed = async {
        if pending.device_type != device_type {
            return Err(Error::forbidden(format!(
                "this certificate is for a {} enrollment, not {device_type}",
                pending.device_type
            )));
        }
        let e = plugin.enroll(source, channel, body.to_vec()).await?;
        admit_with(core, device_type, &e, Credential::Token, Some(&pending.token_hash), "certificate").await
    }
    .await;
    let device = match claimed {
        Ok(device) => device,
        Err(e) => {
            core.store.release_pending_certificate(credential).await?;
            return Err(e);
        }
    };
    let event = certificate_issued(&device, &pending.serial, pending.not_after, "pending_claim");
    core.store.bind_pending_certificate(&pending, device.id, &event).await?;
    tracing::info!(device_type = %device.device_type, device_id = %device.device_id, serial = %pending.serial, "pending certificate claimed");
    Ok(device)
}

/// A CSR of at most `identity::MAX_CSR` bytes, parsed and its signature checked.
fn csr(body: &[u8]) -> Result<crate::identity::Csr> {
    use crate::identity::{Csr, MAX_CSR};
    if body.len() > MAX_CSR {
        return Err(Error::invalid("too_large", format!("a CSR is at most {MAX_CSR} bytes")));
    }
    Csr::parse(body).map_err(|e| Error::invalid("invalid_csr", e.to_string()))
}

/// The refusal of an enrollment token checked, not used: it is not live for this type.
fn dead_token(device_type: &str) -> Error {
    Error::unauthenticated(format!(
        "the enrollment token is unknown, expired, used up or not for {device_type} devices"
    ))
}

/// Who asks [`certify`] for a certificate.
#[derive(Clone, Copy)]
pub enum CertifyAs<'a> {
    /// An enrolled device, by its token or its current certificate.
    Device(&'a DeviceRow),
    /// An enrollment token, the challenge that claims the CN's identity.
    Challenge(&'a str),
}

/// Revoke one certificate of a device: it is refused from its next request or
/// connection, and the device's live sessions end (the fronts hear `CredentialsRevoked`;
/// a session on another credential connects again). `false`: no live certificate has
/// that serial.
pub async fn revoke_certificate(core: &Core, device: &DeviceRow, serial: &str, actor: &str) -> Result<bool> {
    let event = Event::CredentialsRevoked {
        device: device.id,
        device_type: device.device_type.clone(),
        device_id: device.device_id.clone(),
    };
    // The log says which certificate: `certificate` beside the device's fields.
    let mut record = event.record();
    if let Some(mut data) = record.data.as_deref().and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok()) {
        data["certificate"] = serde_json::json!(serial);
        record.data = Some(data.to_string());
    }
    let revoked = core.store.revoke_device_certificate(device.id, serial, Some(&record)).await?;
    if revoked {
        tracing::info!(device_type = %device.device_type, device_id = %device.device_id, serial, actor, "device certificate revoked");
        core.events.publish(event);
    }
    Ok(revoked)
}

/// Whether a key may be given as asked: a device type that talks CoAP, an identity of
/// printable ASCII, a key of 16 to 64 bytes. The error's code and message.
fn check_psk(
    core: &Core,
    device_type: &str,
    identity: &str,
    key: Option<&[u8]>,
) -> std::result::Result<(), (&'static str, String)> {
    let talks_coap = core.registry.device_type(device_type).is_some_and(|p| {
        p.device_type_info().is_some_and(|i| i.delivery.contains(&crate::plugins::types::Delivery::Coap))
    });
    if !talks_coap {
        return Err((
            "not_coap",
            format!("{device_type} devices do not talk CoAP: a pre-shared key is for LwM2M over DTLS"),
        ));
    }
    if identity.is_empty() || identity.len() > MAX_PSK_IDENTITY || !identity.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(("identity", format!("`identity`: 1-{MAX_PSK_IDENTITY} printable ASCII characters, no spaces")));
    }
    if key.is_some_and(|k| !(16..=64).contains(&k.len())) {
        return Err(("key", "`key`: 16 to 64 bytes (32 to 128 hex digits)".into()));
    }
    Ok(())
}

/// Longest PSK identity (RFC 4279 allows 2^16 bytes; an endpoint name is far shorter).
pub const MAX_PSK_IDENTITY: usize = 128;

/// A generated key's length: 128 bits, as the suites' AES-128 uses.
pub const PSK_LEN: usize = 16;

/// Give a LwM2M device the pre-shared key it uses over DTLS (docs/security.md, "LwM2M
/// over DTLS"): `identity` (default: its endpoint name) and `key` (default: 16 random
/// bytes). Its old key is revoked, and its sessions on that key end. Returns the
/// identity and the key, which is shown this once.
pub async fn provision_psk(
    core: &Core,
    device: &DeviceRow,
    identity: Option<String>,
    key: Option<Vec<u8>>,
    actor: &str,
) -> Result<(String, Vec<u8>)> {
    if device.status == Status::Removed {
        return Err(Error::conflict("removed", "a removed device gets no key: enroll it again first"));
    }
    let identity = identity.unwrap_or_else(|| device.device_id.clone());
    // A device type that does not talk CoAP is a conflict with the device, not bad input.
    check_psk(core, &device.device_type, &identity, key.as_deref()).map_err(|(code, why)| match code {
        "not_coap" => Error::conflict(code, why),
        _ => Error::invalid(code, why),
    })?;
    let key = key.unwrap_or_else(|| {
        let mut k = vec![0u8; PSK_LEN];
        getrandom::fill(&mut k).expect("the OS random source");
        k
    });
    let event = Event::PskProvisioned {
        device: device.id,
        device_type: device.device_type.clone(),
        device_id: device.device_id.clone(),
        identity: identity.clone(),
        actor: actor.to_string(),
    };
    core.store.set_device_psk(device.id, &identity, &key, &event.record()).await?;
    tracing::info!(device_type = %device.device_type, device_id = %device.device_id, identity, actor, "pre-shared key provisioned");
    core.events.publish(event);
    Ok((identity, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(status: &str, self_enroll: bool, batch: Option<&str>) -> Claim {
        Claim {
            status: Status::parse(status).unwrap(),
            self_enroll,
            import_batch: batch.map(Into::into),
            tenant: "acme".into(),
        }
    }

    #[test]
    fn a_pre_registered_identity_needs_a_token_unless_its_import_said_otherwise() {
        let imported = claim("registered", false, Some("b1"));
        assert!(matches!(decide(Some(&imported), Credential::None, true), Decision::Refused(_)));
        assert!(matches!(decide(Some(&imported), Credential::None, false), Decision::Refused(_)));
        // Only with a token of the tenant that imported it.
        assert_eq!(
            decide(Some(&imported), Credential::Token, true),
            Decision::Token { import_batch: Some("b1".into()), tenant: Some("acme".into()) }
        );
        let open = claim("registered", true, Some("b2"));
        assert_eq!(decide(Some(&open), Credential::None, false), Decision::Open);
    }

    #[test]
    fn new_and_removed_identities_follow_the_server_setting() {
        for c in [None, Some(claim("removed", false, None))] {
            assert_eq!(decide(c.as_ref(), Credential::None, true), Decision::Open);
            assert!(matches!(decide(c.as_ref(), Credential::None, false), Decision::Refused(_)));
            // A token made for an import cannot claim an identity outside it.
            // A new identity joins the token's tenant.
            assert_eq!(
                decide(c.as_ref(), Credential::Token, false),
                Decision::Token { import_batch: None, tenant: None }
            );
        }
    }

    #[test]
    fn a_provisioned_credential_admits_a_pre_registered_identity() {
        let imported = claim("registered", false, Some("b1"));
        assert_eq!(decide(Some(&imported), Credential::Provisioned, false), Decision::Open);
    }

    #[test]
    fn an_enrolled_identity_is_never_claimed_again() {
        for status in ["active", "unreachable"] {
            for credential in [Credential::Token, Credential::None, Credential::Provisioned] {
                assert_eq!(decide(Some(&claim(status, true, None)), credential, true), Decision::AlreadyEnrolled);
            }
        }
    }
}
