//! Scopes: what part of the fleet an admin principal (a token or a user) may reach.
//!
//! A principal without a scope reaches the whole fleet with its role. A scoped one
//! reaches only the devices its scope admits (every criterion given must hold):
//! devices of the listed types, in one of the listed groups (static or dynamic), and,
//! for a device owner's self-service, devices whose `owner` is the user. A scope may
//! also narrow the operation codes the principal may add.
//!
//! The admin API is deny-by-default for scoped principals: an endpoint serves them only
//! when it was written to narrow what it reads and writes to the scope (devices,
//! operations, a device's telemetry and compliance). Every other endpoint (plugins,
//! policies, rollouts, tokens, the event log, fleet-wide counts) refuses them with 403,
//! so a new endpoint cannot leak by forgetting to filter (docs/security.md).

use crate::store::{DeviceQuery, Filters, Param, Store};
use serde::{Deserialize, Serialize};

/// The scope of a token or user, as stored (JSON) and as the API takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Only devices in one of these groups (static or dynamic), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Only devices of these types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_types: Vec<String>,
    /// Only devices whose `owner` is this user (device owners' self-service). Users only:
    /// a token has no name to own devices by.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own_devices: bool,
    /// Only these operation codes may be added (e.g. `DEVICE_LOCATE`, `DEVICE_RING`);
    /// empty: any code the role allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<String>,
}

/// Most names a scope lists in each of its lists.
const MAX_LIST: usize = 100;

impl Scope {
    /// Why this scope cannot be given, if it cannot. `for_user`: whether it is a user's
    /// (only a user can own devices).
    pub fn problem(&self, for_user: bool) -> Option<String> {
        if self.groups.is_empty() && self.device_types.is_empty() && !self.own_devices && self.operations.is_empty() {
            return Some(
                "the scope is empty: give groups, device_types, own_devices or operations (or no scope at all)".into(),
            );
        }
        if self.own_devices && !for_user {
            return Some("`own_devices` is for users: a token has no name to own devices by".into());
        }
        for (what, list) in
            [("groups", &self.groups), ("device_types", &self.device_types), ("operations", &self.operations)]
        {
            if list.len() > MAX_LIST {
                return Some(format!("`{what}` lists {}; list at most {MAX_LIST}", list.len()));
            }
            if let Some(bad) = list.iter().find(|n| n.is_empty() || n.chars().count() > 128) {
                return Some(format!("`{what}`: `{}` is not a name (1 to 128 characters)", bad.escape_debug()));
            }
        }
        None
    }

    /// The scope as stored: `None` is the whole fleet.
    pub fn parse_stored(stored: Option<&str>) -> Result<Option<Scope>, String> {
        match stored {
            None => Ok(None),
            Some(s) => serde_json::from_str(s).map(Some).map_err(|e| format!("stored scope `{s}`: {e}")),
        }
    }

    /// Whether the scope lets its holder add operations with this code.
    pub fn allows_code(&self, code: &str) -> bool {
        self.operations.is_empty() || self.operations.iter().any(|c| c == code)
    }

    /// A short description for error messages: "groups [lab], device types [android]".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.groups.is_empty() {
            parts.push(format!("groups [{}]", self.groups.join(", ")));
        }
        if !self.device_types.is_empty() {
            parts.push(format!("device types [{}]", self.device_types.join(", ")));
        }
        if self.own_devices {
            parts.push("own devices".to_string());
        }
        if !self.operations.is_empty() {
            parts.push(format!("operations [{}]", self.operations.join(", ")));
        }
        parts.join(", ")
    }

    /// A scope as the API shows it (JSON, `null` for none), in a line for a table:
    /// "groups lab, floor-2; types android; own devices" or "whole fleet".
    pub fn summary(v: &serde_json::Value) -> String {
        let Ok(Some(s)) = serde_json::from_value::<Option<Scope>>(v.clone()) else { return "whole fleet".into() };
        let mut parts = Vec::new();
        for (label, list) in [("groups", &s.groups), ("types", &s.device_types), ("operations", &s.operations)] {
            if !list.is_empty() {
                parts.push(format!("{label} {}", list.join(", ")));
            }
        }
        if s.own_devices {
            parts.push("own devices".into());
        }
        parts.join("; ")
    }

    /// The scope as the store selects devices, for a principal of `tenant`: group names
    /// looked up now (a group that no longer exists admits nothing; a tenant's principal
    /// names its tenant's groups, `groups::find`), `user` as the owner for `own_devices`.
    /// The reach is within `tenant`.
    pub async fn reach(
        &self,
        store: &Store,
        user: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Reach, crate::error::Error> {
        let mut reach = Reach {
            device_types: self.device_types.clone(),
            any_group: !self.groups.is_empty(),
            owner: None,
            tenant: tenant.map(str::to_string),
            ..Reach::default()
        };
        for name in &self.groups {
            if let Some(group) = crate::groups::find(store, tenant, name).await? {
                match group.query() {
                    Some(q) => reach.queries.push(q),
                    None => reach.groups.push(group.id),
                }
            }
        }
        if self.own_devices {
            // A scope that owns devices without a user (never stored: `problem`) admits none.
            reach.owner = Some(user.unwrap_or("").to_string());
            reach.none = user.is_none();
        }
        Ok(reach)
    }
}

/// The OpenAPI schema of a scope a request gives: the lists' bounds, and at least one
/// criterion (an empty scope is refused, never taken as "the whole fleet"). `for_user`:
/// whether `own_devices` may be given (a token has no name to own devices by).
fn request_schema(for_user: bool) -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{
        AdditionalProperties, AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder, Type,
    };
    let names = |what: &str| {
        ArrayBuilder::new()
            .items(ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(128)))
            .max_items(Some(MAX_LIST))
            .description(Some(what))
    };
    let mut fields = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("groups", names("Only devices in one of these groups (static or dynamic), by name."))
        .property("device_types", names("Only devices of these types."))
        .property("operations", names("Only these operation codes may be added."))
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let listed =
        |field: &str| ObjectBuilder::new().required(field).property(field, ArrayBuilder::new().min_items(Some(1)));
    let mut any = AnyOfBuilder::new().item(listed("groups")).item(listed("device_types")).item(listed("operations"));
    if for_user {
        fields = fields.property(
            "own_devices",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .description(Some("Only devices whose owner is the user (self-service).")),
        );
        any = any.item(
            ObjectBuilder::new()
                .required("own_devices")
                .property("own_devices", ObjectBuilder::new().schema_type(Type::Boolean).enum_values(Some([true]))),
        );
    }
    AllOfBuilder::new().item(fields).item(any).into()
}

/// A scope in a request, or `null`: the whole fleet (as when it is left out).
fn or_null(scope: utoipa::openapi::schema::Schema) -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
    AnyOfBuilder::new().item(scope).item(ObjectBuilder::new().schema_type(Type::Null)).into()
}

/// A user's scope in a request or a change.
pub fn user_schema() -> utoipa::openapi::schema::Schema {
    or_null(request_schema(true))
}

/// A token's scope in a request (no `own_devices`).
pub fn token_schema() -> utoipa::openapi::schema::Schema {
    or_null(request_schema(false))
}

/// A scope resolved for SQL: a condition over `devices d`.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    device_types: Vec<String>,
    /// Whether the scope names groups (then a device must be in one of those found).
    any_group: bool,
    groups: Vec<i64>,
    queries: Vec<DeviceQuery>,
    owner: Option<String>,
    none: bool,
    /// Only devices of this tenant (`tenants.rs`).
    tenant: Option<String>,
}

impl Reach {
    /// Only the devices of `tenant` (a principal of a tenant without a scope).
    pub fn tenant(tenant: &str) -> Reach {
        Reach { tenant: Some(tenant.to_string()), ..Reach::default() }
    }

    /// The tenant it is within, if one.
    pub fn tenant_of(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The condition over `devices d`, its values bound through `f`.
    pub(crate) fn condition(&self, postgres: bool, f: &mut Filters) -> String {
        if self.none {
            return "(1 = 0)".into();
        }
        let mut all = vec!["1 = 1".to_string()];
        if let Some(tenant) = &self.tenant {
            all.push(format!("d.tenant = {}", f.placeholder(Param::Text(tenant.clone()))));
        }
        if !self.device_types.is_empty() {
            let list: Vec<String> = self.device_types.iter().map(|t| f.placeholder(Param::Text(t.clone()))).collect();
            all.push(format!("d.device_type IN ({})", list.join(", ")));
        }
        if self.any_group {
            let mut any = vec!["1 = 0".to_string()];
            if !self.groups.is_empty() {
                let list: Vec<String> = self.groups.iter().map(|g| f.placeholder(Param::Int(*g))).collect();
                any.push(format!(
                    "d.id IN (SELECT m.device FROM group_members m WHERE m.group_id IN ({}))",
                    list.join(", ")
                ));
            }
            for q in &self.queries {
                any.push(q.condition(postgres, f));
            }
            all.push(format!("({})", any.join(" OR ")));
        }
        if let Some(owner) = &self.owner {
            all.push(format!("d.owner = {}", f.placeholder(Param::Text(owner.clone()))));
        }
        format!("({})", all.join(" AND "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_named() {
        assert!(Scope::default().problem(true).unwrap().contains("empty"));
        let own = Scope { own_devices: true, ..Scope::default() };
        assert!(own.problem(false).unwrap().contains("for users"));
        assert_eq!(own.problem(true), None);
        let bad = Scope { groups: vec!["".into()], ..Scope::default() };
        assert!(bad.problem(true).unwrap().contains("groups"));
        let long = Scope { device_types: vec!["a".into(); 101], ..Scope::default() };
        assert!(long.problem(true).unwrap().contains("at most 100"));
    }

    #[test]
    fn codes_narrow_only_when_listed() {
        assert!(Scope::default().allows_code("WIPE"));
        let s = Scope { operations: vec!["DEVICE_RING".into()], ..Scope::default() };
        assert!(s.allows_code("DEVICE_RING"));
        assert!(!s.allows_code("WIPE"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<Scope>(r#"{"group":["a"]}"#).is_err());
        let s: Scope = serde_json::from_str(r#"{"groups":["lab"],"device_types":["android"]}"#).unwrap();
        assert_eq!(s.describe(), "groups [lab], device types [android]");
        let v = serde_json::json!({"groups": ["lab", "b"], "own_devices": true});
        assert_eq!(Scope::summary(&v), "groups lab, b; own devices");
        assert_eq!(Scope::summary(&serde_json::Value::Null), "whole fleet");
    }

    #[test]
    fn the_condition_binds_every_value() {
        let reach = Reach {
            device_types: vec!["android".into()],
            any_group: true,
            groups: vec![7],
            owner: Some("alice".into()),
            ..Reach::default()
        };
        let mut f = Filters::new(1);
        let sql = reach.condition(false, &mut f);
        assert_eq!(
            sql,
            "(1 = 1 AND d.device_type IN ($1) AND (1 = 0 OR d.id IN (SELECT m.device FROM group_members m WHERE m.group_id IN ($2))) AND d.owner = $3)"
        );
        assert_eq!(f.params.len(), 3);
        let acme = Reach::tenant("acme");
        let mut f = Filters::new(1);
        assert_eq!(acme.condition(false, &mut f), "(1 = 1 AND d.tenant = $1)");
        assert_eq!(f.params.len(), 1);
        // Named groups of which none exists admit nothing.
        let gone = Reach { any_group: true, ..Reach::default() };
        assert_eq!(gone.condition(false, &mut Filters::new(1)), "(1 = 1 AND (1 = 0))");
    }
}
