//! The `drover` binary.

use clap::{Parser, Subcommand};
use drover::config::{LogFormat, ServeArgs};
use drover::plugins::device_type::{delivery_name, kind_name};
use drover::plugins::{Described, Limits, LoadOptions, Manifest, Runtime, signing};
use std::path::PathBuf;
use std::process::ExitCode;

mod admin_commands;
mod analytics_commands;
mod fleet_commands;

#[derive(Parser)]
#[command(name = "drover", version, about = "Device-management server with WebAssembly device-type plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// The fleet at a glance: devices by type and status, operations by state.
    Fleet {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Devices of a running server: list, show, import, remove, tag.
    #[command(alias = "device")]
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Operations of a running server: add, list, show, cancel, watch an activity.
    #[command(alias = "op")]
    Ops {
        #[command(subcommand)]
        command: OpsCommand,
    },
    /// Groups of a running server: list, show, create, add devices, remove.
    #[command(alias = "group")]
    Groups {
        #[command(subcommand)]
        command: GroupsCommand,
    },
    /// Telemetry of a running server: a device's series, a metric over a group or tag.
    Telemetry {
        #[command(subcommand)]
        command: analytics_commands::TelemetryCommand,
    },
    /// Alert rules of a running server: geo-fences, speed limits, thresholds, anomaly
    /// detectors, ignores.
    #[command(name = "alert-rules", alias = "alert-rule")]
    AlertRules {
        #[command(subcommand)]
        command: analytics_commands::RulesCommand,
    },
    /// Alerts of a running server: list, show, resolve.
    #[command(alias = "alert")]
    Alerts {
        #[command(subcommand)]
        command: analytics_commands::AlertsCommand,
    },
    /// Print a shell's completion script: `drover completions bash > /etc/bash_completion.d/drover`.
    Completions { shell: clap_complete::Shell },
    /// Admin-API tokens of a running server: list, create, revoke.
    #[command(alias = "tokens")]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Tenants of a running server (separate fleets): list, add, remove.
    #[command(alias = "tenants")]
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Users of a running server (named people with passwords, roles and scopes): list,
    /// add, set, remove.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Log in as a user: prints an admin-API token that expires (password from
    /// DROVER_PASSWORD or standard input).
    Login {
        name: String,
        /// How long the token lasts: 1h, 8h … (60 s to 7 days) [default: 12h]
        #[arg(long)]
        ttl: Option<humantime::Duration>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Webhook subscriptions of a running server: list, add, remove, enable, deliveries.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Policies of a running server: list, show, apply a file, (de)activate, revisions.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Firmware and application images of a running server: upload, list, remove.
    Artifact {
        #[command(subcommand)]
        command: ArtifactCommand,
    },
    /// Staged rollouts of a running server: create, follow, pause, resume, abort, roll back.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// The audit trail of a running server: who changed what, and what was refused.
    Audit {
        #[command(flatten)]
        filter: admin_commands::AuditFilter,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Devices, filtered: type, status, tag, group, owner, metadata, a search.
    List {
        #[command(flatten)]
        filter: fleet_commands::DeviceFilter,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One device: status, owner, tags, metadata, latest telemetry.
    Show {
        /// TYPE/ID, e.g. android/356000000000001.
        device: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Pre-register devices from a CSV file (device_type, device_id[, name, owner, ownership]).
    Import {
        file: PathBuf,
        /// Let them enroll without an enrollment token (LwM2M devices).
        #[arg(long)]
        self_enroll: bool,
        /// The tenant they join [default: a tenant's admin's own, else `default`]
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Make an enrollment token (printed once) and its enrollment URL, for a QR code.
    EnrollmentToken {
        /// The device type it enrolls, e.g. android.
        device_type: String,
        /// How many devices may enroll with it [default: 1]
        #[arg(long)]
        uses: Option<i64>,
        /// How long it stays valid: 7d, 12h … [default: 7 days]
        #[arg(long)]
        ttl: Option<humantime::Duration>,
        /// Claim only the devices of this import (`batch` in the import's answer).
        #[arg(long)]
        import_batch: Option<String>,
        #[command(flatten)]
        tenant: admin_commands::TenantArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a device: its credentials are revoked and its queued operations cancelled.
    Remove {
        device: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke every credential of a device (lost or stolen): tokens and certificates; its
    /// live sessions end.
    RevokeCredentials {
        device: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The certificates issued to a device from its CSRs: serial, validity, state.
    Certificates {
        device: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke one certificate of a device by its serial; its other credentials stay live.
    RevokeCertificate {
        device: String,
        serial: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Give a LwM2M device a pre-shared key for DTLS (its old one is revoked); prints the
    /// identity and the key, shown this once.
    Psk {
        device: String,
        /// The PSK identity [default: the device id, its endpoint name].
        #[arg(long)]
        identity: Option<String>,
        /// The key, hex (16 to 64 bytes) [default: 16 random bytes].
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Add or remove tags of a device.
    Tag {
        device: String,
        /// A tag to add (repeat the flag).
        #[arg(long)]
        add: Vec<String>,
        /// A tag to remove (repeat the flag).
        #[arg(long)]
        remove: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum OpsCommand {
    /// Add an operation for devices, groups or tags; prints its activity.
    Add {
        /// The operation code, e.g. DEVICE_LOCK (`drover devices show` … the type's plugin lists them).
        code: String,
        /// The payload: JSON, or @FILE.
        #[arg(long)]
        payload: Option<String>,
        #[command(flatten)]
        targets: fleet_commands::Targets,
        /// How long it may wait for its device (e.g. 1h, 2d).
        #[arg(long)]
        ttl: Option<humantime::Duration>,
        /// Follow the activity to the end (as `ops watch`).
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The newest operations of a device, an activity or a state.
    List {
        /// TYPE/ID.
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        activity: Option<i64>,
        #[arg(long)]
        state: Option<String>,
        /// How many, the newest.
        #[arg(long, default_value_t = 50)]
        last: usize,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One operation and every transition it went through.
    Show {
        id: i64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel an operation, or with --activity every unfinished operation of an activity.
    Cancel {
        id: i64,
        #[arg(long)]
        activity: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Follow an activity with a progress bar until every operation has ended; fails if
    /// any ended in ERROR.
    Watch {
        activity: i64,
        /// Give up after this long (e.g. 10m).
        #[arg(long)]
        timeout: Option<humantime::Duration>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum GroupsCommand {
    /// Every group: kind and size.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One group.
    Show {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Create a static group, or a dynamic one with --query.
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// JSON, e.g. '{"device_type": "android", "tags": ["warehouse-3"]}'.
        #[arg(long)]
        query: Option<String>,
        /// The tenant whose group it is, named TENANT/NAME [default: the caller's tenant;
        /// for an operator, a group of the operators]
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Add devices (TYPE/ID …) to a static group.
    Add {
        name: String,
        #[arg(required = true)]
        devices: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a group (its devices stay).
    Remove {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Every subscription: state, cursor, failures in a row, URL, filters.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Subscribe a URL to events; prints the signing secret once, on standard output.
    Add {
        name: String,
        url: String,
        /// Event-type prefixes to send (repeat the flag) [default: every event]
        #[arg(long = "type")]
        types: Vec<String>,
        /// Only events about devices of this type.
        #[arg(long)]
        device_type: Option<String>,
        /// Only events about devices in this group.
        #[arg(long)]
        group: Option<String>,
        /// Only events about devices with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// The tenant whose subscription it is: sent the events about its devices only,
        /// named TENANT/NAME [default: the caller's tenant; for an operator, the operators']
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a subscription and its delivery log.
    Remove {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Enable a subscription that repeated failures disabled.
    Enable {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The latest delivery attempts of a subscription.
    Deliveries {
        name: String,
        /// How many, the newest.
        #[arg(long, default_value_t = 50)]
        last: usize,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum ArtifactCommand {
    /// Upload an image; its size and SHA-256 are computed by the server.
    Upload {
        file: PathBuf,
        #[arg(long)]
        name: String,
        /// The version devices report once they run it.
        #[arg(long = "image-version")]
        version: String,
        /// Device types it is for, comma-separated (e.g. esp8266,lwm2m).
        #[arg(long)]
        types: String,
        /// Compatible models, comma-separated; none: any model.
        #[arg(long)]
        models: Option<String>,
        /// Its Ed25519 signature (raw or base64), by a registered publisher key [default: FILE.sig if it exists].
        #[arg(long)]
        signature: Option<PathBuf>,
        /// The tenant whose artifact it is, named TENANT/NAME and rolled out to its devices
        /// only [default: the caller's tenant; for an operator, the operators']
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Every artifact: name, version, types, size, SHA-256, signer.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete an artifact (refused while a rollout that is not over uses it).
    Remove {
        name: String,
        version: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Create the rollout a JSON file describes (docs/rollouts.md); it starts at once.
    Create {
        file: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Every rollout: state, phase, counts.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One rollout: its state and counts per phase.
    Show {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A rollout's devices, with their state, progress and reason.
    Devices {
        name: String,
        /// Only this state (waiting, pending, downloading, succeeded, failed …).
        #[arg(long)]
        state: Option<String>,
        /// Only this phase (from 1).
        #[arg(long)]
        phase: Option<i64>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop starting devices (those under way go on).
    Pause {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Start devices again after a pause.
    Resume {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Start the next phase now.
    Advance {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop for good; updates not yet delivered are cancelled.
    Cancel {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Abort as the criteria would (rolling back if the rollout says so).
    Abort {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Send updated devices back to the version they had.
    Rollback {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a rollout that is over, with its devices' history.
    Remove {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Every policy: priority, state, revision, device types, applicability.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One policy at its current revision, as JSON (a file `apply` takes back).
    Show {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Create the policy a JSON file describes (with its `name`), or save it as the next
    /// revision of the policy of that name; prints what was recomputed.
    Apply {
        file: std::path::PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Let a policy apply again.
    Activate {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop a policy from applying (it keeps its history).
    Deactivate {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a policy and its history.
    Remove {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A policy's revisions, newest first.
    Revisions {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Save an earlier revision's content as the next revision.
    Restore {
        name: String,
        revision: i64,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Every token: name, role, state (live, expired, revoked), created, expiry.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Create a token; it is printed once, on standard output.
    Create {
        /// Who or what uses it (its actions are recorded under this name).
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Lifetime: 90d, 12h … [default: no expiry]
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
        #[command(flatten)]
        scope: admin_commands::ScopeArgs,
        #[command(flatten)]
        tenant: admin_commands::TenantArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke the live token with this name: refused from its next request on.
    Revoke {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Every tenant: name, devices, created, description.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Add a tenant (then give it an admin: `drover token create NAME --role admin --tenant T`).
    Add {
        /// 1-64 lower-case letters, digits and -.
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a tenant that holds no devices, users or live tokens.
    Remove {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Every user: name, role, state (enabled, disabled, locked), scope.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Add a user; the password comes from DROVER_PASSWORD or standard input.
    Add {
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// No password: the user signs in through the OpenID provider only (--oidc-issuer).
        #[arg(long)]
        no_password: bool,
        #[command(flatten)]
        scope: admin_commands::ScopeArgs,
        #[command(flatten)]
        tenant: admin_commands::TenantArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Change a user's role, password, scope, or disable or enable them.
    Set {
        name: String,
        #[command(flatten)]
        set: admin_commands::UserSet,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a user; their sessions end.
    Remove {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Print a component's manifest, imports and what its describe() says.
    Inspect {
        /// The plugin component (.wasm).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create a plugin crate from the SDK template: it builds and passes its own tests as generated.
    New {
        /// Plugin name (lowercase letters, digits, -); a device type's name is its type.
        name: String,
        #[arg(long, value_enum, default_value = "device-type")]
        kind: KindArg,
        /// The language: Rust (with the SDK this binary carries), or, for a device type,
        /// Python (built with componentize-py) or JavaScript (built with jco).
        #[arg(long, value_enum, default_value = "rust")]
        lang: LangArg,
        /// Directory to create [default: ./NAME]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Take drover-sdk from this Drover checkout's sdk/ directory instead of the copy
        /// this binary carries (for developing Drover itself).
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
    /// Build a plugin crate into its component (release, wasm32-wasip2), check it against
    /// the contract this binary speaks, and write it as NAME.wasm in the crate.
    Build {
        /// The plugin crate [default: the current directory]
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to write the component [default: DIR/NAME.wasm]
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a device-type plugin against recorded device payloads (FIXTURES/cases.toml), no server.
    Test {
        /// The plugin component (.wasm).
        file: PathBuf,
        /// Directory with the payloads and cases.toml.
        #[arg(long, default_value = "fixtures")]
        fixtures: PathBuf,
    },
    /// Add a manifest (plugin.toml) to a component built without drover-sdk (componentize-py, jco …).
    Embed {
        /// The component (.wasm); rewritten in place unless --out is given.
        file: PathBuf,
        /// The manifest (TOML, as the SDK's plugin.toml).
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make an Ed25519 publisher key pair: PREFIX.key (private, mode 0600) and PREFIX.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, default_value = "drover-publisher")]
        out: PathBuf,
    },
    /// Sign a component with a publisher's private key; writes FILE.sig (base64).
    Sign {
        /// The plugin component (.wasm).
        file: PathBuf,
        /// The private key (PKCS#8 PEM, from `drover plugin keygen` or openssl).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signature [default: FILE.sig]
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Upload a signed component to a running server, which verifies, loads and publishes it.
    Install {
        /// The plugin component (.wasm).
        file: PathBuf,
        /// Its signature [default: FILE.sig when it exists; none otherwise]
        #[arg(long)]
        signature: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The plugins a running server has loaded: version, kind, state, calls.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One plugin on a running server: what serves, the versions loaded and uploaded, grants,
    /// and its history.
    Show {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Grant a plugin capabilities on a running server (replacing what it had); may come
    /// before its first install. Capabilities: log, config, kv, clock, random, filesystem, network.
    Grant {
        name: String,
        /// The capabilities; none to take every grant back.
        capabilities: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Return a plugin to the version that served before the current one, at once.
    Rollback {
        name: String,
        /// Why, for the history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Suspend a plugin: its devices' calls are refused and their operations stay queued.
    Suspend {
        name: String,
        /// Why, for the history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Lift a plugin's suspension (by an admin or the breaker).
    Enable {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show a plugin's settings (secrets masked), or change config values with --set.
    Settings {
        name: String,
        /// A config value the plugin reads, KEY=VALUE (repeat for more); KEY= removes it.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// What this tenant sets for its devices, over the server's settings (its own
        /// values; `--clear` forgets them all).
        #[arg(long)]
        tenant: Option<String>,
        /// With --tenant: forget what the tenant set; its devices get the server's settings.
        #[arg(long, requires = "tenant", conflicts_with = "set")]
        clear: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Register a publisher's public key on a running server, so uploads it signed are taken.
    Trust {
        /// The public key file (SPKI PEM, PREFIX.pub from `drover plugin keygen`).
        key: PathBuf,
        /// The publisher name the plugins' manifests carry.
        #[arg(long)]
        publisher: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum LangArg {
    Rust,
    Python,
    #[value(alias = "js")]
    Javascript,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KindArg {
    DeviceType,
    Transport,
    PolicyRule,
}

/// Which server an admin command talks to, as whom, and how it prints.
#[derive(clap::Args, Clone)]
struct ServerArgs {
    /// The server's base URL [default: the profile's, else https://127.0.0.1:8080]. Its
    /// certificate is checked against the built-in roots and DROVER_CACERT's (docs/security.md).
    #[arg(long, env = "DROVER_SERVER")]
    server: Option<String>,
    /// An admin token with the role the command needs [default: the profile's].
    #[arg(long, env = "DROVER_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A profile (server and token) of the profiles file, $DROVER_PROFILES or
    /// ~/.config/drover/profiles.toml [default: default].
    #[arg(long, env = "DROVER_PROFILE")]
    profile: Option<String>,
    /// table: for people; json: the API's answers, for scripts.
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

impl ServerArgs {
    /// The base URL and the token: flag or environment first, then the profile.
    fn remote(&self) -> anyhow::Result<(String, String)> {
        let profile = profiles::load(self.profile.as_deref())?;
        let base = self
            .server
            .clone()
            .or_else(|| profile.as_ref().and_then(|p| p.server.clone()))
            .unwrap_or_else(|| "https://127.0.0.1:8080".into());
        let token = self.token.clone().or_else(|| profile.and_then(|p| p.token)).ok_or_else(|| {
            anyhow::anyhow!("no admin token: pass --token, set DROVER_ADMIN_TOKEN, or put one in a profile")
        })?;
        Ok((base.trim_end_matches('/').to_string(), token))
    }

    /// The base URL alone (logging in needs no token).
    fn base(&self) -> anyhow::Result<String> {
        let profile = profiles::load(self.profile.as_deref())?;
        let base = self
            .server
            .clone()
            .or_else(|| profile.and_then(|p| p.server))
            .unwrap_or_else(|| "https://127.0.0.1:8080".into());
        Ok(base.trim_end_matches('/').to_string())
    }

    fn json(&self) -> bool {
        self.output == Output::Json
    }
}

/// `profiles.toml`: named servers with their tokens, so a command needs neither flag.
///
/// ```toml
/// [default]
/// server = "https://drover.example.com"
/// token = "drv_admin_…"
/// ```
mod profiles {
    #[derive(serde::Deserialize, Clone)]
    #[serde(deny_unknown_fields)]
    pub struct Profile {
        pub server: Option<String>,
        pub token: Option<String>,
    }

    fn path() -> Option<std::path::PathBuf> {
        if let Some(p) = std::env::var_os("DROVER_PROFILES") {
            return Some(p.into());
        }
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".config")))?;
        Some(config.join("drover").join("profiles.toml"))
    }

    /// The named profile (`default` unless named). A missing file is no profile; a named
    /// profile that is not there is an error.
    pub fn load(name: Option<&str>) -> anyhow::Result<Option<Profile>> {
        let Some(path) = path() else { return Ok(None) };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name.is_none() => return Ok(None),
            Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
        };
        let all: std::collections::BTreeMap<String, Profile> =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(&path)
                && meta.permissions().mode() & 0o077 != 0
                && all.values().any(|p| p.token.is_some())
            {
                eprintln!("warning: {} holds tokens and others may read it (chmod 600 it)", path.display());
            }
        }
        match name {
            None => Ok(all.get("default").cloned()),
            Some(n) => {
                all.get(n).cloned().map(Some).ok_or_else(|| anyhow::anyhow!("no profile [{n}] in {}", path.display()))
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Plugin { command } => match command {
                PluginCommand::Inspect { file, json } => inspect(file, json).await,
                PluginCommand::New { name, kind, lang, dir, sdk_path } => new_plugin(name, kind, lang, dir, sdk_path),
                PluginCommand::Build { dir, out } => build_plugin(dir, out).await,
                PluginCommand::Test { file, fixtures } => test_plugin(file, fixtures).await,
                PluginCommand::Embed { file, manifest, out } => embed(file, manifest, out),
                PluginCommand::Keygen { out } => keygen(out),
                PluginCommand::Sign { file, key, out } => sign(file, key, out),
                PluginCommand::Install { file, signature, server } => install(file, signature, server).await,
                PluginCommand::Trust { key, publisher, server } => trust(key, publisher, server).await,
                PluginCommand::List { server } => lifecycle::list(server).await,
                PluginCommand::Show { name, server } => lifecycle::show(name, server).await,
                PluginCommand::Grant { name, capabilities, server } => {
                    lifecycle::grant(name, capabilities, server).await
                }
                PluginCommand::Rollback { name, reason, server } => {
                    lifecycle::act(name, "rollback", reason, server).await
                }
                PluginCommand::Suspend { name, reason, server } => {
                    lifecycle::act(name, "suspend", reason, server).await
                }
                PluginCommand::Enable { name, server } => lifecycle::act(name, "enable", None, server).await,
                PluginCommand::Settings { name, set, tenant, clear, server } => {
                    lifecycle::settings(name, set, tenant, clear, server).await
                }
            },
            Command::Fleet { server } => fleet_commands::fleet(server).await,
            Command::Devices { command } => match command {
                DevicesCommand::List { filter, server } => fleet_commands::devices_list(filter, server).await,
                DevicesCommand::Show { device, server } => fleet_commands::devices_show(device, server).await,
                DevicesCommand::Import { file, self_enroll, tenant, server } => {
                    fleet_commands::devices_import(file, self_enroll, tenant, server).await
                }
                DevicesCommand::EnrollmentToken { device_type, uses, ttl, import_batch, tenant, server } => {
                    admin_commands::enrollment_token(device_type, uses, ttl, import_batch, tenant, server).await
                }
                DevicesCommand::Remove { device, server } => fleet_commands::devices_remove(device, server).await,
                DevicesCommand::RevokeCredentials { device, server } => {
                    fleet_commands::devices_revoke_credentials(device, server).await
                }
                DevicesCommand::Certificates { device, server } => {
                    fleet_commands::devices_certificates(device, server).await
                }
                DevicesCommand::RevokeCertificate { device, serial, server } => {
                    fleet_commands::devices_revoke_certificate(device, serial, server).await
                }
                DevicesCommand::Psk { device, identity, key, server } => {
                    fleet_commands::devices_psk(device, identity, key, server).await
                }
                DevicesCommand::Tag { device, add, remove, server } => {
                    fleet_commands::devices_tag(device, add, remove, server).await
                }
            },
            Command::Ops { command } => match command {
                OpsCommand::Add { code, payload, targets, ttl, watch, server } => {
                    fleet_commands::ops_add(code, payload, targets, ttl, watch, server).await
                }
                OpsCommand::List { device, activity, state, last, server } => {
                    fleet_commands::ops_list(device, activity, state, last, server).await
                }
                OpsCommand::Show { id, server } => fleet_commands::ops_show(id, server).await,
                OpsCommand::Cancel { id, activity, server } => fleet_commands::ops_cancel(id, activity, server).await,
                OpsCommand::Watch { activity, timeout, server } => {
                    fleet_commands::ops_watch(activity, timeout, server).await
                }
            },
            Command::Groups { command } => match command {
                GroupsCommand::List { server } => fleet_commands::groups_list(server).await,
                GroupsCommand::Show { name, server } => fleet_commands::groups_show(name, server).await,
                GroupsCommand::Create { name, description, query, tenant, server } => {
                    fleet_commands::groups_create(name, description, query, tenant, server).await
                }
                GroupsCommand::Add { name, devices, server } => fleet_commands::groups_add(name, devices, server).await,
                GroupsCommand::Remove { name, server } => fleet_commands::groups_remove(name, server).await,
            },
            Command::Telemetry { command } => analytics_commands::telemetry(command).await,
            Command::AlertRules { command } => analytics_commands::rules(command).await,
            Command::Alerts { command } => analytics_commands::alerts(command).await,
            Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(shell, &mut Cli::command(), "drover", &mut std::io::stdout());
                Ok(())
            }
            Command::Token { command } => match command {
                TokenCommand::List { server } => admin_commands::token_list(server).await,
                TokenCommand::Create { name, role, expires_in, scope, tenant, server } => {
                    admin_commands::token_create(name, role, expires_in, scope, tenant, server).await
                }
                TokenCommand::Revoke { name, server } => admin_commands::token_revoke(name, server).await,
            },
            Command::Tenant { command } => match command {
                TenantCommand::List { server } => admin_commands::tenant_list(server).await,
                TenantCommand::Add { name, description, server } => {
                    admin_commands::tenant_add(name, description, server).await
                }
                TenantCommand::Remove { name, server } => admin_commands::tenant_remove(name, server).await,
            },
            Command::User { command } => match command {
                UserCommand::List { server } => admin_commands::user_list(server).await,
                UserCommand::Add { name, role, no_password, scope, tenant, server } => {
                    admin_commands::user_add(name, role, no_password, scope, tenant, server).await
                }
                UserCommand::Set { name, set, server } => admin_commands::user_set(name, set, server).await,
                UserCommand::Remove { name, server } => admin_commands::user_remove(name, server).await,
            },
            Command::Login { name, ttl, server } => admin_commands::login(name, ttl, server).await,
            Command::Webhook { command } => match command {
                WebhookCommand::List { server } => admin_commands::webhook_list(server).await,
                WebhookCommand::Add { name, url, types, device_type, group, tag, tenant, server } => {
                    let filter = admin_commands::WebhookFilter { types, device_type, group, tag, tenant };
                    admin_commands::webhook_add(name, url, filter, server).await
                }
                WebhookCommand::Remove { name, server } => admin_commands::webhook_remove(name, server).await,
                WebhookCommand::Enable { name, server } => admin_commands::webhook_enable(name, server).await,
                WebhookCommand::Deliveries { name, last, server } => {
                    admin_commands::webhook_deliveries(name, last, server).await
                }
            },
            Command::Policy { command } => match command {
                PolicyCommand::List { server } => admin_commands::policy_list(server).await,
                PolicyCommand::Show { name, server } => admin_commands::policy_show(name, server).await,
                PolicyCommand::Apply { file, server } => admin_commands::policy_apply(file, server).await,
                PolicyCommand::Activate { name, server } => {
                    admin_commands::policy_act(name, "activate", None, server).await
                }
                PolicyCommand::Deactivate { name, server } => {
                    admin_commands::policy_act(name, "deactivate", None, server).await
                }
                PolicyCommand::Remove { name, server } => admin_commands::policy_remove(name, server).await,
                PolicyCommand::Revisions { name, server } => admin_commands::policy_revisions(name, server).await,
                PolicyCommand::Restore { name, revision, server } => {
                    admin_commands::policy_act(name, "restore", Some(revision), server).await
                }
            },
            Command::Artifact { command } => match command {
                ArtifactCommand::Upload { file, name, version, types, models, signature, tenant, server } => {
                    let signature = signature.or_else(|| Some(sig_path(&file)).filter(|p| p.exists()));
                    let upload =
                        admin_commands::ArtifactUpload { file, name, version, types, models, signature, tenant };
                    admin_commands::artifact_upload(upload, server).await
                }
                ArtifactCommand::List { server } => admin_commands::artifact_list(server).await,
                ArtifactCommand::Remove { name, version, server } => {
                    admin_commands::artifact_remove(name, version, server).await
                }
            },
            Command::Rollout { command } => match command {
                RolloutCommand::Create { file, server } => admin_commands::rollout_create(file, server).await,
                RolloutCommand::List { server } => admin_commands::rollout_list(server).await,
                RolloutCommand::Show { name, server } => admin_commands::rollout_show(name, server).await,
                RolloutCommand::Devices { name, state, phase, server } => {
                    admin_commands::rollout_devices(name, state, phase, server).await
                }
                RolloutCommand::Pause { name, server } => admin_commands::rollout_act(name, "pause", server).await,
                RolloutCommand::Resume { name, server } => admin_commands::rollout_act(name, "resume", server).await,
                RolloutCommand::Advance { name, server } => admin_commands::rollout_act(name, "advance", server).await,
                RolloutCommand::Cancel { name, server } => admin_commands::rollout_act(name, "cancel", server).await,
                RolloutCommand::Abort { name, server } => admin_commands::rollout_act(name, "abort", server).await,
                RolloutCommand::Rollback { name, server } => {
                    admin_commands::rollout_act(name, "rollback", server).await
                }
                RolloutCommand::Remove { name, server } => admin_commands::rollout_remove(name, server).await,
            },
            Command::Audit { filter, server } => admin_commands::audit(filter, server).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let asked = std::env::var("DROVER_LOG").ok();
    let filter = asked
        .as_deref()
        .and_then(|s| tracing_subscriber::EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    // rumqttd's router opens a span for every packet it routes, at ERROR level so that any
    // filter keeps it, with its fields formatted into a string each time. The router is one
    // thread that every MQTT message goes through, and those spans were a third of its CPU
    // during a push to 10,000 devices (docs/BENCHMARKS.md). Its events still log; its spans
    // only when DROVER_LOG names rumqttd (someone debugging the broker).
    let registry = tracing_subscriber::registry().with(broker_spans(asked.as_deref())).with(filter);
    match format {
        // Colours only on a terminal: a log that goes to a file, a pipe, journald or a
        // container runtime must not carry escape codes. NO_COLOR (no-color.org) turns
        // them off on a terminal too.
        LogFormat::Text => {
            let ansi = log_colours(std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
            registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi)).init()
        }
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json()).init(),
    }
}

/// Whether the text log is coloured: on a terminal, unless `NO_COLOR` is set to anything
/// but the empty string (as no-color.org says).
fn log_colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Drops rumqttd's spans unless `asked` (DROVER_LOG) names rumqttd; keeps everything else,
/// rumqttd's events included. See `init_tracing` for why.
fn broker_spans(
    asked: Option<&str>,
) -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool + Send + Sync + 'static> {
    let router_spans = asked.is_some_and(|s| s.contains("rumqttd"));
    tracing_subscriber::filter::filter_fn(move |m| router_spans || !(m.is_span() && m.target().starts_with("rumqttd")))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    init_tracing(config.log_format);
    tracing::info!(data_dir = %config.data_dir.display(), database = %drover::secrets::redact_url(&config.database_url), "starting drover {}", env!("CARGO_PKG_VERSION"));
    let server = drover::server::Server::start(&config).await?;
    server.serve(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

async fn inspect(file: PathBuf, json: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let manifest = Manifest::from_component(&bytes)?;
    // Inspection grants what the manifest asks for, so describe() can run; installing
    // on a server is where an admin decides grants.
    let runtime = Runtime::new(Limits::default(), None)?;
    let options = LoadOptions { grants: manifest.capabilities.iter().copied().collect(), ..Default::default() };
    let plugin = runtime.load(&bytes, options).await?;
    let describe = match &plugin.described {
        Described::DeviceType(i) => serde_json::json!({
            "name": i.name, "version": i.version, "description": i.description,
            "delivery": i.delivery.iter().map(|d| delivery_name(*d)).collect::<Vec<_>>(),
            "content_types": i.content_types,
            "max_operations_per_message": i.max_operations_per_message,
            "operations": i.operations.iter().map(|o| serde_json::json!({
                "code": o.code, "kind": kind_name(o.kind), "description": o.description,
                "payload_schema": o.payload_schema.as_deref().and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok()),
            })).collect::<Vec<_>>(),
        }),
        Described::Transport(i) => serde_json::json!({
            "name": i.name, "version": i.version, "description": i.description, "hosts": i.hosts,
        }),
        Described::PolicyRule(i) => serde_json::json!({
            "name": i.name, "version": i.version, "description": i.description,
            "params_schema": i.params_schema.as_deref().and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok()),
        }),
    };
    if json {
        let out = serde_json::json!({
            "file": file, "sha256": plugin.sha256, "size": plugin.size, "manifest": plugin.manifest,
            "imports": plugin.imports, "describe": describe,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let m = &plugin.manifest;
    println!("{} {} ({}), publisher {}", m.name, m.version, m.kind, m.publisher);
    if !m.description.is_empty() {
        println!("  {}", m.description);
    }
    println!("file      {} ({} bytes)", file.display(), plugin.size);
    println!("sha256    {}", plugin.sha256);
    println!("contract  drover:plugin@{}", m.contract);
    let caps: Vec<String> = m.capabilities.iter().map(|c| c.to_string()).collect();
    println!("requests  {}", if caps.is_empty() { "no capabilities".into() } else { caps.join(", ") });
    println!("imports   {}", plugin.imports.join(", "));
    if let Described::DeviceType(i) = &plugin.described {
        println!(
            "delivery  {}",
            describe["delivery"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        );
        println!("content   {}", i.content_types.join(", "));
        println!("operations:");
        for o in &i.operations {
            let payload = if o.payload_schema.is_some() { "payload" } else { "-" };
            println!("  {:<24} {:<8} {:<8} {}", o.code, kind_name(o.kind), payload, o.description);
        }
    } else {
        println!("describe  {}", serde_json::to_string(&describe)?);
    }
    Ok(())
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

fn keygen(out: PathBuf) -> anyhow::Result<()> {
    let (private, public) = signing::generate()?;
    let key_path = out.with_extension("key");
    let pub_path = out.with_extension("pub");
    for p in [&key_path, &pub_path] {
        if p.exists() {
            anyhow::bail!("{} exists: not overwriting a key (choose another --out)", p.display());
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&key_path)?, private.as_bytes())?;
    std::fs::write(&pub_path, &public)?;
    let id = signing::key_id(&signing::parse_public_key(&public)?);
    println!("private key  {} (keep it secret)", key_path.display());
    println!("public key   {}", pub_path.display());
    println!("key id       {id}");
    println!("next: drover plugin trust {} --publisher <name in plugin.toml>", pub_path.display());
    Ok(())
}

fn sign(file: PathBuf, key: PathBuf, out: Option<PathBuf>) -> anyhow::Result<()> {
    let component = read(&file)?;
    // Refuse to sign what no server would take: the manifest must be readable.
    let manifest = Manifest::from_component(&component)?;
    let private =
        String::from_utf8(read(&key)?).map_err(|_| anyhow::anyhow!("{} is not a PEM text file", key.display()))?;
    let signature = signing::sign(&private, &component)?;
    let out = out.unwrap_or_else(|| sig_path(&file));
    std::fs::write(&out, signing::encode_signature(&signature) + "\n")?;
    let id = signing::key_id(&signing::parse_public_key(&signing::public_of(&private)?)?);
    println!("signed {}@{} (publisher {}) with key {id}", manifest.name, manifest.version, manifest.publisher);
    println!("signature    {}", out.display());
    Ok(())
}

fn sig_path(file: &std::path::Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// The admin commands' HTTP client. Besides the built-in roots it trusts the CA
/// certificates in `DROVER_CACERT`, or else the development certificate of a server whose
/// data directory is here (`DROVER_DATA_DIR`, default `./drover-data`, then `tls/cert.pem`):
/// the README's first run needs no flag.
fn client() -> anyhow::Result<reqwest::Client> {
    use anyhow::Context;
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(300));
    let ca = match std::env::var_os("DROVER_CACERT") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            let dir = std::env::var_os("DROVER_DATA_DIR").map_or_else(|| PathBuf::from("drover-data"), PathBuf::from);
            Some(dir.join("tls").join("cert.pem")).filter(|p| p.exists())
        }
    };
    if let Some(path) = ca {
        let pem = std::fs::read(&path).with_context(|| format!("DROVER_CACERT {}: cannot read", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("DROVER_CACERT {}: not PEM certificates", path.display()))?;
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    Ok(builder.build()?)
}

/// The server's answer as JSON, or an error carrying its error message.
async fn answer(response: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no error message");
        let code = body["error"]["code"].as_str().unwrap_or("");
        anyhow::bail!("the server answered {status} {code}: {message}");
    }
    Ok(body)
}

async fn install(file: PathBuf, signature: Option<PathBuf>, server: ServerArgs) -> anyhow::Result<()> {
    let component = read(&file)?;
    let signature = match signature {
        Some(p) => Some(read(&p)?),
        None if sig_path(&file).exists() => Some(read(&sig_path(&file))?),
        None => None,
    };
    let mut form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(component).file_name("plugin.wasm"));
    if let Some(s) = signature {
        form = form.part("signature", reqwest::multipart::Part::bytes(s).file_name("plugin.wasm.sig"));
    }
    let body = lifecycle::post_form(&server, "plugins", form).await?;
    let p = &body["plugin"];
    if body["unchanged"].as_bool() == Some(true) {
        println!(
            "{}@{} is already serving: nothing changed",
            p["name"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?")
        );
    } else {
        println!(
            "{}@{} serving (signed by {}, {:.0} ms from upload to serving; previous version {})",
            p["name"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?"),
            body["signed_by"].as_str().unwrap_or("nobody: unsigned"),
            body["upload_to_serving_ms"].as_f64().unwrap_or(0.0),
            p["previous_version"].as_str().unwrap_or("none"),
        );
    }
    Ok(())
}

async fn trust(key: PathBuf, publisher: String, server: ServerArgs) -> anyhow::Result<()> {
    let public_key =
        String::from_utf8(read(&key)?).map_err(|_| anyhow::anyhow!("{} is not a PEM text file", key.display()))?;
    let (base, token) = server.remote()?;
    let url = format!("{base}/api/v1/publisher-keys");
    let response = client()?
        .post(&url)
        .bearer_auth(&token)
        .json(&serde_json::json!({"publisher": publisher, "public_key": public_key}))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    let body = answer(response).await?;
    println!("trusted key {} for publisher {}", body["key_id"].as_str().unwrap_or("?"), publisher);
    Ok(())
}

fn new_plugin(
    name: String,
    kind: KindArg,
    lang: LangArg,
    dir: Option<PathBuf>,
    sdk_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    use drover::plugins::Kind;
    use drover::plugins::template::{Lang, Sdk, generate, generate_in};
    let kind = match kind {
        KindArg::DeviceType => Kind::DeviceType,
        KindArg::Transport => Kind::Transport,
        KindArg::PolicyRule => Kind::PolicyRule,
    };
    let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
    let other = match lang {
        LangArg::Rust => None,
        LangArg::Python => Some((Lang::Python, "Python")),
        LangArg::Javascript => Some((Lang::JavaScript, "JavaScript")),
    };
    if let Some((lang, language)) = other {
        if kind != Kind::DeviceType {
            anyhow::bail!("--lang {} makes a device type; for a {kind}, use --lang rust", language.to_lowercase());
        }
        let files = generate_in(lang, &name, &dir)?;
        println!("created device-type plugin `{name}` ({language}) in {}:", dir.display());
        for f in files {
            println!("  {}", f.display());
        }
        println!("next: cd {} && drover plugin build (README.md has the rest)", dir.display());
        return Ok(());
    }
    let sdk = match sdk_path {
        Some(p) => {
            let p = std::fs::canonicalize(&p).map_err(|e| anyhow::anyhow!("--sdk-path {}: {e}", p.display()))?;
            if !p.join("Cargo.toml").exists() {
                anyhow::bail!("--sdk-path {}: no Cargo.toml there (point it at a Drover checkout's sdk/)", p.display());
            }
            Sdk::Path(p)
        }
        None => Sdk::Carried,
    };
    let files = generate(&name, kind, &dir, &sdk)?;
    println!("created {kind} plugin `{name}` in {}:", dir.display());
    for f in files {
        println!("  {}", f.display());
    }
    println!("next: cd {} && cargo test && drover plugin build (README.md has the rest)", dir.display());
    Ok(())
}

/// How a device type in another language becomes a component.
#[derive(Clone, Copy, PartialEq)]
enum Toolchain {
    Python,
    JavaScript,
}

/// A device type in Python or JavaScript (`drover plugin new --lang …`): its toolchain
/// against the WIT in the project, the manifest embedded, then the same check as for Rust.
async fn build_other(dir: PathBuf, out: Option<PathBuf>, toolchain: Toolchain) -> anyhow::Result<()> {
    let text = String::from_utf8(read(&dir.join("plugin.toml"))?)?;
    let manifest = Manifest::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("plugin.toml").display()))?;
    let out = out.unwrap_or_else(|| dir.join(format!("{}.wasm", manifest.name)));
    let target = std::path::absolute(&out)?;
    let (mut command, missing) = match toolchain {
        Toolchain::Python => {
            let tool = std::env::var_os("COMPONENTIZE_PY").unwrap_or_else(|| "componentize-py".into());
            let mut c = std::process::Command::new(&tool);
            // --stub-wasi: no WASI imports from Python's runtime (clocks, random,
            // filesystem, sockets), which a plugin has no use for.
            c.env("PYTHONDONTWRITEBYTECODE", "1")
                .args(["-d", "wit", "-w", "device-type", "componentize", "--stub-wasi", "app", "-o"])
                .arg(&target);
            let missing = format!(
                "cannot run {}: install componentize-py (python3 -m venv .venv && .venv/bin/pip install \
                 componentize-py==0.25.1) and put it on PATH or in COMPONENTIZE_PY",
                tool.to_string_lossy()
            );
            (c, missing)
        }
        Toolchain::JavaScript => {
            let jco = dir.join("node_modules/.bin/jco");
            let mut c = std::process::Command::new(std::path::absolute(&jco)?);
            // --disable all: no WASI features of the engine (clocks, random, stdio, http).
            c.args(["componentize", "app.js", "--wit", "wit", "--world-name", "device-type", "--disable", "all", "-o"])
                .arg(&target);
            (c, format!("cannot run {}: run `npm install` in {} first (it fetches jco)", jco.display(), dir.display()))
        }
    };
    let status = command.current_dir(&dir).status().map_err(|e| anyhow::anyhow!("{missing} ({e})"))?;
    if !status.success() {
        anyhow::bail!("building the component failed (the messages are above)");
    }
    let bytes = Manifest::embed(&read(&out)?, &text)?;
    checked(out, &bytes).await
}

/// Write the built component `bytes` to `out`, then check it as the server would load it
/// (with what its manifest asks for granted) and print what it is.
async fn checked(out: PathBuf, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(&out, bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    inspect(out.clone(), false)
        .await
        .map_err(|e| anyhow::anyhow!("{} does not pass the contract: {e:#}", out.display()))?;
    println!("built {}", out.display());
    Ok(())
}

/// The Rust target plugins are built for.
const PLUGIN_TARGET: &str = "wasm32-wasip2";

async fn build_plugin(dir: PathBuf, out: Option<PathBuf>) -> anyhow::Result<()> {
    use std::process::Command;
    let manifest_path = dir.join("Cargo.toml");
    if !manifest_path.is_file() && dir.join("app.py").is_file() {
        return build_other(dir, out, Toolchain::Python).await;
    }
    if !manifest_path.is_file() && dir.join("app.js").is_file() {
        return build_other(dir, out, Toolchain::JavaScript).await;
    }
    if !manifest_path.is_file() {
        anyhow::bail!(
            "{}: no Cargo.toml here; run `drover plugin build` in a plugin crate (`drover plugin new NAME` makes one)",
            dir.display()
        );
    }
    // The toolchain the crate would use (rustup reads rust-toolchain.toml from there).
    let libdir = Command::new("rustc")
        .current_dir(&dir)
        .args(["--print", "target-libdir", "--target", PLUGIN_TARGET])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run rustc ({e}): install Rust from https://rustup.rs"))?;
    let libdir = PathBuf::from(String::from_utf8_lossy(&libdir.stdout).trim());
    if !libdir.is_dir() {
        anyhow::bail!(
            "the Rust target {PLUGIN_TARGET} is not installed, and plugins are built for it: \
             rustup target add {PLUGIN_TARGET}"
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--release", "--target", PLUGIN_TARGET, "--manifest-path"])
        .arg(&manifest_path)
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run cargo ({e}): install Rust from https://rustup.rs"))?;
    if !status.success() {
        anyhow::bail!("cargo build failed (its messages are above)");
    }
    // Where cargo put it: the crate's cdylib in its target directory (CARGO_TARGET_DIR,
    // a workspace's, or the crate's own).
    let metadata = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path"])
        .arg(&manifest_path)
        .output()?;
    if !metadata.status.success() {
        anyhow::bail!("cargo metadata failed: {}", String::from_utf8_lossy(&metadata.stderr).trim());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout)?;
    let wanted = std::fs::canonicalize(&manifest_path)?;
    let package = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["manifest_path"].as_str().and_then(|m| std::fs::canonicalize(m).ok()).as_ref() == Some(&wanted))
        .ok_or_else(|| anyhow::anyhow!("cargo metadata does not list {}", manifest_path.display()))?;
    let lib = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib")))
        .and_then(|t| t["name"].as_str())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: the crate builds no component; add `[lib] crate-type = [\"cdylib\", \"rlib\"]`",
                manifest_path.display()
            )
        })?;
    let target_dir = PathBuf::from(metadata["target_directory"].as_str().unwrap_or("target"));
    let built = target_dir.join(PLUGIN_TARGET).join("release").join(format!("{}.wasm", lib.replace('-', "_")));
    let mut bytes = read(&built)?;
    // A crate that does not embed its manifest (built without drover-sdk's export macro)
    // gets its plugin.toml embedded here, as `drover plugin embed` would.
    if Manifest::from_component(&bytes).is_err() && dir.join("plugin.toml").is_file() {
        let text = String::from_utf8(read(&dir.join("plugin.toml"))?)?;
        bytes = Manifest::embed(&bytes, &text)?;
    }
    let name = package["name"].as_str().unwrap_or(lib);
    let out = out.unwrap_or_else(|| dir.join(format!("{name}.wasm")));
    checked(out, &bytes).await
}

async fn test_plugin(file: PathBuf, fixtures: PathBuf) -> anyhow::Result<()> {
    let bytes = read(&file)?;
    let manifest = Manifest::from_component(&bytes)?;
    // Like inspect: what the manifest asks for is granted, so the plugin runs as it would
    // once an admin granted it.
    let runtime = Runtime::new(Limits::default(), None)?;
    let options = LoadOptions { grants: manifest.capabilities.iter().copied().collect(), ..Default::default() };
    let plugin = runtime.load(&bytes, options).await?;
    let outcomes = drover::plugins::fixtures::run(&plugin, &fixtures).await?;
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    for o in &outcomes {
        println!("{} {:<28} {:<7} {}", if o.passed { "ok  " } else { "FAIL" }, o.file, o.call, o.detail);
    }
    println!("{}: {} passed, {} failed", plugin.label(), outcomes.len() - failed, failed);
    if failed > 0 {
        anyhow::bail!("{failed} of {} fixture cases failed", outcomes.len());
    }
    Ok(())
}

fn embed(file: PathBuf, manifest: PathBuf, out: Option<PathBuf>) -> anyhow::Result<()> {
    let component = read(&file)?;
    let text =
        String::from_utf8(read(&manifest)?).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", manifest.display()))?;
    let with = Manifest::embed(&component, &text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let m = Manifest::from_component(&with)?;
    let out = out.unwrap_or(file);
    std::fs::write(&out, &with)?;
    println!("{}: manifest of {}@{} ({}) embedded", out.display(), m.name, m.version, m.kind);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use tracing_subscriber::prelude::*;

    /// Counts the spans and events that reach the layers after the filter.
    #[derive(Clone, Default)]
    struct Seen {
        spans: Arc<AtomicUsize>,
        events: Arc<AtomicUsize>,
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
        fn on_new_span(
            &self,
            _: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.spans.fetch_add(1, Relaxed);
        }
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            self.events.fetch_add(1, Relaxed);
        }
    }

    /// (spans, events) seen of one rumqttd span with an event inside it and one span and
    /// event of Drover's, with DROVER_LOG set to `asked`.
    fn seen(asked: Option<&str>) -> (usize, usize) {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(super::broker_spans(asked)).with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            // As rumqttd's router opens them: ERROR level, so that no level filter drops it.
            let router = tracing::error_span!(target: "rumqttd::router::routing", "incoming_publish", client_id = 7);
            router.in_scope(|| tracing::info!(target: "rumqttd::router::routing", "publish routed"));
            let ours = tracing::info_span!(target: "drover::mqtt", "delivery");
            ours.in_scope(|| tracing::info!(target: "drover::mqtt", "operation published"));
        });
        (seen.spans.load(Relaxed), seen.events.load(Relaxed))
    }

    #[test]
    fn broker_spans_dropped_unless_asked_for() {
        // rumqttd's span is dropped; its event and everything of Drover's are kept.
        assert_eq!(seen(None), (1, 2));
        assert_eq!(seen(Some("info")), (1, 2));
        assert_eq!(seen(Some("drover=debug")), (1, 2));
        // Someone debugging the broker gets its spans.
        assert_eq!(seen(Some("info,rumqttd=debug")), (2, 2));
    }

    #[test]
    fn log_colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(super::log_colours(true, None));
        assert!(!super::log_colours(false, None), "a file, a pipe, journald");
        assert!(!super::log_colours(true, Some(OsStr::new("1"))), "NO_COLOR set");
        assert!(super::log_colours(true, Some(OsStr::new(""))), "NO_COLOR empty counts as unset");
    }
}

/// `drover plugin list|show|grant|rollback|suspend|enable|settings`: the plugin lifecycle
/// on a running server, through its admin API.
mod lifecycle {
    use super::{ServerArgs, answer, client};
    use serde_json::{Value, json};

    /// A call without a token (logging in), to the server's base URL.
    pub(crate) async fn call_anonymous(
        server: &ServerArgs,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1/{path}", server.base()?);
        let mut request = client()?.request(method, &url);
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
        answer(response).await
    }

    pub(crate) async fn call(
        server: &ServerArgs,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (base, token) = server.remote()?;
        let url = format!("{base}/api/v1/{path}");
        let mut request = client()?.request(method, &url).bearer_auth(&token);
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
        answer(response).await
    }

    /// POST a multipart form (an upload) to the admin API.
    pub(crate) async fn post_form(
        server: &ServerArgs,
        path: &str,
        form: reqwest::multipart::Form,
    ) -> anyhow::Result<Value> {
        let (base, token) = server.remote()?;
        let url = format!("{base}/api/v1/{path}");
        let request = client()?.post(&url).bearer_auth(&token).multipart(form);
        let response = request.send().await.map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
        answer(response).await
    }

    pub(crate) use drover::http::path_segment as segment;

    fn line(p: &Value) -> String {
        let calls = p["stats"]["calls"].as_u64().unwrap_or(0);
        let faults = p["stats"]["faults"].as_u64().unwrap_or(0);
        format!(
            "{:<20} {:<10} {:<12} {:<10} calls {calls}, faults {faults}",
            p["name"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?"),
            p["kind"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
        )
    }

    fn names(v: &Value) -> String {
        let list: Vec<&str> = v.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if list.is_empty() { "none".into() } else { list.join(", ") }
    }

    pub async fn list(server: ServerArgs) -> anyhow::Result<()> {
        let body = call(&server, reqwest::Method::GET, "plugins", None).await?;
        if crate::admin_commands::printed(&server, &body) {
            return Ok(());
        }
        for p in body["items"].as_array().into_iter().flatten() {
            println!("{}", line(p));
        }
        Ok(())
    }

    pub async fn show(name: String, server: ServerArgs) -> anyhow::Result<()> {
        let body = call(&server, reqwest::Method::GET, &format!("plugins/{name}"), None).await?;
        if crate::admin_commands::printed(&server, &body) {
            return Ok(());
        }
        let p = &body["plugin"];
        println!("{}", line(p));
        if let Some(why) = p["suspended_reason"].as_str() {
            println!("suspended  {why}");
        }
        println!("publisher  {}", p["publisher"].as_str().unwrap_or("?"));
        println!("sha256     {}", p["sha256"].as_str().unwrap_or("?"));
        println!(
            "loaded     {} (a rollback returns to {})",
            names(&p["loaded_versions"]),
            p["previous_version"].as_str().unwrap_or("none")
        );
        println!("requests   {}", names(&p["capabilities_requested"]));
        println!("granted    {}", names(&p["capabilities_granted"]));
        println!("uploaded:");
        for c in body["components"].as_array().into_iter().flatten() {
            println!(
                "  {:<10} {} by {}, signed by {}",
                c["version"].as_str().unwrap_or("?"),
                // What the server sent, cut by characters (a byte cut could panic).
                c["sha256"].as_str().unwrap_or("?").chars().take(12).collect::<String>(),
                c["uploaded_by"].as_str().unwrap_or("?"),
                c["signed_by"].as_str().unwrap_or("no one"),
            );
        }
        println!("history:");
        for e in body["history"].as_array().into_iter().flatten().take(20) {
            println!(
                "  {:<14} {:<10} {} {}",
                e["kind"].as_str().unwrap_or("?"),
                e["version"].as_str().unwrap_or("-"),
                e["actor"].as_str().unwrap_or("?"),
                e["reason"].as_str().unwrap_or(""),
            );
        }
        Ok(())
    }

    pub async fn grant(name: String, capabilities: Vec<String>, server: ServerArgs) -> anyhow::Result<()> {
        let body = json!({"capabilities": capabilities});
        let got = call(&server, reqwest::Method::PUT, &format!("plugins/{name}/grants"), Some(body)).await?;
        println!("{name} is granted: {}", names(&got["capabilities"]));
        Ok(())
    }

    /// rollback, suspend or enable.
    pub async fn act(name: String, action: &str, reason: Option<String>, server: ServerArgs) -> anyhow::Result<()> {
        let body = reason.map(|r| json!({"reason": r}));
        let p = call(&server, reqwest::Method::POST, &format!("plugins/{name}/{action}"), body).await?;
        println!("{}", line(&p));
        Ok(())
    }

    pub async fn settings(
        name: String,
        set: Vec<String>,
        tenant: Option<String>,
        clear: bool,
        server: ServerArgs,
    ) -> anyhow::Result<()> {
        let path = match &tenant {
            Some(t) => format!("tenants/{}/plugins/{}/settings", segment(t), segment(&name)),
            None => format!("plugins/{}/settings", segment(&name)),
        };
        if clear {
            call(&server, reqwest::Method::DELETE, &path, None).await?;
            println!("tenant {} set nothing for plugin {name} now", tenant.unwrap_or_default());
            return Ok(());
        }
        let mut current = match call(&server, reqwest::Method::GET, &path, None).await {
            // A tenant that set nothing yet starts from nothing.
            Err(e) if tenant.is_some() && !set.is_empty() && e.to_string().contains("set nothing") => {
                json!({ "config": {} })
            }
            other => other?,
        };
        if !set.is_empty() {
            // Read, change, write back: what GET masks (`***`) keeps the stored secret.
            let config =
                current["config"].as_object_mut().ok_or_else(|| anyhow::anyhow!("the server sent no config"))?;
            for pair in &set {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--set {pair}: use KEY=VALUE (KEY= removes the value)"))?;
                if v.is_empty() {
                    config.remove(k);
                } else {
                    config.insert(k.to_string(), json!(v));
                }
            }
            current = call(&server, reqwest::Method::PUT, &path, Some(current)).await?;
        }
        println!("{}", serde_json::to_string_pretty(&current)?);
        Ok(())
    }
}
