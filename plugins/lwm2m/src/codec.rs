//! LwM2M payload formats: TLV (content format 11542), SenML JSON (110) and plain text
//! (0), decoded into `path → value`, and the CoRE link format of registrations (40).
//! TLV is untyped on the wire; the object model (`objects.rs`) says how to read a
//! resource it knows, and unknown ones are read as text when they are printable UTF-8,
//! else as an integer when 1, 2, 4 or 8 bytes long, else as opaque (base64).
//!
//! Reference: OMA-TS-LightweightM2M_Core-V1_1 §7.4 (data formats), RFC 8428 (SenML),
//! RFC 6690 (link format).

use crate::objects::{self, Type};
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub const TEXT: u16 = 0;
pub const LINK_FORMAT: u16 = 40;
pub const OPAQUE: u16 = 42;
pub const SENML_JSON: u16 = 110;
pub const TLV: u16 = 11542;
pub const OLD_TLV: u16 = 1542;

/// Values by path (`3/0/9`, `3/0/6/1` for a resource instance).
pub type Values = BTreeMap<String, Value>;

/// A path `object[/instance[/resource[/resource instance]]]` as numbers.
pub fn parse_path(path: &str) -> Result<Vec<u16>, String> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Err("the path is empty".into());
    }
    let parts: Result<Vec<u16>, _> = trimmed.split('/').map(str::parse::<u16>).collect();
    let parts = parts.map_err(|_| format!("path `{path}` is not object/instance/resource numbers"))?;
    if parts.len() > 4 {
        return Err(format!("path `{path}` is deeper than object/instance/resource/instance"));
    }
    Ok(parts)
}

fn join(base: &[u16], id: u16) -> Vec<u16> {
    let mut p = base.to_vec();
    p.push(id);
    p
}

fn path_text(p: &[u16]) -> String {
    p.iter().map(u16::to_string).collect::<Vec<_>>().join("/")
}

/// Decode a TLV payload that answers a request on `base` (the request's path).
pub fn decode_tlv(base: &[u16], bytes: &[u8], out: &mut Values) -> Result<(), String> {
    nested_tlv(base, bytes, out, 0)
}

/// TLVs nest at most object instance → multiple resource → resource instance; deeper
/// nesting is refused rather than followed (a hostile payload could nest thousands).
fn nested_tlv(base: &[u16], mut bytes: &[u8], out: &mut Values, depth: u8) -> Result<(), String> {
    if depth > 2 {
        return Err("TLV nested deeper than object instance, resource and resource instance".into());
    }
    while !bytes.is_empty() {
        let t = bytes[0];
        let kind = t >> 6;
        let id_len = if t & 0x20 != 0 { 2 } else { 1 };
        let len_type = (t >> 3) & 0x03;
        let mut pos = 1;
        let need = |n: usize, what: &str| -> Result<(), String> {
            if bytes.len() < n { Err(format!("TLV truncated in the {what} (type byte 0x{t:02x})")) } else { Ok(()) }
        };
        need(pos + id_len, "identifier")?;
        let id = if id_len == 2 { u16::from_be_bytes([bytes[1], bytes[2]]) } else { u16::from(bytes[1]) };
        pos += id_len;
        let len = match len_type {
            0 => usize::from(t & 0x07),
            n => {
                let n = usize::from(n);
                need(pos + n, "length")?;
                let l = bytes[pos..pos + n].iter().fold(0usize, |a, b| (a << 8) | usize::from(*b));
                pos += n;
                l
            }
        };
        need(pos + len, "value")?;
        let value = &bytes[pos..pos + len];
        bytes = &bytes[pos + len..];
        // Where this TLV sits depends on what the request addressed.
        match kind {
            // Object instance (a request on an object).
            0b00 => nested_tlv(&[base[0], id], value, out, depth + 1)?,
            // Multiple resource: its resource instances follow, inside.
            0b10 => nested_tlv(&join(&instance(base), id), value, out, depth + 1)?,
            // Resource with value.
            0b11 => {
                let path = join(&instance(base), id);
                out.insert(path_text(&path), typed(value, objects::resource_type(&path))?);
            }
            // Resource instance, inside a multiple resource (or a request on that resource).
            _ => {
                if base.len() < 3 {
                    return Err(format!("a TLV resource instance outside a resource (under `{}`)", path_text(base)));
                }
                let path = join(&base[..3], id);
                out.insert(path_text(&path), typed(value, objects::resource_type(&base[..3]))?);
            }
        }
    }
    Ok(())
}

/// The object instance a path is in (`3/0/9` → `3/0`); a bare object means instance 0,
/// as single-instance objects are often answered without the instance level.
fn instance(base: &[u16]) -> Vec<u16> {
    if base.len() >= 2 { base[..2].to_vec() } else { vec![base[0], 0] }
}

fn int(v: &[u8]) -> Result<i64, String> {
    Ok(match v.len() {
        1 => i64::from(v[0] as i8),
        2 => i64::from(i16::from_be_bytes([v[0], v[1]])),
        4 => i64::from(i32::from_be_bytes([v[0], v[1], v[2], v[3]])),
        8 => i64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]),
        n => return Err(format!("an integer of {n} bytes (TLV integers are 1, 2, 4 or 8)")),
    })
}

fn typed(v: &[u8], typ: Option<Type>) -> Result<Value, String> {
    Ok(match typ {
        Some(Type::String) => json!(std::str::from_utf8(v).map_err(|_| "a string resource is not UTF-8")?),
        Some(Type::Integer | Type::Time) => json!(int(v)?),
        Some(Type::Float) => match v.len() {
            4 => json!(f32::from_be_bytes([v[0], v[1], v[2], v[3]])),
            8 => json!(f64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]])),
            n => return Err(format!("a float of {n} bytes (4 or 8)")),
        },
        Some(Type::Boolean) => match v {
            [0] => json!(false),
            [1] => json!(true),
            _ => return Err("a boolean that is not one byte 0 or 1".into()),
        },
        Some(Type::Opaque) => json!(base64(v)),
        Some(Type::Execute) => return Err("a value for an executable resource".into()),
        None => match std::str::from_utf8(v) {
            Ok(s) if !s.is_empty() && s.chars().all(|c| !c.is_control()) => json!(s),
            _ if matches!(v.len(), 1 | 2 | 4 | 8) => json!(int(v)?),
            _ => json!(base64(v)),
        },
    })
}

fn base64(v: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(v)
}

/// Encode one resource value as TLV (a resource with value, `id`).
pub fn encode_tlv_resource(id: u16, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 5);
    let mut t = 0b1100_0000u8;
    if id > 255 {
        t |= 0x20;
    }
    let len = value.len();
    match len {
        0..=7 => t |= len as u8,
        8..=0xFF => t |= 0x08,
        0x100..=0xFFFF => t |= 0x10,
        _ => t |= 0x18,
    }
    out.push(t);
    if id > 255 {
        out.extend_from_slice(&id.to_be_bytes());
    } else {
        out.push(id as u8);
    }
    match len {
        0..=7 => {}
        8..=0xFF => out.push(len as u8),
        0x100..=0xFFFF => out.extend_from_slice(&(len as u16).to_be_bytes()),
        _ => out.extend_from_slice(&(len as u32).to_be_bytes()[1..]),
    }
    out.extend_from_slice(value);
    out
}

/// The TLV bytes of a JSON value for a resource of type `typ` (integers as the shortest
/// of 1, 2, 4, 8 bytes, as the spec asks).
pub fn tlv_value(v: &Value, typ: Option<Type>) -> Result<Vec<u8>, String> {
    Ok(match (v, typ) {
        (Value::Bool(b), _) => vec![u8::from(*b)],
        (Value::Number(n), Some(Type::Float)) => n.as_f64().unwrap_or_default().to_be_bytes().to_vec(),
        (Value::Number(n), _) if n.is_i64() => {
            let i = n.as_i64().unwrap_or_default();
            if let Ok(b) = i8::try_from(i) {
                b.to_be_bytes().to_vec()
            } else if let Ok(s) = i16::try_from(i) {
                s.to_be_bytes().to_vec()
            } else if let Ok(w) = i32::try_from(i) {
                w.to_be_bytes().to_vec()
            } else {
                i.to_be_bytes().to_vec()
            }
        }
        (Value::Number(n), _) => n.as_f64().unwrap_or_default().to_be_bytes().to_vec(),
        (Value::String(s), _) => s.as_bytes().to_vec(),
        (other, _) => return Err(format!("{other} cannot be a resource value")),
    })
}

/// Decode SenML JSON (LwM2M 1.1 form: `bn` base name, `n` name, `v`/`vs`/`vb`/`vd`/`vlo`).
pub fn decode_senml(bytes: &[u8], out: &mut Values) -> Result<(), String> {
    let records: Vec<serde_json::Map<String, Value>> =
        serde_json::from_slice(bytes).map_err(|e| format!("SenML JSON: {e}"))?;
    let mut base = String::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(bn) = r.get("bn") {
            base = bn.as_str().ok_or_else(|| format!("SenML record {i}: `bn` is not a string"))?.to_string();
        }
        let name = match r.get("n") {
            None => "",
            Some(Value::String(n)) => n.as_str(),
            Some(_) => return Err(format!("SenML record {i}: `n` is not a string")),
        };
        let full = format!("{base}{name}");
        let path = parse_path(&full).map_err(|e| format!("SenML record {i}: {e}"))?;
        let value = ["v", "vs", "vb", "vd", "vlo"]
            .iter()
            .find_map(|k| r.get(*k))
            .ok_or_else(|| format!("SenML record {i} (`{full}`) has no value (v, vs, vb, vd or vlo)"))?;
        out.insert(path_text(&path), value.clone());
    }
    Ok(())
}

/// Decode a response payload by its content format.
pub fn decode(path: &str, content_format: Option<u16>, payload: &[u8]) -> Result<Values, String> {
    let base = parse_path(path)?;
    let mut out = Values::new();
    if payload.is_empty() {
        return Ok(out);
    }
    match content_format {
        Some(TLV | OLD_TLV) => decode_tlv(&base, payload, &mut out)?,
        Some(SENML_JSON) => decode_senml(payload, &mut out)?,
        Some(TEXT) | None => {
            if base.len() < 3 {
                return Err(format!("a text/plain value for `{path}`, which is not a resource"));
            }
            let text = std::str::from_utf8(payload).map_err(|_| "a text/plain value that is not UTF-8")?;
            let value = match objects::resource_type(&base) {
                Some(Type::Integer | Type::Time) => {
                    json!(text.trim().parse::<i64>().map_err(|_| format!("`{text}` is not an integer"))?)
                }
                Some(Type::Float) => {
                    json!(text.trim().parse::<f64>().map_err(|_| format!("`{text}` is not a number"))?)
                }
                Some(Type::Boolean) => json!(text.trim() == "1" || text.trim() == "true"),
                _ => json!(text),
            };
            out.insert(path_text(&base), value);
        }
        Some(OPAQUE) => {
            out.insert(path_text(&base), json!(base64(payload)));
        }
        Some(other) => return Err(format!("content format {other} is not TLV (11542), SenML JSON (110) or text (0)")),
    }
    Ok(out)
}

/// Objects and instances of a registration's link-format payload: `</1/0>,</3/0>;ver=1.1`.
pub fn parse_links(payload: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "the registration payload is not UTF-8")?;
    let mut out = Vec::new();
    for link in text.split(',').map(str::trim).filter(|l| !l.is_empty()) {
        let target = link
            .split(';')
            .next()
            .and_then(|t| t.trim().strip_prefix('<'))
            .and_then(|t| t.strip_suffix('>'))
            .ok_or_else(|| format!("`{link}` is not a link (</object/instance>)"))?;
        if target == "/" {
            continue; // the root, with an rt="oma.lwm2m" attribute
        }
        parse_path(target).map_err(|e| format!("link `{link}`: {e}"))?;
        out.push(target.trim_matches('/').to_string());
    }
    if out.is_empty() {
        return Err("the registration lists no objects".into());
    }
    Ok(out)
}
