//! The device vocabulary: where a device is in its life, and who owns it. Stored as text
//! and spelled the same in the database, in JSON and in the OpenAPI document
//! (`text_enum!` in `lib.rs`); anything else read back is an error, not a silent default.

text_enum! {
    /// Where a device is in its life (docs/operations.md).
    pub enum Status ("status") {
        /// Pre-registered by an admin (CSV import, or restored after removal): known, not
        /// yet enrolled; it claims this identity when it enrolls.
        Registered = "registered",
        /// Enrolled, and has called in within the unreachable threshold.
        Active = "active",
        /// Enrolled, but silent for longer than the unreachable threshold.
        Unreachable = "unreachable",
        /// Disenrolled: credentials revoked, live operations cancelled, history kept.
        Removed = "removed",
    }
}

impl Status {
    /// Enrolled: holds (or held) a credential and is not removed.
    pub fn is_enrolled(self) -> bool {
        matches!(self, Status::Active | Status::Unreachable)
    }
}

text_enum! {
    /// Who owns a device: the organisation (corporate-owned, personally enabled) or its
    /// user (bring your own device). Policies and dynamic groups select by it.
    pub enum Ownership ("ownership") {
        Byod = "BYOD",
        Cope = "COPE",
    }
}

impl From<crate::plugins::types::Ownership> for Ownership {
    fn from(o: crate::plugins::types::Ownership) -> Ownership {
        match o {
            crate::plugins::types::Ownership::Byod => Ownership::Byod,
            crate::plugins::types::Ownership::Cope => Ownership::Cope,
        }
    }
}

/// A stored or submitted name outside its closed set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    what: &'static str,
    value: String,
    allowed: &'static [&'static str],
}

impl UnknownName {
    pub fn new(what: &'static str, value: &str, allowed: &'static [&'static str]) -> UnknownName {
        // A hostile value is echoed back in errors: keep it short.
        let value: String = value.chars().take(64).collect();
        UnknownName { what, value, allowed }
    }
}

impl std::fmt::Display for UnknownName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (last, rest) = self.allowed.split_last().expect("a closed set has names");
        write!(f, "{} `{}`: use ", self.what, self.value)?;
        if !rest.is_empty() {
            write!(f, "{} or ", rest.join(", "))?;
        }
        f.write_str(last)
    }
}

impl std::error::Error for UnknownName {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_through_text_and_json() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Ok(*s));
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), *s);
        }
        for o in Ownership::ALL {
            assert_eq!(Ownership::parse(o.as_str()), Ok(*o));
        }
    }

    /// The OpenAPI document names the values as JSON spells them.
    #[test]
    fn the_schema_lists_the_spellings() {
        let schema = serde_json::to_value(<Ownership as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(schema["enum"], serde_json::json!(["BYOD", "COPE"]), "{schema}");
        let schema = serde_json::to_value(<crate::ops::Kind as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(schema["enum"], serde_json::json!(["command", "profile", "policy"]), "{schema}");
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_names_allowed() {
        assert_eq!(Ownership::parse("mine").unwrap_err().to_string(), "ownership `mine`: use BYOD or COPE");
        assert_eq!(
            Status::parse("inactive").unwrap_err().to_string(),
            "status `inactive`: use registered, active, unreachable or removed"
        );
        let e = serde_json::from_str::<Ownership>("\"byod\"").unwrap_err().to_string();
        assert!(e.contains("ownership `byod`: use BYOD or COPE"), "{e}");
    }
}
