//! The board protocol, JSON and compact binary (README.md has the byte layouts). Pure
//! functions over bytes, so they are tested natively and benchmarked against Wasm.

use serde::Deserialize;
use serde_json::{Value, json};

/// An operation as the board receives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Reboot,
    Interval {
        seconds: u32,
    },
    Led {
        state: Led,
    },
    /// `rollback`: an older image on purpose (the board must accept a downgrade).
    Ota {
        url: String,
        sha256: [u8; 32],
        size: u32,
        version: String,
        rollback: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Led {
    Off = 0,
    On = 1,
    Blink = 2,
}

impl Led {
    fn name(self) -> &'static str {
        match self {
            Led::Off => "off",
            Led::On => "on",
            Led::Blink => "blink",
        }
    }
}

/// What an admin's payload must be, per operation code. Errors name the field.
pub fn command(code: &str, payload: Option<&str>) -> Result<Command, String> {
    let p: Value = match payload {
        Some(text) => serde_json::from_str(text).map_err(|e| format!("{code}: payload is not JSON: {e}"))?,
        None => Value::Null,
    };
    let need = |field: &str| p.get(field).ok_or_else(|| format!("{code}: `{field}` is required"));
    match code {
        "REBOOT" if payload.is_none() => Ok(Command::Reboot),
        "REBOOT" => Err("REBOOT takes no payload".into()),
        "SET_INTERVAL" => {
            let s = need("seconds")?.as_u64().filter(|s| (5..=86_400).contains(s));
            let seconds = s.ok_or("SET_INTERVAL: `seconds` must be an integer from 5 to 86400")?;
            Ok(Command::Interval { seconds: seconds as u32 })
        }
        "LED" => {
            let state = match need("state")?.as_str() {
                Some("off") => Led::Off,
                Some("on") => Led::On,
                Some("blink") => Led::Blink,
                _ => return Err("LED: `state` must be on, off or blink".into()),
            };
            Ok(Command::Led { state })
        }
        "FIRMWARE_UPDATE" | "FIRMWARE_ROLLBACK" => {
            let url = need("url")?.as_str().unwrap_or_default();
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 255 {
                return Err("FIRMWARE_UPDATE: `url` must be an http(s) URL of at most 255 bytes".into());
            }
            let hex = need("sha256")?.as_str().unwrap_or_default();
            let mut sha256 = [0u8; 32];
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("FIRMWARE_UPDATE: `sha256` must be 64 hex digits".into());
            }
            for (i, byte) in sha256.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
            }
            // An ESP8266 with 4 MB flash holds at most a ~1 MB image per OTA slot.
            let size = need("size")?.as_u64().filter(|s| (1..=1 << 20).contains(s));
            let size = size.ok_or("FIRMWARE_UPDATE: `size` must be 1 to 1048576 bytes")? as u32;
            let version = need("version")?.as_str().filter(|v| !v.is_empty() && v.len() <= 32);
            let version = version.ok_or("FIRMWARE_UPDATE: `version` must be 1 to 32 characters")?;
            let rollback = code == "FIRMWARE_ROLLBACK";
            Ok(Command::Ota { url: url.into(), sha256, size, version: version.into(), rollback })
        }
        other => Err(format!("unknown operation `{other}`")),
    }
}

/// The JSON command frame: `{"ops": [{"id": 12, "op": "reboot"}, …]}`.
pub fn encode_json(ops: &[(u64, Command)]) -> Vec<u8> {
    let ops: Vec<Value> = ops
        .iter()
        .map(|(id, c)| match c {
            Command::Reboot => json!({"id": id, "op": "reboot"}),
            Command::Interval { seconds } => json!({"id": id, "op": "interval", "s": seconds}),
            Command::Led { state } => json!({"id": id, "op": "led", "state": state.name()}),
            Command::Ota { url, sha256, size, version, rollback: false } => json!({
                "id": id, "op": "ota", "url": url, "sha256": hex(sha256), "size": size, "version": version,
            }),
            Command::Ota { url, sha256, size, version, rollback: true } => json!({
                "id": id, "op": "ota", "url": url, "sha256": hex(sha256), "size": size, "version": version,
                "rollback": true,
            }),
        })
        .collect();
    serde_json::to_vec(&json!({ "ops": ops })).expect("JSON")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The binary command frame: `0x01 count`, then per operation `id:u32 opcode:u8 args`.
pub fn encode_binary(ops: &[(u64, Command)]) -> Vec<u8> {
    let mut out = vec![1, ops.len().min(255) as u8];
    for (id, c) in ops.iter().take(255) {
        out.extend_from_slice(&(*id as u32).to_be_bytes());
        match c {
            Command::Reboot => out.push(0x01),
            Command::Interval { seconds } => {
                out.push(0x02);
                out.extend_from_slice(&seconds.to_be_bytes());
            }
            Command::Led { state } => out.extend_from_slice(&[0x03, *state as u8]),
            Command::Ota { url, sha256, size, version, rollback } => {
                out.push(if *rollback { 0x05 } else { 0x04 });
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(sha256);
                out.push(url.len() as u8);
                out.extend_from_slice(url.as_bytes());
                out.push(version.len() as u8);
                out.extend_from_slice(version.as_bytes());
            }
        }
    }
    out
}

/// A board's report of one operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub id: u64,
    pub status: Status,
    /// JSON text recorded as the operation's response.
    pub response: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Done,
    Failed,
    Working,
    Busy,
}

/// Everything one board message carried.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub reports: Vec<Report>,
    /// (name, value, time in ms since the epoch if the board knew it).
    pub numbers: Vec<(String, f64, Option<u64>)>,
    pub info: Vec<(String, String)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonReply {
    results: Vec<JsonResult>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonResult {
    id: u64,
    status: String,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonOta {
    id: u64,
    state: String,
    #[serde(default)]
    progress: Option<u8>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// `reply`: `{"results": [{"id": 12, "status": "ok" | "error" | "busy", "error": "…"}]}`.
pub fn decode_reply(body: &[u8]) -> Result<Decoded, String> {
    let r: JsonReply = serde_json::from_slice(body).map_err(|e| format!("reply: {e}"))?;
    let mut out = Decoded::default();
    for (i, x) in r.results.into_iter().enumerate() {
        let status = match x.status.as_str() {
            "ok" => Status::Done,
            "error" => Status::Failed,
            "busy" => Status::Busy,
            other => return Err(format!("reply: result {i}: status `{other}` (ok, error or busy)")),
        };
        let response = x.error.map(|e| json!({ "error": e }).to_string());
        out.reports.push(Report { id: x.id, status, response });
    }
    Ok(out)
}

/// `ota`: `{"id": 15, "state": "downloading" | "flashing" | "rebooting" | "done" | "failed", "progress": 40}`.
/// The response carries the standard `update_state` rollouts read (docs/plugin-contract.md).
pub fn decode_ota(body: &[u8]) -> Result<Decoded, String> {
    let o: JsonOta = serde_json::from_slice(body).map_err(|e| format!("ota: {e}"))?;
    let mut out = Decoded::default();
    let status = match o.state.as_str() {
        "downloading" | "flashing" | "rebooting" => Status::Working,
        "done" => Status::Done,
        "failed" => Status::Failed,
        other => return Err(format!("ota: state `{other}` (downloading, flashing, rebooting, done or failed)")),
    };
    if let Some(p) = o.progress {
        if p > 100 {
            return Err(format!("ota: progress {p} is over 100"));
        }
        out.numbers.push(("ota.progress".into(), f64::from(p), None));
    }
    if status == Status::Done {
        let v = o.version.clone().ok_or("ota: a `done` report must carry the running `version`")?;
        out.info.push(("firmware".into(), v));
    }
    let update_state = match o.state.as_str() {
        "flashing" => "installing",
        "done" => "succeeded",
        other => other,
    };
    let response = json!({"state": o.state, "update_state": update_state, "progress": o.progress, "version": o.version,
                          "error": o.error});
    out.reports.push(Report { id: o.id, status, response: Some(response.to_string()) });
    Ok(out)
}

/// `telemetry`: a flat JSON object of numbers (`ts`, seconds since the epoch, optional):
/// `{"ts": 1763790000, "temp": 23.5, "hum": 41.2, "rssi": -61}`.
pub fn decode_telemetry(body: &[u8]) -> Result<Decoded, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("telemetry: {e}"))?;
    let map = v.as_object().ok_or("telemetry: expected a JSON object of numbers")?;
    let ts = match map.get("ts") {
        None => None,
        Some(t) => Some(t.as_u64().ok_or("telemetry: `ts` must be seconds since the epoch")? * 1000),
    };
    let mut out = Decoded::default();
    for (k, val) in map.iter().filter(|(k, _)| *k != "ts") {
        let n = val.as_f64().ok_or_else(|| format!("telemetry: `{k}` is not a number"))?;
        out.numbers.push((k.clone(), n, ts));
    }
    if out.numbers.is_empty() {
        return Err("telemetry: no values".into());
    }
    Ok(out)
}

/// Names of the binary telemetry keys (README.md).
const KEYS: [&str; 6] = ["", "temp", "hum", "rssi", "heap", "vcc"];

/// `bin`: binary frames for boards without room for JSON. `0x10` telemetry:
/// `ts:u32 count:u8 (key:u8 value:f32)*`; `0x11` result: `id:u32 status:u8 progress:u8`.
pub fn decode_binary(body: &[u8]) -> Result<Decoded, String> {
    let mut r = Reader { bytes: body, at: 0 };
    let mut out = Decoded::default();
    match r.u8("frame type")? {
        0x10 => {
            let ts = r.u32("timestamp")?;
            let ts = (ts != 0).then_some(u64::from(ts) * 1000);
            let n = r.u8("count")?;
            if n == 0 {
                return Err("binary telemetry at byte 5: count is 0".into());
            }
            for _ in 0..n {
                let at = r.at;
                let key = r.u8("key")?;
                let name = KEYS
                    .get(key as usize)
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| format!("binary telemetry at byte {at}: unknown key {key}"))?;
                let value = f32::from_be_bytes(r.take(4, "value")?.try_into().expect("4 bytes"));
                if !value.is_finite() {
                    return Err(format!("binary telemetry at byte {}: {name} is not a finite number", at + 1));
                }
                out.numbers.push((name.to_string(), f64::from(value), ts));
            }
        }
        0x11 => {
            let id = u64::from(r.u32("operation id")?);
            let at = r.at;
            let status = match r.u8("status")? {
                0 => Status::Done,
                1 => Status::Failed,
                2 => Status::Working,
                3 => Status::Busy,
                s => return Err(format!("binary result at byte {at}: status {s} (0 ok, 1 error, 2 working, 3 busy)")),
            };
            let progress = r.u8("progress")?;
            if progress > 100 {
                return Err(format!("binary result at byte {}: progress {progress} is over 100", r.at - 1));
            }
            out.reports.push(Report { id, status, response: Some(json!({ "progress": progress }).to_string()) });
        }
        t => return Err(format!("binary frame at byte 0: unknown type 0x{t:02x} (0x10 telemetry, 0x11 result)")),
    }
    if r.at != body.len() {
        return Err(format!("binary frame: {} bytes after the end at byte {}", body.len() - r.at, r.at));
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], String> {
        let end = self.at + n;
        let s = self.bytes.get(self.at..end).ok_or_else(|| {
            format!("binary frame ends at byte {} where the {what} needs {n} bytes", self.bytes.len())
        })?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn commands_validate_and_encode() {
        let ota = command(
            "FIRMWARE_UPDATE",
            Some(&format!(
                r#"{{"url": "https://fw.example/b.bin", "sha256": "{SHA}", "size": 412304, "version": "1.1.0"}}"#
            )),
        )
        .unwrap();
        let ops =
            vec![(12, Command::Reboot), (13, command("SET_INTERVAL", Some(r#"{"seconds": 60}"#)).unwrap()), (14, ota)];
        let v: Value = serde_json::from_slice(&encode_json(&ops)).unwrap();
        assert_eq!(v["ops"][1], json!({"id": 13, "op": "interval", "s": 60}));
        assert_eq!(v["ops"][2]["sha256"], SHA);
        let bin = encode_binary(&ops);
        assert_eq!(&bin[..7], &[1, 3, 0, 0, 0, 12, 0x01]);
        assert_eq!(&bin[7..16], &[0, 0, 0, 13, 0x02, 0, 0, 0, 60]);
        assert!(command("SET_INTERVAL", Some(r#"{"seconds": 1}"#)).unwrap_err().contains("5 to 86400"));
        assert!(command("LED", Some(r#"{"state": "purple"}"#)).unwrap_err().contains("on, off or blink"));
        assert!(command("FIRMWARE_UPDATE", Some(r#"{"url": "ftp://x"}"#)).unwrap_err().contains("`url`"));
        assert!(command("REBOOT", Some("{}")).is_err());
        assert!(command("FLY", None).unwrap_err().contains("unknown operation"));
    }

    #[test]
    fn json_reports_decode_and_refuse_garbage() {
        let d =
            decode_reply(br#"{"results": [{"id": 12, "status": "ok"}, {"id": 13, "status": "error", "error": "no"}]}"#)
                .unwrap();
        assert_eq!(d.reports[1].status, Status::Failed);
        assert!(decode_reply(br#"{"results": [{"id": 1, "status": "maybe"}]}"#).unwrap_err().contains("maybe"));
        let d = decode_ota(br#"{"id": 15, "state": "done", "progress": 100, "version": "1.1.0"}"#).unwrap();
        assert_eq!(d.info, [("firmware".to_string(), "1.1.0".to_string())]);
        assert!(decode_ota(br#"{"id": 15, "state": "done"}"#).unwrap_err().contains("version"));
        let t = decode_telemetry(br#"{"ts": 1763790000, "temp": 23.5, "rssi": -61}"#).unwrap();
        assert_eq!(t.numbers.len(), 2);
        assert!(decode_telemetry(br#"{"temp": "warm"}"#).unwrap_err().contains("`temp`"));
    }

    #[test]
    fn binary_frames_decode_and_name_the_byte() {
        let mut frame = vec![0x10, 0x69, 0x21, 0x7a, 0x30, 2, 1];
        frame.extend_from_slice(&23.5f32.to_be_bytes());
        frame.push(3);
        frame.extend_from_slice(&(-61.0f32).to_be_bytes());
        let d = decode_binary(&frame).unwrap();
        assert_eq!(d.numbers[0], ("temp".into(), 23.5, Some(0x69217a30u64 * 1000)));
        assert_eq!(d.numbers[1].0, "rssi");
        assert!(decode_binary(&frame[..9]).unwrap_err().contains("ends at byte 9"));
        assert!(decode_binary(&[0x11, 0, 0, 0, 15, 2, 40]).unwrap().reports[0].status == Status::Working);
        assert!(decode_binary(&[0x11, 0, 0, 0, 15, 9, 40]).unwrap_err().contains("byte 5: status 9"));
        assert!(decode_binary(&[0x7f]).unwrap_err().contains("unknown type 0x7f"));
        assert!(decode_binary(&[0x11, 0, 0, 0, 15, 0, 100, 0]).unwrap_err().contains("after the end"));
        assert!(decode_binary(&[]).is_err());
    }
}
