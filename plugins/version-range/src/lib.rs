//! version-range: a first-party policy rule. A version the device reports, from its
//! metadata (`os_version` of an Android or iOS device) or its telemetry (`firmware` of a
//! board), must be at least `min` and below `below`:
//!
//! ```json
//! {"metadata": "os_version", "min": "13"}
//! {"telemetry": "firmware", "min": "2.1.0", "below": "3"}
//! ```
//!
//! Versions compare as semantic versions; missing parts count as 0 (`13` is `13.0.0`,
//! `17.1` is `17.1.0`), a leading `v` is ignored, and a pre-release (`2.1.0-rc1`) comes
//! before its release.

use drover_sdk::policy_rule::Guest;
use drover_sdk::policy_rule::drover::plugin::policy_types::{EvaluationContext, RuleInfo, Verdict};
use drover_sdk::policy_rule::drover::plugin::types::{PluginError, TelemetryValue};
use semver::Version;

pub struct Plugin;

/// Where the version is read.
#[derive(Debug, PartialEq)]
enum Field {
    Metadata(String),
    Telemetry(String),
}

#[derive(Debug)]
struct Params {
    field: Field,
    min: Option<Version>,
    below: Option<Version>,
}

/// `text` as a version, lenient in the ways devices report them.
pub fn version(text: &str) -> Option<Version> {
    let t = text.trim();
    let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
    let (core, rest) = match t.find(['-', '+']) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let mut parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty()
        || parts.len() > 3
        || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    while parts.len() < 3 {
        parts.push("0");
    }
    // Leading zeros are not semver; devices write `10.03` for 10.3.
    let parts: Vec<String> =
        parts.iter().map(|p| p.parse::<u64>().map(|n| n.to_string())).collect::<Result<_, _>>().ok()?;
    Version::parse(&format!("{}{rest}", parts.join("."))).ok()
}

fn params(text: &str) -> Result<Params, PluginError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| PluginError::malformed(format!("parameters: {e}")))?;
    let o = v.as_object().ok_or_else(|| PluginError::invalid("parameters: a JSON object"))?;
    if let Some(k) = o.keys().find(|k| !["metadata", "telemetry", "min", "below"].contains(&k.as_str())) {
        return Err(PluginError::invalid(format!("unknown parameter `{k}`: use metadata or telemetry, min, below")));
    }
    let name = |k: &str| o.get(k).map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_string));
    let field = match (name("metadata"), name("telemetry")) {
        (Some(Some(m)), None) => Field::Metadata(m),
        (None, Some(Some(t))) => Field::Telemetry(t),
        (Some(None), _) | (_, Some(None)) => {
            return Err(PluginError::invalid("`metadata` or `telemetry` must name a value"));
        }
        _ => return Err(PluginError::invalid("give `metadata` or `telemetry` (one): where the version is reported")),
    };
    let bound = |k: &str| -> Result<Option<Version>, PluginError> {
        match o.get(k) {
            None => Ok(None),
            Some(v) => {
                let s = v.as_str().ok_or_else(|| PluginError::invalid(format!("`{k}` must be a version string")))?;
                version(s).map(Some).ok_or_else(|| PluginError::invalid(format!("`{k}`: `{s}` is not a version")))
            }
        }
    };
    let (min, below) = (bound("min")?, bound("below")?);
    match (&min, &below) {
        (None, None) => return Err(PluginError::invalid("give `min`, `below` or both")),
        (Some(a), Some(b)) if a >= b => {
            return Err(PluginError::invalid(format!("`min` {a} is not below `below` {b}")));
        }
        _ => {}
    }
    Ok(Params { field, min, below })
}

impl Guest for Plugin {
    fn describe() -> RuleInfo {
        RuleInfo {
            name: "version-range".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A reported version (OS, firmware) is at least `min` and below `below`".into(),
            params_schema: Some(
                r#"{"type":"object","additionalProperties":false,"properties":{"metadata":{"type":"string"},"telemetry":{"type":"string"},"min":{"type":"string"},"below":{"type":"string"}}}"#
                    .into(),
            ),
        }
    }

    fn check_params(params_text: String) -> Result<(), PluginError> {
        params(&params_text).map(|_| ())
    }

    fn evaluate(params_text: String, context: EvaluationContext) -> Result<Verdict, PluginError> {
        let p = params(&params_text)?;
        let (what, reported) = match &p.field {
            Field::Metadata(k) => (k, context.metadata.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())),
            Field::Telemetry(k) => (
                k,
                context.telemetry.iter().find(|t| &t.name == k).map(|t| match &t.value {
                    TelemetryValue::Text(s) => s.clone(),
                    TelemetryValue::Number(n) => n.to_string(),
                    TelemetryValue::Boolean(b) => b.to_string(),
                }),
            ),
        };
        let no = |reason: String| Ok(Verdict { compliant: false, reason: Some(reason) });
        let Some(reported) = reported else { return no(format!("{what} has not been reported")) };
        let Some(v) = version(&reported) else { return no(format!("{what} `{reported}` is not a version")) };
        if let Some(min) = &p.min
            && v < *min
        {
            return no(format!("{what} {reported} is below {min}"));
        }
        if let Some(below) = &p.below
            && v >= *below
        {
            return no(format!("{what} {reported} is not below {below}"));
        }
        Ok(Verdict { compliant: true, reason: None })
    }
}

#[cfg(target_arch = "wasm32")]
drover_sdk::export_policy_rule!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use drover_sdk::policy_rule::drover::plugin::types::TelemetryPoint;

    fn context(os: Option<&str>, firmware: Option<&str>) -> EvaluationContext {
        EvaluationContext {
            device_type: "android".into(),
            device_id: "d".into(),
            metadata: os.map(|o| ("os_version".to_string(), o.to_string())).into_iter().collect(),
            tags: vec![],
            telemetry: firmware
                .map(|f| TelemetryPoint {
                    name: "firmware".into(),
                    timestamp_ms: None,
                    value: TelemetryValue::Text(f.into()),
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn versions_devices_report() {
        assert_eq!(version("13"), Version::parse("13.0.0").ok());
        assert_eq!(version("v17.1"), Version::parse("17.1.0").ok());
        assert_eq!(version("10.03.1"), Version::parse("10.3.1").ok());
        assert!(version("2.1.0-rc1") < version("2.1.0"));
        assert_eq!(version("1.2.3.4"), None);
        assert_eq!(version("abc"), None);
        assert_eq!(version(""), None);
    }

    #[test]
    fn parameters_are_checked() {
        assert!(Plugin::check_params(r#"{"metadata": "os_version", "min": "13"}"#.into()).is_ok());
        for bad in [
            r#"{"min": "13"}"#,
            r#"{"metadata": "os_version"}"#,
            r#"{"metadata": "os_version", "telemetry": "firmware", "min": "1"}"#,
            r#"{"metadata": "os_version", "min": "x"}"#,
            r#"{"metadata": "os_version", "min": "3", "below": "2"}"#,
            r#"{"metadata": "os_version", "minimum": "3"}"#,
            "[]",
            "not json",
        ] {
            assert!(Plugin::check_params(bad.into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn evaluates_against_metadata_and_telemetry() {
        let p = r#"{"metadata": "os_version", "min": "13"}"#;
        assert!(Plugin::evaluate(p.into(), context(Some("14.1"), None)).unwrap().compliant);
        let v = Plugin::evaluate(p.into(), context(Some("12.0.1"), None)).unwrap();
        assert_eq!(v.reason.as_deref(), Some("os_version 12.0.1 is below 13.0.0"));
        let v = Plugin::evaluate(p.into(), context(None, None)).unwrap();
        assert_eq!(v.reason.as_deref(), Some("os_version has not been reported"));
        let p = r#"{"telemetry": "firmware", "min": "2.1.0", "below": "3"}"#;
        assert!(Plugin::evaluate(p.into(), context(None, Some("2.4.0"))).unwrap().compliant);
        assert!(!Plugin::evaluate(p.into(), context(None, Some("2.1.0-rc1"))).unwrap().compliant);
        assert!(!Plugin::evaluate(p.into(), context(None, Some("3.0.0"))).unwrap().compliant);
    }
}
