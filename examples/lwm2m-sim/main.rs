//! A simulated LwM2M board for Drover's lwm2m plugin (plugins/lwm2m/README.md): it
//! registers over CoAP, serves /3/0 (Device) and /5/0 (Firmware Update) in TLV, SenML JSON
//! or text as asked, notifies observers, carries out firmware updates by Package URI
//! through all four states, and sends registration updates before its lifetime ends.
//!
//!     cargo run --example lwm2m-sim -- --coap 127.0.0.1:5683 --seconds 120
//!
//! Then, with the endpoint name it prints:
//!     curl -X POST $SERVER/api/v1/operations -H "Authorization: Bearer $ADMIN" \
//!       -d '{"code":"FIRMWARE_UPDATE","payload":{"uri":"coap://fw.example/2.0.bin"},"targets":{"devices":[{"type":"lwm2m","id":"…"}]}}'

use anyhow::{Context, Result, bail};
use clap::Parser;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Simulate an LwM2M board against a running Drover server")]
struct Args {
    /// Drover's CoAP listener (`--coap-addr`).
    #[arg(long, default_value = "127.0.0.1:5683")]
    coap: SocketAddr,
    /// Endpoint name [default: urn:dev:sim:<random>].
    #[arg(long)]
    endpoint: Option<String>,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Registration lifetime; an update is sent at half of it.
    #[arg(long, default_value_t = 60)]
    lifetime: u64,
    /// Share of firmware updates that fail (Update Result 8, "firmware update failed").
    #[arg(long, default_value_t = 0.0)]
    fail_fraction: f64,
}

/// A resource value as the board holds it.
#[derive(Clone, Debug)]
enum V {
    Text(String),
    Int(i64),
}

struct Board {
    socket: UdpSocket,
    server: SocketAddr,
    mid: u16,
    location: String,
    resources: BTreeMap<(u16, u16), V>,
    /// Observations: path → (token, sequence).
    observers: BTreeMap<String, (Vec<u8>, u32)>,
    /// Firmware: when the next state change is due.
    firmware_due: Option<Instant>,
    fail_fraction: f64,
    /// Updates carried out, for the failure draw.
    updates: u64,
}

fn tlv(id: u16, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0b1100_0000 | if value.len() < 8 { value.len() as u8 } else { 0x08 }, id as u8];
    if value.len() >= 8 {
        out.push(value.len() as u8);
    }
    out.extend_from_slice(value);
    out
}

fn bytes(v: &V) -> Vec<u8> {
    match v {
        V::Text(s) => s.as_bytes().to_vec(),
        V::Int(i) => match i8::try_from(*i) {
            Ok(b) => vec![b as u8],
            Err(_) => (*i as i32).to_be_bytes().to_vec(),
        },
    }
}

fn text(v: &V) -> String {
    match v {
        V::Text(s) => s.clone(),
        V::Int(i) => i.to_string(),
    }
}

impl Board {
    fn packet(&mut self, t: MessageType, code: MessageClass, token: Vec<u8>) -> Packet {
        self.mid = self.mid.wrapping_add(1);
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(t);
        p.header.message_id = self.mid;
        p.header.code = code;
        p.set_token(token);
        p
    }

    async fn send(&self, p: &Packet) -> Result<()> {
        self.socket.send_to(&p.to_bytes().map_err(|e| anyhow::anyhow!("{e:?}"))?, self.server).await?;
        Ok(())
    }

    async fn register(&mut self, endpoint: &str, lifetime: u64) -> Result<()> {
        let mut p = self.packet(MessageType::Confirmable, MessageClass::Request(RequestType::Post), vec![1, 2, 3, 4]);
        p.add_option(CoapOption::UriPath, b"rd".to_vec());
        for q in [format!("ep={endpoint}"), format!("lt={lifetime}"), "lwm2m=1.1".into(), "b=U".into()] {
            p.add_option(CoapOption::UriQuery, q.into_bytes());
        }
        p.add_option(CoapOption::ContentFormat, vec![40]);
        p.payload = br#"</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</5/0>"#.to_vec();
        self.send(&p).await?;
        let answer = self.wait_ack(p.header.message_id).await?;
        if answer.header.code != MessageClass::Response(ResponseType::Created) {
            bail!("registration refused: {} {}", answer.header.code, String::from_utf8_lossy(&answer.payload));
        }
        let location: Vec<String> = answer
            .get_option(CoapOption::LocationPath)
            .context("no Location-Path")?
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        self.location = location.join("/");
        self.observers.clear();
        println!("{endpoint}: registered at {}", self.location);
        Ok(())
    }

    async fn wait_ack(&self, mid: u16) -> Result<Packet> {
        let mut buf = vec![0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (n, _) =
                tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf)).await.context("no answer")??;
            let p = Packet::from_bytes(&buf[..n]).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            if p.header.message_id == mid && p.header.get_type() == MessageType::Acknowledgement {
                return Ok(p);
            }
        }
    }

    /// The representation of `path` (3/0, 5/0 or one resource) in the asked format.
    fn read(&self, path: &[u16], accept: Option<u32>) -> Option<(u16, Vec<u8>)> {
        let values: Vec<(&(u16, u16), &V)> =
            self.resources.iter().filter(|((o, r), _)| *o == path[0] && (path.len() < 3 || *r == path[2])).collect();
        if values.is_empty() {
            return None;
        }
        Some(match accept {
            Some(110) => {
                let records: Vec<serde_json::Value> = values
                    .iter()
                    .map(|((o, r), v)| match v {
                        V::Text(s) => serde_json::json!({"n": format!("/{o}/0/{r}"), "vs": s}),
                        V::Int(i) => serde_json::json!({"n": format!("/{o}/0/{r}"), "v": i}),
                    })
                    .collect();
                (110, serde_json::to_vec(&records).unwrap_or_default())
            }
            Some(0) if path.len() >= 3 => (0, text(values[0].1).into_bytes()),
            _ => (11542, values.iter().flat_map(|((_, r), v)| tlv(*r, &bytes(v))).collect()),
        })
    }

    async fn notify(&mut self, path: &str) -> Result<()> {
        let Some((token, seq)) = self.observers.get(path).cloned() else { return Ok(()) };
        let parts: Vec<u16> = path.split('/').filter_map(|s| s.parse().ok()).collect();
        let Some((format, payload)) = self.read(&parts, Some(11542)) else { return Ok(()) };
        let mut p =
            self.packet(MessageType::NonConfirmable, MessageClass::Response(ResponseType::Content), token.clone());
        p.add_option(CoapOption::Observe, (seq + 1).to_be_bytes()[1..].to_vec());
        p.add_option(CoapOption::ContentFormat, format.to_be_bytes().to_vec());
        p.payload = payload;
        self.observers.insert(path.into(), (token, seq + 1));
        self.send(&p).await
    }

    async fn handle(&mut self, req: Packet) -> Result<()> {
        let MessageClass::Request(method) = req.header.code else { return Ok(()) };
        let path: Vec<u16> = req
            .get_option(CoapOption::UriPath)
            .map(|l| l.iter().filter_map(|s| String::from_utf8_lossy(s).parse().ok()).collect())
            .unwrap_or_default();
        let uint = |o| req.get_first_option(o).map(|v: &Vec<u8>| v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b)));
        let key = path.iter().map(u16::to_string).collect::<Vec<_>>().join("/");
        let mut answer = Packet::new();
        answer.header.set_version(1);
        answer.header.set_type(MessageType::Acknowledgement);
        answer.header.message_id = req.header.message_id;
        answer.set_token(req.get_token().to_vec());
        let code = match (method, path.as_slice()) {
            (_, []) => ResponseType::NotFound,
            (RequestType::Get, _) => match self.read(&path, uint(CoapOption::Accept)) {
                Some((format, payload)) => {
                    if uint(CoapOption::Observe) == Some(0) {
                        self.observers.insert(key.clone(), (req.get_token().to_vec(), 1));
                        answer.add_option(CoapOption::Observe, vec![1]);
                    } else if uint(CoapOption::Observe) == Some(1) {
                        self.observers.remove(&key);
                    }
                    answer.add_option(CoapOption::ContentFormat, format.to_be_bytes().to_vec());
                    answer.payload = payload;
                    ResponseType::Content
                }
                None => ResponseType::NotFound,
            },
            (RequestType::Put, [o, _, r]) => {
                let value = String::from_utf8_lossy(&req.payload).into_owned();
                if (*o, *r) == (5, 1) {
                    println!("firmware: downloading {value}");
                    // An http(s) package is really fetched (a rollout's download link).
                    if value.starts_with("http") {
                        match reqwest::get(&value).await.and_then(|r| r.error_for_status()) {
                            Ok(r) => println!("firmware: {} bytes", r.bytes().await.map_or(0, |b| b.len())),
                            Err(e) => println!("firmware: download failed: {e}"),
                        }
                    }
                    self.resources.insert((5, 3), V::Int(1));
                    self.resources.insert((5, 5), V::Int(0));
                    self.firmware_due = Some(Instant::now() + Duration::from_secs(2));
                }
                self.resources.insert((*o, *r), V::Text(value));
                ResponseType::Changed
            }
            (RequestType::Post, [5, 0, 2]) => {
                println!("firmware: updating");
                self.resources.insert((5, 3), V::Int(3));
                self.firmware_due = Some(Instant::now() + Duration::from_secs(2));
                ResponseType::Changed
            }
            (RequestType::Post, [3, 0, 4]) => {
                println!("reboot requested");
                ResponseType::Changed
            }
            _ => ResponseType::MethodNotAllowed,
        };
        answer.header.code = MessageClass::Response(code);
        self.send(&answer).await?;
        if method == RequestType::Post && path == [5, 0, 2] {
            self.notify("5/0").await?;
        }
        Ok(())
    }

    /// Advance a firmware update in progress.
    async fn firmware_step(&mut self) -> Result<()> {
        match self.resources.get(&(5, 3)) {
            Some(V::Int(1)) => {
                println!("firmware: downloaded");
                self.resources.insert((5, 3), V::Int(2));
                self.firmware_due = None;
            }
            Some(V::Int(3)) => {
                self.updates += 1;
                let draw = (self.updates.wrapping_mul(2654435761) % 10_000) as f64 / 10_000.0;
                self.resources.insert((5, 3), V::Int(0));
                if draw < self.fail_fraction {
                    println!("firmware: update failed");
                    self.resources.insert((5, 5), V::Int(8));
                } else {
                    println!("firmware: updated");
                    self.resources.insert((5, 5), V::Int(1));
                    self.resources.insert((3, 3), V::Text("2.0".into()));
                }
                self.firmware_due = None;
            }
            _ => self.firmware_due = None,
        }
        self.notify("5/0").await
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let endpoint = args.endpoint.clone().unwrap_or_else(|| {
        let n =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        format!("urn:dev:sim:{n:08x}")
    });
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let mut resources = BTreeMap::new();
    for (r, v) in [
        (0, V::Text("Drover Simulations".into())),
        (1, V::Text("SIM-LWM2M-1".into())),
        (2, V::Text("SN-000042".into())),
        (3, V::Text("1.0".into())),
        (9, V::Int(93)),
        (10, V::Int(48)),
        (17, V::Text("sensor board".into())),
    ] {
        resources.insert((3, r), v);
    }
    for (r, v) in [(1, V::Text(String::new())), (3, V::Int(0)), (5, V::Int(0))] {
        resources.insert((5, r), v);
    }
    let mut board = Board {
        socket,
        server: args.coap,
        mid: 1,
        location: String::new(),
        resources,
        observers: BTreeMap::new(),
        firmware_due: None,
        fail_fraction: args.fail_fraction,
        updates: 0,
    };
    board.register(&endpoint, args.lifetime).await?;
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut next_update = Instant::now() + Duration::from_secs(args.lifetime / 2);
    let mut battery_tick = tokio::time::interval(Duration::from_secs(5));
    let mut buf = vec![0u8; 2048];
    let mut update_mid = None;
    while Instant::now() < end {
        tokio::select! {
            got = board.socket.recv_from(&mut buf) => {
                let (n, _) = got?;
                if let Ok(p) = Packet::from_bytes(&buf[..n]) {
                    if Some(p.header.message_id) == update_mid
                        && p.header.code == MessageClass::Response(ResponseType::NotFound)
                    {
                        // The server forgot the registration (it restarted): register again.
                        board.register(&endpoint, args.lifetime).await?;
                    } else {
                        board.handle(p).await?;
                    }
                }
            }
            _ = battery_tick.tick() => {
                if let Some(V::Int(b)) = board.resources.get(&(3, 9)).cloned() {
                    board.resources.insert((3, 9), V::Int((b - 1).max(0)));
                    board.notify("3/0/9").await?;
                }
            }
            _ = tokio::time::sleep_until(board.firmware_due.unwrap_or(end)), if board.firmware_due.is_some() => {
                board.firmware_step().await?;
            }
            _ = tokio::time::sleep_until(next_update) => {
                let location: Vec<String> = board.location.split('/').map(str::to_string).collect();
                let mut p = board.packet(MessageType::Confirmable, MessageClass::Request(RequestType::Post), vec![9]);
                for s in &location {
                    p.add_option(CoapOption::UriPath, s.clone().into_bytes());
                }
                board.send(&p).await?;
                update_mid = Some(p.header.message_id);
                next_update = Instant::now() + Duration::from_secs(args.lifetime / 2);
            }
        }
    }
    println!("{endpoint}: done");
    Ok(())
}
