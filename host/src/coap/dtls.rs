//! LwM2M over DTLS 1.2 with pre-shared keys (`--coaps-addr`; the LwM2M Security object's
//! PSK mode, RFC 7925's `TLS_PSK_WITH_AES_128_CCM_8`). An admin provisions a device's key
//! (`PUT /api/v1/devices/{type}/{id}/psk`); the identity a client presents in its
//! handshake names the device, and the registration interface then accepts that device's
//! endpoint only (docs/security.md, "LwM2M over DTLS").
//!
//! One UDP socket serves every peer: datagrams are routed by the peer's address to its
//! session, which webrtc-dtls drives (handshake with a cookie, records, replay window).
//! Drover does the routing itself, with bounds an attacker cannot push: at most
//! [`MAX_HANDSHAKES`] handshakes under way ([`MAX_HANDSHAKES_PER_IP`] per address), each
//! given up after [`HANDSHAKE_TIMEOUT`]; at most [`MAX_SESSIONS`] sessions, each ended
//! after a silence (its registration's lifetime, or [`UNREGISTERED_IDLE`] before it
//! registers); [`QUEUE`] datagrams queued per peer, the rest dropped as a network would.
//!
//! The handshake asks for a key from a synchronous callback, so keys are cached in memory
//! ([`Keys`]): all loaded at start and reloaded every [`RELOAD`] (keys replaced or revoked
//! on another replica); an identity not in the cache is looked up in the database then
//! and there (the handshake's task blocks its worker thread for that one query), and a
//! key given or revoked on this replica leaves the cache at once. Whether the key still
//! holds is asked of the database at each registration, update and de-registration,
//! never of the cache: a key revoked anywhere is refused there.

use super::*;
use crate::store::LiveKey;
use std::sync::RwLock;
use tokio::sync::mpsc;
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::{Config as DtlsConfig, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_util::conn::Conn;

/// A handshake not finished by then is given up (its slot freed).
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Handshakes under way at once; past it, new peers' ClientHellos are dropped.
pub(super) const MAX_HANDSHAKES: usize = 1024;
/// Handshakes under way at once from one IP address.
pub(super) const MAX_HANDSHAKES_PER_IP: usize = 8;
/// Established sessions at once.
pub(super) const MAX_SESSIONS: usize = 100_000;
/// Datagrams queued for one peer's session; more are dropped.
pub(super) const QUEUE: usize = 32;
/// A session that has not registered is ended after this much silence.
pub(super) const UNREGISTERED_IDLE: Duration = Duration::from_secs(300);
/// A registered session is ended after its registration's lifetime and this much more.
const IDLE_MARGIN: Duration = Duration::from_secs(120);
/// How often every key is loaded again.
pub(super) const RELOAD: Duration = Duration::from_secs(60);
/// Largest DTLS datagram read.
const MAX_RECORD: usize = 16 * 1024;
/// A session's buffer for what it decrypts: webrtc-dtls reads a peer's datagrams 8 KiB at
/// a time, so no record's data is longer. (Held per session: 64 KiB here would be most of
/// a session's memory.)
const SESSION_BUFFER: usize = 8 * 1024;

/// The keys by PSK identity, for the handshake's synchronous callback.
pub(super) struct Keys {
    by_identity: RwLock<HashMap<Vec<u8>, LiveKey>>,
    /// Where a key not in the cache is looked up (set when the listener runs).
    store: std::sync::OnceLock<crate::store::Store>,
    /// Identities asked for and not in the cache, when they cannot be looked up at once
    /// (a single-threaded runtime): looked up for the client's next attempt.
    wanted: mpsc::Sender<Vec<u8>>,
}

impl Keys {
    fn get(&self, identity: &[u8]) -> Option<LiveKey> {
        let found = self.by_identity.read().unwrap_or_else(|p| p.into_inner()).get(identity).cloned();
        found.or_else(|| self.look_up(identity))
    }

    /// A key not in the cache, from the database. The handshake's callback is synchronous:
    /// on the multi-threaded runtime its worker blocks for the query while the others run
    /// on; elsewhere the identity is queued for [`Coap::keep_keys`].
    fn look_up(&self, identity: &[u8]) -> Option<LiveKey> {
        let (Some(store), Ok(name)) = (self.store.get(), std::str::from_utf8(identity)) else { return None };
        let handle = tokio::runtime::Handle::try_current().ok()?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            // Full: a flood of unknown identities; the periodic reload still runs.
            let _ = self.wanted.try_send(identity.to_vec());
            return None;
        }
        let key = tokio::task::block_in_place(|| handle.block_on(store.live_psk(name)));
        match key {
            Ok(Some(key)) => {
                self.by_identity.write().unwrap_or_else(|p| p.into_inner()).insert(identity.to_vec(), key.clone());
                Some(key)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("cannot look up a pre-shared key: {e}");
                None
            }
        }
    }

    fn forget_device(&self, device: i64) {
        self.by_identity.write().unwrap_or_else(|p| p.into_inner()).retain(|_, k| k.device != device);
    }
}

/// An established session: the device its key authenticated.
pub(super) struct Session {
    conn: Arc<DTLSConn>,
    pub(super) device: i64,
    pub(super) identity: String,
}

/// Where a peer's datagrams go.
struct Route {
    tx: mpsc::Sender<Vec<u8>>,
    /// Set once the handshake finished.
    session: Option<Arc<Session>>,
    /// Which route this is (a peer's address may be used again by a new route).
    serial: u64,
}

/// Every peer's route, with the counts the bounds are checked against (kept as routes
/// come and go, so a new peer costs no scan of them all).
#[derive(Default)]
struct Routes {
    by_addr: HashMap<SocketAddr, Route>,
    handshakes_by_ip: HashMap<IpAddr, usize>,
    handshakes: usize,
    sessions: usize,
}

impl Routes {
    /// Whether a new peer at `addr` may start a handshake now.
    fn admits(&self, addr: SocketAddr) -> bool {
        self.handshakes < MAX_HANDSHAKES
            && self.sessions < MAX_SESSIONS
            && self.handshakes_by_ip.get(&addr.ip()).copied().unwrap_or(0) < MAX_HANDSHAKES_PER_IP
    }

    fn start(&mut self, addr: SocketAddr, route: Route) {
        *self.handshakes_by_ip.entry(addr.ip()).or_default() += 1;
        self.handshakes += 1;
        if let Some(old) = self.by_addr.insert(addr, route) {
            self.uncount(addr, &old);
        }
    }

    fn uncount(&mut self, addr: SocketAddr, route: &Route) {
        if route.session.is_some() {
            self.sessions -= 1;
        } else {
            self.handshake_ended(addr.ip());
        }
    }

    fn handshake_ended(&mut self, ip: IpAddr) {
        self.handshakes -= 1;
        if let Some(n) = self.handshakes_by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.handshakes_by_ip.remove(&ip);
            }
        }
    }

    /// The handshake of route `serial` at `addr` finished: it carries `session` now.
    /// `false`: that route is gone.
    fn establish(&mut self, addr: SocketAddr, serial: u64, session: Arc<Session>) -> bool {
        match self.by_addr.get_mut(&addr) {
            Some(r) if r.serial == serial && r.session.is_none() => r.session = Some(session),
            _ => return false,
        }
        self.handshake_ended(addr.ip());
        self.sessions += 1;
        true
    }

    fn remove(&mut self, addr: SocketAddr) -> Option<Route> {
        let route = self.by_addr.remove(&addr)?;
        self.uncount(addr, &route);
        Some(route)
    }
}

pub(super) struct Dtls {
    socket: Arc<UdpSocket>,
    routes: Mutex<Routes>,
    keys: Arc<Keys>,
    wanted: Mutex<Option<mpsc::Receiver<Vec<u8>>>>,
    serials: std::sync::atomic::AtomicU64,
}

impl Dtls {
    pub(super) async fn bind(addr: SocketAddr) -> anyhow::Result<Dtls> {
        // webrtc-dtls builds rustls parts with the process's default provider, which the
        // crate features cannot pick when more than one is linked: ring, as tls.rs uses.
        // (Already installed, by this or another server in the process: fine.)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let socket = UdpSocket::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen for CoAP over DTLS on {addr} (--coaps-addr): {e}; choose another address")
        })?;
        let (wanted, rx) = mpsc::channel(1024);
        Ok(Dtls {
            socket: Arc::new(socket),
            routes: Mutex::new(Routes::default()),
            keys: Arc::new(Keys {
                by_identity: RwLock::new(HashMap::new()),
                store: std::sync::OnceLock::new(),
                wanted,
            }),
            wanted: Mutex::new(Some(rx)),
            serials: Default::default(),
        })
    }

    pub(super) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn config(&self) -> DtlsConfig {
        let keys = self.keys.clone();
        DtlsConfig {
            cipher_suites: vec![
                CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
                CipherSuiteId::Tls_Psk_With_Aes_128_Ccm,
                CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
            ],
            psk: Some(Arc::new(move |identity: &[u8]| {
                keys.get(identity).map(|k| k.key).ok_or_else(|| {
                    webrtc_dtls::Error::Other(format!("unknown PSK identity `{}`", String::from_utf8_lossy(identity)))
                })
            })),
            // No identity hint: the server then sends no ServerKeyExchange (RFC 4279 §2);
            // the client says who it is.
            psk_identity_hint: None,
            extended_master_secret: ExtendedMasterSecretType::Request,
            ..Default::default()
        }
    }

    /// The session of the peer at `addr`, once its handshake finished.
    pub(super) fn session(&self, addr: SocketAddr) -> Option<Arc<Session>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).by_addr.get(&addr).and_then(|r| r.session.clone())
    }

    pub(super) async fn send(&self, bytes: &[u8], to: SocketAddr) -> Result<(), String> {
        let Some(session) = self.session(to) else { return Err("no DTLS session with that peer".into()) };
        session.conn.send(bytes).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// End every session of `device` (its credentials were revoked, its key replaced, or
    /// it was removed) and drop its keys from the cache.
    pub(super) async fn end_device(&self, device: i64) {
        self.keys.forget_device(device);
        let ended: Vec<Arc<Session>> = {
            let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            let addrs: Vec<SocketAddr> = routes
                .by_addr
                .iter()
                .filter(|(_, r)| r.session.as_ref().is_some_and(|s| s.device == device))
                .map(|(a, _)| *a)
                .collect();
            addrs.into_iter().filter_map(|a| routes.remove(a).and_then(|r| r.session)).collect()
        };
        for s in ended {
            tracing::info!(device, identity = %s.identity, "DTLS session ended: credentials changed or device removed");
            let _ = s.conn.close().await;
        }
    }

    fn drop_route(&self, addr: SocketAddr, serial: u64) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if routes.by_addr.get(&addr).is_some_and(|r| r.serial == serial) {
            routes.remove(addr);
        }
    }
}

/// A peer's datagrams as webrtc-dtls reads them: from its queue, written to its address.
struct PeerConn {
    socket: Arc<UdpSocket>,
    addr: SocketAddr,
    rx: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
}

type UtilResult<T> = Result<T, webrtc_util::Error>;

#[async_trait::async_trait]
impl Conn for PeerConn {
    async fn connect(&self, _addr: SocketAddr) -> UtilResult<()> {
        Err(webrtc_util::Error::Other("a server-side DTLS peer is connected already".into()))
    }

    async fn recv(&self, buf: &mut [u8]) -> UtilResult<usize> {
        let datagram = self.rx.lock().await.recv().await.ok_or(webrtc_util::Error::ErrClosedListener)?;
        let n = datagram.len().min(buf.len());
        buf[..n].copy_from_slice(&datagram[..n]);
        Ok(n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> UtilResult<(usize, SocketAddr)> {
        Ok((self.recv(buf).await?, self.addr))
    }

    async fn send(&self, buf: &[u8]) -> UtilResult<usize> {
        Ok(self.socket.send_to(buf, self.addr).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> UtilResult<usize> {
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> UtilResult<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.addr)
    }

    async fn close(&self) -> UtilResult<()> {
        self.rx.lock().await.close();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A DTLS record that starts a handshake: content type 22 (handshake), DTLS 1.0 or 1.2.
fn starts_handshake(datagram: &[u8]) -> bool {
    datagram.len() > 13 && datagram[0] == 22 && datagram[1] == 0xfe && matches!(datagram[2], 0xff | 0xfd)
}

/// A handshake record in epoch 0 (bytes 3-4 of the record header) carrying a ClientHello
/// (handshake type 1, the record's first body byte): a client starting a new session.
fn new_hello(datagram: &[u8]) -> bool {
    starts_handshake(datagram) && datagram[3] == 0 && datagram[4] == 0 && datagram[13] == 1
}

impl Coap {
    /// Receive DTLS datagrams, route them to their sessions, start handshakes, and keep
    /// the key cache fresh. Runs until the server stops.
    pub(super) async fn receive_secure(self, state: Core) {
        let Some(dtls) = self.inner.dtls.as_ref() else { return };
        if let Ok(addr) = dtls.local_addr() {
            tracing::info!(%addr, "CoAP over DTLS listening");
        }
        let _ = dtls.keys.store.set(state.store.clone());
        let wanted = dtls.wanted.lock().unwrap_or_else(|p| p.into_inner()).take();
        tokio::join!(self.clone().keep_keys(state.clone(), wanted), self.route(state));
    }

    async fn keep_keys(self, state: Core, wanted: Option<mpsc::Receiver<Vec<u8>>>) {
        let Some(dtls) = self.inner.dtls.as_ref() else { return };
        let Some(mut wanted) = wanted else { return };
        let mut reload = tokio::time::interval(RELOAD);
        loop {
            tokio::select! {
                _ = reload.tick() => match state.store.live_psks().await {
                    Ok(all) => {
                        let map = all.into_iter().map(|(i, k)| (i.into_bytes(), k)).collect();
                        *dtls.keys.by_identity.write().unwrap_or_else(|p| p.into_inner()) = map;
                    }
                    Err(e) => tracing::warn!("cannot load the LwM2M pre-shared keys: {e}"),
                },
                Some(identity) = wanted.recv() => {
                    let Ok(name) = String::from_utf8(identity.clone()) else { continue };
                    match state.store.live_psk(&name).await {
                        Ok(Some(key)) => {
                            dtls.keys.by_identity.write().unwrap_or_else(|p| p.into_inner()).insert(identity, key);
                        }
                        Ok(None) => tracing::debug!(identity = %name, "DTLS handshake with an unknown PSK identity"),
                        Err(e) => tracing::warn!("cannot look up a pre-shared key: {e}"),
                    }
                }
            }
        }
    }

    async fn route(self, state: Core) {
        let Some(dtls) = self.inner.dtls.as_ref() else { return };
        let mut buf = vec![0u8; MAX_RECORD];
        loop {
            let (n, from) = match dtls.socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("DTLS receive failed: {e}");
                    continue;
                }
            };
            let datagram = buf[..n].to_vec();
            let (rx, serial) = {
                let mut routes = dtls.routes.lock().unwrap_or_else(|p| p.into_inner());
                // A ClientHello in epoch 0 on an established session: the client lost its
                // session (a reboot behind a NAT that kept its port) and starts again.
                // RFC 6347 §4.2.8 would keep the old association until the new handshake
                // proves the client reachable; webrtc-dtls cannot run two at one address,
                // so the old one ends now (a spoofer of the exact address and port can
                // make the device shake hands again; it learns and changes nothing).
                let restarts = routes.by_addr.get(&from).is_some_and(|r| r.session.is_some()) && new_hello(&datagram);
                if let Some(r) = routes.by_addr.get(&from).filter(|_| !restarts) {
                    // A full queue: the datagram is lost, as on a congested network.
                    let _ = r.tx.try_send(datagram);
                    continue;
                }
                if !starts_handshake(&datagram) {
                    continue;
                }
                if !routes.admits(from) {
                    tracing::debug!(%from, "DTLS handshake dropped: too many under way");
                    continue;
                }
                let (tx, rx) = mpsc::channel(QUEUE);
                let _ = tx.try_send(datagram);
                let serial = dtls.serials.fetch_add(1, Ordering::Relaxed);
                routes.start(from, Route { tx, session: None, serial });
                (rx, serial)
            };
            let (coap, state) = (self.clone(), state.clone());
            tokio::spawn(async move { coap.session(state, from, rx, serial).await });
        }
    }

    /// One peer: the handshake, then its CoAP messages until it goes silent or is ended.
    async fn session(self, state: Core, from: SocketAddr, rx: mpsc::Receiver<Vec<u8>>, serial: u64) {
        let Some(dtls) = self.inner.dtls.as_ref() else { return };
        let conn = PeerConn { socket: dtls.socket.clone(), addr: from, rx: tokio::sync::Mutex::new(rx) };
        let handshake = DTLSConn::new(Arc::new(conn), dtls.config(), false, None);
        let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(c)) => Arc::new(c),
            Ok(Err(e)) => {
                tracing::info!(%from, "DTLS handshake failed: {e}");
                dtls.drop_route(from, serial);
                return;
            }
            Err(_) => {
                tracing::debug!(%from, "DTLS handshake timed out");
                dtls.drop_route(from, serial);
                return;
            }
        };
        let identity = String::from_utf8_lossy(&conn.connection_state().await.identity_hint).into_owned();
        let Some(key) =
            dtls.keys.by_identity.read().unwrap_or_else(|p| p.into_inner()).get(identity.as_bytes()).cloned()
        else {
            // Replaced or revoked in the moment since the handshake asked for it.
            let _ = conn.close().await;
            dtls.drop_route(from, serial);
            return;
        };
        let session = Arc::new(Session { conn: conn.clone(), device: key.device, identity: identity.clone() });
        let established = dtls.routes.lock().unwrap_or_else(|p| p.into_inner()).establish(from, serial, session);
        if !established {
            // Ended meanwhile (the device's credentials were revoked).
            let _ = conn.close().await;
            return;
        }
        tracing::info!(%from, identity, device = key.device, "DTLS session established");
        let peer = Peer { addr: from, secure: true };
        let mut buf = vec![0u8; SESSION_BUFFER];
        loop {
            let idle = self
                .registration_of(key.device)
                .filter(|r| r.addr == peer)
                .map_or(UNREGISTERED_IDLE, |r| r.lifetime + IDLE_MARGIN);
            let n = match tokio::time::timeout(idle, conn.recv(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    tracing::debug!(%from, "DTLS session ended: {e}");
                    break;
                }
                Err(_) => {
                    tracing::debug!(%from, "DTLS session ended after a silence");
                    break;
                }
            };
            let packet = match Packet::from_bytes(&buf[..n]) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(%from, "not a CoAP message: {e}");
                    continue;
                }
            };
            if self.duplicate(&packet, peer).await {
                continue;
            }
            let (coap, state) = (self.clone(), state.clone());
            tokio::spawn(async move { coap.datagram(&state, packet, peer).await });
        }
        let _ = conn.close().await;
        dtls.drop_route(from, serial);
    }

    /// The device a secure peer's key authenticated, and that key's identity.
    pub(super) fn authenticated(&self, peer: Peer) -> Option<Arc<Session>> {
        if !peer.secure {
            return None;
        }
        self.inner.dtls.as_ref()?.session(peer.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dtls_handshake_record_opens_a_route() {
        let mut hello = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40];
        hello.extend([1u8; 40]);
        assert!(starts_handshake(&hello));
        let mut application = hello.clone();
        application[0] = 23;
        assert!(!starts_handshake(&application));
        let mut tls = hello.clone();
        tls[1] = 3;
        assert!(!starts_handshake(&tls));
        assert!(!starts_handshake(&hello[..10]));
        // A CoAP message sent to the DTLS port by mistake is not a handshake either.
        assert!(!starts_handshake(&[0x40, 0x02, 0x12, 0x34, 0xb2, b'r', b'd']));
        // A ClientHello in epoch 0 starts a new session; a Finished in epoch 1 does not.
        let mut client_hello = hello.clone();
        client_hello[13] = 1;
        assert!(new_hello(&client_hello));
        let mut finished = client_hello.clone();
        finished[4] = 1;
        finished[13] = 20;
        assert!(!new_hello(&finished) && starts_handshake(&finished));
    }

    #[test]
    fn handshakes_are_bounded_per_address_and_freed_when_they_end() {
        let mut routes = Routes::default();
        let peer = |last: u8, port: u16| SocketAddr::from(([10, 0, 0, last], port));
        let route = |serial| Route { tx: mpsc::channel(1).0, session: None, serial };
        for port in 0..MAX_HANDSHAKES_PER_IP as u16 {
            assert!(routes.admits(peer(1, port)));
            routes.start(peer(1, port), route(u64::from(port)));
        }
        assert!(!routes.admits(peer(1, 999)), "one address holds at most {MAX_HANDSHAKES_PER_IP}");
        assert!(routes.admits(peer(2, 1)), "another address is not held back");
        routes.remove(peer(1, 0));
        assert!(routes.admits(peer(1, 999)), "an ended handshake frees its slot");
        // A new route at a known address replaces the old one, counted once.
        routes.start(peer(1, 1), route(100));
        assert_eq!((routes.handshakes, routes.handshakes_by_ip[&peer(1, 0).ip()]), (7, 7));
        for port in 1..MAX_HANDSHAKES_PER_IP as u16 {
            routes.remove(peer(1, port));
        }
        assert_eq!(routes.handshakes, 0);
        assert!(routes.handshakes_by_ip.is_empty());
    }
}
