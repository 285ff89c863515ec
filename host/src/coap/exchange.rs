//! Server-initiated exchanges: operations encoded as CoAP requests (`delivery::
//! encode_queued`), their retransmission, and the responses and notifications decoded for
//! the operation their token was made for (`delivery::receive`).

use super::*;

/// RFC 7252 transmission parameters.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) const MAX_RETRANSMIT: u32 = 4;

/// What an answer is matched to: from this replica's memory or from the database.
pub(super) struct Awaited {
    device: i64,
    path: String,
    operation_id: u64,
    /// Found in the database (sent by another replica, or before a restart).
    stored: bool,
}

impl Awaited {
    fn of(x: &Exchange) -> Awaited {
        Awaited { device: x.device, path: x.request.path.clone(), operation_id: x.request.operation_id, stored: false }
    }
}

/// The stored copy of a request that was answered, given up or cancelled. A failure
/// leaves a row the housekeeping sweep removes later.
pub(super) async fn forget_stored(state: &Core, token: &str) {
    if let Err(e) = state.store.delete_coap_exchange(token).await {
        tracing::warn!("a finished CoAP request stays stored until the sweep: {e}");
    }
}

/// A request Drover sent, awaiting its response (or, for an Observe, its notifications).
#[derive(Debug, Clone)]
pub(super) struct Exchange {
    pub(super) device: i64,
    pub(super) request: CoapRequest,
    pub(super) addr: Peer,
    pub(super) message_id: u16,
    pub(super) bytes: Vec<u8>,
    /// An ACK (empty or piggybacked) arrived: no more retransmissions.
    pub(super) acked: bool,
    pub(super) tries: u32,
    pub(super) next_at: Instant,
    pub(super) timeout: Duration,
}

impl Coap {
    /// An activity was stored: send it to its registered devices that listen now,
    /// whichever replica they registered through (the database's registrations; the
    /// delivery claims the operations, so two replicas never send one twice).
    pub(super) fn activity_added(&self, state: &Core, activity: i64) {
        // Without a CoAP device type there is nobody to ask about.
        if Coap::plugin_for_coap(state).is_none() {
            return;
        }
        let (coap, state) = (self.clone(), state.clone());
        tokio::spawn(async move {
            let registered = match state.store.activity_coap_registrations(activity, crate::store::now_ms()).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(activity, "LwM2M delivery of a new activity failed: {e}");
                    return;
                }
            };
            for r in registered {
                if coap.remember(&r).is_some_and(|r| !r.queue_mode()) {
                    coap.deliver(&state, r.device).await;
                }
            }
        });
    }

    /// Send the device's queue as CoAP requests.
    pub(super) async fn deliver(&self, state: &Core, device: i64) {
        let Ok(Some(row)) = state.store.device_by_key(device).await else { return };
        let Ok(plugin) = state.device_type(&row.device_type) else { return };
        let addr = {
            let by_device = self.inner.by_device.lock().unwrap_or_else(|p| p.into_inner());
            let regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
            by_device.get(&device).and_then(|id| regs.get(id)).map(|r| r.addr)
        };
        let Some(addr) = addr else { return };
        let queue = Queue { skip_empty: true, skip_not_now: false };
        match encode_queued(state, &plugin, &row, ChannelKind::Coap, crate::delivery::COAP_ACTOR, queue, None).await {
            Ok(Some(Outbound::Coap(requests))) => {
                for r in requests {
                    self.request(state, device, r, addr).await;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(device_id = %row.device_id, "CoAP delivery failed: {}", e.message),
        }
    }

    /// Send one request for an operation (confirmable, a fresh token), remembered until
    /// answered: here, and in the database, so that the answer is matched even by a
    /// restarted replica or another one (`store::CoapExchange`).
    pub(super) async fn request(&self, state: &Core, device: i64, r: CoapRequest, addr: Peer) {
        // Unguessable (RFC 7252 §5.3.1, RFC 9175): a response is matched by its token.
        let token = random::<8>().to_vec();
        let message_id = self.inner.next_message_id.fetch_add(1, Ordering::Relaxed);
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = message_id;
        p.header.code = MessageClass::Request(method(r.method));
        p.set_token(token.clone());
        if let Some(o) = r.observe {
            p.add_option(CoapOption::Observe, if o { vec![] } else { vec![1] });
        }
        for segment in r.path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
        }
        if let Some(cf) = r.content_format {
            p.add_option(CoapOption::ContentFormat, uint_bytes(u32::from(cf)));
        }
        if let Some(a) = r.accept {
            p.add_option(CoapOption::Accept, uint_bytes(u32::from(a)));
        }
        p.payload = r.payload.clone();
        let bytes = match p.to_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(operation = r.operation_id, "CoAP request not encodable: {e:?}");
                return;
            }
        };
        match r.observe {
            Some(true) => {
                let mut observing = self.inner.observing.lock().unwrap_or_else(|p| p.into_inner());
                let list = observing.entry(device).or_default();
                list.retain(|o| !(o.operation_id == r.operation_id && o.path == r.path));
                list.push(r.clone());
            }
            Some(false) => {
                // Cancelling: forget the observation of that path, here and for re-registration.
                if let Some(list) = self.inner.observing.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&device) {
                    list.retain(|o| o.path != r.path);
                }
                let mut ended = Vec::new();
                self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner()).retain(|token, x| {
                    let observed = x.device == device && x.request.observe == Some(true) && x.request.path == r.path;
                    if observed {
                        ended.push(hex::encode(token));
                    }
                    !observed
                });
                for token in ended {
                    forget_stored(state, &token).await;
                }
            }
            None => {}
        }
        let stored = crate::store::CoapExchange {
            token: hex::encode(&token),
            device,
            addr: addr.addr.to_string(),
            secure: i64::from(addr.secure),
            path: r.path.clone(),
            operation_id: r.operation_id as i64,
            observe: i64::from(r.observe == Some(true)),
            created_at: crate::store::now_ms(),
        };
        // Not stored, the request is still sent: only an answer reaching another process
        // is then lost, and its operation comes back after the answer timeout.
        if let Err(e) = state.store.save_coap_exchange(&stored).await {
            tracing::warn!(operation = r.operation_id, "CoAP request not stored (answered here only): {e}");
        }
        self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner()).insert(
            token,
            Exchange {
                device,
                request: r,
                addr,
                message_id,
                bytes: bytes.clone(),
                acked: false,
                tries: 0,
                next_at: Instant::now() + ACK_TIMEOUT,
                timeout: ACK_TIMEOUT,
            },
        );
        self.send_bytes(&bytes, addr).await;
    }

    /// A response (piggybacked, separate, or an Observe notification).
    pub(super) async fn response(&self, state: &Core, packet: Packet, from: Peer) {
        let token = packet.get_token().to_vec();
        let is_notification = packet.get_first_option(CoapOption::Observe).is_some();
        let in_memory = {
            let mut exchanges = self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner());
            match exchanges.get_mut(&token) {
                // Only the address the request went to may answer it: a token is not a
                // credential, and another host that learned one must not answer for the device.
                Some(x) if x.addr != from => Some((None, false)),
                Some(x) if x.request.observe == Some(true) && is_notification => {
                    x.acked = true;
                    Some((Some(Awaited::of(x)), false))
                }
                // Answered: it ends here and in the database.
                Some(_) => Some((exchanges.remove(&token).map(|x| Awaited::of(&x)), true)),
                None => None,
            }
        };
        let exchange = match in_memory {
            Some((found, ended)) => {
                if ended {
                    forget_stored(state, &hex::encode(&token)).await;
                }
                found
            }
            // Sent by another replica, or by this one before a restart.
            None => self.stored(state, &token, from, is_notification).await,
        };
        // A separate response or notification that is confirmable wants an empty ACK.
        if packet.header.get_type() == MessageType::Confirmable {
            let kind = if exchange.is_some() { MessageType::Acknowledgement } else { MessageType::Reset };
            self.send(&empty(kind, packet.header.message_id), from).await;
        }
        let Some(x) = exchange else {
            tracing::debug!(%from, "CoAP response with an unknown token: ignored");
            return;
        };
        let Ok(Some(device)) = state.store.device_by_key(x.device).await else { return };
        tracing::debug!(device_id = %device.device_id, operation = x.operation_id, stored = x.stored, "CoAP answer matched");
        let Ok(plugin) = state.device_type(&device.device_type) else { return };
        let channel = Channel::Coap(CoapMessage {
            method: None,
            code: code_number(packet.header.code),
            path: x.path.clone(),
            query: vec![],
            content_format: uint_option(&packet, CoapOption::ContentFormat).map(|v| v as u16),
            operation_id: Some(x.operation_id),
        });
        match receive(state, &plugin, &device, channel, &packet.payload).await {
            Ok(message) => {
                if let Reply::Immediate(Outbound::Coap(requests)) = message.reply {
                    for r in requests {
                        self.request(state, device.id, r, from).await;
                    }
                }
            }
            // A payload the plugin refuses changes nothing; the operation waits as it was.
            Err(e) => tracing::warn!(
                device_id = %device.device_id, operation = x.operation_id,
                "CoAP response refused: {}", e.message
            ),
        }
    }

    /// The stored request `token` is for, if `from` may answer it; an answer (not an
    /// observation's notification) ends it.
    async fn stored(&self, state: &Core, token: &[u8], from: Peer, is_notification: bool) -> Option<Awaited> {
        // Drover's tokens are 8 bytes; and a few lookups at a time, the rest ignored (a
        // device's confirmable answer comes again): made-up tokens cannot load the database.
        if token.len() != 8 {
            return None;
        }
        let Ok(_permit) = self.inner.stored_lookups.try_acquire() else {
            tracing::debug!(%from, "CoAP answer with a token not held here: lookups busy, ignored");
            return None;
        };
        let key = hex::encode(token);
        let row = match state.store.coap_exchange(&key).await {
            Ok(row) => row?,
            Err(e) => {
                tracing::warn!(%from, "CoAP answer not matched: the stored requests cannot be read: {e}");
                return None;
            }
        };
        if row.addr != from.addr.to_string() || row.secure != i64::from(from.secure) {
            return None;
        }
        let observe = row.observe == 1;
        if !(observe && is_notification) {
            forget_stored(state, &key).await;
        }
        Some(Awaited { device: row.device, path: row.path, operation_id: row.operation_id as u64, stored: true })
    }

    /// Retransmit unacknowledged requests; give up after MAX_RETRANSMIT and put the
    /// operation back in the queue. Drop registrations past their lifetime.
    pub(super) async fn retransmit(self, state: Core) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut sweeps: u32 = 0;
        loop {
            tick.tick().await;
            let now = Instant::now();
            let mut resend = Vec::new();
            let mut given_up = Vec::new();
            {
                let mut exchanges = self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner());
                exchanges.retain(|token, x| {
                    if x.acked || x.next_at > now {
                        return true;
                    }
                    if x.tries >= MAX_RETRANSMIT {
                        given_up.push((x.device, x.request.operation_id, hex::encode(token)));
                        return false;
                    }
                    x.tries += 1;
                    x.timeout *= 2;
                    x.next_at = now + x.timeout;
                    resend.push((x.bytes.clone(), x.addr));
                    true
                });
            }
            for (bytes, addr) in resend {
                self.send_bytes(&bytes, addr).await;
            }
            for (device, operation, token) in given_up {
                tracing::warn!(operation, "CoAP request never answered: the operation goes back to the queue");
                forget_stored(&state, &token).await;
                let note = serde_json::json!({"note": "the device did not answer the CoAP request"}).to_string();
                let _ = state
                    .store
                    .apply_results(device, &[(operation as i64, crate::ops::Reported::NotNow, Some(note))])
                    .await;
            }
            // One lock at a time (elsewhere `by_device` is taken before `registrations`).
            let wall = crate::store::now_ms();
            let expired: Vec<(String, Registration)> = {
                let mut regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
                let ids: Vec<String> = regs.iter().filter(|(_, r)| !r.live(wall)).map(|(k, _)| k.clone()).collect();
                ids.into_iter().filter_map(|id| regs.remove(&id).map(|r| (id, r))).collect()
            };
            for (id, r) in expired {
                self.forget(r.device, &id);
                // Ended in the database too, unless an update through another replica
                // kept it there (then this replica finds it again when it is needed).
                match state.store.end_expired_coap_registration(&id, wall).await {
                    Ok(true) => tracing::info!(device_id = %r.device_id, "LwM2M registration expired"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(device_id = %r.device_id, "an expired LwM2M registration stays stored: {e}")
                    }
                }
            }
            // Every 10 s is often enough to forget old message ids.
            sweeps += 1;
            if sweeps.is_multiple_of(40) {
                self.inner
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|_, s| now.duration_since(s.at) < s.lifetime);
            }
        }
    }
}
