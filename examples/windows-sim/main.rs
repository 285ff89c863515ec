//! A simulator of Windows MDM clients speaking OMA-DM 1.2 (SyncML) to Drover's windows
//! plugin (plugins/windows/README.md): each simulated PC enrolls with its session-opening
//! message, then every `--poll-secs` opens a session (Alert 1201) and keeps it going,
//! answering each command with a Status and each Get with Results from a small DM tree,
//! until Drover's answer carries no command.
//!
//!     cargo run --example windows-sim -- --server http://127.0.0.1:8080 --pcs 2
//!
//! Then give one something (its id is printed at enrollment):
//!     curl -X POST $SERVER/api/v1/operations -H "Authorization: Bearer $ADMIN" \
//!       -d '{"code":"DevDetail","targets":{"devices":[{"type":"windows","id":"…"}]}}'

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(about = "Simulate Windows OMA-DM clients against a running Drover server")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Enrollment token (leave out on a server with open enrollment).
    #[arg(long)]
    token: Option<String>,
    #[arg(long, default_value_t = 1)]
    pcs: usize,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Open a session this often (standing in for WNS wake-ups).
    #[arg(long, default_value_t = 5)]
    poll_secs: u64,
}

const CONTENT_TYPE: &str = "application/vnd.syncml.dm+xml";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

struct Pc {
    http: reqwest::Client,
    url: String,
    id: String,
    credential: String,
    session: u32,
    /// The DM tree: OMA-URI → value.
    tree: BTreeMap<String, String>,
}

fn find<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.tag_name().name() == name)
}

/// One command of Drover's answer, as read with roxmltree.
struct Cmd {
    name: String,
    cmd_id: String,
    targets: Vec<(String, Option<String>)>,
}

impl Pc {
    fn message(&self, msg: u32, body: &str) -> String {
        format!(
            r#"<SyncML xmlns="SYNCML:SYNCML1.2"><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>{:X}</SessionID><MsgID>{msg}</MsgID><Target><LocURI>{}</LocURI></Target><Source><LocURI>{}</LocURI></Source></SyncHdr><SyncBody>{body}<Final/></SyncBody></SyncML>"#,
            self.session, self.url, self.id
        )
    }

    fn dev_info(&self) -> String {
        let item =
            |k: &str, v: &str| format!("<Item><Source><LocURI>./DevInfo/{k}</LocURI></Source><Data>{v}</Data></Item>");
        format!(
            "<Alert><CmdID>1</CmdID><Data>1201</Data></Alert><Replace><CmdID>2</CmdID>{}{}{}{}{}</Replace>",
            item("DevId", &self.id),
            item("Man", "Contoso"),
            item("Mod", "Surface Laptop 6"),
            item("DmV", "1.3"),
            item("Lang", "en-US")
        )
    }

    async fn enroll(args: &Args, n: usize) -> Result<Pc> {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        let id = format!("{:032X}", seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(n as u128));
        let mut pc = Pc {
            http: reqwest::Client::new(),
            url: format!("{}/agent/v1/windows/ManagementServer/MDM.svc", args.server),
            id,
            credential: String::new(),
            session: 0,
            tree: BTreeMap::new(),
        };
        for (k, v) in [
            ("./DevDetail/SwV", "10.0.22631.4460"),
            ("./DevDetail/FwV", "1.12.0"),
            ("./DevDetail/HwV", "1.0"),
            ("./DevDetail/OEM", "Contoso"),
            ("./DevDetail/DevTyp", "Surface Laptop 6"),
            ("./DevDetail/Ext/Microsoft/OSPlatform", "Windows 11 Enterprise"),
            ("./DevDetail/Ext/Microsoft/DeviceName", &format!("SIM-PC-{n}")),
            ("./DevDetail/Ext/Microsoft/TotalStorage", "512000"),
            ("./DevDetail/Ext/Microsoft/TotalRAM", "16384"),
            ("./Vendor/MSFT/DeviceStatus/Battery/Status", "1"),
            ("./Vendor/MSFT/DeviceStatus/Battery/EstimatedChargeRemaining", "81"),
            ("./Vendor/MSFT/DeviceStatus/Battery/EstimatedRuntime", "21600"),
            (
                "./Vendor/MSFT/DMClient/Provider/Drover/Push/ChannelURI",
                "https://db5p.notify.windows.com/?token=AwYAAABvX2bZ",
            ),
        ] {
            pc.tree.insert(k.into(), v.into());
        }
        let mut url = format!("{}/agent/v1/windows/enroll", args.server);
        if let Some(t) = &args.token {
            url.push_str(&format!("?token={t}"));
        }
        let r =
            pc.http.post(url).header("content-type", CONTENT_TYPE).body(pc.message(1, &pc.dev_info())).send().await?;
        if !r.status().is_success() {
            bail!("enrollment refused: {} {}", r.status(), r.text().await?);
        }
        let v: serde_json::Value = r.json().await?;
        pc.credential = v["access_token"].as_str().context("no access_token")?.to_string();
        Ok(pc)
    }

    async fn post(&self, body: String) -> Result<(String, Vec<Cmd>)> {
        let r = self
            .http
            .post(&self.url)
            .bearer_auth(&self.credential)
            .header("content-type", CONTENT_TYPE)
            .body(body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("{} {}", r.status(), r.text().await?);
        }
        let text = r.text().await?;
        let doc = roxmltree::Document::parse(&text).context("Drover's answer is not XML")?;
        let hdr = find(doc.root_element(), "SyncHdr").context("no SyncHdr")?;
        let msg = find(hdr, "MsgID").and_then(|m| m.text()).unwrap_or("0").to_string();
        let body = find(doc.root_element(), "SyncBody").context("no SyncBody")?;
        let cmds = body
            .children()
            .filter(|c| c.is_element() && !matches!(c.tag_name().name(), "Status" | "Final"))
            .map(|c| Cmd {
                name: c.tag_name().name().to_string(),
                cmd_id: find(c, "CmdID").and_then(|i| i.text()).unwrap_or("0").to_string(),
                targets: c
                    .children()
                    .filter(|i| i.tag_name().name() == "Item")
                    .map(|i| {
                        let uri = find(i, "Target").and_then(|t| find(t, "LocURI")).and_then(|l| l.text());
                        (
                            uri.unwrap_or_default().to_string(),
                            find(i, "Data").and_then(|d| d.text()).map(str::to_string),
                        )
                    })
                    .collect(),
            })
            .collect();
        Ok((msg, cmds))
    }

    /// Carry out one command on the DM tree: its status code and, for a Get, the values.
    fn apply(&mut self, c: &Cmd) -> (u16, Vec<(String, String)>) {
        let mut values = Vec::new();
        for (uri, data) in &c.targets {
            match c.name.as_str() {
                "Get" => match self.tree.get(uri) {
                    Some(v) => values.push((uri.clone(), v.clone())),
                    None => return (404, vec![]),
                },
                "Replace" | "Add" => {
                    self.tree.insert(uri.clone(), data.clone().unwrap_or_default());
                }
                "Delete" if self.tree.remove(uri).is_none() => return (404, vec![]),
                "Exec" if uri.ends_with("doWipe") || uri.ends_with("doWipeProtected") => return (202, vec![]),
                _ => {}
            }
        }
        (200, values)
    }

    /// One session: open, then answer until Drover sends no command. Returns how many.
    async fn session(&mut self) -> Result<usize> {
        self.session += 1;
        let (mut server_msg, mut cmds) = self.post(self.message(1, &self.dev_info())).await?;
        let mut handled = 0;
        let mut msg = 1;
        while !cmds.is_empty() {
            msg += 1;
            let mut body = String::new();
            let mut id = 0;
            for c in &cmds {
                let (code, values) = self.apply(c);
                println!("{}: {} {} → {code}", self.id, c.name, c.targets.first().map_or("", |t| t.0.as_str()));
                id += 1;
                body.push_str(&format!(
                    "<Status><CmdID>{id}</CmdID><MsgRef>{server_msg}</MsgRef><CmdRef>{}</CmdRef><Cmd>{}</Cmd><Data>{code}</Data></Status>",
                    c.cmd_id, c.name
                ));
                if !values.is_empty() {
                    id += 1;
                    let items: String = values
                        .iter()
                        .map(|(u, v)| {
                            format!("<Item><Source><LocURI>{u}</LocURI></Source><Data>{}</Data></Item>", escape(v))
                        })
                        .collect();
                    body.push_str(&format!(
                        "<Results><CmdID>{id}</CmdID><MsgRef>{server_msg}</MsgRef><CmdRef>{}</CmdRef>{items}</Results>",
                        c.cmd_id
                    ));
                }
                handled += 1;
            }
            (server_msg, cmds) = self.post(self.message(msg, &body)).await?;
        }
        Ok(handled)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut tasks = Vec::new();
    for n in 0..args.pcs {
        let mut pc = Pc::enroll(&args, n).await?;
        println!("enrolled {}", pc.id);
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let end = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
            let mut total = 0;
            while tokio::time::Instant::now() < end {
                match pc.session().await {
                    Ok(n) => total += n,
                    Err(e) => eprintln!("{}: {e:#}", pc.id),
                }
                tokio::time::sleep(Duration::from_secs(args.poll_secs)).await;
            }
            total
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    println!("{} PCs answered {total} commands", args.pcs);
    Ok(())
}
