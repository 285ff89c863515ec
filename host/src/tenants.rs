//! Tenants: separate fleets on one server (an MSP's customers, an enterprise's
//! subsidiaries). A tenant owns devices, and through them their operations, telemetry,
//! certificates, keys and compliance. An admin token or user of a tenant reaches only that
//! tenant's devices, through the endpoints written to narrow what they serve (the same
//! deny-by-default rule as scopes: `scope.rs`); a token or user of no tenant is one of the
//! server's operators and reaches every tenant. Every token and user made before tenants
//! is such an operator, and every device is in [`DEFAULT`], so a single-tenant server
//! notices nothing (docs/security.md, "Tenants").
//!
//! A device joins the tenant of the enrollment token it enrolls with (or the importer's
//! tenant, for a pre-registered one); a pre-registered identity is claimed only with a
//! token of its own tenant. Device identities (type and id) stay server-wide, since
//! devices name themselves by them on every front.

use crate::error::{Error, Result};
use crate::store::{NewEvent, Store, TenantRow};

/// The tenant devices are in unless put in another.
pub const DEFAULT: &str = "default";

/// Why `name` cannot be a tenant's name, if it cannot: it must be 1-64 lower-case letters,
/// digits and `-`, starting with a letter or digit (it appears in URLs and CSV files; the
/// API's schemas state it as `^[a-z0-9][a-z0-9-]{0,63}$`).
pub fn name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (!ok).then(|| format!("tenant name `{}`: use 1-64 lower-case letters, digits and -", name.escape_debug()))
}

/// The stored name of what a caller of `tenant` names `given` (a group, a webhook): a
/// tenant's things are named `TENANT/NAME`, so tenants never collide on (or learn of)
/// each other's names; a tenant's caller may leave out its `TENANT/`, an operator gives
/// the whole name.
pub fn qualified(tenant: Option<&str>, given: &str) -> String {
    match tenant {
        Some(t) if !given.strip_prefix(t).is_some_and(|rest| rest.starts_with('/')) => format!("{t}/{given}"),
        _ => given.to_string(),
    }
}

fn event(kind: &str, name: &str, actor: &str, data: serde_json::Value) -> NewEvent {
    NewEvent {
        event_type: format!("tenant.{kind}"),
        actor: Some(actor.to_string()),
        target: Some(format!("tenant/{name}")),
        data: Some(data.to_string()),
        ..NewEvent::default()
    }
}

pub async fn create(store: &Store, name: &str, description: &str, actor: &str) -> Result<TenantRow> {
    if let Some(p) = name_problem(name) {
        return Err(Error::invalid("invalid", p));
    }
    if description.chars().count() > 256 {
        return Err(Error::invalid("invalid", "`description` is longer than 256 characters"));
    }
    let e = event("created", name, actor, serde_json::json!({ "tenant": name, "description": description }));
    Ok(store.create_tenant(name, description, &e).await?)
}

/// Remove an empty tenant: refused for [`DEFAULT`], and while it still holds devices
/// (removed ones too: they can be restored), users or live admin tokens. Its enrollment
/// tokens, groups, webhooks and policies go with it.
pub async fn remove(store: &Store, name: &str, actor: &str) -> Result<()> {
    if name == DEFAULT {
        return Err(Error::conflict("refused", "the default tenant cannot be removed"));
    }
    let e = event("removed", name, actor, serde_json::json!({ "tenant": name }));
    Ok(store.delete_tenant(name, &e).await?)
}

/// The tenant a principal of `own` (its tenant; `None`: an operator of the server) acts
/// in when it asks for `asked`: its own (asking for another is refused); an operator's
/// choice, which must exist; else [`DEFAULT`].
pub async fn acting_in(store: &Store, own: Option<&str>, asked: Option<&str>) -> Result<String> {
    match (own, asked) {
        (Some(own), Some(asked)) if own != asked => Err(Error::forbidden(format!(
            "this caller belongs to tenant `{own}` and cannot act in `{}`",
            asked.escape_debug()
        ))),
        (Some(own), _) => Ok(own.to_string()),
        (None, Some(asked)) => {
            exists(store, asked).await?;
            Ok(asked.to_string())
        }
        (None, None) => Ok(DEFAULT.to_string()),
    }
}

/// The tenant of a token or user that a principal of `own` makes, asking for `asked`: as
/// [`acting_in`], except that an operator asking for none makes another operator.
pub async fn of_new_principal(store: &Store, own: Option<&str>, asked: Option<&str>) -> Result<Option<String>> {
    match (own, asked) {
        (None, None) => Ok(None),
        (own, asked) => acting_in(store, own, asked).await.map(Some),
    }
}

/// Whether devices of `tenant` may be of `device_type`: a shared type (first-party, or
/// uploaded by the operators) or the tenant's own plugin's. Another tenant's type does
/// not exist for it: callers answer as for a type that is not loaded.
pub async fn may_use_type(store: &Store, device_type: &str, tenant: &str) -> Result<bool> {
    Ok(store.plugin_owner(device_type).await?.is_none_or(|owner| owner == tenant))
}

/// Refuse an upload of `adding` bytes by `tenant` that would take its uploads (artifacts
/// and its plugins' components) over `quota` bytes (0: no limit): a tenant's admin must
/// not be able to fill the server's disk or database, which every tenant shares.
pub async fn check_storage(store: &Store, tenant: &str, adding: u64, quota: u64) -> Result<()> {
    if quota == 0 {
        return Ok(());
    }
    let used = u64::try_from(store.tenant_storage(tenant).await?).unwrap_or(0);
    if used.saturating_add(adding) > quota {
        return Err(Error::conflict(
            "quota",
            format!(
                "tenant `{tenant}`'s uploads take {} MiB; {} MiB more would pass its quota of {} MiB: remove \
                 artifacts or ask an operator (--tenant-storage-mb)",
                used >> 20,
                adding.div_ceil(1 << 20),
                quota >> 20
            ),
        ));
    }
    Ok(())
}

/// Refuse a tenant that does not exist, naming it.
pub async fn exists(store: &Store, name: &str) -> Result<()> {
    if store.tenant_exists(name).await? {
        return Ok(());
    }
    Err(Error::invalid("unknown_tenant", format!("no tenant `{}`: an operator adds it first", name.escape_debug())))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tenants_names_carry_its_tenant_once() {
        use super::qualified;
        assert_eq!(qualified(Some("acme"), "lab"), "acme/lab");
        assert_eq!(qualified(Some("acme"), "acme/lab"), "acme/lab");
        // Another tenant's whole name stays inside the caller's tenant.
        assert_eq!(qualified(Some("acme"), "globex/lab"), "acme/globex/lab");
        assert_eq!(qualified(Some("acme"), "acmelab"), "acme/acmelab");
        assert_eq!(qualified(None, "globex/lab"), "globex/lab");
        assert_eq!(qualified(None, "lab"), "lab");
    }

    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["default", "acme", "acme-eu-2", "7"] {
            assert_eq!(name_problem(good), None, "{good}");
        }
        for bad in ["", "Acme", "-acme", "acme corp", "acme/eu", &"a".repeat(65)] {
            assert!(name_problem(bad).is_some(), "{bad}");
        }
    }
}
