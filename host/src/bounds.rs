//! What outside input must satisfy before a plugin parses it.
//!
//! A plugin runs with a CPU, memory and stack budget, and a fault it hits is charged to
//! whoever sent the input (`plugins::sources`). That still costs a plugin call, and a
//! recursive parser fed a deeply nested document spends its stack before anything else:
//! a few hundred levels of `<dict>` or `[` make most parsers trap. So the host looks at the
//! *shape* of text formats first, in one linear pass, without parsing them:
//!
//! * **JSON** (a body that starts with `{` or `[`): nesting at most [`MAX_DEPTH`].
//! * **XML** (a body that starts with `<`: Apple plists, SyncML, SOAP): element nesting at
//!   most [`MAX_DEPTH`], and no entity declarations (`<!ENTITY`), which is how "billion
//!   laughs" and external-entity attacks begin. No device protocol Drover serves declares
//!   entities; a DOCTYPE that only names a DTD (as every Apple plist does) is fine.
//!
//! Anything else (binary frames, CBOR, link format) passes untouched: its plugin bounds it.
//! What is refused gets a clear error naming the limit, and changes nothing.

/// The deepest nesting accepted. Apple MDM plists nest about ten levels, SyncML fewer,
/// the Android agent's JSON four.
pub const MAX_DEPTH: usize = 64;

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the body nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the body declares XML entities (<!ENTITY), which no device protocol needs")]
    Entities,
}

/// Check `body` before a plugin sees it.
pub fn check(body: &[u8]) -> Result<(), Refused> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(body.len());
    let text = &body[start..];
    // A UTF-8 byte-order mark before XML.
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    match text.first() {
        Some(b'{' | b'[') => json(text),
        Some(b'<') => xml(text),
        _ => Ok(()),
    }
}

fn json(text: &[u8]) -> Result<(), Refused> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Refused::TooDeep);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn xml(text: &[u8]) -> Result<(), Refused> {
    if find(text, b"<!ENTITY").is_some() {
        return Err(Refused::Entities);
    }
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(off) = text[i..].iter().position(|b| *b == b'<') {
        i += off;
        let rest = &text[i..];
        // Skip what cannot open an element: a comment, CDATA, a processing instruction,
        // a declaration. Unterminated, the rest of the body is inside it.
        let skip_to = |end: &[u8]| find(rest, end).map_or(text.len(), |e| i + e + end.len());
        if rest.starts_with(b"<!--") {
            i = skip_to(b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_to(b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_to(b"?>");
        } else if rest.starts_with(b"<!") {
            i = skip_to(b">");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_to(b">");
        } else {
            // A start tag: find its end outside quoted attribute values.
            let mut quote = None;
            let mut end = None;
            for (k, &b) in rest.iter().enumerate().skip(1) {
                match (quote, b) {
                    (Some(q), b) if b == q => quote = None,
                    (Some(_), _) => {}
                    (None, b'"' | b'\'') => quote = Some(b),
                    (None, b'>') => {
                        end = Some(k);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(end) = end else { return Ok(()) };
            if rest[end - 1] != b'/' {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Refused::TooDeep);
                }
            }
            i += end + 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_json(n: usize) -> Vec<u8> {
        format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()
    }

    fn nested_plist(n: usize) -> Vec<u8> {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
             \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">{}{}</plist>",
            "<array>".repeat(n),
            "</array>".repeat(n)
        )
        .into_bytes()
    }

    #[test]
    fn json_nesting_is_bounded() {
        assert_eq!(check(&nested_json(MAX_DEPTH)), Ok(()));
        assert_eq!(check(&nested_json(MAX_DEPTH + 1)), Err(Refused::TooDeep));
        // Brackets inside strings are text, escaped quotes do not end them.
        let s = format!("{{\"a\": \"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert_eq!(check(s.as_bytes()), Ok(()));
        assert_eq!(check(b"  \n{\"deep\": 1}"), Ok(()));
    }

    #[test]
    fn xml_nesting_and_entities_are_bounded() {
        // The plist has one level of its own.
        assert_eq!(check(&nested_plist(MAX_DEPTH - 1)), Ok(()));
        assert_eq!(check(&nested_plist(MAX_DEPTH)), Err(Refused::TooDeep));
        let bomb = b"<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]><lolz>&lol2;</lolz>";
        assert_eq!(check(bomb), Err(Refused::Entities));
        // Self-closing elements, comments, CDATA and `>` inside attribute values do not nest.
        let flat = format!(
            "<SyncML xmlns=\"SYNCML:SYNCML1.2\"><!-- <a><b> -->{}<Data><![CDATA[<x><y><z>]]></Data><Meta a=\"x>y\"/></SyncML>",
            "<Final/>".repeat(1000)
        );
        assert_eq!(check(flat.as_bytes()), Ok(()));
    }

    #[test]
    fn real_fixtures_pass() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins");
        let mut checked = 0;
        for dir in ["android", "ios", "windows", "esp8266", "lwm2m"] {
            let Ok(entries) = std::fs::read_dir(format!("{root}/{dir}/fixtures")) else { continue };
            for e in entries.flatten() {
                if let Ok(bytes) = std::fs::read(e.path()) {
                    assert_eq!(check(&bytes), Ok(()), "{}", e.path().display());
                    checked += 1;
                }
            }
        }
        assert!(checked > 10, "only {checked} fixtures found");
    }

    #[test]
    fn other_formats_pass_untouched() {
        assert_eq!(check(&[0x01, 0x5b, 0x5b, 0x5b]), Ok(()));
        assert_eq!(check(b"</1/0>;ver=1.0,</3/0>"), Ok(()));
        assert_eq!(check(b""), Ok(()));
    }
}
