//! The admin REST API under `/api/v1`. JSON in and out; errors are
//! `{"error": {"code": "<stable code>", "message": "<what was wrong>"}}`.

use super::{
    AppState, ErrorBody, analytics, artifacts, audit, devices, enrollment, events, fleet, groups, operations,
    plugin_settings, plugins, policies, rollouts, tenants, tokens, users, webhooks,
};
use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

/// The admin API's routes and its OpenAPI document, built from the same handler list
/// (`routes!`), so the document cannot drift from what is served.
pub(super) fn router(state: AppState) -> Router<AppState> {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(devices::list_devices))
        .routes(routes!(fleet::fleet))
        .routes(routes!(fleet::list_device_types))
        .routes(routes!(devices::get_device, devices::update_device, devices::remove_device))
        .routes(routes!(devices::set_tags))
        .routes(routes!(devices::device_telemetry))
        .routes(routes!(analytics::device_series))
        .routes(routes!(analytics::group_metric))
        .routes(routes!(analytics::list_rules, analytics::create_rule))
        .routes(routes!(analytics::get_rule, analytics::update_rule, analytics::delete_rule))
        .routes(routes!(analytics::list_alerts))
        .routes(routes!(analytics::get_alert))
        .routes(routes!(analytics::resolve_alert))
        .routes(routes!(devices::revoke_credentials))
        .routes(routes!(devices::certificates))
        .routes(routes!(devices::revoke_certificate))
        .routes(routes!(devices::set_psk, devices::psk))
        .routes(routes!(devices::device_ca))
        .routes(routes!(devices::restore_device))
        .routes(routes!(enrollment::import_devices))
        .routes(routes!(groups::list_groups, groups::create_group))
        .routes(routes!(groups::preview_group))
        .routes(routes!(groups::get_group, groups::delete_group))
        .routes(routes!(groups::add_members))
        .routes(routes!(operations::list_operations, operations::add_operation))
        .routes(routes!(operations::get_operation))
        .routes(routes!(operations::cancel_operation))
        .routes(routes!(operations::list_activities))
        .routes(routes!(operations::get_activity))
        .routes(routes!(operations::cancel_activity))
        .routes(routes!(plugins::list_plugins, plugins::upload_plugin))
        .routes(routes!(plugins::get_plugin))
        .routes(routes!(plugins::rollback_plugin))
        .routes(routes!(plugins::suspend_plugin))
        .routes(routes!(plugins::enable_plugin))
        .routes(routes!(plugins::get_grants, plugins::put_grants))
        .routes(routes!(plugins::list_keys, plugins::add_key))
        .routes(routes!(plugins::remove_key))
        .routes(routes!(plugins::get_settings, plugins::put_settings))
        .routes(routes!(plugin_settings::get_plugin_settings, plugin_settings::put_plugin_settings))
        .routes(routes!(
            plugin_settings::get_tenant_plugin_settings,
            plugin_settings::put_tenant_plugin_settings,
            plugin_settings::delete_tenant_plugin_settings
        ))
        .routes(routes!(tenants::list_tenants, tenants::create_tenant))
        .routes(routes!(tenants::get_tenant, tenants::delete_tenant))
        .routes(routes!(tokens::list_admin_tokens, tokens::create_admin_token))
        .routes(routes!(tokens::revoke_admin_token))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(users::get_user, users::update_user, users::delete_user))
        .routes(routes!(users::login))
        .routes(routes!(users::logout))
        .routes(routes!(users::whoami))
        .routes(routes!(audit::list_audit))
        .routes(routes!(events::events))
        .routes(routes!(webhooks::list_webhooks, webhooks::create_webhook))
        .routes(routes!(webhooks::get_webhook, webhooks::delete_webhook))
        .routes(routes!(webhooks::enable_webhook))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(enrollment::create_enrollment_token))
        .routes(routes!(policies::list_policies, policies::create_policy))
        .routes(routes!(policies::get_policy, policies::update_policy, policies::delete_policy))
        .routes(routes!(policies::activate_policy))
        .routes(routes!(policies::deactivate_policy))
        .routes(routes!(policies::list_revisions))
        .routes(routes!(policies::restore_policy))
        .routes(routes!(policies::device_policy))
        .routes(routes!(policies::device_compliance))
        .routes(routes!(policies::policy_compliance))
        // An image is larger than any other body: its own limit, streamed to disk.
        .routes(
            routes!(artifacts::list_artifacts, artifacts::upload_artifact)
                .layer(axum::extract::DefaultBodyLimit::max(crate::artifacts::MAX_ARTIFACT as usize + (1 << 20))),
        )
        .routes(routes!(artifacts::get_artifact, artifacts::delete_artifact))
        .routes(routes!(rollouts::list_rollouts, rollouts::create_rollout))
        .routes(routes!(rollouts::get_rollout, rollouts::delete_rollout))
        .routes(routes!(rollouts::rollout_devices))
        .routes(routes!(rollouts::pause_rollout))
        .routes(routes!(rollouts::resume_rollout))
        .routes(routes!(rollouts::cancel_rollout))
        .routes(routes!(rollouts::abort_rollout))
        .routes(routes!(rollouts::advance_rollout))
        .routes(routes!(rollouts::rollback_rollout))
        .split_for_parts();
    let document = Bytes::from(api.to_pretty_json().unwrap_or_default());
    // Uploads are the large bodies; every handler authenticates before reading its body.
    let router = router.layer(axum::extract::DefaultBodyLimit::max(plugins::MAX_UPLOAD));
    // After routing, so the trail records the route (`MatchedPath`) as the action.
    let router = router.route_layer(axum::middleware::from_fn_with_state(state, audit::record));
    router.route(
        "/api/v1/openapi.json",
        get(move || {
            let document = document.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], document) }
        }),
    )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Drover admin API",
        description = "Devices, groups, operations and plugins of a Drover server. Every call takes an \
                       admin token (`Authorization: Bearer drv_admin_…`) whose role is viewer, operator or admin. \
                       Errors are `{\"error\": {\"code\", \"message\"}}` with a stable code."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "devices", description = "Enrolled and pre-registered devices, their tags and credentials"),
        (name = "groups", description = "Static groups (member lists) and dynamic groups (saved queries)"),
        (name = "operations", description = "Operations and activities: add, follow, cancel"),
        (name = "plugins", description = "Plugin uploads, versions, rollback, suspension, grants and publisher keys"),
        (name = "policies", description = "Policies, their revisions, and each device's effective policy"),
        (name = "analytics", description = "Telemetry series and group metrics, alert rules (geo-fences, speed, thresholds, anomalies) and alerts"),
        (name = "rollouts", description = "Artifacts, and their staged rollouts with abort criteria and rollback"),
        (name = "admin", description = "Plugin settings, tokens, server settings"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The error answers every endpoint can give.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum Errors {
    /// The request is malformed or invalid; the message names the problem.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No admin token, or an unknown or revoked one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token's role does not allow this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// What the path names does not exist.
    #[response(status = 404)]
    NotFound(ErrorBody),
}

/// Items per page unless asked otherwise, and at most.
pub(super) const DEFAULT_PAGE: i64 = 100;
pub(super) const MAX_PAGE: i64 = 1000;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct Page {
    /// Return items after this id (the previous page's `next_after`).
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

impl Page {
    pub fn bounds(&self) -> (i64, i64) {
        (self.after.unwrap_or(0), self.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE))
    }
}

/// The `next_after` of a page: the last id when the page is full.
pub(super) fn next_after<T>(rows: &[T], limit: i64, id: impl Fn(&T) -> i64) -> Option<i64> {
    (rows.len() as i64 == limit).then(|| rows.last().map(id)).flatten()
}

/// Where a listing's page starts: `after` (oldest first) or `before` (newest first; give
/// `before` past the largest id, e.g. 9007199254740991, for the newest page).
pub(super) fn cursor(after: Option<i64>, before: Option<i64>) -> Result<crate::store::Cursor, super::ApiError> {
    match (after, before) {
        (Some(_), Some(_)) => Err(super::ApiError::bad_request("invalid_query", "give `after` or `before`, not both")),
        (_, Some(b)) => Ok(crate::store::Cursor::Before(b)),
        (a, None) => Ok(crate::store::Cursor::After(a.unwrap_or(0))),
    }
}

/// The next page's cursor of a full page: `(next_after, next_before)`, one of them set.
pub(super) fn next_cursor<T>(
    rows: &[T],
    limit: i64,
    cursor: crate::store::Cursor,
    id: impl Fn(&T) -> i64,
) -> (Option<i64>, Option<i64>) {
    let next = next_after(rows, limit, id);
    match cursor {
        crate::store::Cursor::After(_) => (next, None),
        crate::store::Cursor::Before(_) => (None, next),
    }
}

/// A device named by type and id, as the API addresses devices.
#[derive(Deserialize, Serialize, Debug, Clone, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceRef {
    #[serde(rename = "type")]
    pub device_type: String,
    pub id: String,
}

impl From<&DeviceRef> for crate::operations::DeviceName {
    fn from(r: &DeviceRef) -> Self {
        crate::operations::DeviceName { device_type: r.device_type.clone(), device_id: r.id.clone() }
    }
}
