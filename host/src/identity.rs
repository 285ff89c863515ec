//! Device identity certificates: a CA that signs a device's own key, from a CSR.
//!
//! A device makes its key pair and a certificate signing request (openssl, a TPM, a
//! secure element); Drover signs it with the device CA for the identity the request was
//! authenticated as, never for the names the CSR asks for: the subject is rewritten to
//! `CN={device id}, OU={device type}` with the SAN `urn:drover:device:{type}:{id}`, for
//! client authentication only, valid `--device-cert-days`.
//!
//! An issued certificate is a credential of its device like an access token: a row of
//! `device_credentials` keyed by [`credential_of`] the certificate, expiring with it. So
//! the poll path finds the device from the certificate in one read as it does from a
//! token, the broker's gate admits it, and revoking a device's credentials revokes its
//! certificates and ends its sessions. Presented over mTLS (the listeners ask for a client
//! certificate and accept a connection without one), it replaces the bearer token.
//!
//! The CA is the operator's (`--device-ca-cert`, `--device-ca-key`) or made on first start
//! and kept in the database with its key sealed by the secret key, so every replica signs
//! and checks with the same one.

use crate::store::Store;
use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::Digest;
use std::path::PathBuf;

/// Largest CSR accepted (a 4096-bit RSA request is about 1.7 KiB in PEM).
pub const MAX_CSR: usize = 16 << 10;

/// Years a CA made by Drover is valid.
const CA_YEARS: i64 = 10;

/// The CA that signs device certificates.
pub struct DeviceCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    days: i64,
}

impl std::fmt::Debug for DeviceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCa").field("days", &self.days).finish_non_exhaustive()
    }
}

/// A certificate just signed for a device.
pub struct Issued {
    /// The certificate, then the CA's: what the device installs.
    pub chain_pem: String,
    /// The device's certificate alone (DER).
    pub cert_der: Vec<u8>,
    pub serial: String,
    /// The device credential it is (`device_credentials.token_hash`).
    pub credential: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// Why a CSR is refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the body is not a certificate signing request (PEM `CERTIFICATE REQUEST` or DER PKCS#10): {0}")]
    Unreadable(String),
    #[error("the request asks for CN `{asked}`, but it is authenticated as device `{device}`")]
    OtherDevice { asked: String, device: String },
}

/// The device credential a certificate is: `cert:` and the SHA-256 of its DER, in hex. A
/// token's hash is bare hex, so the two never meet.
pub fn credential_of(cert: &[u8]) -> String {
    format!("cert:{}", hex::encode(sha2::Sha256::digest(cert)))
}

/// A parsed, signature-checked CSR and the device id its CN asks for, if any.
pub struct Csr {
    params: rcgen::CertificateSigningRequestParams,
    pub common_name: Option<String>,
}

impl Csr {
    /// Parse `body` (PEM or DER). rcgen checks the request's self-signature: whoever sent
    /// it holds the private key.
    pub fn parse(body: &[u8]) -> Result<Csr, CsrError> {
        let params = match std::str::from_utf8(body) {
            Ok(text) if text.contains("-----BEGIN") => rcgen::CertificateSigningRequestParams::from_pem(text),
            _ => rcgen::CertificateSigningRequestParams::from_der(&body.to_vec().into()),
        }
        .map_err(|e| CsrError::Unreadable(e.to_string()))?;
        let common_name = params.params.distinguished_name.get(&rcgen::DnType::CommonName).and_then(|v| match v {
            rcgen::DnValue::Utf8String(s) => Some(s.clone()),
            rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_string()),
            rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_string()),
            _ => None,
        });
        Ok(Csr { params, common_name })
    }

    /// Refuse a request whose CN names another device than `device_id`.
    pub fn for_device(&self, device_type: &str, device_id: &str) -> Result<(), CsrError> {
        match &self.common_name {
            Some(cn) if cn != device_id => {
                Err(CsrError::OtherDevice { asked: cn.clone(), device: format!("{device_type}/{device_id}") })
            }
            _ => Ok(()),
        }
    }
}

impl DeviceCa {
    /// The operator's CA from `files`, or the one in the database (made and kept there on
    /// the first start of the first replica).
    pub async fn load(store: &Store, files: Option<&(PathBuf, PathBuf)>, days: u32) -> anyhow::Result<DeviceCa> {
        let (cert_pem, key_pem) = match files {
            Some((cert, key)) => (
                std::fs::read_to_string(cert).with_context(|| format!("--device-ca-cert {}", cert.display()))?,
                std::fs::read_to_string(key).with_context(|| format!("--device-ca-key {}", key.display()))?,
            ),
            None => match store.device_ca().await? {
                Some(pair) => pair,
                None => {
                    let (cert, key) = make_ca()?;
                    store.insert_device_ca(&cert, &key).await?;
                    // Another replica may have kept its own first: use what is stored.
                    store.device_ca().await?.context("the device CA was stored but cannot be read back")?
                }
            },
        };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("the device CA certificate is not PEM: {e}"))?;
        let key = rcgen::KeyPair::from_pem(&key_pem).context("the device CA key is not a PEM private key")?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&cert_pem, key).context("the device CA certificate")?;
        Ok(DeviceCa { cert_der, cert_pem, issuer, days: i64::from(days.max(1)) })
    }

    /// The CA certificate (DER), which the listeners trust for client certificates.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate (PEM), for devices and admins.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Sign `csr`'s key for device `{device_type}/{device_id}`.
    pub fn issue(&self, csr: &Csr, device_type: &str, device_id: &str) -> anyhow::Result<Issued> {
        self.sign(csr, device_type, device_id, format!("urn:drover:device:{device_type}:{device_id}"))
    }

    /// Sign `csr`'s key for an enrollment of `device_type` whose device is not known yet
    /// (`enrollment`: a random id of the pending certificate): `CN=enrollment {id}` and the
    /// SAN `urn:drover:enrollment:{type}:{id}`. Which device it is, the first check-in made
    /// with it says (`enrollment::claim_pending`); the certificate is not reissued then.
    pub fn issue_pending(&self, csr: &Csr, device_type: &str, enrollment: &str) -> anyhow::Result<Issued> {
        self.sign(
            csr,
            device_type,
            &format!("enrollment {enrollment}"),
            format!("urn:drover:enrollment:{device_type}:{enrollment}"),
        )
    }

    fn sign(&self, csr: &Csr, device_type: &str, common_name: &str, uri: String) -> anyhow::Result<Issued> {
        let mut request = rcgen::CertificateSigningRequestParams {
            params: rcgen::CertificateParams::default(),
            public_key: csr.params.public_key.clone(),
        };
        let p = &mut request.params;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        p.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, device_type);
        p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().context("device URI")?)];
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).expect("the OS random source");
        serial[0] &= 0x7f; // a positive INTEGER
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        // A little slack for devices whose clock runs behind.
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::days(self.days);
        let (not_before, not_after) = (p.not_before, p.not_after);
        let cert = request.signed_by(&self.issuer).context("signing the device certificate")?;
        let ms = |t: time::OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            cert_der: cert.der().to_vec(),
            serial: hex::encode(serial),
            credential: credential_of(cert.der()),
            not_before: ms(not_before),
            not_after: ms(not_after),
        })
    }
}

impl DeviceCa {
    /// A certificate for the SCEP Registration Authority's RSA key (`spki_der`), valid
    /// `days`: it signs CertReps and receives clients' envelopes (`scep.rs`). PEM.
    pub fn issue_ra(&self, spki_der: &[u8], days: i64) -> anyhow::Result<String> {
        let key = rcgen::SubjectPublicKeyInfo::from_der(spki_der).context("the RA's public key")?;
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, "Drover SCEP RA");
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
        p.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).expect("the OS random source");
        serial[0] &= 0x7f;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::days(days);
        Ok(p.signed_by(&key, &self.issuer).context("signing the RA certificate")?.pem())
    }
}

/// A new CA: ECDSA P-256, CA with path length 0 (it signs devices only).
fn make_ca() -> anyhow::Result<(String, String)> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Drover device CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365 * CA_YEARS);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    tracing::info!("device CA made and kept in the database (sealed with the secret key)");
    Ok((cert.pem(), key.serialize_pem()))
}
