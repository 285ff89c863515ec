//! TLS for the listeners Drover owns: the HTTP listener and the embedded MQTT broker.
//!
//! One certificate serves both (rustls, with the ring provider reqwest already brings).
//! It comes from one of two places ([`Source`]):
//!
//! * files an operator names (`--tls-cert`, `--tls-key`): a PEM chain and its key. They
//!   are read again when they change, without a restart: a watcher compares their
//!   modification time and length every [`RELOAD_TICK`] and swaps the served certificate
//!   once the new pair loads and matches. A half-written pair (a renewal tool writing the
//!   two files one after the other) is retried at the next tick; the old certificate is
//!   served until then. Polling rather than inotify: certificates are often symlinks
//!   swapped under a mounted secret (Kubernetes), which file-change events miss.
//! * a development certificate made on first start in `DATA_DIR/tls/` for `localhost`,
//!   the loopback addresses and the public URL's host, valid 397 days and made again
//!   when fewer than 30 are left. Its SHA-256 fingerprint is logged, so a client can pin
//!   it; `curl --cacert DATA_DIR/tls/cert.pem` trusts it.
//!
//! Plaintext is `--plaintext true`, for local development only (docs/security.md).
//!
//! A handshake must finish within the listener's timeout for a request head (HTTP) or a
//! CONNECT (MQTT); it runs in the connection's own task, so a client that opens a socket
//! and sends nothing holds one connection slot for that long, never the accept loop.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How often the certificate files are checked for a change.
pub const RELOAD_TICK: Duration = Duration::from_secs(2);

/// Days a development certificate is valid (the most browsers accept), and how many must
/// be left for it to be used again at a start.
const DEV_DAYS: i64 = 397;
const DEV_RENEW_DAYS: i64 = 30;

/// Where the served certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// No TLS (`--plaintext true`).
    Off,
    /// Made on first start in `DATA_DIR/tls/`.
    Generated,
    /// An operator's PEM files, reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
}

/// A byte stream a front can serve: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The served certificate and what listeners need to accept TLS with it.
pub struct Tls {
    served: Arc<Served>,
    http: tokio_rustls::TlsAcceptor,
    mqtt: tokio_rustls::TlsAcceptor,
    /// The files to watch (`None` for a development certificate).
    files: Option<(PathBuf, PathBuf)>,
}

/// The certificate handed to every handshake, swapped in place on reload.
#[derive(Debug)]
struct Served(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Served {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// TLS as the configuration says, or `None` for plaintext. `names`: the host names and
    /// addresses a development certificate must be valid for besides loopback. `devices`:
    /// the device CA; a client may present a certificate chaining to it (mTLS, checked by
    /// webpki: chain, validity, client-auth usage) or none (bearer tokens, admins).
    pub fn load(
        source: &Source,
        data_dir: &Path,
        names: &[String],
        devices: Option<&CertificateDer<'static>>,
    ) -> anyhow::Result<Option<Arc<Tls>>> {
        let (cert, key, files) = match source {
            Source::Off => return Ok(None),
            Source::Files { cert, key } => (cert.clone(), key.clone(), Some((cert.clone(), key.clone()))),
            Source::Generated => {
                let (cert, key) = development_certificate(&data_dir.join("tls"), names)?;
                (cert, key, None)
            }
        };
        let certified = load_pair(&cert, &key)?;
        let fingerprint = fingerprint(&certified.cert[0]);
        match &files {
            Some(_) => tracing::info!(cert = %cert.display(), sha256 = %fingerprint, "TLS certificate loaded"),
            None => tracing::info!(
                cert = %cert.display(),
                sha256 = %fingerprint,
                "TLS with a development certificate made by Drover: clients trust it with `curl --cacert {}`; \
                 give --tls-cert and --tls-key for one of your own",
                cert.display()
            ),
        }
        let served = Arc::new(Served(RwLock::new(Arc::new(certified))));
        let clients = match devices {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.clone()).context("the device CA certificate")?;
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .allow_unauthenticated()
                    .build()
                    .context("client certificate verifier")?
            }
            None => rustls::server::WebPkiClientVerifier::no_client_auth(),
        };
        let config = |alpn: &[&[u8]]| -> anyhow::Result<tokio_rustls::TlsAcceptor> {
            let mut c = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(clients.clone())
                .with_cert_resolver(served.clone());
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(tokio_rustls::TlsAcceptor::from(Arc::new(c)))
        };
        // The HTTP listener speaks HTTP/1.1 only; saying so lets a client that offers h2
        // first settle on it rather than guess.
        let http = config(&[b"http/1.1"])?;
        let mqtt = config(&[])?;
        Ok(Some(Arc::new(Tls { served, http, mqtt, files })))
    }

    /// The SHA-256 fingerprint of the certificate served now (hex, colon-separated, as
    /// `openssl x509 -fingerprint -sha256` prints it).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.current().cert[0])
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.served.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Complete a handshake on an accepted HTTP connection within `timeout`.
    pub async fn accept_http(&self, stream: TcpStream, timeout: Duration) -> std::io::Result<Accepted> {
        handshake(&self.http, stream, timeout).await
    }

    /// Complete a handshake on an accepted MQTT connection within `timeout`.
    pub async fn accept_mqtt(&self, stream: TcpStream, timeout: Duration) -> std::io::Result<Accepted> {
        handshake(&self.mqtt, stream, timeout).await
    }

    /// A client configuration that trusts exactly the certificate served now, for
    /// Drover's own MQTT clients connecting to its embedded broker on loopback.
    pub fn self_client(self: &Arc<Self>) -> Arc<rustls::ClientConfig> {
        let verifier = Arc::new(Itself { tls: self.clone(), provider: provider() });
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
        )
    }

    /// Watch the certificate files and serve a new pair once it loads (files only; a
    /// development certificate does not change while the server runs).
    pub fn spawn_reload(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let (cert, key) = self.files.clone()?;
        let tls = self.clone();
        Some(tokio::spawn(async move {
            let mut seen = (stamp(&cert), stamp(&key));
            // The files as they were when they last failed to load: tried again (and
            // warned about again) only once one of them changes, not every tick.
            let mut failed = None;
            let mut tick = tokio::time::interval(RELOAD_TICK);
            loop {
                tick.tick().await;
                let now = (stamp(&cert), stamp(&key));
                if now == seen || failed.as_ref() == Some(&now) {
                    continue;
                }
                match load_pair(&cert, &key) {
                    Ok(pair) => {
                        let fingerprint = fingerprint(&pair.cert[0]);
                        *tls.served.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
                        seen = now;
                        failed = None;
                        tracing::info!(cert = %cert.display(), sha256 = %fingerprint, "TLS certificate reloaded");
                    }
                    // Kept unseen: tried again when a file changes, as a renewal may be
                    // writing the second file still.
                    Err(e) => {
                        tracing::warn!("TLS certificate changed but does not load (the old one is served): {e:#}");
                        failed = Some(now);
                    }
                }
            }
        }))
    }
}

/// A connection after its handshake.
pub struct Accepted {
    pub stream: Box<dyn Io>,
    /// The device credential of the client certificate it presented (verified against the
    /// device CA): `identity::credential_of` it.
    pub client: Option<ClientCertificate>,
}

/// The device credential of a verified client certificate, carried with each request of
/// its connection.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub String);

/// The client certificate a trusted proxy forwarded: RFC 9440's `Client-Cert` (the DER as
/// a structured-field byte sequence, `:BASE64:`), or nginx's `X-SSL-Client-Cert`
/// (`$ssl_client_escaped_cert`: the PEM, URL-escaped). Only a certificate Drover issued
/// maps to a device (its exact DER is a credential), so the proxy's word is taken only for
/// which of them the client proved it holds.
pub fn forwarded_certificate(headers: &axum::http::HeaderMap) -> Option<ClientCertificate> {
    use base64::Engine;
    if let Some(v) = headers.get("client-cert").and_then(|v| v.to_str().ok()) {
        let b64 = v.trim().strip_prefix(':')?.strip_suffix(':')?;
        let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        return Some(ClientCertificate(crate::identity::credential_of(&der)));
    }
    let escaped = headers.get("x-ssl-client-cert").and_then(|v| v.to_str().ok())?;
    let pem = percent_encoding::percent_decode_str(escaped).decode_utf8().ok()?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(ClientCertificate(crate::identity::credential_of(&der)))
}

async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> std::io::Result<Accepted> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            let client = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| ClientCertificate(crate::identity::credential_of(c)));
            Ok(Accepted { stream: Box::new(s), client })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake not completed in time")),
    }
}

/// A file's modification time and length (`None` when it cannot be read).
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = sha2::Sha256::digest(cert.as_ref());
    digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// A PEM chain and its private key, checked to belong together.
fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("--tls-cert {}: cannot read", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--tls-cert {}: not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "--tls-cert {}: no CERTIFICATE block in it", cert.display());
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)", key.display()))?;
    let pair = CertifiedKey::from_der(chain, key_der, &provider())
        .with_context(|| format!("--tls-cert {} with --tls-key {}", cert.display(), key.display()))?;
    Ok(pair)
}

/// The development certificate in `dir`, made (or made again) when missing, near its
/// end, or not valid for every name in `names`.
fn development_certificate(dir: &Path, names: &[String]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key, list) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("names"));
    let mut wanted = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    for n in names {
        if !wanted.contains(n) {
            wanted.push(n.clone());
        }
    }
    let renew_after = SystemTime::now() - Duration::from_secs(((DEV_DAYS - DEV_RENEW_DAYS) * 86_400) as u64);
    let fresh = stamp(&cert).is_some_and(|(made, _)| made > renew_after)
        && key.exists()
        && std::fs::read_to_string(&list).is_ok_and(|l| l == wanted.join("\n"));
    if fresh {
        return Ok((cert, key));
    }
    crate::files::private_dir(dir)?;
    let mut params = rcgen::CertificateParams::new(wanted.clone())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Drover development certificate");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(DEV_DAYS);
    let signing = rcgen::KeyPair::generate()?;
    let made = params.self_signed(&signing)?;
    // Written aside and renamed over the old pair: never a key without its certificate.
    let (new_key, new_cert) = (dir.join("key.pem.new"), dir.join("cert.pem.new"));
    let _ = std::fs::remove_file(&new_key);
    crate::files::write_private(&new_key, signing.serialize_pem().as_bytes())?;
    std::fs::write(&new_cert, made.pem()).with_context(|| format!("cannot write {}", new_cert.display()))?;
    std::fs::rename(&new_key, &key)?;
    std::fs::rename(&new_cert, &cert)?;
    std::fs::write(&list, wanted.join("\n")).with_context(|| format!("cannot write {}", list.display()))?;
    tracing::info!(cert = %cert.display(), names = %wanted.join(", "), "development TLS certificate made");
    Ok((cert, key))
}

/// Trusts the one certificate this server serves at the moment of the handshake, and
/// checks the handshake's signatures as usual.
#[derive(Debug)]
struct Itself {
    tls: Arc<Tls>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl rustls::client::danger::ServerCertVerifier for Itself {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.tls.current().cert[0].as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration for an external broker at `mqtts://`: Mozilla's roots, or
/// only the CA in `ca` (`--broker-ca`).
pub fn broker_client(ca: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for c in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("--broker-ca {}: cannot read", path.display()))?
            {
                roots
                    .add(c.with_context(|| format!("--broker-ca {}: not a PEM certificate", path.display()))?)
                    .with_context(|| format!("--broker-ca {}", path.display()))?;
            }
            anyhow::ensure!(!roots.is_empty(), "--broker-ca {}: no CERTIFICATE block in it", path.display());
        }
        // The same roots reqwest trusts for provider requests (Mozilla's, built in).
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_development_certificate_is_made_once_and_names_what_it_serves() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["mdm.example.com".to_string()];
        let tls = Tls::load(&Source::Generated, dir.path(), &names, None).unwrap().unwrap();
        let first = tls.fingerprint();
        // Reused at the next start.
        let again = Tls::load(&Source::Generated, dir.path(), &names, None).unwrap().unwrap();
        assert_eq!(again.fingerprint(), first);
        // Made again for a new name.
        let other = Tls::load(&Source::Generated, dir.path(), &["10.0.0.7".to_string()], None).unwrap().unwrap();
        assert_ne!(other.fingerprint(), first);
        assert!(Tls::load(&Source::Off, dir.path(), &[], None).unwrap().is_none());
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let (cert, _) = development_certificate(&a, &[]).unwrap();
        let (_, key) = development_certificate(&b, &[]).unwrap();
        let e = Tls::load(&Source::Files { cert, key }, dir.path(), &[], None).unwrap_err();
        assert!(format!("{e:#}").contains("--tls-key"), "{e:#}");
    }
}
