//! What the `filesystem` and `network` grants give a plugin: the WASI context of its calls.
//!
//! Every other WASI interface is inert in a plugin store (capability.rs). These two reach
//! outside, so each gives as little as is useful (docs/plugin-platform.md, "Filesystem and
//! network"):
//!
//! * **filesystem**: one directory, `<data-dir>/plugin-files/<plugin>/`, seen by the guest
//!   as `/files`, **read-only**. An admin puts reference data there (model tables, a CA
//!   bundle, a firmware index). Not writable: a replica's directory is its own, so state
//!   written there would differ between replicas and be lost with a machine, and nothing
//!   would bound its size. State a plugin keeps goes to its kv store, which is in the
//!   database, shared and under a quota.
//! * **network**: outbound TCP connections and UDP datagrams to the hosts an admin granted
//!   the plugin in its settings (`granted_hosts`, within the manifest's `outbound_hosts`),
//!   on any port, and name lookups. Never a listening socket, never an accepted
//!   connection, never a bind to a chosen address. A host named by a pattern (`*.domain`)
//!   gives no socket access (no address can be checked against a pattern): name hosts.
//!   The check runs on the address the guest connects to, against what the host's own
//!   resolver answers for each granted name at that moment.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx};

/// The directory a `filesystem` grant shows the guest, and where it is seen.
pub const GUEST_FILES: &str = "/files";

/// The hosts a plugin's sockets may reach, changed live by its settings.
pub type PluginHosts = RwLock<Vec<String>>;

/// What one plugin version's calls may reach, fixed at load from its grants.
#[derive(Default, Clone)]
pub struct Reach {
    /// The host directory shown read-only as `/files` (the `filesystem` grant).
    pub files: Option<PathBuf>,
    /// The granted hosts (the `network` grant).
    pub network: Option<Arc<PluginHosts>>,
}

impl Reach {
    /// The WASI context of one call: the inert default, plus what the grants give.
    pub fn wasi(&self, plugin: &str) -> WasiCtx {
        let mut builder = WasiCtx::builder();
        if let Some(dir) = &self.files {
            // A directory an admin removed gives the guest nothing, not a failed call.
            if let Err(e) = builder.preopened_dir(dir, GUEST_FILES, FsPerms::ReadOnly) {
                tracing::warn!(target: "plugin", plugin, dir = %dir.display(), "plugin files directory: {e:#}");
            }
        }
        if let Some(hosts) = &self.network {
            let hosts = hosts.clone();
            builder.allow_tcp(true).allow_udp(true).allow_ip_name_lookup(true).socket_addr_check(move |addr, usage| {
                let granted = hosts.read().unwrap_or_else(|p| p.into_inner()).clone();
                Box::pin(socket_allowed(granted, addr, usage))
            });
        }
        builder.build()
    }
}

/// Whether a plugin granted `hosts` may use `addr` for `usage`.
pub async fn socket_allowed(hosts: Vec<String>, addr: SocketAddr, usage: SocketAddrUse) -> bool {
    match usage {
        // The implicit bind of an outbound socket (and `bind` to any address, port 0): the
        // system picks the local end. A chosen address or port is for serving: refused.
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => addr.ip().is_unspecified() && addr.port() == 0,
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
        // A datagram from anywhere else is dropped before the guest sees it.
        SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
            let wanted = addr.ip().to_canonical();
            for host in hosts {
                if host_has(&host, wanted).await {
                    return true;
                }
            }
            tracing::warn!(target: "plugin", %addr, ?usage, "socket refused: not a granted host's address");
            false
        }
    }
}

/// Whether granted `host` (a name or an address literal) is, or resolves to, `ip`.
async fn host_has(host: &str, ip: IpAddr) -> bool {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(granted) = literal.parse::<IpAddr>() {
        return granted.to_canonical() == ip;
    }
    if host.contains('*') {
        return false;
    }
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host, 0))).await {
        Ok(Ok(addrs)) => addrs.into_iter().any(|a| a.ip().to_canonical() == ip),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn only_granted_hosts_and_no_serving() {
        let granted = vec!["127.0.0.1".to_string(), "*.example.com".to_string()];
        let ok = |a: &str, u| socket_allowed(granted.clone(), addr(a), u);
        assert!(ok("127.0.0.1:9", SocketAddrUse::TcpConnect).await);
        assert!(ok("[::ffff:127.0.0.1]:9", SocketAddrUse::UdpSend).await, "a mapped address is the same host");
        assert!(!ok("127.0.0.2:9", SocketAddrUse::TcpConnect).await);
        assert!(!ok("10.0.0.1:9", SocketAddrUse::UdpSend).await);
        assert!(!ok("10.0.0.1:9", SocketAddrUse::UdpReceive).await, "a datagram from elsewhere is dropped");
        assert!(ok("0.0.0.0:0", SocketAddrUse::TcpBind).await, "the implicit bind of a connect");
        assert!(!ok("0.0.0.0:8080", SocketAddrUse::TcpBind).await);
        assert!(!ok("127.0.0.1:0", SocketAddrUse::UdpBind).await);
        assert!(!ok("0.0.0.0:0", SocketAddrUse::TcpListen).await);
        assert!(!ok("127.0.0.1:9", SocketAddrUse::TcpAccept).await);
        assert!(!socket_allowed(vec![], addr("127.0.0.1:9"), SocketAddrUse::TcpConnect).await);
        assert!(socket_allowed(vec!["localhost".into()], addr("127.0.0.1:9"), SocketAddrUse::TcpConnect).await);
    }
}
