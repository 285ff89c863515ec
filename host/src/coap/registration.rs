//! The LwM2M registration interface on `/rd`: register (enrollment through
//! `enrollment::admit`), update and de-register, with the same-host rule for a live
//! registration.

use super::*;

/// Why an update or de-registration from an address other than the registration's is refused.
pub(super) const MOVED: &str = "this registration was made from another host: only that host may update or end it";

/// A registration lives `lt` seconds (default 86400) after its last update.
pub(super) const DEFAULT_LIFETIME: u64 = 86_400;

/// What the server keeps per registered endpoint.
#[derive(Debug, Clone)]
pub(super) struct Registration {
    pub(super) device: i64,
    pub(super) device_type: String,
    pub(super) device_id: String,
    pub(super) addr: SocketAddr,
    pub(super) lifetime: Duration,
    pub(super) binding: String,
    pub(super) updated: Instant,
}

impl Registration {
    pub(super) fn queue_mode(&self) -> bool {
        self.binding.contains('Q')
    }
}

impl Coap {
    /// The device's current registration.
    pub(super) fn registration_of(&self, device: i64) -> Option<Registration> {
        let by_device = self.inner.by_device.lock().unwrap_or_else(|p| p.into_inner());
        let regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
        by_device.get(&device).and_then(|id| regs.get(id)).cloned()
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
        from: SocketAddr,
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
                let removed = {
                    let mut regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
                    match regs.get(*id) {
                        Some(r) if !same_host(r.addr, from) && !self.inner.allow_address_change => {
                            return (answer(ResponseType::Forbidden, MOVED), None);
                        }
                        _ => regs.remove(*id),
                    }
                };
                match removed {
                    Some(r) => {
                        self.forget(r.device, id);
                        tracing::info!(device_type = %r.device_type, device_id = %r.device_id, "LwM2M de-registered");
                        (answer(ResponseType::Deleted, ""), None)
                    }
                    None => (answer(ResponseType::NotFound, "no such registration"), None),
                }
            }
            _ => (answer(ResponseType::NotFound, "Drover serves the registration interface on /rd"), None),
        }
    }

    pub(super) async fn register(
        &self,
        state: &Core,
        packet: &Packet,
        query: Vec<String>,
        from: SocketAddr,
    ) -> Result<(String, i64), (ResponseType, String)> {
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
        let source = crate::plugins::Source::Peer(from.ip());
        let e = plugin.enroll(source, channel, packet.payload.clone()).await.map_err(|e| match e {
            crate::plugins::CallError::Rejected(p) => (ResponseType::BadRequest, p.message),
            crate::plugins::CallError::Fault(f) => match f.fault {
                crate::plugins::Fault::Held(_) => (ResponseType::TooManyRequests, f.to_string()),
                crate::plugins::Fault::Busy(_) => (ResponseType::ServiceUnavailable, f.to_string()),
                _ => (ResponseType::UnprocessableEntity, f.to_string()),
            },
            other => (ResponseType::InternalServerError, other.to_string()),
        })?;
        let internal = |e: crate::store::StoreError| (ResponseType::InternalServerError, e.to_string());
        let existing = state.store.device(&device_type, &e.device_id).await.map_err(internal)?;
        // A live registration of this endpoint from another address stands: without DTLS an
        // endpoint name is no credential, and the first registration's address is all that
        // tells the device from someone who learned its name.
        if let Some(d) = &existing
            && !self.inner.allow_address_change
            && let Some(r) = self.registration_of(d.id)
            && !same_host(r.addr, from)
            && r.updated.elapsed() <= r.lifetime
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
                // LwM2M carries no enrollment token: the identity is claimed by the rule
                // for self-enrollment (a pre-registered one only if its import allowed it).
                crate::enrollment::admit(state, &device_type, &e, None, "coap").await.map_err(|err| {
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
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(DEFAULT_LIFETIME);
        let binding = query.iter().find_map(|q| q.strip_prefix("b=")).unwrap_or("U").to_string();
        // Unguessable: whoever knows a registration's id could otherwise update it or end it.
        let id = hex::encode(random::<8>());
        let registration = Registration {
            device: device.id,
            device_type: device_type.clone(),
            device_id: device.device_id.clone(),
            addr: from,
            lifetime: Duration::from_secs(lifetime),
            binding,
            updated: Instant::now(),
        };
        let old = self.inner.by_device.lock().unwrap_or_else(|p| p.into_inner()).insert(device.id, id.clone());
        {
            let mut regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(old) = old {
                regs.remove(&old);
            }
            regs.insert(id.clone(), registration);
        }
        tracing::info!(device_type, device_id = %device.device_id, %from, lifetime, "LwM2M registered");
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
        let observes = self.inner.observing.lock().unwrap_or_else(|p| p.into_inner()).remove(&device.id);
        for r in observes.unwrap_or_default() {
            self.request(device.id, r, from).await;
        }
        Ok((id, device.id))
    }

    pub(super) async fn update(
        &self,
        state: &Core,
        id: &str,
        query: &[String],
        from: SocketAddr,
    ) -> Result<i64, (ResponseType, String)> {
        let device = {
            let mut regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
            let Some(r) = regs.get_mut(id) else {
                // Unknown (expired, or the server restarted): the client registers again.
                return Err((ResponseType::NotFound, "no such registration: register again".into()));
            };
            if !same_host(r.addr, from) && !self.inner.allow_address_change {
                return Err((ResponseType::Forbidden, MOVED.into()));
            }
            r.addr = from;
            r.updated = Instant::now();
            for q in query {
                if let Some(lt) = q.strip_prefix("lt=").and_then(|v| v.parse().ok()) {
                    r.lifetime = Duration::from_secs(lt);
                }
                if let Some(b) = q.strip_prefix("b=") {
                    r.binding = b.to_string();
                }
            }
            r.device
        };
        state
            .store
            .touch_device(device, &[], None)
            .await
            .map_err(|e| (ResponseType::InternalServerError, e.to_string()))?;
        state.events.publish_frequent(|| crate::events::Event::DeviceSeen { device });
        Ok(device)
    }
}
