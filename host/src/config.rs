//! Server configuration: flags, `DROVER_*` environment variables and a `drover.toml`
//! file, in that order of precedence, over built-in defaults.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Options of `drover serve`. Every one is also an environment variable and a key of
/// the config file (same name, with `_` for `-`).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// Config file (TOML). Default: ./drover.toml when it exists.
    #[arg(long, env = "DROVER_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Where Drover keeps its database, compiled plugins and generated secrets [default: ./drover-data]
    #[arg(long, env = "DROVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the HTTP listener (admin API, device agent endpoints) [default: 127.0.0.1:8080]
    #[arg(long, env = "DROVER_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// The URL devices reach this server's HTTP listener at, for the download links of
    /// rollouts (e.g. https://mdm.example.com) [default: https:// (http:// with --plaintext) and the --http-addr]
    #[arg(long, env = "DROVER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Address of the embedded MQTT broker: MQTT over TLS, or plain MQTT with --plaintext [default: 127.0.0.1:8883, with --plaintext 127.0.0.1:1883]
    #[arg(long, env = "DROVER_MQTT_ADDR")]
    pub mqtt_addr: Option<SocketAddr>,
    /// Serve HTTP and MQTT without TLS: for local development only, as tokens and payloads then cross the network in the clear [default: false]
    #[arg(long, env = "DROVER_PLAINTEXT")]
    pub plaintext: Option<bool>,
    /// The TLS certificate chain (PEM) of the HTTP listener and the embedded broker, read again when it changes. Without it, a development certificate is made in DATA_DIR/tls [default: none]
    #[arg(long, env = "DROVER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, env = "DROVER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) that signs device certificates from their CSRs, and that client certificates must chain to [default: a CA made on first start, kept in the database with its key sealed]
    #[arg(long, env = "DROVER_DEVICE_CA_CERT")]
    pub device_ca_cert: Option<PathBuf>,
    /// The private key (PEM) of --device-ca-cert
    #[arg(long, env = "DROVER_DEVICE_CA_KEY")]
    pub device_ca_key: Option<PathBuf>,
    /// Days a device certificate is valid; a device renews it with its current one before then [default: 365]
    #[arg(long, env = "DROVER_DEVICE_CERT_DAYS")]
    pub device_cert_days: Option<u32>,
    /// Addresses (CIDRs, comma-separated) of proxies that terminate TLS in front of Drover and forward a device's verified client certificate in a `Client-Cert` header (RFC 9440) or nginx's `X-SSL-Client-Cert` (its $ssl_client_escaped_cert); from anyone else these headers are ignored [default: none]
    #[arg(long, env = "DROVER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
    /// CA certificates (PEM) that an external broker's certificate (--broker mqtts://…) must chain to [default: Mozilla's roots]
    #[arg(long, env = "DROVER_BROKER_CA")]
    pub broker_ca: Option<PathBuf>,
    /// Address of the CoAP/UDP listener for LwM2M devices [default: 127.0.0.1:5683]
    #[arg(long, env = "DROVER_COAP_ADDR")]
    pub coap_addr: Option<SocketAddr>,
    /// Address of the CoAP over DTLS listener (pre-shared keys) for LwM2M devices [default: 127.0.0.1:5684]
    #[arg(long, env = "DROVER_COAPS_ADDR")]
    pub coaps_addr: Option<SocketAddr>,
    /// Let LwM2M devices without a pre-shared key register over plain CoAP (--coap-addr): no credential, nothing encrypted; for development. A device with a key is refused there whatever this says [default: false]
    #[arg(long, env = "DROVER_COAP_NOSEC")]
    pub coap_nosec: Option<bool>,
    /// Open SCEP envelopes encrypted with single DES, for legacy SCEP clients that use it whatever the server offers (micromdm's scepclient): 56-bit keys, so only behind TLS. Refused by default, with SCEP's badAlg [default: false]
    #[arg(long, env = "DROVER_SCEP_ALLOW_DES")]
    pub scep_allow_des: Option<bool>,
    /// Database URL: sqlite://PATH or postgres://… [default: SQLite in the data directory]
    #[arg(long, env = "DROVER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// What a commit on SQLite promises: `normal` survives a crash of Drover (kill -9), and a power loss or an OS crash may take back the last commits; `full` fsyncs every commit before it is acknowledged, at a cost in writes per second (docs/operations.md, "Durability") [default: normal]
    #[arg(long, env = "DROVER_SQLITE_SYNCHRONOUS", value_enum)]
    pub sqlite_synchronous: Option<crate::store::Synchronous>,
    /// Seconds an operation a device took by polling, or was sent as a CoAP request, may stay unanswered (no result, no progress report) before it goes back to the queue and is offered again (three times, then it ends in ERROR); 0: wait for ever [default: 3600]
    #[arg(long, env = "DROVER_ANSWER_TIMEOUT_SECS")]
    pub answer_timeout_secs: Option<u64>,
    /// External MQTT broker (mqtt://host:port, or mqtts://host:port over TLS) instead of the embedded one
    #[arg(long, env = "DROVER_BROKER")]
    pub broker: Option<String>,
    /// Accept a LwM2M registration, update or de-registration for a live endpoint from another address than its registration's (clients behind a NAT whose port changes). Without DTLS, anyone who knows an endpoint's name can then take it over [default: false]
    #[arg(long, env = "DROVER_COAP_ALLOW_ADDRESS_CHANGE")]
    pub coap_allow_address_change: Option<bool>,
    /// Let devices enroll themselves at POST /agent/v1/{type}/enroll [default: true]
    #[arg(long, env = "DROVER_OPEN_ENROLLMENT")]
    pub open_enrollment: Option<bool>,
    /// MiB a tenant's uploads (its artifacts and its plugins' components) may take on the server; 0: no limit [default: 20480]
    #[arg(long, env = "DROVER_TENANT_STORAGE_MB")]
    pub tenant_storage_mb: Option<u64>,
    /// Delete finished operations and their history after this many days [default: 30]
    #[arg(long, env = "DROVER_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
    /// Roll telemetry up per minute and per hour as it is stored (series, group metrics);
    /// `false` keeps raw points only [default: true]
    #[arg(long, env = "DROVER_TELEMETRY_ROLLUPS")]
    pub telemetry_rollups: Option<bool>,
    /// Keep per-minute telemetry rollups this many days [default: 90]
    #[arg(long, env = "DROVER_ROLLUP_MINUTE_RETENTION_DAYS")]
    pub rollup_minute_retention_days: Option<u32>,
    /// Keep per-hour telemetry rollups this many days [default: 730]
    #[arg(long, env = "DROVER_ROLLUP_HOUR_RETENTION_DAYS")]
    pub rollup_hour_retention_days: Option<u32>,
    /// Let webhooks reach loopback, private and link-local addresses (receivers on your own
    /// network) [default: false]
    #[arg(long, env = "DROVER_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: Option<bool>,
    /// Disable a webhook after this many failed deliveries in a row [default: 20]
    #[arg(long, env = "DROVER_WEBHOOK_FAILURE_LIMIT")]
    pub webhook_failure_limit: Option<u32>,
    /// Delete events, the audit trail among them, after this many days [default: 365]
    #[arg(long, env = "DROVER_EVENT_RETENTION_DAYS")]
    pub event_retention_days: Option<u32>,
    /// How a device's applicable policies combine: `priority` (the highest alone) or `merged` (features combined, the higher priority wins per feature) [default: priority]
    #[arg(long, env = "DROVER_POLICY_MODE", value_enum)]
    pub policy_mode: Option<crate::policies::Mode>,
    /// Ask devices whose type declares POLICY_MONITOR (Android) for their per-feature compliance this often, in seconds; 0: never [default: 3600]
    #[arg(long, env = "DROVER_POLICY_MONITOR_SECS")]
    pub policy_monitor_secs: Option<u64>,
    /// Also publish every event on the MQTT broker under drover-events/{type}, readable with an admin-API token [default: false]
    #[arg(long, env = "DROVER_MQTT_EVENTS")]
    pub mqtt_events: Option<bool>,
    /// Mark active devices unreachable when not seen for this many hours [default: 24]
    #[arg(long, env = "DROVER_UNREACHABLE_AFTER_HOURS")]
    pub unreachable_after_hours: Option<u32>,
    /// Plugin faults are counted over this many seconds [default: 60]
    #[arg(long, env = "DROVER_PLUGIN_FAULT_WINDOW_SECS")]
    pub plugin_fault_window_secs: Option<u64>,
    /// Fault rate within the window at which a new plugin version is rolled back, or a plugin suspended [default: 0.5]
    #[arg(long, env = "DROVER_PLUGIN_FAULT_RATE")]
    pub plugin_fault_rate: Option<f64>,
    /// Fewest faults within the window before the fault rate counts [default: 10]
    #[arg(long, env = "DROVER_PLUGIN_MIN_FAULTS")]
    pub plugin_min_faults: Option<u64>,
    /// Fewest distinct devices (or admins) whose input made a plugin fault within the window before it is rolled back or suspended [default: 3]
    #[arg(long, env = "DROVER_PLUGIN_MIN_SOURCES")]
    pub plugin_min_sources: Option<usize>,
    /// Faults one sender's input may cause within a minute before its calls into plugins are refused (429) [default: 3]
    #[arg(long, env = "DROVER_SOURCE_HOLD_FAULTS")]
    pub source_hold_faults: Option<u32>,
    /// How long such a sender is refused, in seconds [default: 60]
    #[arg(long, env = "DROVER_SOURCE_HOLD_SECS")]
    pub source_hold_secs: Option<u64>,
    /// A plugin version serving for less than this many seconds is rolled back rather than suspended [default: 600]
    #[arg(long, env = "DROVER_PLUGIN_PROBATION_SECS")]
    pub plugin_probation_secs: Option<u64>,
    /// HTTP connections served at once; one more gets 503 [default: 4096]
    #[arg(long, env = "DROVER_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// Seconds a client has to send a request's head; also how long an idle kept-alive connection stays open [default: 20]
    #[arg(long, env = "DROVER_HTTP_HEADER_TIMEOUT_SECS")]
    pub http_header_timeout_secs: Option<u64>,
    /// Seconds a client has to send a request's body [default: 30]
    #[arg(long, env = "DROVER_HTTP_BODY_TIMEOUT_SECS")]
    pub http_body_timeout_secs: Option<u64>,
    /// Requests before any credential (enrollment, SCEP, a profile, a first certificate) per second from one client address; 0 switches the limit off [default: 20]
    #[arg(long, env = "DROVER_ENROLL_RATE_PER_SEC")]
    pub enroll_rate_per_sec: Option<u32>,
    /// How many such requests one client address may make at once before the rate applies [default: 100]
    #[arg(long, env = "DROVER_ENROLL_BURST")]
    pub enroll_burst: Option<u32>,
    /// MQTT connections the embedded broker holds at once (the process may open 20,000 files in all) [default: 12000]
    #[arg(long, env = "DROVER_MQTT_MAX_CONNECTIONS")]
    pub mqtt_max_connections: Option<usize>,
    /// File holding the key that seals secrets stored in the database (64 hex digits; made on first start). DROVER_SECRET_KEY (environment only) takes precedence [default: DATA_DIR/secret.key]
    #[arg(long, env = "DROVER_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// The key before a rotation: secrets sealed with it are sealed again with the new key at start
    #[arg(long, env = "DROVER_PREVIOUS_SECRET_KEY_FILE")]
    pub previous_secret_key_file: Option<PathBuf>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "DROVER_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// An OpenID Connect provider's issuer URL: the admin API also takes its signed tokens (JWTs) for users added here (docs/security.md) [default: none]
    #[arg(long, env = "DROVER_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// The audience (client id) the provider's tokens must be for
    #[arg(long, env = "DROVER_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// The token claim that names the user [default: email]
    #[arg(long, env = "DROVER_OIDC_USER_CLAIM")]
    pub oidc_user_claim: Option<String>,
}

/// MQTT connections by default: with 4,096 HTTP connections and the database pools, within
/// the 20,000 files a process may open here.
pub const DEFAULT_MQTT_MAX_CONNECTIONS: usize = 12_000;

/// How often a replica reads the plugin catalog and settings (and looks at plugin faults).
pub const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    /// `None`: `http://` and the address the HTTP listener is bound to.
    pub public_url: Option<String>,
    pub mqtt_addr: SocketAddr,
    /// TLS on the HTTP listener and the embedded broker, and from where.
    pub tls: crate::tls::Source,
    /// CA certificates an external broker over TLS must chain to.
    pub broker_ca: Option<PathBuf>,
    /// The operator's device CA (certificate, key); `None`: the one kept in the database.
    pub device_ca: Option<(PathBuf, PathBuf)>,
    /// Days a device certificate is valid.
    pub device_cert_days: u32,
    /// Proxies whose forwarded client certificates are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// An OpenID Connect provider whose tokens stand for users (`oidc.rs`).
    pub oidc: Option<crate::oidc::Settings>,
    pub coap_addr: SocketAddr,
    pub coaps_addr: SocketAddr,
    /// See [`ServeArgs::coap_nosec`].
    pub coap_nosec: bool,
    /// See [`ServeArgs::scep_allow_des`].
    pub scep_allow_des: bool,
    /// See [`ServeArgs::coap_allow_address_change`].
    pub coap_allow_address_change: bool,
    pub database_url: String,
    pub sqlite_synchronous: crate::store::Synchronous,
    /// How long an operation taken by a poll may go unanswered; `None`: for ever.
    pub answer_timeout: Option<std::time::Duration>,
    /// How often a replica reads the plugin catalog and settings for changes other
    /// replicas made, and looks at plugin faults. On PostgreSQL replicas are also told at
    /// once (`store/changes.rs`); the tests lengthen this to prove it.
    pub follow_interval: std::time::Duration,
    pub broker: Option<String>,
    pub log_format: LogFormat,
    pub open_enrollment: bool,
    /// Bytes a tenant's uploads may take (`tenants::check_storage`); 0: no limit.
    pub tenant_storage: u64,
    pub retention_days: u32,
    /// Roll telemetry up as it is stored.
    pub telemetry_rollups: bool,
    /// Telemetry rollups are kept this many days: per-minute ones, per-hour ones.
    pub rollup_minute_retention_days: u32,
    pub rollup_hour_retention_days: u32,
    /// Events (the audit trail among them) are kept this many days.
    pub event_retention_days: u32,
    /// Publish the event log on the broker (`mqtt::feed`).
    pub mqtt_events: bool,
    pub policy_mode: crate::policies::Mode,
    /// How often a device is asked for its policy's compliance (`POLICY_MONITOR`); `None`: never.
    pub policy_monitor: Option<std::time::Duration>,
    /// How webhooks are delivered, and where they may go.
    pub webhooks: crate::webhooks::Policy,
    pub unreachable_after_hours: u32,
    /// When the plugin catalog rolls back or suspends a faulting plugin by itself.
    pub fault_policy: crate::plugins::catalog::FaultPolicy,
    /// When a sender whose input makes plugins fault is refused for a while.
    pub hold_policy: crate::plugins::sources::HoldPolicy,
    /// Bounds of the HTTP listener.
    pub http: HttpLimits,
    /// Connections the embedded MQTT broker holds at once.
    pub mqtt_max_connections: usize,
    /// Where the key sealing stored secrets is (`secrets.rs`), and the one before a rotation.
    pub secret_key_file: PathBuf,
    pub previous_secret_key_file: Option<PathBuf>,
    /// The sealing key from DROVER_SECRET_KEY (environment only, never a flag).
    pub secret_key: Option<String>,
    /// The bootstrap admin token from DROVER_ADMIN_TOKEN (environment only, never a flag:
    /// flags show in process lists).
    pub admin_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("--broker `{}`: expected mqtt://host:port or mqtts://host:port", crate::secrets::redact_url(.0))]
    Broker(String),
    #[error("--database-url `{}`: expected sqlite://PATH or postgres://…", crate::secrets::redact_url(.0))]
    Database(String),
    #[error("{0}")]
    Tls(&'static str),
    #[error("{0}")]
    Oidc(String),
    #[error("--public-url `{0}`: expected http://… or https://… (the URL devices reach this server at)")]
    PublicUrl(String),
}

impl Config {
    /// A server for this machine alone: every listener on loopback at a port the OS
    /// picks, SQLite in `data_dir`, every other setting at its default and no admin
    /// token. For tests and for embedding the core (`core::Core::open`); change fields
    /// as needed.
    pub fn local(data_dir: &Path) -> Config {
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        Config {
            data_dir: data_dir.to_path_buf(),
            http_addr: loopback,
            public_url: None,
            mqtt_addr: loopback,
            tls: crate::tls::Source::Off,
            broker_ca: None,
            device_ca: None,
            device_cert_days: 365,
            trusted_proxies: vec![],
            oidc: None,
            coap_addr: loopback,
            coaps_addr: loopback,
            // The tests' LwM2M client (lwm2m-node-lib) speaks plain CoAP only.
            coap_nosec: true,
            scep_allow_des: false,
            coap_allow_address_change: false,
            database_url: format!("sqlite://{}?mode=rwc", data_dir.join("drover.db").display()),
            sqlite_synchronous: Default::default(),
            answer_timeout: Some(std::time::Duration::from_secs(3600)),
            follow_interval: FOLLOW_INTERVAL,
            broker: None,
            log_format: LogFormat::default(),
            open_enrollment: true,
            tenant_storage: DEFAULT_TENANT_STORAGE_MB << 20,
            retention_days: 30,
            telemetry_rollups: true,
            rollup_minute_retention_days: 90,
            rollup_hour_retention_days: 730,
            event_retention_days: 365,
            mqtt_events: false,
            policy_mode: crate::policies::Mode::Priority,
            policy_monitor: Some(std::time::Duration::from_secs(3600)),
            webhooks: Default::default(),
            unreachable_after_hours: 24,
            fault_policy: Default::default(),
            hold_policy: Default::default(),
            http: Default::default(),
            mqtt_max_connections: DEFAULT_MQTT_MAX_CONNECTIONS,
            secret_key_file: data_dir.join("secret.key"),
            previous_secret_key_file: None,
            secret_key: None,
            admin_token: None,
        }
    }
}

impl ServeArgs {
    /// Fill what flags and environment left unset from the config file, then defaults.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => Some(read_file(path)?),
            None if Path::new("drover.toml").exists() => Some(read_file(Path::new("drover.toml"))?),
            None => None,
        }
        .unwrap_or_default();
        let data_dir = self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("drover-data"));
        let database_url = self
            .database_url
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("drover.db").display()));
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Database(database_url));
        }
        let broker = self.broker.or(file.broker);
        if let Some(b) = &broker
            && (!["mqtt://", "tcp://", "mqtts://", "ssl://"].iter().any(|s| b.starts_with(s))
                || b.split("://").nth(1).is_none_or(str::is_empty))
        {
            return Err(ConfigError::Broker(b.clone()));
        }
        let plaintext = self.plaintext.or(file.plaintext).unwrap_or(false);
        let tls = match (plaintext, self.tls_cert.or(file.tls_cert), self.tls_key.or(file.tls_key)) {
            (true, _, _) => crate::tls::Source::Off,
            (false, Some(cert), Some(key)) => crate::tls::Source::Files { cert, key },
            (false, None, None) => crate::tls::Source::Generated,
            (false, Some(_), None) => return Err(ConfigError::Tls("--tls-cert needs --tls-key")),
            (false, None, Some(_)) => return Err(ConfigError::Tls("--tls-key needs --tls-cert")),
        };
        let mqtt_port = if plaintext { 1883 } else { 8883 };
        let device_ca = match (self.device_ca_cert.or(file.device_ca_cert), self.device_ca_key.or(file.device_ca_key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::Tls("--device-ca-cert needs --device-ca-key")),
            (None, Some(_)) => return Err(ConfigError::Tls("--device-ca-key needs --device-ca-cert")),
        };
        let oidc = match (self.oidc_issuer.or(file.oidc_issuer), self.oidc_audience.or(file.oidc_audience)) {
            (None, None) => None,
            (Some(issuer), audience) => {
                let settings = crate::oidc::Settings {
                    issuer: issuer.trim_end_matches('/').to_string(),
                    audience: audience.unwrap_or_default(),
                    user_claim: self.oidc_user_claim.or(file.oidc_user_claim).unwrap_or_else(|| "email".into()),
                };
                if let Some(p) = settings.problem() {
                    return Err(ConfigError::Oidc(p));
                }
                Some(settings)
            }
            (None, Some(_)) => return Err(ConfigError::Oidc("--oidc-audience needs --oidc-issuer".into())),
        };
        Ok(Config {
            oidc,
            tls,
            broker_ca: self.broker_ca.or(file.broker_ca),
            device_ca,
            trusted_proxies: self.trusted_proxies.or(file.trusted_proxies).unwrap_or_default(),
            device_cert_days: self.device_cert_days.or(file.device_cert_days).unwrap_or(365).clamp(1, 3650),
            http_addr: self.http_addr.or(file.http_addr).unwrap_or_else(|| ([127, 0, 0, 1], 8080).into()),
            public_url: match self.public_url.or(file.public_url) {
                Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                    return Err(ConfigError::PublicUrl(u));
                }
                u => u.map(|u| u.trim_end_matches('/').to_string()),
            },
            mqtt_addr: self.mqtt_addr.or(file.mqtt_addr).unwrap_or_else(|| ([127, 0, 0, 1], mqtt_port).into()),
            coap_addr: self.coap_addr.or(file.coap_addr).unwrap_or_else(|| ([127, 0, 0, 1], 5683).into()),
            coaps_addr: self.coaps_addr.or(file.coaps_addr).unwrap_or_else(|| ([127, 0, 0, 1], 5684).into()),
            coap_nosec: self.coap_nosec.or(file.coap_nosec).unwrap_or(false),
            scep_allow_des: self.scep_allow_des.or(file.scep_allow_des).unwrap_or(false),
            coap_allow_address_change: self
                .coap_allow_address_change
                .or(file.coap_allow_address_change)
                .unwrap_or(false),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            open_enrollment: self.open_enrollment.or(file.open_enrollment).unwrap_or(true),
            tenant_storage: self.tenant_storage_mb.or(file.tenant_storage_mb).unwrap_or(DEFAULT_TENANT_STORAGE_MB)
                << 20,
            retention_days: self.retention_days.or(file.retention_days).unwrap_or(30),
            telemetry_rollups: self.telemetry_rollups.or(file.telemetry_rollups).unwrap_or(true),
            rollup_minute_retention_days: self
                .rollup_minute_retention_days
                .or(file.rollup_minute_retention_days)
                .unwrap_or(90)
                .max(1),
            rollup_hour_retention_days: self
                .rollup_hour_retention_days
                .or(file.rollup_hour_retention_days)
                .unwrap_or(730)
                .max(1),
            event_retention_days: self.event_retention_days.or(file.event_retention_days).unwrap_or(365).max(1),
            mqtt_events: self.mqtt_events.or(file.mqtt_events).unwrap_or(false),
            policy_mode: self.policy_mode.or(file.policy_mode).unwrap_or_default(),
            policy_monitor: Some(self.policy_monitor_secs.or(file.policy_monitor_secs).unwrap_or(3600))
                .filter(|s| *s > 0)
                .map(std::time::Duration::from_secs),
            webhooks: {
                let d = crate::webhooks::Policy::default();
                crate::webhooks::Policy {
                    allow_private: self.webhook_allow_private.or(file.webhook_allow_private).unwrap_or(false),
                    failure_limit: self
                        .webhook_failure_limit
                        .or(file.webhook_failure_limit)
                        .map_or(d.failure_limit, |n| i64::from(n.max(1))),
                    ..d
                }
            },
            unreachable_after_hours: self.unreachable_after_hours.or(file.unreachable_after_hours).unwrap_or(24).max(1),
            fault_policy: {
                let d = crate::plugins::catalog::FaultPolicy::default();
                crate::plugins::catalog::FaultPolicy {
                    window: self
                        .plugin_fault_window_secs
                        .or(file.plugin_fault_window_secs)
                        .map_or(d.window, |s| std::time::Duration::from_secs(s.max(1))),
                    rate: self.plugin_fault_rate.or(file.plugin_fault_rate).unwrap_or(d.rate).clamp(0.0, 1.0),
                    min_faults: self.plugin_min_faults.or(file.plugin_min_faults).unwrap_or(d.min_faults).max(1),
                    min_sources: self.plugin_min_sources.or(file.plugin_min_sources).unwrap_or(d.min_sources).max(1),
                    probation: self
                        .plugin_probation_secs
                        .or(file.plugin_probation_secs)
                        .map_or(d.probation, std::time::Duration::from_secs),
                }
            },
            hold_policy: {
                let d = crate::plugins::sources::HoldPolicy::default();
                crate::plugins::sources::HoldPolicy {
                    faults: self.source_hold_faults.or(file.source_hold_faults).unwrap_or(d.faults).max(1),
                    window: d.window,
                    hold: self
                        .source_hold_secs
                        .or(file.source_hold_secs)
                        .map_or(d.hold, std::time::Duration::from_secs),
                }
            },
            http: {
                let d = HttpLimits::default();
                HttpLimits {
                    max_connections: self
                        .http_max_connections
                        .or(file.http_max_connections)
                        .unwrap_or(d.max_connections)
                        .max(1),
                    header_timeout: self
                        .http_header_timeout_secs
                        .or(file.http_header_timeout_secs)
                        .map_or(d.header_timeout, |s| std::time::Duration::from_secs(s.max(1))),
                    body_timeout: self
                        .http_body_timeout_secs
                        .or(file.http_body_timeout_secs)
                        .map_or(d.body_timeout, |s| std::time::Duration::from_secs(s.max(1))),
                    enroll_rate_per_sec: self
                        .enroll_rate_per_sec
                        .or(file.enroll_rate_per_sec)
                        .unwrap_or(d.enroll_rate_per_sec),
                    enroll_burst: self.enroll_burst.or(file.enroll_burst).unwrap_or(d.enroll_burst).max(1),
                }
            },
            mqtt_max_connections: self
                .mqtt_max_connections
                .or(file.mqtt_max_connections)
                .unwrap_or(DEFAULT_MQTT_MAX_CONNECTIONS)
                .max(1),
            secret_key_file: self
                .secret_key_file
                .or(file.secret_key_file)
                .unwrap_or_else(|| data_dir.join("secret.key")),
            previous_secret_key_file: self.previous_secret_key_file.or(file.previous_secret_key_file),
            secret_key: std::env::var("DROVER_SECRET_KEY").ok().filter(|k| !k.trim().is_empty()),
            admin_token: std::env::var("DROVER_ADMIN_TOKEN").ok(),
            data_dir,
            database_url,
            sqlite_synchronous: self.sqlite_synchronous.or(file.sqlite_synchronous).unwrap_or_default(),
            answer_timeout: match self.answer_timeout_secs.or(file.answer_timeout_secs).unwrap_or(3600) {
                0 => None,
                secs => Some(std::time::Duration::from_secs(secs)),
            },
            follow_interval: FOLLOW_INTERVAL,
            broker,
        })
    }
}

fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.message().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("drover.toml");
        std::fs::write(&file, "http_addr = \"127.0.0.1:9000\"\nmqtt_addr = \"127.0.0.1:9001\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            mqtt_addr: Some("127.0.0.1:9999".parse().unwrap()),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.http_addr.port(), 9000);
        assert_eq!(c.mqtt_addr.port(), 9999);
        assert_eq!(c.coap_addr.port(), 5683);
        assert!(c.database_url.starts_with("sqlite://drover-data"));

        std::fs::write(&file, "http_adr = \"x\"\n").unwrap();
        let e = ServeArgs { config: Some(file), ..Default::default() }.resolve().unwrap_err();
        assert!(e.to_string().contains("http_adr"), "{e}");
        let e = ServeArgs { broker: Some("localhost:1883".into()), ..Default::default() }.resolve().unwrap_err();
        assert!(e.to_string().contains("--broker"), "{e}");
    }
}

/// Default requests before any credential per second per client address (`http/throttle.rs`).
pub const DEFAULT_ENROLL_RATE: u32 = 20;
/// MiB a tenant's uploads may take unless `--tenant-storage-mb` says otherwise: 20 GiB,
/// ten full-size firmware images.
pub const DEFAULT_TENANT_STORAGE_MB: u64 = 20 << 10;
/// Default burst of them: what one device's enrollment takes at once (an iPhone's is five
/// requests: profile, three SCEP, check-in), twenty times over.
pub const DEFAULT_ENROLL_BURST: u32 = 100;

/// Bounds of the HTTP listener (configurable: `--http-max-connections`,
/// `--http-header-timeout-secs`, `--http-body-timeout-secs`, `--enroll-rate-per-sec`,
/// `--enroll-burst`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: std::time::Duration,
    /// How long a handler waits for a request body.
    pub body_timeout: std::time::Duration,
    /// Requests before any credential, per second and at once, per client address
    /// (`http/throttle.rs`); a rate of 0: no limit.
    pub enroll_rate_per_sec: u32,
    pub enroll_burst: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 4096,
            header_timeout: std::time::Duration::from_secs(20),
            body_timeout: std::time::Duration::from_secs(30),
            enroll_rate_per_sec: DEFAULT_ENROLL_RATE,
            enroll_burst: DEFAULT_ENROLL_BURST,
        }
    }
}
