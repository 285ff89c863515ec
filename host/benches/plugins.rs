//! Plugin figures, side by side with native code. Run by hand (release build):
//!
//!     cargo bench -p drover --bench plugins
//!
//! Prints a Markdown table; docs/BENCHMARKS.md records a run. Not run in CI.
//! `BENCH_PROFILE=1` runs only the isolated validate call (for `perf record`), and with
//! `BENCH_WASM=FILE` on another build of the Android component (an A/B of guest builds).
//!
//! * codec: the Android plugin's encode/decode of ~1 KB real payloads, called natively
//!   (the same Rust code, linked into this binary) and through Wasm in a reused instance;
//! * isolated call: what the server does per call (fresh store + instantiate + call + drop);
//! * load: cold compile and warm-cache load of the component;
//! * esp8266: its JSON and binary codecs on the recorded board messages, native and
//!   isolated Wasm calls;
//! * ios: Apple MDM command plists and the recorded check-ins and reports, likewise;
//! * windows: a SyncML answer with commands, and the recorded session messages;
//! * lwm2m: CoAP requests for operations, and TLV / SenML answers (the specification's
//!   Device example) and a firmware notification.

use drover::plugins::device_type::ReusedInstance;
use drover::plugins::types as host;
use drover::plugins::{Limits, LoadOptions, Runtime};
use drover_plugin_android::Android;
use drover_plugin_esp8266::Esp8266;
use drover_plugin_ios::Ios;
use drover_plugin_lwm2m::Lwm2m;
use drover_plugin_windows::Windows;
use drover_sdk::device_type::Guest;
// Windows is of the `device-type-enrolling` world: the same five calls, its own trait.
use drover_sdk::device_type::drover::plugin::types as guest;
use drover_sdk::device_type_enrolling::Guest as _;
use std::time::{Duration, Instant};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/android/fixtures");

struct Figures {
    samples: Vec<Duration>,
}

impl Figures {
    fn pct(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort();
        let i = ((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1;
        s[i].as_nanos() as f64 / 1e3
    }
    fn mean(&self) -> f64 {
        self.samples.iter().map(|d| d.as_nanos() as f64).sum::<f64>() / self.samples.len() as f64 / 1e3
    }
}

/// Time `n` runs of `f` after `n/10` warm-up runs, one sample per run.
async fn measure<F, Fut>(n: usize, mut f: F) -> Figures
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    Figures { samples }
}

fn row(what: &str, native: Option<&Figures>, wasm: &Figures) {
    match native {
        Some(n) => println!(
            "| {what} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}× |",
            n.pct(0.5),
            wasm.pct(0.5),
            wasm.pct(0.99),
            wasm.mean(),
            wasm.pct(0.5) / n.pct(0.5)
        ),
        None => println!("| {what} | – | {:.2} | {:.2} | {:.2} | – |", wasm.pct(0.5), wasm.pct(0.99), wasm.mean()),
    }
}

fn ops_guest() -> Vec<guest::Operation> {
    // Four operations with real payloads: about 1 KB of JSON on the wire.
    vec![
        guest::Operation { id: 1001, code: "DEVICE_LOCK".into(), kind: guest::OperationKind::Command, payload: Some(r#"{"message":"This device is locked by IT. Call the service desk on +44 20 7946 0000 to unlock it.","hardLockEnabled":false}"#.into()) },
        guest::Operation { id: 1002, code: "NOTIFICATION".into(), kind: guest::OperationKind::Command, payload: Some(r#"{"messageTitle":"Security update","messageText":"A security update will be installed tonight between 01:00 and 03:00. Keep the device charged and connected to Wi-Fi. Unsaved work in open apps may be lost when the device restarts."}"#.into()) },
        guest::Operation { id: 1003, code: "WIFI".into(), kind: guest::OperationKind::Profile, payload: Some(r#"{"ssid":"corp-secure","type":"wpa2","password":"correct horse battery staple"}"#.into()) },
        guest::Operation { id: 1004, code: "INSTALL_APPLICATION".into(), kind: guest::OperationKind::Command, payload: Some(r#"{"appIdentifier":"com.example.fieldservice","type":"enterprise","url":"https://apps.example.com/android/fieldservice-4.12.0-release.apk"}"#.into()) },
    ]
}

fn ops_host() -> Vec<host::Operation> {
    ops_guest()
        .into_iter()
        .map(|o| host::Operation {
            id: o.id,
            code: o.code,
            kind: match o.kind {
                guest::OperationKind::Command => host::OperationKind::Command,
                guest::OperationKind::Profile => host::OperationKind::Profile,
                guest::OperationKind::Policy => host::OperationKind::Policy,
            },
            payload: o.payload,
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let android_bytes =
        drover::plugins::first_party::PLUGINS.iter().find(|(name, _)| *name == "android").map(|(_, b)| *b).unwrap();
    let results = std::fs::read(format!("{FIXTURES}/results.json")).unwrap();

    // Load figures: a fresh cache directory, then the same again.
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(Limits::default(), Some(dir.path().to_path_buf())).unwrap();
    let cold = rt.load(android_bytes, LoadOptions::default()).await.unwrap();
    let mut warm_total = Vec::new();
    for _ in 0..20 {
        let p = rt.load(android_bytes, LoadOptions::default()).await.unwrap();
        warm_total.push(Duration::from_micros(p.load.total_micros));
    }
    let warm = Figures { samples: warm_total };
    let plugin = cold;

    // BENCH_PROFILE=1: only the smallest isolated call, in a loop, for `perf record`.
    // BENCH_WASM=FILE: the same for that build of the component instead (an A/B of guest builds).
    if std::env::var_os("BENCH_PROFILE").is_some() {
        let plugin = match std::env::var_os("BENCH_WASM") {
            Some(f) => rt.load(&std::fs::read(f).unwrap(), LoadOptions::default()).await.unwrap(),
            None => plugin,
        };
        let f = measure(n, || async {
            std::hint::black_box(plugin.validate("DEVICE_RING", None).await.ok());
        })
        .await;
        println!("validate (no payload), isolated call: p50 {:.2} µs, p99 {:.2} µs", f.pct(0.5), f.pct(0.99));
        return;
    }

    let encoded_len = {
        let Ok(e) = Android::encode(
            guest::Device { id: "d".into(), metadata: vec![], session: vec![] },
            ops_guest(),
            guest::ChannelKind::Http,
        ) else {
            panic!()
        };
        match e.output {
            guest::Outbound::Http(r) => r.body.len(),
            _ => 0,
        }
    };

    println!(
        "component {} KB; encode output {} B; decode input {} B; {n} samples per row\n",
        android_bytes.len() / 1024,
        encoded_len,
        results.len()
    );
    println!("| what | native p50 µs | Wasm p50 µs | Wasm p99 µs | Wasm mean µs | Wasm/native p50 |");
    println!("|---|---|---|---|---|---|");

    // Native: the plugin's own code linked into this binary.
    let gdev = guest::Device { id: "354956090214718".into(), metadata: vec![], session: vec![] };
    let gchan = guest::Channel::Http(guest::HttpRequest {
        method: guest::HttpMethod::Put,
        path: "pending-operations".into(),
        query: String::new(),
        content_type: None,
        headers: vec![],
    });
    let native_enc = measure(n, || {
        let ops = ops_guest();
        let d = gdev.clone();
        async move {
            std::hint::black_box(Android::encode(d, ops, guest::ChannelKind::Http).ok());
        }
    })
    .await;
    let native_dec = measure(n, || {
        let (d, c, b) = (gdev.clone(), gchan.clone(), results.clone());
        async move {
            std::hint::black_box(Android::decode(d, c, b).ok());
        }
    })
    .await;

    // Wasm, one instance reused: the codec's own cost.
    let hdev = host::Device { id: "354956090214718".into(), metadata: vec![], session: vec![] };
    let hchan = host::Channel::Http(host::HttpRequest {
        method: host::HttpMethod::Put,
        path: "pending-operations".into(),
        query: String::new(),
        content_type: None,
        headers: vec![],
    });
    let hops = ops_host();
    let mut inst = ReusedInstance::new(&plugin).await.unwrap();
    let mut reused_enc = Figures { samples: Vec::with_capacity(n) };
    for i in 0..n + n / 10 {
        let t = Instant::now();
        std::hint::black_box(inst.encode(&hdev, &hops, host::ChannelKind::Http).await.unwrap().ok());
        if i >= n / 10 {
            reused_enc.samples.push(t.elapsed());
        }
    }
    let mut reused_dec = Figures { samples: Vec::with_capacity(n) };
    for i in 0..n + n / 10 {
        let t = Instant::now();
        std::hint::black_box(inst.decode(&hdev, &hchan, &results).await.unwrap().ok());
        if i >= n / 10 {
            reused_dec.samples.push(t.elapsed());
        }
    }

    // Wasm, isolated: fresh store + instantiate + call + drop, as the server does.
    let iso_enc = measure(n, || {
        let (d, o) = (hdev.clone(), hops.clone());
        let p = &plugin;
        async move {
            std::hint::black_box(
                p.encode(drover::plugins::Source::Device(1), d, o, host::ChannelKind::Http).await.ok(),
            );
        }
    })
    .await;
    let iso_dec = measure(n, || {
        let (d, c, b) = (hdev.clone(), hchan.clone(), results.clone());
        let p = &plugin;
        async move {
            std::hint::black_box(p.decode(drover::plugins::Source::Device(1), d, c, b).await.ok());
        }
    })
    .await;
    let iso_validate = measure(n, || {
        let p = &plugin;
        async move {
            std::hint::black_box(p.validate("DEVICE_RING", None).await.ok());
        }
    })
    .await;

    row("encode 4 ops (~1 KB), reused instance", Some(&native_enc), &reused_enc);
    row("decode 4 results (~1 KB), reused instance", Some(&native_dec), &reused_dec);
    row("encode 4 ops, isolated call", Some(&native_enc), &iso_enc);
    row("decode 4 results, isolated call", Some(&native_dec), &iso_dec);
    row("validate (no payload), isolated call", None, &iso_validate);
    println!();
    println!("| load | figure |");
    println!("|---|---|");
    println!(
        "| cold: compile + pre-instantiate + smoke test | {:.1} ms (compile {:.1} ms) |",
        plugin.load.total_micros as f64 / 1e3,
        plugin.load.compile_micros as f64 / 1e3
    );
    println!(
        "| warm: cached artifact + pre-instantiate + smoke test, p50 / max of 20 | {:.2} ms / {:.2} ms |",
        warm.pct(0.5) / 1e3,
        warm.pct(1.0) / 1e3
    );
    esp8266(&rt, n).await;
    ios(&rt, n).await;
    windows(&rt, n).await;
    lwm2m(&rt, n).await;
}

type NativeEncode =
    fn(guest::Device, Vec<guest::Operation>, guest::ChannelKind) -> Result<guest::Encoded, guest::PluginError>;
type NativeDecode = fn(guest::Device, guest::Channel, Vec<u8>) -> Result<guest::DeviceMessage, guest::PluginError>;

/// A first-party plugin loaded with the capabilities its manifest asks for.
async fn first_party(rt: &Runtime, name: &str) -> (drover::plugins::LoadedPlugin, usize) {
    let bytes = drover::plugins::first_party::PLUGINS.iter().find(|(n, _)| *n == name).unwrap().1;
    let manifest = drover::plugins::Manifest::from_component(bytes).unwrap();
    let options = LoadOptions { grants: manifest.capabilities.iter().copied().collect(), ..Default::default() };
    println!("\n{name} ({} KB component)\n", bytes.len() / 1024);
    println!("| what | native p50 µs | Wasm p50 µs | Wasm p99 µs | Wasm mean µs | Wasm/native p50 |");
    println!("|---|---|---|---|---|---|");
    (rt.load(bytes, options).await.unwrap(), bytes.len())
}

fn fixture(plugin: &str, file: &str) -> Vec<u8> {
    std::fs::read(format!("{}/../plugins/{plugin}/fixtures/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The same device in the guest's and the host's bindings (distinct types).
fn device(id: &str, metadata: Vec<(String, String)>, session: Vec<u8>) -> (guest::Device, host::Device) {
    (
        guest::Device { id: id.into(), metadata: metadata.clone(), session: session.clone() },
        host::Device { id: id.into(), metadata, session },
    )
}

/// Operations `first`, `first + 1` … with these codes and payloads, in both bindings.
fn operations(codes: &[(&str, Option<&str>)], first: u64) -> (Vec<guest::Operation>, Vec<host::Operation>) {
    let guest = codes
        .iter()
        .enumerate()
        .map(|(i, (c, p))| guest::Operation {
            id: first + i as u64,
            code: (*c).into(),
            kind: guest::OperationKind::Command,
            payload: p.map(str::to_string),
        })
        .collect();
    let host = codes
        .iter()
        .enumerate()
        .map(|(i, (c, p))| host::Operation {
            id: first + i as u64,
            code: (*c).into(),
            kind: host::OperationKind::Command,
            payload: p.map(str::to_string),
        })
        .collect();
    (guest, host)
}

fn http(method: &str, path: &str, content_type: &str) -> (guest::Channel, host::Channel) {
    let (gm, hm) = match method {
        "POST" => (guest::HttpMethod::Post, host::HttpMethod::Post),
        _ => (guest::HttpMethod::Put, host::HttpMethod::Put),
    };
    (
        guest::Channel::Http(guest::HttpRequest {
            method: gm,
            path: path.into(),
            query: String::new(),
            content_type: Some(content_type.into()),
            headers: vec![],
        }),
        host::Channel::Http(host::HttpRequest {
            method: hm,
            path: path.into(),
            query: String::new(),
            content_type: Some(content_type.into()),
            headers: vec![],
        }),
    )
}

fn mqtt(topic: &str) -> (guest::Channel, host::Channel) {
    (
        guest::Channel::Mqtt(guest::MqttMessage { topic_suffix: topic.into() }),
        host::Channel::Mqtt(host::MqttMessage { topic_suffix: topic.into() }),
    )
}

/// A CoAP 2.05 response on `path` in content format `format`, for operation 101.
fn coap(path: &str, format: u16) -> (guest::Channel, host::Channel) {
    (
        guest::Channel::Coap(guest::CoapMessage {
            method: None,
            code: 205,
            path: path.into(),
            query: vec![],
            content_format: Some(format),
            operation_id: Some(101),
        }),
        host::Channel::Coap(host::CoapMessage {
            method: None,
            code: 205,
            path: path.into(),
            query: vec![],
            content_format: Some(format),
            operation_id: Some(101),
        }),
    )
}

fn kinds(kind: host::ChannelKind) -> guest::ChannelKind {
    match kind {
        host::ChannelKind::Http => guest::ChannelKind::Http,
        host::ChannelKind::Mqtt => guest::ChannelKind::Mqtt,
        host::ChannelKind::Coap => guest::ChannelKind::Coap,
    }
}

/// One row: `encode` natively and as an isolated Wasm call, on the same input.
#[allow(clippy::too_many_arguments)]
async fn encode_row(
    n: usize,
    label: &str,
    native: NativeEncode,
    plugin: &drover::plugins::LoadedPlugin,
    (gdev, hdev): &(guest::Device, host::Device),
    (gops, hops): &(Vec<guest::Operation>, Vec<host::Operation>),
    kind: host::ChannelKind,
) {
    let native = measure(n, || {
        let (d, o) = (gdev.clone(), gops.clone());
        async move {
            std::hint::black_box(native(d, o, kinds(kind)).unwrap());
        }
    })
    .await;
    let wasm = measure(n, || {
        let (d, o) = (hdev.clone(), hops.clone());
        async move {
            std::hint::black_box(plugin.encode(drover::plugins::Source::Device(1), d, o, kind).await.unwrap());
        }
    })
    .await;
    row(&format!("{label}, isolated call"), Some(&native), &wasm);
}

/// One row: `decode` of `body` natively and as an isolated Wasm call.
async fn decode_row(
    n: usize,
    native: NativeDecode,
    plugin: &drover::plugins::LoadedPlugin,
    (gdev, hdev): &(guest::Device, host::Device),
    (gchan, hchan): &(guest::Channel, host::Channel),
    file: &str,
    body: &[u8],
) {
    let native = measure(n, || {
        let (d, c, b) = (gdev.clone(), gchan.clone(), body.to_vec());
        async move {
            std::hint::black_box(native(d, c, b).unwrap());
        }
    })
    .await;
    let wasm = measure(n, || {
        let (d, c, b) = (hdev.clone(), hchan.clone(), body.to_vec());
        async move {
            std::hint::black_box(plugin.decode(drover::plugins::Source::Device(1), d, c, b).await.unwrap());
        }
    })
    .await;
    row(&format!("decode {file} ({} B), isolated call", body.len()), Some(&native), &wasm);
}

/// The esp8266 plugin on its recorded messages: native against isolated Wasm calls.
async fn esp8266(rt: &Runtime, n: usize) {
    let (plugin, _) = first_party(rt, "esp8266").await;
    let ops = operations(
        &[
            ("REBOOT", None),
            ("LED", Some(r#"{"state":"blink"}"#)),
            ("SET_INTERVAL", Some(r#"{"seconds":60}"#)),
            (
                "FIRMWARE_UPDATE",
                Some(
                    r#"{"url":"https://fw.example/esp/1.1.0.bin","sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","size":412304,"version":"1.1.0"}"#,
                ),
            ),
        ],
        100,
    );
    for (label, encoding) in [("encode 4 ops, JSON frame", "json"), ("encode 4 ops, binary frame", "binary")] {
        let dev = device("esp-00a1b2c3", vec![("encoding".into(), encoding.into())], vec![]);
        encode_row(n, label, Esp8266::encode, &plugin, &dev, &ops, host::ChannelKind::Mqtt).await;
    }
    let dev = device("esp-00a1b2c3", vec![], vec![]);
    for (file, topic) in [("reply.json", "reply"), ("telemetry.json", "telemetry"), ("telemetry.bin", "bin")] {
        decode_row(n, Esp8266::decode, &plugin, &dev, &mqtt(topic), file, &fixture("esp8266", file)).await;
    }
}

/// The ios plugin: command plists (one per answer) and the recorded Apple MDM messages.
async fn ios(rt: &Runtime, n: usize) {
    let (plugin, _) = first_party(rt, "ios").await;
    let dev = device("00008120-001A2D3E0C38802E", vec![], vec![]);
    let policy = r#"{"identifier":"com.example.baseline","name":"Baseline","restrictions":{"allowCamera":false,"allowScreenShot":false},"passcode":{"minLength":6,"requireAlphanumeric":true}}"#;
    let lock = r#"{"Message":"Return to IT","PhoneNumber":"+94 11 555 0100"}"#;
    for (label, codes) in [
        ("encode DeviceLock", vec![("DeviceLock", Some(lock))]),
        ("encode POLICY_BUNDLE (builds a profile)", vec![("POLICY_BUNDLE", Some(policy))]),
        ("encode nothing left (empty answer)", vec![]),
    ] {
        encode_row(n, label, Ios::encode, &plugin, &dev, &operations(&codes, 105), host::ChannelKind::Http).await;
    }
    let chan = http("PUT", "server", "application/x-apple-aspen-mdm");
    for file in ["idle.plist", "token-update.plist", "ack-device-information.plist", "error.plist"] {
        decode_row(n, Ios::decode, &plugin, &dev, &chan, file, &fixture("ios", file)).await;
    }
}

/// The windows plugin: its answer in an open session (statuses plus commands), and the
/// recorded client messages.
async fn windows(rt: &Runtime, n: usize) {
    let (plugin, _) = first_party(rt, "windows").await;
    let id = "7F3A2B1C9D8E4F60A1B2C3D4E5F60718";
    let chan = http("POST", "ManagementServer/MDM.svc", "application/vnd.syncml.dm+xml");
    let open = fixture("windows", "session-open.xml");
    // The session after the device's first message: what encode answers in.
    let session = Windows::decode(device(id, vec![], vec![]).0, chan.0.clone(), open).unwrap().session.unwrap();
    let ops = operations(
        &[
            ("DevDetail", None),
            ("DeviceStatus", None),
            ("CameraPolicy", Some(r#"{"allowed":false}"#)),
            ("Reboot", None),
        ],
        101,
    );
    let dev = device(id, vec![], session);
    let label = "encode 4 statuses + 4 commands (2.1 KB of SyncML)";
    encode_row(n, label, Windows::encode, &plugin, &dev, &ops, host::ChannelKind::Http).await;
    // The session in which results.xml answers: the same four commands sent as CmdID 5–8.
    let after = Windows::encode(dev.0.clone(), ops.0.clone(), guest::ChannelKind::Http).unwrap().session.unwrap();
    for (file, session) in [("session-open.xml", vec![]), ("results.xml", after)] {
        let dev = device(id, vec![], session);
        decode_row(n, Windows::decode, &plugin, &dev, &chan, file, &fixture("windows", file)).await;
    }
}

/// The lwm2m plugin: operations as CoAP requests, and the recorded answers.
async fn lwm2m(rt: &Runtime, n: usize) {
    let (plugin, _) = first_party(rt, "lwm2m").await;
    let dev = device("urn:dev:os:0023C7-000001", vec![], vec![]);
    let ops = operations(
        &[
            ("DeviceInfo", None),
            ("Write", Some(r#"{"path":"1/0/1","value":300,"format":"tlv"}"#)),
            ("Observe", Some(r#"{"path":"3/0/9"}"#)),
            ("FIRMWARE_UPDATE", Some(r#"{"uri":"coap://fw.example.com/esp/2.1.0.bin"}"#)),
        ],
        101,
    );
    let label = "encode 4 ops (5 CoAP requests)";
    encode_row(n, label, Lwm2m::encode, &plugin, &dev, &ops, host::ChannelKind::Coap).await;
    for (file, path, format) in [
        ("device-read.tlv", "3/0", 11542u16),
        ("device-read.senml.json", "3/0", 110),
        ("firmware-done.tlv", "5/0", 11542),
    ] {
        decode_row(n, Lwm2m::decode, &plugin, &dev, &coap(path, format), file, &fixture("lwm2m", file)).await;
    }
}
