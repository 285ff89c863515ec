//! The enrollment profile: what an iPhone, iPad or Mac installs to be managed
//! (`GET /agent/v1/ios/enroll/profile?token=…`, opened in Safari or handed to Apple
//! Configurator).
//!
//! A `.mobileconfig` of two payloads, as Apple's Device Management documentation has them:
//!
//! * `com.apple.security.scep`: the device makes its own RSA key and asks Drover's SCEP
//!   service for its identity certificate, with the enrollment token as the challenge. The
//!   URL is `…/scep/pending`: the device cannot say its UDID there, so the certificate goes
//!   to the enrollment, and the first check-in made with it names the device and claims it
//!   (the host's rule; docs/security.md, "Certificates before identities").
//! * `com.apple.mdm`: the check-in and server URLs (both `…/mdm`: the plugin tells a
//!   check-in from a command report by its content), the push `Topic` (the MDM push
//!   certificate's, from the plugin's `topic` setting), the identity certificate by the
//!   SCEP payload's UUID, and the access rights.
//!
//! The profile is unsigned; UUIDs are name-based from the agent URL and the token, so the
//! same link gives the same profile (installing it again replaces it).

use drover_sdk::device_type::drover::plugin::types::{HttpResponse, PluginError};
use plist::{Dictionary, Value};

/// Content type of a configuration profile.
pub const CONTENT_TYPE: &str = "application/x-apple-aspen-config";

/// Every access right (Apple: 1 … 4096, summed): Drover's operations use them all.
pub const ALL_ACCESS_RIGHTS: i64 = 8191;

/// What the profile is made from.
pub struct Settings<'a> {
    /// `…/agent/v1/ios`, as the server's public URL gives it.
    pub agent_url: &'a str,
    /// The enrollment token: the SCEP challenge.
    pub token: &'a str,
    /// The MDM push certificate's topic (`com.apple.mgmt.External.…`).
    pub topic: &'a str,
    /// Shown on the device as the profile's organization.
    pub organization: Option<&'a str>,
}

const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5c0b_6e0e_8f4e_4c55_9a53_d7a1_0e11_0a11);

fn uuid(part: &str, s: &Settings) -> String {
    uuid::Uuid::new_v5(&NAMESPACE, format!("{part}\n{}\n{}", s.agent_url, s.token).as_bytes())
        .hyphenated()
        .to_string()
        .to_uppercase()
}

fn dict<const N: usize>(entries: [(&str, Value); N]) -> Dictionary {
    entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn text(s: &str) -> Value {
    Value::String(s.to_string())
}

/// The token of a profile request's query (`token=…`).
pub fn token(query: &str) -> Option<&str> {
    query.split('&').find_map(|kv| kv.strip_prefix("token=")).filter(|t| !t.is_empty())
}

/// Build the profile (an XML plist).
pub fn build(s: &Settings) -> Vec<u8> {
    let agent = s.agent_url.trim_end_matches('/');
    let scep_uuid = uuid("scep", s);
    let scep = dict([
        ("PayloadType", text("com.apple.security.scep")),
        ("PayloadVersion", Value::Integer(1.into())),
        ("PayloadIdentifier", text(&format!("drover.enrollment.scep.{scep_uuid}"))),
        ("PayloadUUID", text(&scep_uuid)),
        ("PayloadDisplayName", text("Device identity")),
        (
            "PayloadContent",
            Value::Dictionary(dict([
                ("URL", text(&format!("{agent}/scep/pending"))),
                ("Name", text("Drover")),
                // Drover writes the certificate's subject itself; this one only names the request.
                (
                    "Subject",
                    Value::Array(vec![Value::Array(vec![Value::Array(vec![text("CN"), text("Drover MDM identity")])])]),
                ),
                ("Challenge", text(s.token)),
                ("Keysize", Value::Integer(2048.into())),
                ("Key Type", text("RSA")),
                // Signature and encipherment: the TLS client key and the MDM identity.
                ("Key Usage", Value::Integer(5.into())),
            ])),
        ),
    ]);
    let mdm_uuid = uuid("mdm", s);
    let mdm = dict([
        ("PayloadType", text("com.apple.mdm")),
        ("PayloadVersion", Value::Integer(1.into())),
        ("PayloadIdentifier", text(&format!("drover.enrollment.mdm.{mdm_uuid}"))),
        ("PayloadUUID", text(&mdm_uuid)),
        ("PayloadDisplayName", text("Device management")),
        ("ServerURL", text(&format!("{agent}/mdm"))),
        ("CheckInURL", text(&format!("{agent}/mdm"))),
        ("CheckOutWhenRemoved", Value::Boolean(true)),
        ("Topic", text(s.topic)),
        ("IdentityCertificateUUID", text(&scep_uuid)),
        ("AccessRights", Value::Integer(ALL_ACCESS_RIGHTS.into())),
        ("SignMessage", Value::Boolean(false)),
    ]);
    let profile_uuid = uuid("profile", s);
    let mut profile = dict([
        ("PayloadType", text("Configuration")),
        ("PayloadVersion", Value::Integer(1.into())),
        ("PayloadIdentifier", text(&format!("drover.enrollment.{profile_uuid}"))),
        ("PayloadUUID", text(&profile_uuid)),
        ("PayloadDisplayName", text("Drover device management")),
        ("PayloadDescription", text("Lets your organization manage this device with Drover.")),
        ("PayloadScope", text("System")),
        ("PayloadContent", Value::Array(vec![Value::Dictionary(scep), Value::Dictionary(mdm)])),
    ]);
    if let Some(org) = s.organization {
        profile.insert("PayloadOrganization".into(), text(org));
    }
    crate::wire::to_xml(profile)
}

/// The answer to `GET enroll/profile?token=…`: the profile, or why there is none.
pub fn answer(
    agent_url: &str,
    query: &str,
    topic: Option<&str>,
    organization: Option<&str>,
) -> Result<HttpResponse, PluginError> {
    let Some(token) = token(query) else {
        return Err(PluginError::invalid(
            "the enrollment profile is `enroll/profile?token=<enrollment token>`: the token is the profile's SCEP challenge",
        ));
    };
    if token.len() > 256 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(PluginError::invalid("`token` is not an enrollment token"));
    }
    let Some(topic) = topic.filter(|t| !t.is_empty()) else {
        return Err(PluginError::unsupported(
            "the ios plugin's `topic` setting is not set: an admin sets it to the MDM push certificate's topic \
             (com.apple.mgmt.External.…) before devices can enroll with a profile",
        ));
    };
    let body = build(&Settings { agent_url, token, topic, organization });
    Ok(HttpResponse {
        status: 200,
        content_type: Some(CONTENT_TYPE.into()),
        headers: vec![("content-disposition".into(), "attachment; filename=\"drover-enrollment.mobileconfig\"".into())],
        body,
    })
}
