//! SyncML 1.2 (OMA-DM 1.2) messages as Windows MDM clients send and expect them: parse a
//! client message into its header and commands, and write a server message. Pure
//! functions over bytes, shared by the component, the device simulator and the benchmark.
//!
//! Reference: OMA-TS-DM_RepPro-V1_2 (representation), OMA-TS-DM_Protocol-V1_2 (sessions,
//! status codes) and [MS-MDM] (the Windows profile of both).

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText};

pub const CONTENT_TYPE: &str = "application/vnd.syncml.dm+xml";
const NAMESPACE: &str = "SYNCML:SYNCML1.2";
const METINF: &str = "syncml:metinf";

/// One `Item`: a node URI (Target or Source), its Meta format and type, its data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Item {
    pub target: Option<String>,
    pub source: Option<String>,
    pub format: Option<String>,
    pub meta_type: Option<String>,
    pub data: Option<String>,
}

/// A SyncBody command (client or server side). `Status` is a command too.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Command {
    /// Element name: Alert, Get, Replace, Add, Delete, Exec, Results, Status, Atomic …
    pub name: String,
    pub cmd_id: u32,
    /// Status and Results: the message and command they answer.
    pub msg_ref: Option<u32>,
    pub cmd_ref: Option<u32>,
    /// Status: the name of the command answered.
    pub cmd: Option<String>,
    /// Alert code, Status code.
    pub data: Option<String>,
    pub items: Vec<Item>,
}

/// A whole SyncML message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub session_id: String,
    pub msg_id: u32,
    /// Target LocURI: the server URL for client messages, the device for server ones.
    pub target: String,
    /// Source LocURI: the device id for client messages.
    pub source: String,
    pub commands: Vec<Command>,
    pub is_final: bool,
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text(n: roxmltree::Node, name: &str) -> Option<String> {
    child(n, name).map(|c| c.text().unwrap_or_default().trim().to_string())
}

fn loc_uri(n: roxmltree::Node, name: &str) -> Option<String> {
    child(n, name).and_then(|t| text(t, "LocURI"))
}

fn number(n: roxmltree::Node, name: &str, what: &str) -> Result<Option<u32>, String> {
    match text(n, name) {
        None => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| format!("{what} `{name}` is `{t}`, not a number")),
    }
}

fn item(n: roxmltree::Node) -> Item {
    let meta = |key: &str| child(n, "Meta").and_then(|m| text(m, key));
    Item {
        target: loc_uri(n, "Target"),
        source: loc_uri(n, "Source"),
        format: meta("Format"),
        meta_type: meta("Type"),
        // Data may hold markup (an escaped XML blob); its text is what the device sent.
        data: child(n, "Data").map(|d| d.text().unwrap_or_default().to_string()),
    }
}

fn command(n: roxmltree::Node) -> Result<Command, String> {
    let name = n.tag_name().name().to_string();
    let what = format!("<{name}>");
    let cmd_id = number(n, "CmdID", &what)?.ok_or_else(|| format!("{what} without `CmdID`"))?;
    let items = n.children().filter(|c| c.is_element() && c.tag_name().name() == "Item").map(item).collect();
    // Meta on the command itself applies to every item without its own.
    let mut c = Command {
        cmd_id,
        msg_ref: number(n, "MsgRef", &what)?,
        cmd_ref: number(n, "CmdRef", &what)?,
        cmd: text(n, "Cmd"),
        data: text(n, "Data"),
        items,
        name,
    };
    if let Some(meta) = child(n, "Meta") {
        for i in &mut c.items {
            i.format = i.format.take().or_else(|| text(meta, "Format"));
            i.meta_type = i.meta_type.take().or_else(|| text(meta, "Type"));
        }
    }
    Ok(c)
}

/// Parse a SyncML 1.2 message. Refuses anything that is not well-formed XML, not
/// `<SyncML>`, not DM/1.2, or lacks the header fields a session needs.
pub fn parse(body: &[u8]) -> Result<Message, String> {
    let xml = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not well-formed XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "SyncML" {
        return Err(format!("the root element is <{}>, not <SyncML>", root.tag_name().name()));
    }
    let hdr = child(root, "SyncHdr").ok_or("no <SyncHdr>")?;
    match text(hdr, "VerDTD").as_deref() {
        Some("1.2") => {}
        other => return Err(format!("<VerDTD> is {other:?}: Drover speaks SyncML 1.2")),
    }
    match text(hdr, "VerProto").as_deref() {
        Some("DM/1.2") => {}
        other => return Err(format!("<VerProto> is {other:?}: Drover speaks DM/1.2")),
    }
    let session_id = text(hdr, "SessionID").filter(|s| !s.is_empty()).ok_or("<SyncHdr> without <SessionID>")?;
    let msg_id = number(hdr, "MsgID", "<SyncHdr>")?.ok_or("<SyncHdr> without <MsgID>")?;
    let target = loc_uri(hdr, "Target").ok_or("<SyncHdr> without <Target><LocURI>")?;
    let source = loc_uri(hdr, "Source").ok_or("<SyncHdr> without <Source><LocURI>")?;
    let body = child(root, "SyncBody").ok_or("no <SyncBody>")?;
    let mut commands = Vec::new();
    let mut is_final = false;
    for c in body.children().filter(|c| c.is_element()) {
        match c.tag_name().name() {
            "Final" => is_final = true,
            // Atomic and Sequence wrap commands; their inner commands are answered one by one.
            "Atomic" | "Sequence" => {
                commands.push(command(c)?);
                for inner in c.children().filter(|i| i.is_element() && child(*i, "CmdID").is_some()) {
                    commands.push(command(inner)?);
                }
            }
            _ => commands.push(command(c)?),
        }
    }
    Ok(Message { session_id, msg_id, target, source, commands, is_final })
}

type W = Writer<Vec<u8>>;

fn el(w: &mut W, name: &str, text: &str) {
    w.create_element(name).write_text_content(BytesText::new(text)).expect("writing to memory");
}

fn loc(w: &mut W, name: &str, uri: &str) {
    w.create_element(name)
        .write_inner_content(|w| -> std::io::Result<()> {
            el(w, "LocURI", uri);
            Ok(())
        })
        .expect("writing to memory");
}

fn write_item(w: &mut W, i: &Item) {
    w.create_element("Item")
        .write_inner_content(|w| -> std::io::Result<()> {
            if let Some(t) = &i.target {
                loc(w, "Target", t);
            }
            if let Some(s) = &i.source {
                loc(w, "Source", s);
            }
            if i.format.is_some() || i.meta_type.is_some() {
                w.create_element("Meta").write_inner_content(|w| -> std::io::Result<()> {
                    if let Some(f) = &i.format {
                        w.create_element("Format")
                            .with_attribute(("xmlns", METINF))
                            .write_text_content(BytesText::new(f))?;
                    }
                    if let Some(t) = &i.meta_type {
                        w.create_element("Type")
                            .with_attribute(("xmlns", METINF))
                            .write_text_content(BytesText::new(t))?;
                    }
                    Ok(())
                })?;
            }
            if let Some(d) = &i.data {
                el(w, "Data", d);
            }
            Ok(())
        })
        .expect("writing to memory");
}

fn write_command(w: &mut W, c: &Command) {
    w.create_element(c.name.as_str())
        .write_inner_content(|w| -> std::io::Result<()> {
            el(w, "CmdID", &c.cmd_id.to_string());
            if let Some(m) = c.msg_ref {
                el(w, "MsgRef", &m.to_string());
            }
            if let Some(r) = c.cmd_ref {
                el(w, "CmdRef", &r.to_string());
            }
            if let Some(cmd) = &c.cmd {
                el(w, "Cmd", cmd);
            }
            // Alert and Status carry their code before the items.
            if let Some(d) = &c.data {
                el(w, "Data", d);
            }
            for i in &c.items {
                write_item(w, i);
            }
            Ok(())
        })
        .expect("writing to memory");
}

/// Write a SyncML 1.2 message.
pub fn write(m: &Message) -> Vec<u8> {
    let mut w = Writer::new(Vec::with_capacity(1024));
    w.write_event(quick_xml::events::Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None))).expect("memory");
    w.create_element("SyncML")
        .with_attribute(("xmlns", NAMESPACE))
        .write_inner_content(|w| -> std::io::Result<()> {
            w.create_element("SyncHdr").write_inner_content(|w| -> std::io::Result<()> {
                el(w, "VerDTD", "1.2");
                el(w, "VerProto", "DM/1.2");
                el(w, "SessionID", &m.session_id);
                el(w, "MsgID", &m.msg_id.to_string());
                loc(w, "Target", &m.target);
                loc(w, "Source", &m.source);
                Ok(())
            })?;
            w.create_element("SyncBody").write_inner_content(|w| -> std::io::Result<()> {
                for c in &m.commands {
                    write_command(w, c);
                }
                if m.is_final {
                    w.create_element("Final").write_empty()?;
                }
                Ok(())
            })?;
            Ok(())
        })
        .expect("writing to memory");
    w.into_inner()
}
