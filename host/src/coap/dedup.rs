//! Deduplication (RFC 7252 §4.5): a confirmable message that arrives again from the same
//! endpoint with the same message id is answered with the bytes of the first answer, not
//! handled again; and sending, which remembers those answers.

use super::*;

/// How long a peer's confirmable message id is remembered for deduplication: RFC 7252's
/// EXCHANGE_LIFETIME, the longest a retransmission of it can arrive.
pub(super) const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);

/// The same for a non-confirmable message id: RFC 7252's NON_LIFETIME. A peer may use the
/// id again after it, so it must not be remembered longer.
pub(super) const NON_LIFETIME: Duration = Duration::from_secs(145);

/// At most this many message ids are remembered; past it (a flood of datagrams from
/// ever-new addresses) new ones are handled without deduplication rather than growing
/// memory without bound.
pub(super) const MAX_SEEN: usize = 200_000;

/// A message received from a peer, and what Drover answered (`None` while it is still
/// being handled, or for a non-confirmable message, which gets no ACK: a duplicate then
/// gets nothing).
pub(super) struct Seen {
    pub(super) at: Instant,
    /// How long its id is remembered: [`EXCHANGE_LIFETIME`] or [`NON_LIFETIME`].
    pub(super) lifetime: Duration,
    pub(super) answer: Option<Vec<u8>>,
}

impl Coap {
    /// Whether `packet` is a request or response already received from `from` (RFC 7252
    /// §4.5). A confirmable one gets the answer given to it then, again; a non-confirmable
    /// one is silently ignored. A new one is remembered as seen.
    pub(super) async fn duplicate(&self, packet: &Packet, from: Peer) -> bool {
        let lifetime = match packet.header.get_type() {
            MessageType::Confirmable => EXCHANGE_LIFETIME,
            MessageType::NonConfirmable => NON_LIFETIME,
            _ => return false,
        };
        if !matches!(packet.header.code, MessageClass::Request(_) | MessageClass::Response(_)) {
            return false;
        }
        let key = (from, packet.header.message_id);
        let now = Instant::now();
        let again = {
            let mut seen = self.inner.seen.lock().unwrap_or_else(|p| p.into_inner());
            match seen.get(&key) {
                // Past its lifetime (not swept yet) the id may be in use again: a new message.
                Some(s) if now.duration_since(s.at) < s.lifetime => Some(s.answer.clone()),
                _ => {
                    if seen.len() < MAX_SEEN || seen.contains_key(&key) {
                        seen.insert(key, Seen { at: now, lifetime, answer: None });
                    }
                    None
                }
            }
        };
        let Some(answer) = again else { return false };
        tracing::debug!(%from, message_id = key.1, "duplicate CoAP message: answered as before");
        if let Some(bytes) = answer {
            self.send_bytes(&bytes, from).await;
        }
        true
    }

    pub(super) async fn send(&self, packet: &Packet, to: Peer) {
        match packet.to_bytes() {
            Ok(bytes) => {
                // An ACK or RST carries the id of the peer's confirmable message it answers:
                // kept, a retransmission of that message gets these same bytes.
                if matches!(packet.header.get_type(), MessageType::Acknowledgement | MessageType::Reset)
                    && let Some(s) = self
                        .inner
                        .seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&(to, packet.header.message_id))
                {
                    s.answer = Some(bytes.clone());
                }
                self.send_bytes(&bytes, to).await;
            }
            Err(e) => tracing::warn!("CoAP message not encodable: {e:?}"),
        }
    }

    /// Send a datagram to a peer: on the plain socket, or through its DTLS session.
    pub(super) async fn send_bytes(&self, bytes: &[u8], to: Peer) {
        let sent = if to.secure {
            match self.inner.dtls.as_ref() {
                Some(d) => d.send(bytes, to.addr).await,
                None => Err("DTLS is not served".into()),
            }
        } else {
            self.inner.socket.send_to(bytes, to.addr).await.map(|_| ()).map_err(|e| e.to_string())
        };
        if let Err(e) = sent {
            tracing::warn!(%to, "CoAP send failed: {e}");
        }
    }
}
