//! A simulator of Apple devices speaking the MDM protocol to Drover's ios plugin
//! (plugins/ios/README.md): each simulated iPhone enrolls with the Authenticate check-in,
//! reports an APNs token (TokenUpdate), then calls in as a device woken by a push would:
//! `Idle`, then one command per answer, each answered as an iPhone does, until the empty
//! answer. It keeps the profiles it was sent, so ProfileList tells the truth.
//!
//!     cargo run --example ios-sim -- --server http://127.0.0.1:8080 --token $ENROLL --devices 3
//!
//! A simulator cannot receive APNs pushes, so it calls in every `--poll-secs`. Then give
//! one of them something (its UDID is printed at enrollment):
//!     curl -X POST $SERVER/api/v1/operations -H "Authorization: Bearer $ADMIN" \
//!       -d '{"code":"DeviceInformation","targets":{"devices":[{"type":"ios","id":"00008120-…"}]}}'

use anyhow::{Context, Result, bail};
use clap::Parser;
use plist::{Dictionary, Value};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(about = "Simulate Apple MDM devices against a running Drover server")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Enrollment token from `POST /api/v1/enrollment-tokens` (leave out on a server
    /// with open enrollment).
    #[arg(long)]
    token: Option<String>,
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// How long to run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Call in this often (standing in for APNs wake-ups).
    #[arg(long, default_value_t = 5)]
    poll_secs: u64,
    /// Answer this percentage of commands with NotNow first (a locked device).
    #[arg(long, default_value_t = 0)]
    not_now_percent: u32,
}

struct Iphone {
    http: reqwest::Client,
    server: String,
    udid: String,
    credential: String,
    /// Installed profiles by PayloadIdentifier.
    profiles: BTreeMap<String, String>,
    /// Commands already answered NotNow once.
    refused: std::collections::HashSet<String>,
    erased: bool,
}

fn xml(d: Dictionary) -> Vec<u8> {
    let mut out = Vec::new();
    Value::Dictionary(d).to_writer_xml(&mut out).expect("a plist in memory");
    out
}

fn dict<const N: usize>(pairs: [(&str, Value); N]) -> Dictionary {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

const TOPIC: &str = "com.apple.mgmt.External.2b6d1f0e-8c3a-4b9e-a5d7-3f1e2c4b6a80";

impl Iphone {
    async fn enroll(args: &Args, n: usize) -> Result<Iphone> {
        let http = reqwest::Client::new();
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
        let udid = format!("00008120-{:016X}", seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(n as u64));
        let authenticate = dict([
            ("MessageType", "Authenticate".into()),
            ("UDID", udid.clone().into()),
            ("Topic", TOPIC.into()),
            ("OSVersion", "17.4.1".into()),
            ("BuildVersion", "21E236".into()),
            ("ProductName", "iPhone15,2".into()),
            ("SerialNumber", format!("F2LX{:08X}", seed as u32).into()),
            ("DeviceName", format!("Simulated iPhone {n}").into()),
            ("Model", "MQ9T3LL/A".into()),
            ("ModelName", "iPhone".into()),
        ]);
        let mut url = format!("{}/agent/v1/ios/enroll", args.server);
        if let Some(t) = &args.token {
            url.push_str(&format!("?token={t}"));
        }
        let r = http
            .put(url)
            .header("content-type", "application/x-apple-aspen-mdm-checkin")
            .body(xml(authenticate))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("enrollment refused: {} {}", r.status(), r.text().await?);
        }
        let v: serde_json::Value = r.json().await?;
        let credential = v["access_token"].as_str().context("no access_token in the enrollment answer")?.to_string();
        let phone = Iphone {
            http,
            server: args.server.clone(),
            udid,
            credential,
            profiles: BTreeMap::new(),
            refused: Default::default(),
            erased: false,
        };
        let token: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(seed as u8)).collect();
        let update = dict([
            ("MessageType", "TokenUpdate".into()),
            ("UDID", phone.udid.clone().into()),
            ("Topic", TOPIC.into()),
            ("Token", Value::Data(token)),
            ("PushMagic", "4E5B8F1A-0C1D-4B4F-9C3A-6B1F5D2E7A90".into()),
        ]);
        phone.put("checkin", "application/x-apple-aspen-mdm-checkin", update).await?;
        Ok(phone)
    }

    async fn put(&self, path: &str, content_type: &str, body: Dictionary) -> Result<Vec<u8>> {
        let r = self
            .http
            .put(format!("{}/agent/v1/ios/{path}", self.server))
            .bearer_auth(&self.credential)
            .header("content-type", content_type)
            .body(xml(body))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("{path}: {} {}", r.status(), r.text().await?);
        }
        Ok(r.bytes().await?.to_vec())
    }

    /// One exchange: Idle, then answer commands until the empty answer. Returns how many.
    async fn call_in(&mut self, not_now_percent: u32) -> Result<usize> {
        let mut report = dict([("Status", "Idle".into())]);
        let mut handled = 0;
        loop {
            report.insert("UDID".into(), self.udid.clone().into());
            let body = self.put("server", "application/x-apple-aspen-mdm", report).await?;
            if body.is_empty() {
                return Ok(handled);
            }
            let command = Value::from_reader_xml(body.as_slice()).context("the command is not a plist")?;
            let command = command.as_dictionary().context("the command is not a dictionary")?;
            let uuid = command.get("CommandUUID").and_then(Value::as_string).context("no CommandUUID")?.to_string();
            let inner = command.get("Command").and_then(Value::as_dictionary).context("no Command")?;
            let request = inner.get("RequestType").and_then(Value::as_string).unwrap_or_default().to_string();
            let refuse = not_now_percent > 0
                && !self.refused.contains(&uuid)
                && (uuid.bytes().map(u32::from).sum::<u32>() % 100) < not_now_percent;
            report = if refuse {
                self.refused.insert(uuid.clone());
                dict([("Status", "NotNow".into())])
            } else {
                self.answer(&request, inner)
            };
            println!("{}: {request} → {}", self.udid, report.get("Status").and_then(Value::as_string).unwrap_or("?"));
            report.insert("CommandUUID".into(), uuid.into());
            handled += 1;
            if self.erased {
                // An erased device forgets its enrollment after acknowledging.
                self.put("server", "application/x-apple-aspen-mdm", report).await.ok();
                return Ok(handled);
            }
        }
    }

    /// The report an iPhone sends for a command it carried out.
    fn answer(&mut self, request: &str, command: &Dictionary) -> Dictionary {
        let ok = |extra: Dictionary| {
            let mut d = extra;
            d.insert("Status".into(), "Acknowledged".into());
            d
        };
        match request {
            "DeviceInformation" => {
                let all = dict([
                    ("OSVersion", "17.4.1".into()),
                    ("BuildVersion", "21E236".into()),
                    ("ProductName", "iPhone15,2".into()),
                    ("DeviceName", "Simulated iPhone".into()),
                    ("BatteryLevel", Value::Real(0.72)),
                    ("AvailableDeviceCapacity", Value::Real(87.4)),
                    ("DeviceCapacity", Value::Real(119.1)),
                    ("IsSupervised", true.into()),
                ]);
                let wanted: Vec<String> = command
                    .get("Queries")
                    .and_then(Value::as_array)
                    .map(|q| q.iter().filter_map(Value::as_string).map(str::to_string).collect())
                    .unwrap_or_default();
                let answers = all.into_iter().filter(|(k, _)| wanted.is_empty() || wanted.contains(k)).collect();
                ok(dict([("QueryResponses", Value::Dictionary(answers))]))
            }
            "InstallProfile" => {
                let profile = command.get("Payload").and_then(Value::as_data).unwrap_or_default();
                match Value::from_reader(std::io::Cursor::new(profile)) {
                    Ok(Value::Dictionary(p)) => {
                        let id = p.get("PayloadIdentifier").and_then(Value::as_string).unwrap_or_default();
                        let name = p.get("PayloadDisplayName").and_then(Value::as_string).unwrap_or(id);
                        self.profiles.insert(id.to_string(), name.to_string());
                        ok(Dictionary::new())
                    }
                    _ => dict([
                        ("Status", "Error".into()),
                        (
                            "ErrorChain",
                            Value::Array(vec![Value::Dictionary(dict([
                                ("ErrorCode", 1000.into()),
                                ("ErrorDomain", "MCProfileErrorDomain".into()),
                                ("LocalizedDescription", "The profile is malformed.".into()),
                            ]))]),
                        ),
                    ]),
                }
            }
            "RemoveProfile" => {
                let id = command.get("Identifier").and_then(Value::as_string).unwrap_or_default();
                self.profiles.remove(id);
                ok(Dictionary::new())
            }
            "ProfileList" => {
                let list = self
                    .profiles
                    .iter()
                    .map(|(id, name)| {
                        Value::Dictionary(dict([
                            ("PayloadIdentifier", id.clone().into()),
                            ("PayloadDisplayName", name.clone().into()),
                            ("IsManaged", true.into()),
                        ]))
                    })
                    .collect();
                ok(dict([("ProfileList", Value::Array(list))]))
            }
            "InstalledApplicationList" => ok(dict([(
                "InstalledApplicationList",
                Value::Array(vec![Value::Dictionary(dict([
                    ("Identifier", "com.apple.mobilesafari".into()),
                    ("Name", "Safari".into()),
                    ("ShortVersion", "17.4".into()),
                ]))]),
            )])),
            "SecurityInfo" => ok(dict([(
                "SecurityInfo",
                Value::Dictionary(dict([
                    ("PasscodePresent", true.into()),
                    ("PasscodeCompliant", true.into()),
                    ("HardwareEncryptionCaps", 3.into()),
                ])),
            )])),
            "EraseDevice" => {
                self.erased = true;
                ok(Dictionary::new())
            }
            "DeviceLock" | "Restrictions" | "CertificateList" | "RestartDevice" | "ShutDownDevice" => {
                ok(Dictionary::new())
            }
            _ => dict([("Status", "CommandFormatError".into())]),
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut tasks = Vec::new();
    for n in 0..args.devices {
        let mut phone = Iphone::enroll(&args, n).await?;
        println!("enrolled {} (APNs token reported)", phone.udid);
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let end = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
            let mut commands = 0;
            while tokio::time::Instant::now() < end && !phone.erased {
                match phone.call_in(args.not_now_percent).await {
                    Ok(n) => commands += n,
                    Err(e) => eprintln!("{}: {e:#}", phone.udid),
                }
                tokio::time::sleep(Duration::from_secs(args.poll_secs)).await;
            }
            commands
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    println!("{} devices answered {total} commands", args.devices);
    Ok(())
}
