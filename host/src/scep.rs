//! SCEP (RFC 8894): a device that speaks it (an iPhone's enrollment profile, a router, an
//! NDES-style agent) asks `/agent/v1/{type}/scep` for its identity certificate.
//!
//! * `GetCACaps`: what this server does (`POSTPKIOperation`, `SHA-256`, `AES`,
//!   `SCEPStandard`).
//! * `GetCACert`: the RA's certificate and the device CA's, as a degenerate PKCS#7.
//! * `PKIOperation` (a `PKCSReq`): a CMS SignedData, signed by the client's throw-away
//!   certificate, around an EnvelopedData encrypted to the RA, around the PKCS#10 request
//!   with its challengePassword. The challenge is an enrollment token and the CSR's CN
//!   names the device: the request goes through [`enrollment::certify`] as a CSR posted to
//!   `…/certificate` with that token would (the claim rule, the token's type, uses and
//!   tenant; the subject rewritten to the identity). The answer is a CertRep: a SignedData
//!   signed by the RA around an EnvelopedData, encrypted to the client's key, holding the
//!   certificate; or a CertRep with `pkiStatus` FAILURE and a `failInfo`.
//!
//! SCEP's key transport needs RSA and the device CA is ECDSA, so a Registration Authority
//! does the CMS work: an RSA 2048 key and a certificate the device CA signs (key usage
//! digitalSignature, keyEncipherment), made on the first SCEP request of the first replica
//! and kept in the database beside the CA (its key sealed the same way), so every replica
//! decrypts what another's `GetCACert` told a client to encrypt to. All RSA and cipher
//! work is AWS-LC's (aws-lc-rs): its PKCS#1 v1.5 decryption is constant-time.
//!
//! `/agent/v1/{type}/scep/pending` is the same service for a client that cannot know its
//! device id when it asks (an Apple enrollment profile: the iPhone learns nothing of its
//! UDID's use before its first check-in): the certificate is issued to the enrollment and
//! kept pending; the first check-in made with it names the device and claims the identity
//! by the usual rule ([`enrollment::certify_pending`], `enrollment::claim_pending`).
//!
//! The outer signature of a request is not checked: the client signs with a throw-away
//! certificate for the key it asks a certificate for, which the CSR's own signature (checked
//! by `identity::Csr::parse`) already proves; the challenge is what authenticates.

use crate::core::Core;
use crate::error::{Error, Result};
// 3DES opens envelopes of clients that ask no capabilities (RFC 8894 makes it the
// default), and single DES those of legacy clients when the operator allows it; this
// server never encrypts with either.
use aws_lc_rs::cipher::{
    AES_128, AES_192, AES_256, DecryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey, UnboundCipherKey,
};
#[allow(deprecated)]
use aws_lc_rs::cipher::{DES_EDE3_FOR_LEGACY_USE_ONLY, DES_FOR_LEGACY_USE_ONLY};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{
    KeyPair, KeySize, Pkcs1PrivateDecryptingKey, Pkcs1PublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
};
use cms::cert::x509::Certificate;
use cms::cert::x509::attr::Attribute;
use cms::cert::x509::spki::AlgorithmIdentifierOwned;
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{
    EncryptedContentInfo, EnvelopedData, KeyTransRecipientInfo, RecipientIdentifier, RecipientInfo, RecipientInfos,
};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{ObjectIdentifier as Oid, OctetString, PrintableString, SetOfVec, Utf8StringRef};
use der::{Any, Decode, Encode};

const DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.1");
const SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
const ENVELOPED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.3");
const CONTENT_TYPE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.3");
const MESSAGE_DIGEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.4");
const CHALLENGE_PASSWORD: Oid = Oid::new_unwrap("1.2.840.113549.1.9.7");
const MESSAGE_TYPE: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.2");
const PKI_STATUS: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.3");
const FAIL_INFO: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.4");
const SENDER_NONCE: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.5");
const RECIPIENT_NONCE: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.6");
const TRANSACTION_ID: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.7");
const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
const AES128_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.2");
const AES192_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.22");
const AES256_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.42");
const DES_EDE3_CBC: Oid = Oid::new_unwrap("1.2.840.113549.3.7");
const DES_CBC: Oid = Oid::new_unwrap("1.3.14.3.2.7");

/// `messageType` values (PrintableString of the decimal number).
const PKCS_REQ: &str = "19";
const CERT_REP: &str = "3";

/// What `GetCACaps` answers.
pub const CAPS: &str = "POSTPKIOperation\nSHA-256\nAES\nSCEPStandard\n";

/// Days an RA certificate lives; one with fewer than `RA_RENEW_DAYS` left is replaced.
const RA_DAYS: i64 = 730;
const RA_RENEW_DAYS: i64 = 30;

/// The Registration Authority: the RSA key SCEP clients encrypt to and CertReps are signed
/// with, and its certificate from the device CA.
pub struct Ra {
    cert: Certificate,
    cert_der: Vec<u8>,
    ca_der: Vec<u8>,
    signing: KeyPair,
    decrypting: Pkcs1PrivateDecryptingKey,
}

impl std::fmt::Debug for Ra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ra").finish_non_exhaustive()
    }
}

impl Ra {
    /// The RA kept in the database, or a new one when there is none, or when the one kept
    /// is not the current device CA's or is near its end.
    pub async fn load(core: &Core) -> anyhow::Result<Ra> {
        let ca_der = core.device_ca.cert_der().to_vec();
        let kept = core.store.scep_ra().await?;
        if let Some((cert_pem, key_hex)) = &kept {
            match Ra::from_kept(cert_pem, key_hex, &ca_der) {
                Ok(ra) if ra.current() => return Ok(ra),
                Ok(_) => tracing::info!("the SCEP RA certificate is another CA's or near its end: making a new one"),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "the SCEP RA kept is unreadable: making a new one"),
            }
        }
        let key =
            PrivateDecryptingKey::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("RSA key generation"))?;
        let pkcs8 = key.as_der().map_err(|_| anyhow::anyhow!("RSA key encoding"))?.as_ref().to_vec();
        let spki = key.public_key().as_der().map_err(|_| anyhow::anyhow!("RSA public key encoding"))?;
        let cert_pem = core.device_ca.issue_ra(spki.as_ref(), RA_DAYS)?;
        // Another replica may have kept its own first: whatever is kept is used.
        core.store.put_scep_ra(&cert_pem, &hex::encode(&pkcs8), kept.as_ref().map(|(c, _)| c.as_str())).await?;
        tracing::info!("SCEP RA made and kept in the database (its key sealed with the secret key)");
        let (cert_pem, key_hex) =
            core.store.scep_ra().await?.ok_or_else(|| anyhow::anyhow!("the SCEP RA was not kept"))?;
        Ra::from_kept(&cert_pem, &key_hex, &ca_der)
    }

    fn from_kept(cert_pem: &str, key_hex: &str, ca_der: &[u8]) -> anyhow::Result<Ra> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("the RA certificate is not PEM: {e}"))?
            .to_vec();
        let cert = Certificate::from_der(&cert_der)?;
        let pkcs8 = hex::decode(key_hex)?;
        let signing = KeyPair::from_pkcs8(&pkcs8).map_err(|e| anyhow::anyhow!("the RA key: {e}"))?;
        let decrypting = PrivateDecryptingKey::from_pkcs8(&pkcs8)
            .ok()
            .and_then(|k| Pkcs1PrivateDecryptingKey::new(k).ok())
            .ok_or_else(|| anyhow::anyhow!("the RA key does not decrypt"))?;
        Ok(Ra { cert, cert_der, ca_der: ca_der.to_vec(), signing, decrypting })
    }

    /// Signed by the current CA and not near its end.
    fn current(&self) -> bool {
        let Ok(ca) = Certificate::from_der(&self.ca_der) else { return false };
        let ends = self.cert.tbs_certificate.validity.not_after.to_unix_duration().as_secs() as i64;
        let now = crate::store::now_ms() / 1000;
        self.cert.tbs_certificate.issuer == ca.tbs_certificate.subject && ends - now > RA_RENEW_DAYS * 86_400
    }

    /// `GetCACert`: the RA's certificate, then the CA's, as a degenerate PKCS#7.
    pub fn ca_certs(&self) -> Result<Vec<u8>> {
        degenerate(&[&self.cert_der, &self.ca_der])
    }
}

/// The RA, made or read on first use.
async fn ra(core: &Core) -> Result<&Ra> {
    core.scep_ra
        .get_or_try_init(|| async { Ra::load(core).await })
        .await
        .map_err(|e| Error::internal(format!("the SCEP RA: {e:#}")))
}

/// What a `PKIOperation` asked.
#[derive(Debug)]
pub struct Request {
    pub message_type: String,
    pub transaction_id: String,
    pub sender_nonce: Vec<u8>,
    /// The PKCS#10 request (DER), decrypted.
    pub csr: std::result::Result<Vec<u8>, Fail>,
    /// The client's certificate, whose key the answer is encrypted to.
    signer: Certificate,
}

/// SCEP's `failInfo`: why a request was refused, in the CertRep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// Unrecognised or unsupported algorithm (a single-DES envelope).
    BadAlg,
    /// Integrity check failed (the envelope does not decrypt).
    BadMessageCheck,
    /// Transaction not permitted or supported (a bad challenge, an identity taken).
    BadRequest,
}

impl Fail {
    fn code(self) -> &'static str {
        match self {
            Fail::BadAlg => "0",
            Fail::BadMessageCheck => "1",
            Fail::BadRequest => "2",
        }
    }
}

fn malformed(what: impl std::fmt::Display) -> Error {
    Error::invalid("malformed_scep", format!("not a SCEP message: {what}"))
}

/// Read a `PKIOperation` message. A body that is no SCEP message at all is an error (400);
/// one whose envelope cannot be opened is a request to answer with a failure CertRep.
pub fn read(ra: &Ra, body: &[u8], allow_des: bool) -> Result<Request> {
    let outer = ContentInfo::from_der(body).map_err(|e| malformed(format!("ContentInfo: {e}")))?;
    if outer.content_type != SIGNED_DATA {
        return Err(malformed("the content is not SignedData"));
    }
    let signed: SignedData = outer.content.decode_as().map_err(|e| malformed(format!("SignedData: {e}")))?;
    let signer_info = signed.signer_infos.0.iter().next().ok_or_else(|| malformed("no SignerInfo"))?;
    let attrs = signer_info.signed_attrs.as_ref().ok_or_else(|| malformed("no signed attributes"))?;
    let text = |oid: Oid, name: &str| -> Result<String> {
        let v = first(attrs.iter(), oid).ok_or_else(|| malformed(format!("no {name}")))?;
        Ok(v.decode_as::<PrintableString>().map_err(|e| malformed(format!("{name}: {e}")))?.to_string())
    };
    let message_type = text(MESSAGE_TYPE, "messageType")?;
    let transaction_id = text(TRANSACTION_ID, "transactionID")?;
    let sender_nonce = first(attrs.iter(), SENDER_NONCE)
        .ok_or_else(|| malformed("no senderNonce"))?
        .decode_as::<OctetString>()
        .map_err(|e| malformed(format!("senderNonce: {e}")))?
        .as_bytes()
        .to_vec();
    let SignerIdentifier::IssuerAndSerialNumber(sid) = &signer_info.sid else {
        return Err(malformed("the signer is not named by issuer and serial number"));
    };
    let signer = signed
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .find_map(|c| match c {
            CertificateChoices::Certificate(c)
                if c.tbs_certificate.serial_number == sid.serial_number && c.tbs_certificate.issuer == sid.issuer =>
            {
                Some(c.clone())
            }
            _ => None,
        })
        .ok_or_else(|| malformed("the signer's certificate is not in the message"))?;
    let content = signed
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or_else(|| malformed("no content"))?
        .decode_as::<OctetString>()
        .map_err(|e| malformed(format!("content: {e}")))?;
    let csr = open(ra, content.as_bytes(), allow_des);
    Ok(Request { message_type, transaction_id, sender_nonce, csr, signer })
}

/// Decrypt the EnvelopedData the client encrypted to the RA.
fn open(ra: &Ra, envelope: &[u8], allow_des: bool) -> std::result::Result<Vec<u8>, Fail> {
    let info = ContentInfo::from_der(envelope).map_err(|_| Fail::BadMessageCheck)?;
    if info.content_type != ENVELOPED_DATA {
        return Err(Fail::BadMessageCheck);
    }
    let enveloped = Lax::read(&info.content).ok_or(Fail::BadMessageCheck)?;
    let ktri = enveloped
        .recip_infos
        .0
        .iter()
        .find_map(|r| match r {
            RecipientInfo::Ktri(k) => Some(k),
            _ => None,
        })
        .ok_or(Fail::BadAlg)?;
    if ktri.key_enc_alg.oid != RSA_ENCRYPTION {
        return Err(Fail::BadAlg);
    }
    let mut cek = vec![0u8; ra.decrypting.min_output_size()];
    let cek = ra.decrypting.decrypt(ktri.enc_key.as_bytes(), &mut cek).map_err(|_| Fail::BadMessageCheck)?.to_vec();
    #[allow(deprecated)]
    let algorithm = match enveloped.content_enc_alg.oid {
        AES128_CBC => &AES_128,
        AES192_CBC => &AES_192,
        AES256_CBC => &AES_256,
        DES_EDE3_CBC => &DES_EDE3_FOR_LEGACY_USE_ONLY,
        // Single DES: only when the operator allows it (`--scep-allow-des`).
        DES_CBC if allow_des => &DES_FOR_LEGACY_USE_ONLY,
        // Single DES and anything else: refused, naming the algorithm in the log.
        other => {
            tracing::info!(algorithm = %other, "SCEP envelope in an algorithm this server does not take");
            return Err(Fail::BadAlg);
        }
    };
    let iv = enveloped
        .content_enc_alg
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<OctetString>().ok())
        .ok_or(Fail::BadMessageCheck)?;
    let context = match iv.as_bytes().len() {
        16 => DecryptionContext::Iv128(FixedLength::from(<[u8; 16]>::try_from(iv.as_bytes()).expect("16 bytes"))),
        8 => DecryptionContext::Iv64(FixedLength::from(<[u8; 8]>::try_from(iv.as_bytes()).expect("8 bytes"))),
        _ => return Err(Fail::BadMessageCheck),
    };
    let key = UnboundCipherKey::new(algorithm, &cek).map_err(|_| Fail::BadMessageCheck)?;
    let cipher = PaddedBlockDecryptingKey::cbc_pkcs7(key).map_err(|_| Fail::BadAlg)?;
    let mut data = enveloped.encrypted;
    let plain = cipher.decrypt(&mut data, context).map_err(|_| Fail::BadMessageCheck)?;
    Ok(plain.to_vec())
}

/// An EnvelopedData as clients send it. Go's pkcs7 (micromdm's client, and servers
/// built on it) writes the encrypted content as BER: a constructed `[0]` around OCTET
/// STRING chunks, which strict DER refuses. Read strictly first, then that way.
struct Lax {
    recip_infos: RecipientInfos,
    content_enc_alg: AlgorithmIdentifierOwned,
    encrypted: Vec<u8>,
}

/// EnvelopedData with the encrypted content as OCTET STRING chunks. (`version` and
/// `content_type` are read for the structure only.)
#[derive(der::Sequence)]
#[allow(dead_code)]
struct ChunkedEnvelopedData {
    version: CmsVersion,
    recip_infos: RecipientInfos,
    encrypted_content: ChunkedContentInfo,
}

#[derive(der::Sequence)]
#[allow(dead_code)]
struct ChunkedContentInfo {
    content_type: Oid,
    content_enc_alg: AlgorithmIdentifierOwned,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", constructed = "true")]
    chunks: Vec<OctetString>,
}

impl Lax {
    fn read(content: &Any) -> Option<Lax> {
        if let Ok(strict) = content.decode_as::<EnvelopedData>() {
            return Some(Lax {
                recip_infos: strict.recip_infos,
                content_enc_alg: strict.encrypted_content.content_enc_alg,
                encrypted: strict.encrypted_content.encrypted_content?.as_bytes().to_vec(),
            });
        }
        let chunked: ChunkedEnvelopedData = content.decode_as().ok()?;
        Some(Lax {
            recip_infos: chunked.recip_infos,
            content_enc_alg: chunked.encrypted_content.content_enc_alg,
            encrypted: chunked.encrypted_content.chunks.iter().flat_map(|c| c.as_bytes().iter().copied()).collect(),
        })
    }
}

/// The challengePassword of a PKCS#10 request, if it has one.
pub fn challenge(csr: &[u8]) -> Option<String> {
    let req = cms::cert::x509::request::CertReq::from_der(csr).ok()?;
    let value = first(req.info.attributes.iter(), CHALLENGE_PASSWORD)?;
    value
        .decode_as::<PrintableString>()
        .map(|s| s.to_string())
        .or_else(|_| value.decode_as::<Utf8StringRef<'_>>().map(|s| s.to_string()))
        .ok()
}

/// A CertRep carrying `certificate` (DER), encrypted to the client's key.
pub fn granted(ra: &Ra, req: &Request, certificate: &[u8]) -> Result<Vec<u8>> {
    let inner = degenerate(&[certificate])?;
    let envelope = seal_for(&req.signer, &inner)?;
    cert_rep(ra, req, "0", None, Some(envelope))
}

/// A CertRep saying FAILURE, with why.
pub fn refused(ra: &Ra, req: &Request, fail: Fail) -> Result<Vec<u8>> {
    cert_rep(ra, req, "2", Some(fail), None)
}

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("SCEP {what}: {e}"))
}

/// A SignedData of certificates only (PKCS#7 "degenerate"), as a ContentInfo.
fn degenerate(certs: &[&[u8]]) -> Result<Vec<u8>> {
    let mut set = Vec::new();
    for der in certs {
        set.push(CertificateChoices::Certificate(Certificate::from_der(der).map_err(|e| internal("certificate", e))?));
    }
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo { econtent_type: DATA, econtent: None },
        certificates: Some(CertificateSet(SetOfVec::try_from(set).map_err(|e| internal("certificates", e))?)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    content_info(SIGNED_DATA, &signed)
}

fn content_info<T: der::EncodeValue + der::Tagged>(content_type: Oid, content: &T) -> Result<Vec<u8>> {
    let content = Any::encode_from(content).map_err(|e| internal("encoding", e))?;
    ContentInfo { content_type, content }.to_der().map_err(|e| internal("encoding", e))
}

/// An EnvelopedData of `plain` for `recipient`'s RSA key: AES-128-CBC, the key sent with
/// PKCS#1 v1.5.
fn seal_for(recipient: &Certificate, plain: &[u8]) -> Result<Vec<u8>> {
    let spki = recipient.tbs_certificate.subject_public_key_info.to_der().map_err(|e| internal("client key", e))?;
    let public = PublicEncryptingKey::from_der(&spki)
        .ok()
        .and_then(|k| Pkcs1PublicEncryptingKey::new(k).ok())
        .ok_or_else(|| Error::invalid("malformed_scep", "the client's certificate has no RSA key to answer to"))?;
    let mut cek = [0u8; 16];
    getrandom::fill(&mut cek).expect("the OS random source");
    let key = UnboundCipherKey::new(&AES_128, &cek).map_err(|e| internal("cipher", e))?;
    let cipher = PaddedBlockEncryptingKey::cbc_pkcs7(key).map_err(|e| internal("cipher", e))?;
    let mut data = plain.to_vec();
    let context = cipher.encrypt(&mut data).map_err(|e| internal("cipher", e))?;
    let iv: &[u8] = (&context).try_into().map_err(|e| internal("cipher", e))?;
    let mut wrapped = vec![0u8; public.ciphertext_size()];
    let wrapped = public.encrypt(&cek, &mut wrapped).map_err(|e| internal("key transport", e))?.to_vec();
    let octets = |b: &[u8]| OctetString::new(b.to_vec()).map_err(|e| internal("encoding", e));
    let enveloped = EnvelopedData {
        version: CmsVersion::V0,
        originator_info: None,
        recip_infos: RecipientInfos(
            SetOfVec::try_from(vec![RecipientInfo::Ktri(KeyTransRecipientInfo {
                version: CmsVersion::V0,
                rid: RecipientIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                    issuer: recipient.tbs_certificate.issuer.clone(),
                    serial_number: recipient.tbs_certificate.serial_number.clone(),
                }),
                key_enc_alg: with_null(RSA_ENCRYPTION)?,
                enc_key: octets(&wrapped)?,
            })])
            .map_err(|e| internal("encoding", e))?,
        ),
        encrypted_content: EncryptedContentInfo {
            content_type: DATA,
            content_enc_alg: AlgorithmIdentifierOwned {
                oid: AES128_CBC,
                parameters: Some(Any::encode_from(&octets(iv)?).map_err(|e| internal("encoding", e))?),
            },
            encrypted_content: Some(octets(&data)?),
        },
        unprotected_attrs: None,
    };
    content_info(ENVELOPED_DATA, &enveloped)
}

fn with_null(oid: Oid) -> Result<AlgorithmIdentifierOwned> {
    Ok(AlgorithmIdentifierOwned {
        oid,
        parameters: Some(Any::encode_from(&der::asn1::Null).map_err(|e| internal("encoding", e))?),
    })
}

/// The CertRep: a SignedData by the RA with SCEP's attributes, around `content`.
fn cert_rep(ra: &Ra, req: &Request, status: &str, fail: Option<Fail>, content: Option<Vec<u8>>) -> Result<Vec<u8>> {
    use sha2::Digest;
    let enc = |e: der::Error| internal("encoding", e);
    let printable = |s: &str| -> Result<Any> { Any::encode_from(&PrintableString::new(s).map_err(enc)?).map_err(enc) };
    let octets =
        |b: &[u8]| -> Result<Any> { Any::encode_from(&OctetString::new(b.to_vec()).map_err(enc)?).map_err(enc) };
    let attribute = |oid: Oid, value: Any| -> Result<Attribute> {
        Ok(Attribute { oid, values: SetOfVec::try_from(vec![value]).map_err(enc)? })
    };
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("the OS random source");
    let digest = sha2::Sha256::digest(content.as_deref().unwrap_or_default());
    let mut attrs = vec![
        attribute(CONTENT_TYPE, Any::encode_from(&DATA).map_err(enc)?)?,
        attribute(MESSAGE_DIGEST, octets(&digest)?)?,
        attribute(MESSAGE_TYPE, printable(CERT_REP)?)?,
        attribute(PKI_STATUS, printable(status)?)?,
        attribute(TRANSACTION_ID, printable(&req.transaction_id)?)?,
        attribute(RECIPIENT_NONCE, octets(&req.sender_nonce)?)?,
        attribute(SENDER_NONCE, octets(&nonce)?)?,
    ];
    if let Some(f) = fail {
        attrs.push(attribute(FAIL_INFO, printable(f.code())?)?);
    }
    // A SET OF is sorted by its encoding; the signature covers exactly that encoding.
    let signed_attrs = SetOfVec::try_from(attrs).map_err(enc)?;
    let to_sign = signed_attrs.to_der().map_err(enc)?;
    let mut signature = vec![0u8; ra.signing.public_modulus_len()];
    ra.signing
        .sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &aws_lc_rs::rand::SystemRandom::new(), &to_sign, &mut signature)
        .map_err(|e| internal("signature", e))?;
    let signer = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: ra.cert.tbs_certificate.issuer.clone(),
            serial_number: ra.cert.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: AlgorithmIdentifierOwned { oid: SHA256, parameters: None },
        signed_attrs: Some(signed_attrs),
        signature_algorithm: with_null(RSA_ENCRYPTION)?,
        signature: OctetString::new(signature).map_err(enc)?,
        unsigned_attrs: None,
    };
    let econtent = match content {
        Some(c) => Some(Any::encode_from(&OctetString::new(c).map_err(enc)?).map_err(enc)?),
        None => None,
    };
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![AlgorithmIdentifierOwned { oid: SHA256, parameters: None }])
            .map_err(enc)?,
        encap_content_info: EncapsulatedContentInfo { econtent_type: DATA, econtent },
        certificates: Some(CertificateSet(
            SetOfVec::try_from(vec![CertificateChoices::Certificate(ra.cert.clone())]).map_err(enc)?,
        )),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer]).map_err(enc)?),
    };
    content_info(SIGNED_DATA, &signed)
}

/// The first value of attribute `oid`.
fn first<'a>(mut attrs: impl Iterator<Item = &'a Attribute>, oid: Oid) -> Option<&'a Any> {
    attrs.find(|a| a.oid == oid).and_then(|a| a.values.iter().next())
}

/// What one SCEP request is answered with: a content type and a body.
pub struct Answer {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Serve one SCEP request for `device_type`: `operation` as the query names it, `message`
/// the query's (base64 for a GET `PKIOperation`), `body` a POST's. `pending`: the
/// `…/scep/pending` URL, whose certificates go to the enrollment and not to a device yet
/// ([`enrollment::certify_pending`]).
pub async fn serve(
    core: &Core,
    device_type: &str,
    pending: bool,
    operation: &str,
    message: Option<&str>,
    body: &[u8],
) -> Result<Answer> {
    match operation {
        "GetCACaps" => Ok(Answer { content_type: "text/plain", body: CAPS.as_bytes().to_vec() }),
        "GetCACert" => {
            let ra = ra(core).await?;
            Ok(Answer { content_type: "application/x-x509-ca-ra-cert", body: ra.ca_certs()? })
        }
        "PKIOperation" => {
            let decoded;
            let message = if body.is_empty() {
                use base64::Engine;
                let text = message.ok_or_else(|| malformed("a PKIOperation carries the message as its body"))?;
                decoded = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|e| malformed(format!("the message is not base64: {e}")))?;
                &decoded[..]
            } else {
                body
            };
            let ra = ra(core).await?;
            let req = read(ra, message, core.scep_allow_des)?;
            let body = match pki_operation(core, device_type, pending, &req).await {
                Ok(certificate) => granted(ra, &req, &certificate)?,
                Err(fail) => refused(ra, &req, fail)?,
            };
            Ok(Answer { content_type: "application/x-pki-message", body })
        }
        other => Err(Error::invalid(
            "invalid",
            format!("SCEP operation `{other}`: this server answers GetCACaps, GetCACert and PKIOperation"),
        )),
    }
}

/// A `PKCSReq`: the challenge is the enrollment token, the CSR's CN the device, by the
/// rule of every CSR with an enrollment token; or, `pending`, a certificate for the
/// enrollment that its first check-in binds to the device it names (the CN is not read).
/// Refusals are logged with their reason and answered with a `failInfo` (SCEP has no words
/// for them).
async fn pki_operation(
    core: &Core,
    device_type: &str,
    pending: bool,
    req: &Request,
) -> std::result::Result<Vec<u8>, Fail> {
    if req.message_type != PKCS_REQ {
        tracing::info!(message_type = %req.message_type, "SCEP message type not taken (PKCSReq only)");
        return Err(Fail::BadRequest);
    }
    let csr = req.csr.as_ref().map_err(|f| *f)?;
    let Some(token) = challenge(csr) else {
        tracing::info!(transaction = %req.transaction_id, "SCEP request without a challenge password refused");
        return Err(Fail::BadRequest);
    };
    if pending {
        return match crate::enrollment::certify_pending(core, device_type, csr, &token).await {
            Ok(issued) => {
                tracing::info!(device_type, serial = %issued.serial, transaction = %req.transaction_id, "SCEP certificate issued to a pending enrollment");
                Ok(issued.cert_der)
            }
            Err(e) => {
                tracing::info!(device_type, transaction = %req.transaction_id, code = e.code, "SCEP request refused: {}", e.message);
                Err(Fail::BadRequest)
            }
        };
    }
    match crate::enrollment::certify(core, device_type, csr, crate::enrollment::CertifyAs::Challenge(&token)).await {
        Ok((device, issued)) => {
            tracing::info!(device_type, device_id = %device.device_id, transaction = %req.transaction_id, "SCEP certificate issued");
            Ok(issued.cert_der)
        }
        Err(e) => {
            tracing::info!(device_type, transaction = %req.transaction_id, code = e.code, "SCEP request refused: {}", e.message);
            Err(Fail::BadRequest)
        }
    }
}
