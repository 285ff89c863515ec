//! Mutation fuzzing of what devices send (issue 30): every first-party device-type plugin's
//! `enroll` and `decode`, through the real runtime, fed variations of its own recorded
//! payloads (`plugins/*/fixtures`): bits flipped, bytes set to the values parsers trip on,
//! ranges cut, repeated or spliced from another payload, numbers made huge, nesting made
//! deep. The property: a plugin answers every input with a result or a refusal
//! (`malformed`, `invalid`, …), never a fault (a trap, which is a panic in the guest, or a
//! CPU, memory or output limit). The host's own first look at a body (`bounds::check`)
//! and its topic parser see the same inputs and must not panic.
//!
//! CI runs a bounded number of inputs per plugin; `DROVER_FUZZ_SECS` runs each plugin for
//! that long instead (docs/testing.md has the long runs). A finding is written to
//! `target/fuzz-findings/` and fails the test with the file's name.

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use drover::plugins::fixtures::{self, Input};
use drover::plugins::{CallError, LoadOptions, Source};
use drover_tests::{Backend, Rng, TestServer, runtime};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// Inputs per plugin when no time is given.
const CI_INPUTS: usize = 300;

/// Bytes parsers of JSON, XML, plists, TLV and CoAP link format trip on.
const INTERESTING: &[u8] = b"\x00\xff\x7f\x80<>{}[]\"'\\&;:,=/.-+0123456789eE \n\t";

fn mutate(rng: &mut Rng, body: &[u8], others: &[&[u8]]) -> Vec<u8> {
    let mut b = body.to_vec();
    // Mostly one or two changes: more, and nearly every input stops at the first parse
    // error, before the code behind the parser.
    for _ in 0..1 + rng.below(2) + rng.below(2) * rng.below(3) {
        let len = b.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(32)).min(len);
                b.drain(start..end);
            }
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let copy = b[start..end].to_vec();
                let at = rng.below(len + 1);
                b.splice(at..at, copy);
            }
            5 => b.truncate(rng.below(len + 1)),
            6 if !others.is_empty() => {
                // Splice: this payload's head, another payload's tail.
                let other = others[rng.below(others.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            7 => {
                // A number where a number is: far too large, negative, or not finite.
                let at = b.iter().position(u8::is_ascii_digit).unwrap_or(len);
                let huge: &[u8] =
                    [&b"99999999999999999999999999"[..], b"-1", b"1e999", b"NaN", b"0x7fffffff"][rng.below(5)];
                b.splice(at..at, huge.iter().copied());
            }
            _ => {
                // Deep nesting of whatever bracket the payload uses.
                let open = [b'[', b'{', b'<'][rng.below(3)];
                let at = rng.below(len + 1);
                let depth = 1 + rng.below(300);
                b.splice(at..at, std::iter::repeat_n(open, depth));
            }
        }
    }
    b
}

fn finding(plugin: &str, input: &Input, body: &[u8], what: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-findings");
    std::fs::create_dir_all(&dir).unwrap();
    let hash =
        std::hash::BuildHasher::hash_one(&std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default(), body);
    let name = format!("{plugin}-{}-{hash:016x}.bin", input.call);
    std::fs::write(dir.join(&name), body).unwrap();
    format!("{plugin} {} of a variation of {}: {what} (input in target/fuzz-findings/{name})", input.call, input.file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_payloads_never_fault_a_plugin() {
    let budget = std::env::var("DROVER_FUZZ_SECS").ok().and_then(|v| v.parse().ok()).map(Duration::from_secs);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let mut report = Vec::new();
    for (name, bytes) in drover::plugins::first_party::PLUGINS {
        let fixtures = root.join(name).join("fixtures");
        if !fixtures.join("cases.toml").exists() {
            continue; // a transport or a rule: no device payloads
        }
        let manifest = drover::plugins::Manifest::from_component(bytes).unwrap();
        let options = LoadOptions { grants: manifest.capabilities.iter().copied().collect(), ..Default::default() };
        let plugin = runtime().load(bytes, options).await.unwrap_or_else(|e| panic!("{name} loads: {e}"));
        // The device the recorded enrollment makes, as `drover plugin test` does: decodes
        // are as that device, so they get past the identity checks to the parsing.
        let mut device =
            drover::plugins::types::Device { id: "fixture-device".into(), metadata: vec![], session: vec![] };
        for input in fixtures::inputs(&fixtures, &device.id).unwrap().iter().filter(|i| i.call == "enroll") {
            if let Ok(e) = plugin.enroll(Source::Admin, input.channel.clone(), input.body.clone()).await {
                device.id = e.device_id;
                device.metadata = e.metadata;
            }
        }
        let inputs = fixtures::inputs(&fixtures, &device.id).unwrap();
        let bodies: Vec<&[u8]> = inputs.iter().map(|i| i.body.as_slice()).collect();
        let mut rng = Rng(0x853C_49E6_748F_EA9B ^ name.len() as u64);
        let started = Instant::now();
        let (mut tried, mut refused) = (0usize, 0usize);
        loop {
            match budget {
                Some(b) if started.elapsed() >= b => break,
                None if tried >= CI_INPUTS => break,
                _ => {}
            }
            let input = &inputs[rng.below(inputs.len())];
            let body = mutate(&mut rng, &input.body, &bodies);
            let _ = drover::bounds::check(&body);
            if let Ok(text) = std::str::from_utf8(&body) {
                let _ = drover::mqtt::parse_topic(text);
            }
            // A fresh source per input: the runtime holds back a source whose input keeps
            // faulting, which would hide the next finding behind `held`.
            let source = Source::Peer(std::net::IpAddr::from([10, 0, (tried >> 8) as u8, tried as u8]));
            let answer = match input.call.as_str() {
                "enroll" => plugin.enroll(source, input.channel.clone(), body.clone()).await.map(|_| ()),
                _ => plugin.decode(source, device.clone(), input.channel.clone(), body.clone()).await.map(|_| ()),
            };
            match answer {
                Ok(()) => {}
                Err(CallError::Rejected(e)) => {
                    if std::env::var("DROVER_FUZZ_VERBOSE").is_ok() && refused < 5 {
                        eprintln!("{name} refused {}: {}", input.file, e.message);
                    }
                    refused += 1
                }
                Err(CallError::Fault(f)) => panic!("{}", finding(name, input, &body, &f.to_string())),
                Err(other) => panic!("{}", finding(name, input, &body, &other.to_string())),
            }
            tried += 1;
        }
        report.push(format!(
            "{name}: {tried} inputs from {} payloads in {:.1} s, {refused} refused, 0 faults",
            inputs.len(),
            started.elapsed().as_secs_f64()
        ));
    }
    assert!(report.len() >= 5, "every first-party device type was fuzzed: {report:?}");
    for line in report {
        eprintln!("{line}");
    }
}

/// A CoAP message as an LwM2M client sends it.
fn coap(kind: MessageType, code: MessageClass, mid: u16, token: &[u8], path: &[&str], query: &[String]) -> Packet {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(kind);
    p.header.code = code;
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    for s in path {
        p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
    }
    for q in query {
        p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    p
}

/// A Register for endpoint `ep`, living `lifetime` seconds, with the LwM2M plugin's
/// recorded object links.
fn register(ep: &str, mid: u16, lifetime: u32) -> Packet {
    let links = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/lwm2m/fixtures/register.link")).unwrap();
    let query = [format!("ep={ep}"), format!("lt={lifetime}"), "lwm2m=1.1".into(), "b=U".into()];
    let mut p = coap(MessageType::Confirmable, MessageClass::Request(RequestType::Post), mid, &[1, 2], &["rd"], &query);
    p.add_option(CoapOption::ContentFormat, vec![40]);
    p.payload = links;
    p
}

/// Send `p` from `socket` and wait (bounded) for the answer with its message id.
async fn ask(socket: &UdpSocket, to: SocketAddr, p: &Packet) -> Option<Packet> {
    socket.send_to(&p.to_bytes().unwrap(), to).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
            Ok(r) => r.unwrap().0,
            Err(_) => return None,
        };
        if let Ok(got) = Packet::from_bytes(&buf[..n])
            && got.header.message_id == p.header.message_id
            && matches!(got.header.get_type(), MessageType::Acknowledgement | MessageType::Reset)
        {
            return Some(got);
        }
    }
}

/// The CoAP front (issue 30): a real server's UDP listener fed variations of real LwM2M
/// datagrams (a Register with its object links, an update, a de-registration, a CoAP ping,
/// a piggybacked response and an Observe notification in TLV, the plugin's own fixtures).
/// The property: no datagram takes the service from others. Every 100 inputs a CoAP ping
/// from a fresh socket must be answered; at the end a device registered before the run
/// still updates its registration, and a new one registers. `DROVER_FUZZ_SECS` runs it for
/// that long instead of CI's 1,000 datagrams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_front_survives_mutated_datagrams() {
    let budget = std::env::var("DROVER_FUZZ_SECS").ok().and_then(|v| v.parse().ok()).map(Duration::from_secs);
    let server = TestServer::start(Backend::Sqlite).await;
    let to = server.coap;
    let victim = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let created = ask(&victim, to, &register("urn:dev:fuzz-victim", 1, 86_400)).await.expect("the victim registers");
    assert_eq!(created.header.code, MessageClass::Response(ResponseType::Created));
    let location: Vec<String> = created
        .get_option(CoapOption::LocationPath)
        .unwrap()
        .iter()
        .map(|v| String::from_utf8(v.clone()).unwrap())
        .collect();

    let tlv = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/lwm2m/fixtures/device-read.tlv")).unwrap();
    let mut response =
        coap(MessageType::Acknowledgement, MessageClass::Response(ResponseType::Content), 7, &[9; 8], &[], &[]);
    response.add_option(CoapOption::ContentFormat, 11542u16.to_be_bytes().to_vec());
    response.payload = tlv.clone();
    let mut notification =
        coap(MessageType::Confirmable, MessageClass::Response(ResponseType::Content), 8, &[9; 8], &[], &[]);
    notification.add_option(CoapOption::Observe, vec![3]);
    notification.add_option(CoapOption::ContentFormat, 11542u16.to_be_bytes().to_vec());
    notification.payload = tlv;
    let post = MessageClass::Request(RequestType::Post);
    let seeds: Vec<Vec<u8>> = [
        register("urn:dev:fuzz-seed", 2, 300),
        coap(MessageType::Confirmable, post, 3, &[3], &["rd", "0123456789abcdef"], &["lt=600".into(), "b=UQ".into()]),
        coap(
            MessageType::Confirmable,
            MessageClass::Request(RequestType::Delete),
            4,
            &[4],
            &["rd", "0123456789abcdef"],
            &[],
        ),
        coap(MessageType::Confirmable, MessageClass::Empty, 5, &[], &[], &[]),
        response,
        notification,
    ]
    .iter()
    .map(|p| p.to_bytes().unwrap())
    .collect();
    let others: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let fuzzer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let started = Instant::now();
    let mut sent = 0usize;
    loop {
        match budget {
            Some(b) if started.elapsed() >= b => break,
            None if sent >= 1000 => break,
            _ => {}
        }
        let seed = &seeds[rng.below(seeds.len())];
        let body = mutate(&mut rng, seed, &others);
        fuzzer.send_to(&body, to).await.unwrap();
        sent += 1;
        tokio::task::yield_now().await;
        if sent.is_multiple_of(100) {
            let prober = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let ping = coap(MessageType::Confirmable, MessageClass::Empty, sent as u16, &[], &[], &[]);
            let answer = ask(&prober, to, &ping).await;
            assert!(
                answer.is_some_and(|a| a.header.get_type() == MessageType::Reset),
                "the CoAP listener stopped answering after {sent} mutated datagrams"
            );
        }
    }
    eprintln!(
        "coap front: {sent} mutated datagrams in {:.1} s, the listener answered every ping",
        started.elapsed().as_secs_f64()
    );
    // The victim registered for a day: a long run does not outlive its registration.
    let update = coap(MessageType::Confirmable, post, 900, &[9], &["rd", &location[1]], &[]);
    let answer = ask(&victim, to, &update).await.expect("the victim's update is answered");
    assert_eq!(answer.header.code, MessageClass::Response(ResponseType::Changed), "the victim lost its registration");
    let fresh = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let answer = ask(&fresh, to, &register("urn:dev:fuzz-after", 901, 300)).await.expect("a new device is answered");
    assert_eq!(answer.header.code, MessageClass::Response(ResponseType::Created));
    server.stop().await;
}

/// MQTT packets as a real client library encodes them (rumqttc's codec).
fn mqtt_bytes(write: impl FnOnce(&mut bytes::BytesMut)) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    write(&mut b);
    b.to_vec()
}

fn mqtt_connect(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut c = rumqttc::Connect::new(client_id);
    c.set_login(user, password);
    mqtt_bytes(|b| {
        c.write(b).unwrap();
    })
}

/// Connect as `user` on a fresh connection; whether the broker accepted (CONNACK 0).
async fn mqtt_accepts(port: u16, client_id: &str, user: &str, password: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(&mqtt_connect(client_id, user, password)).await.ok()?;
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await.ok()?;
        Some(ack == [0x20, 0x02, 0x00, 0x00])
    };
    tokio::time::timeout(Duration::from_secs(10), attempt).await.ok().flatten().unwrap_or(false)
}

/// The MQTT front (issue 30): the embedded broker's listener fed variations of a real
/// client's packets (rumqttc's encoder: CONNECT with a device's credentials, SUBSCRIBE,
/// PUBLISH of a recorded result and of a status, PUBACK, UNSUBSCRIBE, PINGREQ,
/// DISCONNECT), each input a connection of its own: a CONNECT then a few packets, the
/// whole or only what follows the CONNECT mutated (so the authenticated path is reached
/// too). The property: no input takes the service from others. Every 100 inputs a device
/// connects and is accepted; at the end a device connected before the run still gets an
/// operation pushed to it, and the server's plugin and router are still serving.
/// `DROVER_FUZZ_SECS` runs it for that long instead of CI's 1,000 connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_front_survives_mutated_packets() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let budget = std::env::var("DROVER_FUZZ_SECS").ok().and_then(|v| v.parse().ok()).map(Duration::from_secs);
    let server = TestServer::start(Backend::Sqlite).await;
    let port = server.mqtt.expect("the embedded broker runs").port();
    let (victim_id, seed_id, probe_id) = ("358000000000901", "358000000000902", "358000000000903");
    let victim_token = server.enroll_android(victim_id).await;
    let seed_token = server.enroll_android(seed_id).await;
    let probe_token = server.enroll_android(probe_id).await;

    // The victim: a device connected and subscribed before the run, through all of it.
    let mut options = MqttOptions::new("victim", "127.0.0.1", port);
    options.set_credentials(format!("android/{victim_id}"), victim_token);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let victim = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(p @ (Packet::SubAck(_) | Packet::Publish(_)))) => {
                    let _ = seen_tx.send(p);
                }
                Ok(_) => {}
                Err(e) => panic!("the victim lost its connection: {e}"),
            }
        }
    });
    let operations = format!("drover/android/{victim_id}/operations");
    client.subscribe(&operations, QoS::AtLeastOnce).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), seen.recv()).await.unwrap().unwrap();
    assert!(matches!(first, Packet::SubAck(_)), "{first:?}");

    let results =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/android/fixtures/results.json")).unwrap();
    let connect = mqtt_connect("fuzz-seed", &format!("android/{seed_id}"), &seed_token);
    let own = format!("drover/android/{seed_id}");
    let rest: Vec<Vec<u8>> = vec![
        mqtt_bytes(|b| {
            let mut s = rumqttc::Subscribe::new(format!("{own}/operations"), QoS::AtLeastOnce);
            s.pkid = 1;
            s.write(b).unwrap();
        }),
        mqtt_bytes(|b| {
            let mut p = rumqttc::Publish::new(format!("{own}/reply"), QoS::AtLeastOnce, results.clone());
            p.pkid = 2;
            p.write(b).unwrap();
        }),
        mqtt_bytes(|b| {
            rumqttc::Publish::new(format!("{own}/status"), QoS::AtMostOnce, "online").write(b).unwrap();
        }),
        mqtt_bytes(|b| {
            rumqttc::PubAck::new(1).write(b).unwrap();
        }),
        mqtt_bytes(|b| {
            let mut u = rumqttc::Unsubscribe::new(format!("{own}/operations"));
            u.pkid = 3;
            u.write(b).unwrap();
        }),
        mqtt_bytes(|b| {
            rumqttc::PingReq.write(b).unwrap();
        }),
        mqtt_bytes(|b| {
            rumqttc::Disconnect.write(b).unwrap();
        }),
    ];
    let mut all: Vec<&[u8]> = rest.iter().map(Vec::as_slice).collect();
    all.push(&connect);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let mut sent = 0usize;
    let mut answered = 0usize;
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        match budget {
            Some(b) if started.elapsed() >= b => break,
            None if sent >= 1000 => break,
            _ => {}
        }
        let mut tail = Vec::new();
        for _ in 0..1 + rng.below(4) {
            tail.extend_from_slice(&rest[rng.below(rest.len())]);
        }
        let input = if rng.below(2) == 0 {
            mutate(&mut rng, &[connect.as_slice(), &tail].concat(), &all)
        } else {
            [connect.clone(), mutate(&mut rng, &tail, &all)].concat()
        };
        // Each input on its own connection, a few at once; the client half-closes after
        // writing, so the server sees the end and the connection ends quickly.
        inflight.spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
            let _ = s.write_all(&input).await;
            let _ = s.shutdown().await;
            let mut sink = vec![0u8; 4096];
            let drained = async {
                let mut got = 0;
                while let Ok(n @ 1..) = s.read(&mut sink).await {
                    got += n;
                }
                got
            };
            tokio::time::timeout(Duration::from_secs(2), drained).await.is_ok_and(|n| n > 0)
        });
        sent += 1;
        while inflight.len() >= 8 {
            answered += usize::from(inflight.join_next().await.unwrap().unwrap());
        }
        if sent.is_multiple_of(100) {
            assert!(
                mqtt_accepts(port, "probe", &format!("android/{probe_id}"), &probe_token).await,
                "a device was not accepted after {sent} mutated connections"
            );
        }
    }
    while let Some(r) = inflight.join_next().await {
        answered += usize::from(r.unwrap());
    }
    eprintln!(
        "mqtt front: {sent} mutated connections in {:.1} s ({answered} got an answer), a device was accepted every 100",
        started.elapsed().as_secs_f64()
    );
    assert!(answered > 0, "some inputs were answered (a CONNACK at least)");

    // The victim's session survived: an operation added now is pushed to it.
    let id = server.add_operation("android", victim_id, "DEVICE_RING", None).await;
    let pushed = loop {
        match tokio::time::timeout(Duration::from_secs(10), seen.recv()).await.expect("a push in time").unwrap() {
            Packet::Publish(p) => break p,
            _ => continue,
        }
    };
    assert_eq!(pushed.topic, operations);
    let ops: serde_json::Value = serde_json::from_slice(&pushed.payload).unwrap();
    assert_eq!(ops[0]["id"].as_i64(), Some(id), "{ops}");
    assert!(mqtt_accepts(port, "after", &format!("android/{probe_id}"), &probe_token).await);
    victim.abort();
    server.stop().await;
}
