//! `drover token …`, `drover user …`, `drover login`, `drover webhook …`, `drover policy …`, `drover artifact …`,
//! `drover rollout …` and `drover audit` (binary only): admin tokens, webhook
//! subscriptions, policies, rollouts and the audit trail of a running server, over its
//! admin API, as `plugin list|show|…` are.

use crate::ServerArgs;
use crate::lifecycle::call;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, UNIX_EPOCH};

/// A time in the API's form (ms since the epoch) as RFC 3339, to the second, UTC.
pub fn when(ms: &Value) -> String {
    // What the server sent: a time past what SystemTime holds shows as "-", not a panic.
    match ms.as_i64().filter(|ms| *ms >= 0).and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms as u64))) {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "-".into(),
    }
}

/// The newest `last` items of a listing the API pages oldest first (`after`, `next_after`):
/// `path` is the listing with its query, to which `after` and `limit` are added.
async fn newest(server: &ServerArgs, path: &str, last: usize) -> anyhow::Result<std::collections::VecDeque<Value>> {
    let mut rows = std::collections::VecDeque::new();
    let mut after = 0i64;
    let sep = if path.contains('?') { '&' } else { '?' };
    loop {
        let body = call(server, Method::GET, &format!("{path}{sep}after={after}&limit=1000"), None).await?;
        for item in body["items"].as_array().into_iter().flatten() {
            rows.push_back(item.clone());
            if rows.len() > last {
                rows.pop_front();
            }
        }
        match body["next_after"].as_i64() {
            Some(n) => after = n,
            None => return Ok(rows),
        }
    }
}

/// With `--output json`: print the API's answer as it came and say so.
pub fn printed(server: &ServerArgs, body: &Value) -> bool {
    if server.json() {
        println!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
    }
    server.json()
}

pub fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

pub async fn token_list(server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, "admin-tokens", None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("{:<24} {:<9} {:<8} {:<16} {:<21} {:<21} scope", "name", "role", "state", "tenant", "created", "expires");
    for t in body["items"].as_array().into_iter().flatten() {
        let expires = if t["expires_at"].is_null() { "never".into() } else { when(&t["expires_at"]) };
        let scope = match t["user"].as_str() {
            Some(u) => format!("login of user {u}"),
            None => scope_text(&t["scope"]),
        };
        let tenant = t["tenant"].as_str().unwrap_or("(every)");
        println!(
            "{:<24} {:<9} {:<8} {tenant:<16} {:<21} {expires:<21} {scope}",
            text(&t["name"]),
            text(&t["role"]),
            text(&t["state"]),
            when(&t["created_at"])
        );
    }
    Ok(())
}

/// What part of the fleet a token or user reaches (docs/security.md, "Users and scoped
/// roles"); no flag: all of it.
#[derive(clap::Args, Default)]
pub struct ScopeArgs {
    /// Only devices in this group (repeat for several).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Only devices of this type (repeat for several).
    #[arg(long = "device-type")]
    pub device_types: Vec<String>,
    /// Only devices whose owner is the user (users only: self-service).
    #[arg(long)]
    pub own_devices: bool,
    /// Only this operation code may be added (repeat for several).
    #[arg(long = "operation")]
    pub operations: Vec<String>,
}

impl ScopeArgs {
    pub fn scope(&self) -> Option<Value> {
        (!self.groups.is_empty() || !self.device_types.is_empty() || self.own_devices || !self.operations.is_empty())
            .then(|| {
                json!({ "groups": self.groups, "device_types": self.device_types,
                        "own_devices": self.own_devices, "operations": self.operations })
            })
    }
}

fn scope_text(v: &Value) -> String {
    drover::scope::Scope::summary(v)
}

/// The tenant a token or user belongs to (docs/security.md, "Tenants").
#[derive(clap::Args, Default)]
pub struct TenantArg {
    /// Belongs to this tenant: reaches only its devices [default: an operator of the
    /// server, every tenant]
    #[arg(long)]
    pub tenant: Option<String>,
}

pub async fn token_create(
    name: String,
    role: String,
    expires_in: Option<humantime::Duration>,
    scope: ScopeArgs,
    tenant: TenantArg,
    server: ServerArgs,
) -> anyhow::Result<()> {
    let expires_in = expires_in.map(|d| d.as_secs().max(1));
    let body = call(
        &server,
        Method::POST,
        "admin-tokens",
        Some(json!({ "name": name, "role": role, "expires_in": expires_in, "scope": scope.scope(),
                     "tenant": tenant.tenant })),
    )
    .await?;
    let expires = if body["expires_at"].is_null() { "never".into() } else { when(&body["expires_at"]) };
    eprintln!(
        "created {} (role {}, expires {expires}); the token is shown this once:",
        text(&body["name"]),
        text(&body["role"])
    );
    println!("{}", text(&body["token"]));
    Ok(())
}

pub async fn token_revoke(name: String, server: ServerArgs) -> anyhow::Result<()> {
    let path = format!("admin-tokens/{}", crate::lifecycle::segment(&name));
    call(&server, Method::DELETE, &path, None).await?;
    println!("revoked {name}");
    Ok(())
}

/// A password: `DROVER_PASSWORD`, else the first line of standard input (so it is never
/// an argument, which other users of the machine could read in the process list).
fn password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("DROVER_PASSWORD") {
        return Ok(p);
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("password: ");
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    anyhow::ensure!(!p.is_empty(), "no password: set DROVER_PASSWORD or give it on standard input");
    Ok(p)
}

pub async fn user_list(server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, "users", None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("{:<24} {:<9} {:<9} scope", "name", "role", "state");
    let now = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    for u in body["items"].as_array().into_iter().flatten() {
        let state = if !u["disabled_at"].is_null() {
            "disabled"
        } else if u["locked_until"].as_i64().is_some_and(|t| t > now) {
            "locked"
        } else {
            "enabled"
        };
        println!("{:<24} {:<9} {state:<9} {}", text(&u["name"]), text(&u["role"]), scope_text(&u["scope"]));
    }
    Ok(())
}

pub async fn user_add(
    name: String,
    role: String,
    no_password: bool,
    scope: ScopeArgs,
    tenant: TenantArg,
    server: ServerArgs,
) -> anyhow::Result<()> {
    let password = if no_password { None } else { Some(password()?) };
    let body =
        json!({ "name": name, "password": password, "role": role, "scope": scope.scope(), "tenant": tenant.tenant });
    let u = call(&server, Method::POST, "users", Some(body)).await?;
    if !printed(&server, &u) {
        println!("added user {} (role {}, {})", text(&u["name"]), text(&u["role"]), scope_text(&u["scope"]));
    }
    Ok(())
}

/// What `drover user set` changes.
#[derive(clap::Args)]
pub struct UserSet {
    /// A new role: viewer, operator or admin.
    #[arg(long)]
    pub role: Option<String>,
    /// Read a new password (DROVER_PASSWORD or standard input); ends the user's sessions.
    #[arg(long)]
    pub password: bool,
    /// Refuse the user's logins and end their sessions.
    #[arg(long, conflicts_with = "enable")]
    pub disable: bool,
    #[arg(long)]
    pub enable: bool,
    /// Reach the whole fleet again (drop the scope).
    #[arg(long)]
    pub whole_fleet: bool,
    #[command(flatten)]
    pub scope: ScopeArgs,
}

pub async fn user_set(name: String, set: UserSet, server: ServerArgs) -> anyhow::Result<()> {
    let mut body = json!({});
    if let Some(r) = &set.role {
        body["role"] = json!(r);
    }
    if set.password {
        body["password"] = json!(password()?);
    }
    if set.disable || set.enable {
        body["disabled"] = json!(set.disable);
    }
    match (set.whole_fleet, set.scope.scope()) {
        (true, Some(_)) => anyhow::bail!("--whole-fleet drops the scope: give it without scope flags"),
        (true, None) => body["scope"] = Value::Null,
        (false, Some(s)) => body["scope"] = s,
        (false, None) => {}
    }
    let path = format!("users/{}", crate::lifecycle::segment(&name));
    let u = call(&server, Method::PATCH, &path, Some(body)).await?;
    if !printed(&server, &u) {
        let state = if u["disabled_at"].is_null() { "enabled" } else { "disabled" };
        println!("{} (role {}, {state}, {})", text(&u["name"]), text(&u["role"]), scope_text(&u["scope"]));
    }
    Ok(())
}

pub async fn user_remove(name: String, server: ServerArgs) -> anyhow::Result<()> {
    let path = format!("users/{}", crate::lifecycle::segment(&name));
    call(&server, Method::DELETE, &path, None).await?;
    println!("removed user {name}");
    Ok(())
}

/// Log in as a user: the token goes to standard output (for DROVER_ADMIN_TOKEN or a
/// profile), what it is to standard error.
pub async fn login(name: String, ttl: Option<humantime::Duration>, server: ServerArgs) -> anyhow::Result<()> {
    let password = password()?;
    let body = json!({ "name": name, "password": password, "ttl_secs": ttl.map(|d| d.as_secs()) });
    let answer = crate::lifecycle::call_anonymous(&server, Method::POST, "login", Some(body)).await?;
    eprintln!(
        "logged in as {} (role {}) until {}; the token is shown this once:",
        text(&answer["user"]),
        text(&answer["role"]),
        when(&answer["expires_at"])
    );
    println!("{}", text(&answer["token"]));
    Ok(())
}

/// Filters of `drover audit`, as the API takes them.
#[derive(clap::Args)]
pub struct AuditFilter {
    /// Only this token's actions.
    #[arg(long)]
    actor: Option<String>,
    /// Only this route, e.g. "POST /api/v1/groups".
    #[arg(long)]
    action: Option<String>,
    /// Only paths starting with this.
    #[arg(long)]
    target: Option<String>,
    /// ok, refused or failed.
    #[arg(long)]
    outcome: Option<String>,
    /// Only this recent: 1h, 2d, 30m …
    #[arg(long)]
    since: Option<humantime::Duration>,
    /// At most this many entries, the newest.
    #[arg(long, default_value_t = 50)]
    last: usize,
}

pub async fn audit(filter: AuditFilter, server: ServerArgs) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = Vec::new();
    for (key, value) in
        [("actor", &filter.actor), ("action", &filter.action), ("target", &filter.target), ("outcome", &filter.outcome)]
    {
        if let Some(v) = value {
            query.push((key, v.clone()));
        }
    }
    if let Some(d) = filter.since {
        let now = std::time::SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        query.push(("since", now.saturating_sub(d.as_millis() as u64).to_string()));
    }
    let encoded: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", crate::lifecycle::segment(v))).collect();
    let path = if encoded.is_empty() { "audit".to_string() } else { format!("audit?{}", encoded.join("&")) };
    let rows = newest(&server, &path, filter.last).await?;
    if printed(&server, &json!({"items": rows})) {
        return Ok(());
    }
    for e in rows {
        let action = text(&e["action"]);
        let route = action.split_once(' ').map_or(action, |(_, r)| r);
        let target = text(&e["target"]);
        let target = if target == route { String::new() } else { format!(" -> {target}") };
        println!(
            "{}  {:<24} {:<8} {:<4} {action}{target}",
            when(&e["at"]),
            format!("{} ({})", text(&e["actor"]), text(&e["role"])),
            text(&e["outcome"]),
            e["status"].as_i64().map(|s| s.to_string()).unwrap_or_default(),
        );
    }
    Ok(())
}

pub async fn webhook_list(server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, "webhooks", None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    for w in body["items"].as_array().into_iter().flatten() {
        let state = if w["enabled"].as_bool() == Some(true) { "enabled" } else { "disabled" };
        let types: Vec<&str> = w["types"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        println!(
            "{:<20} {:<8} after {:<8} failures {:<3} {} [{}]",
            text(&w["name"]),
            state,
            w["cursor"].as_i64().unwrap_or(0),
            w["failures"].as_i64().unwrap_or(0),
            text(&w["url"]),
            if types.is_empty() { "every event".to_string() } else { types.join(", ") },
        );
        if let Some(why) = w["disabled_reason"].as_str() {
            println!("  disabled: {why}");
        }
    }
    Ok(())
}

/// What a new subscription asks for.
pub struct WebhookFilter {
    pub types: Vec<String>,
    pub device_type: Option<String>,
    pub group: Option<String>,
    pub tag: Option<String>,
    pub tenant: Option<String>,
}

pub async fn webhook_add(name: String, url: String, f: WebhookFilter, server: ServerArgs) -> anyhow::Result<()> {
    let request = json!({
        "name": name, "url": url, "types": f.types, "device_type": f.device_type, "group": f.group, "tag": f.tag,
        "tenant": f.tenant,
    });
    let body = call(&server, Method::POST, "webhooks", Some(request)).await?;
    eprintln!("subscribed {} to {}; its signing secret is shown this once:", text(&body["name"]), text(&body["url"]));
    println!("{}", text(&body["secret"]));
    Ok(())
}

pub async fn webhook_remove(name: String, server: ServerArgs) -> anyhow::Result<()> {
    call(&server, Method::DELETE, &format!("webhooks/{}", crate::lifecycle::segment(&name)), None).await?;
    println!("removed {name}");
    Ok(())
}

pub async fn webhook_enable(name: String, server: ServerArgs) -> anyhow::Result<()> {
    call(&server, Method::POST, &format!("webhooks/{}/enable", crate::lifecycle::segment(&name)), None).await?;
    println!("enabled {name}: delivery resumes with the event that failed");
    Ok(())
}

pub async fn webhook_deliveries(name: String, last: usize, server: ServerArgs) -> anyhow::Result<()> {
    let path = format!("webhooks/{}/deliveries", crate::lifecycle::segment(&name));
    let rows = newest(&server, &path, last).await?;
    if printed(&server, &json!({"items": rows})) {
        return Ok(());
    }
    for d in rows {
        let outcome = match (d["status"].as_i64(), d["error"].as_str()) {
            (Some(s), None) => s.to_string(),
            (Some(s), Some(e)) => format!("{s} {e}"),
            (None, Some(e)) => e.to_string(),
            (None, None) => "-".into(),
        };
        println!(
            "{}  event {:<8} attempt {:<3} {:>6} ms  {outcome}",
            when(&d["at"]),
            d["event"].as_i64().unwrap_or(0),
            d["attempt"].as_i64().unwrap_or(0),
            d["latency_ms"].as_i64().unwrap_or(0),
        );
    }
    Ok(())
}

pub async fn policy_list(server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, "policies", None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("{:<24} {:>8} {:<8} {:>4} {:<24} applies to", "name", "priority", "state", "rev", "device types");
    for p in body.as_array().into_iter().flatten() {
        let types: Vec<&str> = p["profiles"].as_object().into_iter().flatten().map(|(k, _)| k.as_str()).collect();
        let state = if p["active"].as_bool() == Some(true) { "active" } else { "inactive" };
        let applies =
            p["applies_to"].as_object().filter(|o| !o.is_empty()).map(|o| Value::Object(o.clone()).to_string());
        println!(
            "{:<24} {:>8} {:<8} {:>4} {:<24} {}",
            text(&p["name"]),
            p["priority"].as_i64().unwrap_or(0),
            state,
            p["revision"].as_i64().unwrap_or(0),
            types.join(","),
            applies.unwrap_or_else(|| "every device of its types".into()),
        );
    }
    Ok(())
}

pub async fn policy_show(name: String, server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, &format!("policies/{}", crate::lifecycle::segment(&name)), None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

/// What a change did, as the API tells it.
fn recomputed(body: &Value) -> String {
    let r = if body["recomputed"].is_object() { &body["recomputed"] } else { body };
    format!(
        "{} devices looked at, {} sent a new bundle, {} left without policy",
        r["devices"].as_u64().unwrap_or(0),
        r["assigned"].as_u64().unwrap_or(0),
        r["cleared"].as_u64().unwrap_or(0)
    )
}

pub async fn policy_apply(file: std::path::PathBuf, server: ServerArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut policy: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not a JSON policy", file.display()))?;
    let fields = policy.as_object_mut().with_context(|| format!("{}: a policy is a JSON object", file.display()))?;
    let name = fields
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("{}: `name` is missing", file.display()))?;
    // What `show` prints back is accepted: the fields the server keeps are dropped.
    for kept in ["revision", "created_by", "created_at", "updated_at", "recomputed"] {
        fields.remove(kept);
    }
    let path = format!("policies/{}", crate::lifecycle::segment(&name));
    let exists = call(&server, Method::GET, &path, None).await.is_ok();
    let body = if exists {
        let active = fields.remove("active");
        // Name and tenant are the policy's for good; the body is its content.
        fields.remove("name");
        fields.remove("tenant");
        let body = call(&server, Method::PUT, &path, Some(policy)).await?;
        if let Some(active) = active.and_then(|a| a.as_bool()) {
            let verb = if active { "activate" } else { "deactivate" };
            call(&server, Method::POST, &format!("{path}/{verb}"), None).await?;
        }
        body
    } else {
        call(&server, Method::POST, "policies", Some(policy)).await?
    };
    println!("{name}: revision {}; {}", body["revision"].as_i64().unwrap_or(0), recomputed(&body));
    Ok(())
}

pub async fn policy_act(name: String, verb: &str, revision: Option<i64>, server: ServerArgs) -> anyhow::Result<()> {
    let path = format!("policies/{}/{verb}", crate::lifecycle::segment(&name));
    let body = call(&server, Method::POST, &path, revision.map(|r| json!({ "revision": r }))).await?;
    println!("{name}: {verb}d, revision {}; {}", body["revision"].as_i64().unwrap_or(0), recomputed(&body));
    Ok(())
}

pub async fn policy_remove(name: String, server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::DELETE, &format!("policies/{}", crate::lifecycle::segment(&name)), None).await?;
    println!("removed {name}; {}", recomputed(&body));
    Ok(())
}

pub async fn policy_revisions(name: String, server: ServerArgs) -> anyhow::Result<()> {
    let path = format!("policies/{}/revisions", crate::lifecycle::segment(&name));
    let body = call(&server, Method::GET, &path, None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    for r in body.as_array().into_iter().flatten() {
        println!(
            "{:>4} {:<21} {:<24} priority {}",
            r["revision"].as_i64().unwrap_or(0),
            when(&r["created_at"]),
            text(&r["created_by"]),
            r["priority"].as_i64().unwrap_or(0)
        );
    }
    Ok(())
}

/// What `drover artifact upload` sends.
pub struct ArtifactUpload {
    pub file: std::path::PathBuf,
    pub name: String,
    pub version: String,
    pub types: String,
    pub models: Option<String>,
    pub signature: Option<std::path::PathBuf>,
    pub tenant: Option<String>,
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

pub async fn artifact_upload(a: ArtifactUpload, server: ServerArgs) -> anyhow::Result<()> {
    let bytes = read(&a.file)?;
    let mut form =
        reqwest::multipart::Form::new().text("name", a.name).text("version", a.version).text("device_types", a.types);
    if let Some(m) = a.models {
        form = form.text("models", m);
    }
    if let Some(t) = a.tenant {
        form = form.text("tenant", t);
    }
    if let Some(sig) = &a.signature {
        form = form.part("signature", reqwest::multipart::Part::bytes(read(sig)?).file_name("image.sig"));
    }
    // The file goes last: the server streams it to storage as it reads the fields.
    form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name("image.bin"));
    let a = crate::lifecycle::post_form(&server, "artifacts", form).await?;
    println!(
        "{} {}: {} bytes, sha256 {}{}",
        text(&a["name"]),
        text(&a["version"]),
        a["size"].as_i64().unwrap_or(0),
        text(&a["sha256"]),
        a["signed_by"].as_str().map(|k| format!(", signed by key {k}")).unwrap_or_else(|| ", unsigned".into())
    );
    Ok(())
}

pub async fn artifact_list(server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, "artifacts", None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("{:<20} {:<10} {:<16} {:>10} {:<16} signed by", "name", "version", "types", "bytes", "sha256");
    for a in body["items"].as_array().into_iter().flatten() {
        let types: Vec<&str> = a["device_types"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        println!(
            "{:<20} {:<10} {:<16} {:>10} {:<16} {}",
            text(&a["name"]),
            text(&a["version"]),
            types.join(","),
            a["size"].as_i64().unwrap_or(0),
            &text(&a["sha256"])[..16.min(text(&a["sha256"]).len())],
            text(&a["signed_by"])
        );
    }
    Ok(())
}

pub async fn artifact_remove(name: String, version: String, server: ServerArgs) -> anyhow::Result<()> {
    let path = format!("artifacts/{}/{}", crate::lifecycle::segment(&name), crate::lifecycle::segment(&version));
    call(&server, Method::DELETE, &path, None).await?;
    println!("removed {name} {version}");
    Ok(())
}

pub async fn rollout_create(file: std::path::PathBuf, server: ServerArgs) -> anyhow::Result<()> {
    let spec: Value =
        serde_json::from_slice(&read(&file)?).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", file.display()))?;
    let body = call(&server, Method::POST, "rollouts", Some(spec)).await?;
    print_rollout(&body);
    if body["left_out"].as_i64().unwrap_or(0) > 0 {
        println!("left out: {} targeted devices the artifact is not for", body["left_out"]);
    }
    Ok(())
}

/// A rollout's state, then its counts per phase.
fn print_rollout(r: &Value) {
    let counts = |c: &Value| {
        c.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {}", v.as_i64().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let reason = r["reason"].as_str().map(|w| format!(" ({w})")).unwrap_or_default();
    let rollback = match r["rollback"].as_str() {
        Some("none") | None => String::new(),
        Some(s) => format!(", rollback {s}"),
    };
    println!(
        "{}: {}{reason}{rollback}, phase {} of {}, {} {}",
        text(&r["name"]),
        text(&r["state"]),
        r["phase"].as_i64().unwrap_or(0),
        r["phases"].as_i64().unwrap_or(0),
        text(&r["artifact"]["name"]),
        text(&r["artifact"]["version"])
    );
    for (i, p) in r["phase_counts"].as_array().into_iter().flatten().enumerate() {
        println!("  phase {}: {}", i + 1, counts(p));
    }
}

pub async fn rollout_list(server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, "rollouts", None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    for r in body["items"].as_array().into_iter().flatten() {
        print_rollout(r);
    }
    Ok(())
}

pub async fn rollout_show(name: String, server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, &format!("rollouts/{}", crate::lifecycle::segment(&name)), None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    print_rollout(&body);
    Ok(())
}

pub async fn rollout_devices(
    name: String,
    state: Option<String>,
    phase: Option<i64>,
    server: ServerArgs,
) -> anyhow::Result<()> {
    let mut path = format!("rollouts/{}/devices?", crate::lifecycle::segment(&name));
    if let Some(s) = state {
        path.push_str(&format!("state={}&", crate::lifecycle::segment(&s)));
    }
    if let Some(p) = phase {
        path.push_str(&format!("phase={p}&"));
    }
    let path = path.trim_end_matches(['&', '?']).to_string();
    println!("{:<8} {:<28} {:>5} {:<14} {:>4} {:<10} reason", "type", "id", "phase", "state", "%", "from");
    for d in newest(&server, &path, usize::MAX).await? {
        println!(
            "{:<8} {:<28} {:>5} {:<14} {:>4} {:<10} {}",
            text(&d["type"]),
            text(&d["id"]),
            d["phase"].as_i64().unwrap_or(0).saturating_add(1),
            text(&d["state"]),
            d["progress"].as_i64().map_or("-".into(), |p| p.to_string()),
            text(&d["from_version"]),
            d["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn rollout_act(name: String, verb: &str, server: ServerArgs) -> anyhow::Result<()> {
    let path = format!("rollouts/{}/{verb}", crate::lifecycle::segment(&name));
    let body = call(&server, Method::POST, &path, None).await?;
    print_rollout(&body);
    Ok(())
}

pub async fn rollout_remove(name: String, server: ServerArgs) -> anyhow::Result<()> {
    call(&server, Method::DELETE, &format!("rollouts/{}", crate::lifecycle::segment(&name)), None).await?;
    println!("removed {name}");
    Ok(())
}

pub async fn tenant_list(server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, "tenants", None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("{:<24} {:>8}  {:<21} description", "name", "devices", "created");
    for t in body["items"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:>8}  {:<21} {}",
            text(&t["name"]),
            t["devices"],
            when(&t["created_at"]),
            text(&t["description"])
        );
    }
    Ok(())
}

pub async fn tenant_add(name: String, description: Option<String>, server: ServerArgs) -> anyhow::Result<()> {
    let t = call(&server, Method::POST, "tenants", Some(json!({ "name": name, "description": description }))).await?;
    if !printed(&server, &t) {
        println!(
            "added tenant {}; its first admin: drover token create NAME --role admin --tenant {}",
            text(&t["name"]),
            text(&t["name"])
        );
    }
    Ok(())
}

pub async fn tenant_remove(name: String, server: ServerArgs) -> anyhow::Result<()> {
    call(&server, Method::DELETE, &format!("tenants/{}", crate::lifecycle::segment(&name)), None).await?;
    println!("removed tenant {name}");
    Ok(())
}

/// `drover devices enrollment-token`: a token devices enroll with, and its URL.
pub async fn enrollment_token(
    device_type: String,
    uses: Option<i64>,
    ttl: Option<humantime::Duration>,
    import_batch: Option<String>,
    tenant: TenantArg,
    server: ServerArgs,
) -> anyhow::Result<()> {
    let body = json!({ "device_type": device_type, "uses": uses, "ttl_secs": ttl.map(|d| d.as_secs().max(1)),
                       "import_batch": import_batch, "tenant": tenant.tenant });
    let t = call(&server, Method::POST, "enrollment-tokens", Some(body)).await?;
    if !printed(&server, &t) {
        eprintln!(
            "{} enrollment(s) of {} devices into tenant {}, until {}; the token is shown this once:",
            t["uses"],
            text(&t["device_type"]),
            text(&t["tenant"]),
            when(&t["expires_at"])
        );
        println!("{}", text(&t["token"]));
        eprintln!("enrollment URL: {}", text(&t["enrollment_url"]));
    }
    Ok(())
}
