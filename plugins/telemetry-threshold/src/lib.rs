//! telemetry-threshold: a first-party policy rule. A number the device reports as
//! telemetry must be at least `min` and at most `max` (either or both):
//!
//! ```json
//! {"telemetry": "battery", "min": 20}
//! {"telemetry": "storage.free_mb", "min": 512}
//! {"telemetry": "temperature", "min": -10, "max": 60}
//! ```
//!
//! A value reported as text that reads as a number counts as that number.

use drover_sdk::policy_rule::Guest;
use drover_sdk::policy_rule::drover::plugin::policy_types::{EvaluationContext, RuleInfo, Verdict};
use drover_sdk::policy_rule::drover::plugin::types::{PluginError, TelemetryValue};

pub struct Plugin;

#[derive(Debug)]
struct Params {
    telemetry: String,
    min: Option<f64>,
    max: Option<f64>,
}

fn params(text: &str) -> Result<Params, PluginError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| PluginError::malformed(format!("parameters: {e}")))?;
    let o = v.as_object().ok_or_else(|| PluginError::invalid("parameters: a JSON object"))?;
    if let Some(k) = o.keys().find(|k| !["telemetry", "min", "max"].contains(&k.as_str())) {
        return Err(PluginError::invalid(format!("unknown parameter `{k}`: use telemetry, min, max")));
    }
    let telemetry = o
        .get("telemetry")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| PluginError::invalid("`telemetry` (the telemetry name to check) is required"))?;
    let bound = |k: &str| -> Result<Option<f64>, PluginError> {
        match o.get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| PluginError::invalid(format!("`{k}` must be a number"))),
        }
    };
    let (min, max) = (bound("min")?, bound("max")?);
    match (min, max) {
        (None, None) => return Err(PluginError::invalid("give `min`, `max` or both")),
        (Some(a), Some(b)) if a > b => return Err(PluginError::invalid(format!("`min` {a} is above `max` {b}"))),
        _ => {}
    }
    Ok(Params { telemetry: telemetry.into(), min, max })
}

impl Guest for Plugin {
    fn describe() -> RuleInfo {
        RuleInfo {
            name: "telemetry-threshold".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A telemetry number (battery, free storage) is at least `min` and at most `max`".into(),
            params_schema: Some(
                r#"{"type":"object","additionalProperties":false,"required":["telemetry"],"properties":{"telemetry":{"type":"string"},"min":{"type":"number"},"max":{"type":"number"}}}"#
                    .into(),
            ),
        }
    }

    fn check_params(params_text: String) -> Result<(), PluginError> {
        params(&params_text).map(|_| ())
    }

    fn evaluate(params_text: String, context: EvaluationContext) -> Result<Verdict, PluginError> {
        let p = params(&params_text)?;
        let name = &p.telemetry;
        let value = context.telemetry.iter().find(|t| &t.name == name).map(|t| &t.value);
        let number = match value {
            None => return Ok(Verdict { compliant: false, reason: Some(format!("{name} has not been reported")) }),
            Some(TelemetryValue::Number(n)) => *n,
            Some(TelemetryValue::Text(s)) => match s.trim().parse::<f64>() {
                Ok(n) => n,
                Err(_) => {
                    return Ok(Verdict { compliant: false, reason: Some(format!("{name} `{s}` is not a number")) });
                }
            },
            Some(TelemetryValue::Boolean(b)) => {
                return Ok(Verdict { compliant: false, reason: Some(format!("{name} is {b}, not a number")) });
            }
        };
        if let Some(min) = p.min
            && number < min
        {
            return Ok(Verdict { compliant: false, reason: Some(format!("{name} is {number}, below {min}")) });
        }
        if let Some(max) = p.max
            && number > max
        {
            return Ok(Verdict { compliant: false, reason: Some(format!("{name} is {number}, above {max}")) });
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

    fn context(value: Option<TelemetryValue>) -> EvaluationContext {
        EvaluationContext {
            device_type: "esp8266".into(),
            device_id: "b".into(),
            metadata: vec![],
            tags: vec![],
            telemetry: value
                .map(|value| TelemetryPoint { name: "battery".into(), timestamp_ms: None, value })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn parameters_are_checked() {
        assert!(Plugin::check_params(r#"{"telemetry": "battery", "min": 20}"#.into()).is_ok());
        for bad in [
            r#"{"min": 20}"#,
            r#"{"telemetry": "battery"}"#,
            r#"{"telemetry": "battery", "min": "20"}"#,
            r#"{"telemetry": "battery", "min": 50, "max": 10}"#,
            r#"{"telemetry": "battery", "minimum": 20}"#,
            "not json",
        ] {
            assert!(Plugin::check_params(bad.into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn evaluates() {
        let p = r#"{"telemetry": "battery", "min": 20, "max": 100}"#;
        assert!(Plugin::evaluate(p.into(), context(Some(TelemetryValue::Number(80.0)))).unwrap().compliant);
        assert!(Plugin::evaluate(p.into(), context(Some(TelemetryValue::Text("55".into())))).unwrap().compliant);
        let v = Plugin::evaluate(p.into(), context(Some(TelemetryValue::Number(5.0)))).unwrap();
        assert_eq!(v.reason.as_deref(), Some("battery is 5, below 20"));
        let v = Plugin::evaluate(p.into(), context(Some(TelemetryValue::Number(120.0)))).unwrap();
        assert_eq!(v.reason.as_deref(), Some("battery is 120, above 100"));
        assert!(!Plugin::evaluate(p.into(), context(None)).unwrap().compliant);
        assert!(!Plugin::evaluate(p.into(), context(Some(TelemetryValue::Boolean(true)))).unwrap().compliant);
    }
}
