//! Who may claim a device identity: the rule every enrollment path applies (the HTTP
//! agent, LwM2M registration), pure so it can be read and tested in one place.
//!
//! An identity is a `(device type, device id)`. A device id is usually printed on the
//! device (an IMEI, a serial, a MAC), so knowing it proves nothing. Hence:
//!
//! * **New** (never seen, or removed): with an enrollment token not made for an import,
//!   or without a token under open self-enrollment. A removed identity enrolled again is a
//!   new device: nothing that was granted to the old one passes to it
//!   (`Store::enroll_device`).
//! * **Pre-registered** (an admin imported it): with an enrollment token for its type that
//!   is either general or made for its import. Without a token only if the import said
//!   devices may claim their own identities (`self_enroll`): otherwise anyone who read a
//!   serial from a CSV, a box or a shipping list could enroll that device and receive what
//!   the admin queued for it. Open self-enrollment does not change this.
//! * **Enrolled** (active, unreachable): refused, `already_enrolled`. Removing it first is
//!   an admin's act.

use crate::store::Claim;

/// What an enrollment brings to the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// An enrollment token (checked and used up by the store, for the import batch
    /// `Decision::Token` names).
    Token,
    /// Nothing: self-enrollment.
    None,
}

/// The rule's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Enroll, using up one use of the token, which must be general or made for this
    /// import batch (`None`: general only).
    Token { import_batch: Option<String> },
    /// Enroll without a token.
    Open,
    /// The identity is enrolled already.
    AlreadyEnrolled,
    /// Refused; the message says what would be accepted.
    Refused(&'static str),
}

/// Decide whether an enrollment with `credential` may claim an identity in `claim`
/// (`None`: never seen), on a server with `open_enrollment`.
pub fn decide(claim: Option<&Claim>, credential: Credential, open_enrollment: bool) -> Decision {
    let status = claim.map(|c| c.status.as_str());
    match (status, credential) {
        (Some("active" | "unreachable"), _) => Decision::AlreadyEnrolled,
        (Some("registered"), Credential::Token) => {
            Decision::Token { import_batch: claim.and_then(|c| c.import_batch.clone()) }
        }
        (Some("registered"), Credential::None) if claim.is_some_and(|c| c.self_enroll) => Decision::Open,
        (Some("registered"), Credential::None) => Decision::Refused(
            "this device was pre-registered by an admin: enroll it with an enrollment token (or the admin imports it \
             with self-enrollment allowed)",
        ),
        (_, Credential::Token) => Decision::Token { import_batch: None },
        (_, Credential::None) if open_enrollment => Decision::Open,
        (_, Credential::None) => Decision::Refused(
            "self-enrollment is switched off on this server: enroll with an enrollment token from an admin",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(status: &str, self_enroll: bool, batch: Option<&str>) -> Claim {
        Claim { status: status.into(), self_enroll, import_batch: batch.map(Into::into) }
    }

    #[test]
    fn a_pre_registered_identity_needs_a_token_unless_its_import_said_otherwise() {
        let imported = claim("registered", false, Some("b1"));
        assert!(matches!(decide(Some(&imported), Credential::None, true), Decision::Refused(_)));
        assert!(matches!(decide(Some(&imported), Credential::None, false), Decision::Refused(_)));
        assert_eq!(
            decide(Some(&imported), Credential::Token, true),
            Decision::Token { import_batch: Some("b1".into()) }
        );
        let open = claim("registered", true, Some("b2"));
        assert_eq!(decide(Some(&open), Credential::None, false), Decision::Open);
    }

    #[test]
    fn new_and_removed_identities_follow_the_server_setting() {
        for c in [None, Some(claim("removed", false, None))] {
            assert_eq!(decide(c.as_ref(), Credential::None, true), Decision::Open);
            assert!(matches!(decide(c.as_ref(), Credential::None, false), Decision::Refused(_)));
            // A token made for an import cannot claim an identity outside it.
            assert_eq!(decide(c.as_ref(), Credential::Token, false), Decision::Token { import_batch: None });
        }
    }

    #[test]
    fn an_enrolled_identity_is_never_claimed_again() {
        for status in ["active", "unreachable"] {
            for credential in [Credential::Token, Credential::None] {
                assert_eq!(decide(Some(&claim(status, true, None)), credential, true), Decision::AlreadyEnrolled);
            }
        }
    }
}
