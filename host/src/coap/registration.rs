//! The LwM2M registration interface on `/rd`: register (enrollment through
//! `enrollment::admit`), update and de-register, with the same-host rule for a live
//! registration.

use super::*;
use crate::store::CoapRegistration;

/// Why an update or de-registration from an address other than the registration's is refused.
pub(super) const MOVED: &str = "this registration was made from another host: only that host may update or end it";

/// Why plain CoAP refuses a registration when `--coap-nosec` is off.
pub(super) const NOSEC_OFF: &str = "this server takes LwM2M registrations over DTLS with a pre-shared key (coaps): an \
     admin provisions the endpoint's key; unsecured CoAP is closed (--coap-nosec)";

/// Why an update or de-registration over another DTLS key than the registration's is refused.
pub(super) const OTHER_KEY: &str = "this registration was made with another key: only that device may update or end it";

/// A registration lives `lt` seconds (default 86400) after its last update.
pub(super) const DEFAULT_LIFETIME: u64 = 86_400;

/// The longest lifetime taken (about 136 years): a larger `lt` is cut to it, so the
/// database's arithmetic on lifetimes in milliseconds never overflows.
pub(super) const MAX_LIFETIME: u64 = u32::MAX as u64;

/// A lifetime from an `lt=` query value.
fn lifetime(value: &str) -> Option<Duration> {
    value.parse::<u64>().ok().map(|s| Duration::from_secs(s.min(MAX_LIFETIME)))
}

/// What the server keeps per registered endpoint.
#[derive(Debug, Clone)]
pub(super) struct Registration {
    pub(super) device: i64,
    pub(super) device_type: String,
    pub(super) device_id: String,
    pub(super) addr: Peer,
    pub(super) lifetime: Duration,
    pub(super) binding: String,
    /// When it was made or last updated (ms, wall clock: replicas and restarts share it).
    pub(super) updated_at: i64,
}

impl Registration {
    pub(super) fn queue_mode(&self) -> bool {
        self.binding.contains('Q')
    }

    /// Whether it still holds at `now` (ms).
    pub(super) fn live(&self, now: i64) -> bool {
        now - self.updated_at <= self.lifetime.as_millis() as i64
    }

    fn row(&self, id: &str) -> CoapRegistration {
        CoapRegistration {
            id: id.to_string(),
            device: self.device,
            device_type: self.device_type.clone(),
            device_id: self.device_id.clone(),
            addr: self.addr.addr.to_string(),
            secure: i64::from(self.addr.secure),
            lifetime_secs: self.lifetime.as_secs() as i64,
            binding: self.binding.clone(),
            updated_at: self.updated_at,
        }
    }

    /// The stored row's registration (`None`: an address that does not parse, which only
    /// a hand-edited row could hold).
    fn from_row(r: &CoapRegistration) -> Option<Registration> {
        Some(Registration {
            device: r.device,
            device_type: r.device_type.clone(),
            device_id: r.device_id.clone(),
            addr: Peer { addr: r.addr.parse().ok()?, secure: r.secure != 0 },
            lifetime: Duration::from_secs(r.lifetime_secs.max(0) as u64),
            binding: r.binding.clone(),
            updated_at: r.updated_at,
        })
    }
}

impl Coap {
    /// The device's current registration.
    pub(super) fn registration_of(&self, device: i64) -> Option<Registration> {
        let by_device = self.inner.by_device.lock().unwrap_or_else(|p| p.into_inner());
        let regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
        by_device.get(&device).and_then(|id| regs.get(id)).cloned()
    }

    /// Keep `r`, read from the database, in this replica's memory: it registered through
    /// another replica, or before a restart. It replaces the device's registration here.
    pub(super) fn remember(&self, r: &CoapRegistration) -> Option<Registration> {
        let registration = Registration::from_row(r)?;
        let old = self.inner.by_device.lock().unwrap_or_else(|p| p.into_inner()).insert(r.device, r.id.clone());
        let mut regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = old.filter(|old| *old != r.id) {
            regs.remove(&old);
        }
        regs.insert(r.id.clone(), registration.clone());
        Some(registration)
    }

    /// Registration `id`: this replica's, or the database's when this replica does not
    /// know it (made through another replica, or before a restart). `None` when unknown
    /// or past its lifetime.
    pub(super) async fn find(&self, state: &Core, id: &str) -> Result<Option<Registration>, (ResponseType, String)> {
        let known = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned();
        let now = crate::store::now_ms();
        if let Some(r) = known.filter(|r| r.live(now)) {
            return Ok(Some(r));
        }
        let stored =
            state.store.coap_registration(id).await.map_err(|e| (ResponseType::InternalServerError, e.to_string()))?;
        Ok(stored.filter(|r| r.live(now)).and_then(|r| self.remember(&r)))
    }

    /// Load the registrations still live from the database (at start: a restart keeps
    /// them, and devices go on updating as before).
    pub(super) async fn restore(&self, state: &Core) {
        match state.store.live_coap_registrations(crate::store::now_ms()).await {
            Ok(rows) => {
                for r in &rows {
                    self.remember(r);
                }
                if !rows.is_empty() {
                    tracing::info!(registrations = rows.len(), "LwM2M registrations restored");
                }
            }
            Err(e) => tracing::warn!("LwM2M registrations not restored: {e}"),
        }
    }

    /// Drop the device's pointer to registration `id`, unless it registered anew since.
    pub(super) fn forget(&self, device: i64, id: &str) {
        let mut by_device = self.inner.by_device.lock().unwrap_or_else(|p| p.into_inner());
        if by_device.get(&device).is_some_and(|current| current == id) {
            by_device.remove(&device);
        }
    }

    pub(super) fn plugin_for_coap(state: &Core) -> Option<(String, Arc<crate::plugins::LoadedPlugin>)> {
        // The CoAP device type: `lwm2m` if it serves, else any serving type that says coap.
        if let Some(p) = state.registry.device_type("lwm2m") {
            return Some(("lwm2m".into(), p));
        }
        state.registry.names().into_iter().find_map(|name| {
            let p = state.registry.device_type(&name)?;
            p.device_type_info()?.delivery.contains(&Delivery::Coap).then_some((name, p))
        })
    }

    /// `POST /rd` (register), `POST /rd/{id}` (update), `DELETE /rd/{id}` (de-register).
    /// The answer, and the device that registered or updated (it listens now).
    pub(super) async fn registration_interface(
        &self,
        state: &Core,
        packet: &Packet,
        from: Peer,
    ) -> (Packet, Option<i64>) {
        let path = uri_path(packet);
        let query = uri_query(packet);
        let MessageClass::Request(m) = packet.header.code else { unreachable!("a request") };
        let answer = |code: ResponseType, diagnostic: &str| {
            let mut p = Coap::reply(packet, code);
            if !diagnostic.is_empty() {
                p.payload = diagnostic.as_bytes().to_vec();
            }
            p
        };
        match (m, path.iter().map(String::as_str).collect::<Vec<_>>().as_slice()) {
            (RequestType::Post, ["rd"]) => match self.register(state, packet, query, from).await {
                Ok((id, device)) => {
                    let mut p = answer(ResponseType::Created, "");
                    p.add_option(CoapOption::LocationPath, b"rd".to_vec());
                    p.add_option(CoapOption::LocationPath, id.into_bytes());
                    (p, Some(device))
                }
                Err((code, why)) => (answer(code, &why), None),
            },
            (RequestType::Post, ["rd", id]) => match self.update(state, id, &query, from).await {
                Ok(device) => (answer(ResponseType::Changed, ""), Some(device)),
                Err((code, why)) => (answer(code, &why), None),
            },
            (RequestType::Delete, ["rd", id]) => {
                let registered = match self.find(state, id).await {
                    Ok(r) => r,
                    Err((code, why)) => return (answer(code, &why), None),
                };
                let Some(r) = registered else {
                    return (answer(ResponseType::NotFound, "no such registration"), None);
                };
                if let Err((code, why)) = self.may_change(state, &r, from).await {
                    return (answer(code, &why), None);
                }
                if let Err(e) = state.store.delete_coap_registration(id).await {
                    return (answer(ResponseType::InternalServerError, &e.to_string()), None);
                }
                self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner()).remove(*id);
                self.forget(r.device, id);
                tracing::info!(device_type = %r.device_type, device_id = %r.device_id, "LwM2M de-registered");
                (answer(ResponseType::Deleted, ""), None)
            }
            _ => (answer(ResponseType::NotFound, "Drover serves the registration interface on /rd"), None),
        }
    }

    pub(super) async fn register(
        &self,
        state: &Core,
        packet: &Packet,
        query: Vec<String>,
        from: Peer,
    ) -> Result<(String, i64), (ResponseType, String)> {
        // Over DTLS the key names the device; over plain CoAP nothing does, so it is open
        // only when the admin said so.
        let session = self.authenticated(from);
        if !from.secure && !self.inner.nosec {
            return Err((ResponseType::Unauthorized, NOSEC_OFF.into()));
        }
        let Some((device_type, plugin)) = Coap::plugin_for_coap(state) else {
            return Err((ResponseType::ServiceUnavailable, "no CoAP device type is loaded".into()));
        };
        let channel = Channel::Coap(CoapMessage {
            method: Some(CoapMethod::Post),
            code: 0,
            path: "rd".into(),
            query: query.clone(),
            content_format: uint_option(packet, CoapOption::ContentFormat).map(|v| v as u16),
            operation_id: None,
        });
        crate::bounds::check(&packet.payload).map_err(|e| (ResponseType::BadRequest, e.to_string()))?;
        let source = crate::plugins::Source::Peer(from.addr.ip());
        let e = plugin.enroll(source, channel, packet.payload.clone()).await.map_err(|e| match e {
            crate::plugins::CallError::Rejected(p) => (ResponseType::BadRequest, p.message),
            crate::plugins::CallError::Fault(f) => match f.fault {
                crate::plugins::Fault::Held(_) => (ResponseType::TooManyRequests, f.to_string()),
                crate::plugins::Fault::Busy(_) | crate::plugins::Fault::Unavailable(_) => {
                    (ResponseType::ServiceUnavailable, f.to_string())
                }
                _ => (ResponseType::UnprocessableEntity, f.to_string()),
            },
            other => (ResponseType::InternalServerError, other.to_string()),
        })?;
        let internal = |e: crate::store::StoreError| (ResponseType::InternalServerError, e.to_string());
        let existing = state.store.device(&device_type, &e.device_id).await.map_err(internal)?;
        if let Some(s) = &session {
            // The key's device, asked of the database (a key revoked on another replica
            // still sits in this one's cache until its next reload).
            let key = state.store.live_psk(&s.identity).await.map_err(internal)?;
            let is_its_endpoint =
                existing.as_ref().is_some_and(|d| d.id == s.device) && key.is_some_and(|k| k.device == s.device);
            if !is_its_endpoint {
                tracing::warn!(identity = %s.identity, endpoint = %e.device_id, %from, "LwM2M registration for another endpoint than its key's refused");
                return Err((
                    ResponseType::Forbidden,
                    format!(
                        "the pre-shared key `{}` is not endpoint `{}`'s (or it was revoked): a key registers its own \
                         device only",
                        s.identity, e.device_id
                    ),
                ));
            }
        } else if let Some(d) = &existing
            && state.store.has_live_psk(d.id).await.map_err(internal)?
        {
            return Err((
                ResponseType::Forbidden,
                format!("endpoint `{}` has a pre-shared key: it registers over DTLS (coaps) only", d.device_id),
            ));
        }
        // A live registration of this endpoint from another address stands: over plain
        // CoAP an endpoint name is no credential, and the first registration's address is
        // all that tells the device from someone who learned its name. (Over DTLS the key
        // proved it: the device moves.)
        let standing = match &existing {
            // The database's: the device may have registered through another replica.
            Some(d) if session.is_none() && !self.inner.allow_address_change => {
                state.store.coap_registration_of(d.id).await.map_err(internal)?.and_then(|r| Registration::from_row(&r))
            }
            _ => None,
        };
        if let Some(d) = &existing
            && let Some(r) = standing
            && !same_host(r.addr, from)
            && r.live(crate::store::now_ms())
        {
            tracing::warn!(device_id = %d.device_id, %from, registered_from = %r.addr, "LwM2M registration from another address refused");
            return Err((
                ResponseType::Forbidden,
                format!(
                    "endpoint `{}` is registered from another host; it can register from here once that \
                     registration ends (de-registration or lifetime), or when the server allows address changes",
                    d.device_id
                ),
            ));
        }
        let metadata: Vec<(String, String)> = e.metadata.clone();
        let device = match existing {
            Some(d) if d.status.is_enrolled() => {
                state.store.touch_device(d.id, &metadata, None).await.map_err(internal)?;
                crate::delivery::seen(state, &d);
                d
            }
            _ => {
                // LwM2M carries no enrollment token: over DTLS the admin's key admits the
                // device; over plain CoAP the identity is claimed by the rule for
                // self-enrollment (a pre-registered one only if its import allowed it).
                let admitted = match &session {
                    Some(_) => crate::enrollment::admit_provisioned(state, &device_type, &e, "coaps").await,
                    None => crate::enrollment::admit(state, &device_type, &e, None, "coap").await,
                };
                admitted.map_err(|err| {
                    let code = match err.kind {
                        Kind::Internal => ResponseType::InternalServerError,
                        _ => ResponseType::Forbidden,
                    };
                    (code, format!("endpoint `{}`: {}", e.device_id, err.message))
                })?
            }
        };
        let lifetime = query
            .iter()
            .find_map(|q| q.strip_prefix("lt="))
            .and_then(lifetime)
            .unwrap_or(Duration::from_secs(DEFAULT_LIFETIME));
        let binding = query.iter().find_map(|q| q.strip_prefix("b=")).unwrap_or("U").to_string();
        // Unguessable: whoever knows a registration's id could otherwise update it or end it.
        let id = hex::encode(random::<8>());
        let registration = Registration {
            device: device.id,
            device_type: device_type.clone(),
            device_id: device.device_id.clone(),
            addr: from,
            lifetime,
            binding,
            updated_at: crate::store::now_ms(),
        };
        // Stored first: what this replica remembers, every replica can find.
        state.store.save_coap_registration(&registration.row(&id)).await.map_err(internal)?;
        let old = self.inner.by_device.lock().unwrap_or_else(|p| p.into_inner()).insert(device.id, id.clone());
        {
            let mut regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(old) = old {
                regs.remove(&old);
            }
            regs.insert(id.clone(), registration);
        }
        tracing::info!(device_type, device_id = %device.device_id, %from, lifetime = lifetime.as_secs(), "LwM2M registered");
        // A new registration forgets the device's observations and exchanges (the client
        // starts afresh): drop their tokens, then re-establish the observations.
        let unanswered: Vec<u64> = {
            let mut exchanges = self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner());
            let lost = exchanges
                .values()
                .filter(|x| x.device == device.id && x.request.observe.is_none())
                .map(|x| x.request.operation_id)
                .collect();
            exchanges.retain(|_, x| x.device != device.id);
            lost
        };
        // Requests the device never answered go back to the queue and out again below.
        let note = serde_json::json!({"note": "the device registered again before answering"}).to_string();
        let back: Vec<_> =
            unanswered.iter().map(|op| (*op as i64, crate::ops::Reported::NotNow, Some(note.clone()))).collect();
        if !back.is_empty() {
            state.store.apply_results(device.id, &back).await.map_err(internal)?;
        }
        // Stored requests too, whichever replica sent them: the device starts afresh.
        state.store.delete_coap_exchanges_of(device.id).await.map_err(internal)?;
        let observes = self.inner.observing.lock().unwrap_or_else(|p| p.into_inner()).remove(&device.id);
        for r in observes.unwrap_or_default() {
            self.request(state, device.id, r, from).await;
        }
        Ok((id, device.id))
    }

    pub(super) async fn update(
        &self,
        state: &Core,
        id: &str,
        query: &[String],
        from: Peer,
    ) -> Result<i64, (ResponseType, String)> {
        const GONE: &str = "no such registration: register again";
        let Some(mut r) = self.find(state, id).await? else {
            // Unknown (ended, or past its lifetime): the client registers again.
            return Err((ResponseType::NotFound, GONE.into()));
        };
        self.may_change(state, &r, from).await?;
        r.addr = from;
        r.updated_at = crate::store::now_ms();
        for q in query {
            if let Some(lt) = q.strip_prefix("lt=").and_then(lifetime) {
                r.lifetime = lt;
            }
            if let Some(b) = q.strip_prefix("b=") {
                r.binding = b.to_string();
            }
        }
        let internal = |e: crate::store::StoreError| (ResponseType::InternalServerError, e.to_string());
        if !state.store.update_coap_registration(&r.row(id)).await.map_err(internal)? {
            // Ended through another replica meanwhile.
            self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
            self.forget(r.device, id);
            return Err((ResponseType::NotFound, GONE.into()));
        }
        let device = r.device;
        if let Some(kept) = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id) {
            *kept = r;
        }
        state.store.touch_device(device, &[], None).await.map_err(internal)?;
        state.events.publish_frequent(|| crate::events::Event::DeviceSeen { device });
        Ok(device)
    }
}

impl Coap {
    /// Whether `from` may update or end registration `r`: over DTLS, a session of the same
    /// device whose key still holds (from any address: the key proves it); over plain
    /// CoAP, the registration's host (or any, with `--coap-allow-address-change`).
    pub(super) async fn may_change(
        &self,
        state: &Core,
        r: &Registration,
        from: Peer,
    ) -> Result<(), (ResponseType, String)> {
        if r.addr.secure {
            let Some(s) = self.authenticated(from).filter(|s| s.device == r.device) else {
                return Err((ResponseType::Forbidden, OTHER_KEY.into()));
            };
            let live = state
                .store
                .live_psk(&s.identity)
                .await
                .map_err(|e| (ResponseType::InternalServerError, e.to_string()))?;
            if live.is_none_or(|k| k.device != r.device) {
                return Err((
                    ResponseType::Unauthorized,
                    "this device's pre-shared key was revoked or replaced".into(),
                ));
            }
            return Ok(());
        }
        if !same_host(r.addr, from) && !self.inner.allow_address_change {
            return Err((ResponseType::Forbidden, MOVED.into()));
        }
        Ok(())
    }
}
