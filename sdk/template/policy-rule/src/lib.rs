//! {{name}}: a Drover policy rule. An admin uses it in a policy with parameters (JSON);
//! the host evaluates it against each device's reported state.
//!
//! This one checks a telemetry value against a minimum:
//! `{"telemetry": "battery", "min": 20}`.

use drover_sdk::policy_rule::Guest;
use drover_sdk::policy_rule::drover::plugin::policy_types::{EvaluationContext, RuleInfo, Verdict};
use drover_sdk::policy_rule::drover::plugin::types::{PluginError, TelemetryValue};

pub struct Plugin;

struct Params {
    telemetry: String,
    min: f64,
}

fn params(text: &str) -> Result<Params, PluginError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| PluginError::malformed(format!("parameters: {e}")))?;
    let telemetry = v["telemetry"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| PluginError::invalid("`telemetry` (the telemetry name to check) is required"))?;
    let min = v["min"].as_f64().ok_or_else(|| PluginError::invalid("`min` (a number) is required"))?;
    Ok(Params { telemetry: telemetry.into(), min })
}

impl Guest for Plugin {
    fn describe() -> RuleInfo {
        RuleInfo {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A telemetry value must be at least a minimum".into(),
            params_schema: Some(
                r#"{"type":"object","required":["telemetry","min"],"properties":{"telemetry":{"type":"string"},"min":{"type":"number"}}}"#
                    .into(),
            ),
        }
    }

    fn check_params(params_text: String) -> Result<(), PluginError> {
        params(&params_text).map(|_| ())
    }

    fn evaluate(params_text: String, context: EvaluationContext) -> Result<Verdict, PluginError> {
        let p = params(&params_text)?;
        let value = context.telemetry.iter().find(|t| t.name == p.telemetry).map(|t| &t.value);
        Ok(match value {
            Some(TelemetryValue::Number(n)) if *n >= p.min => Verdict { compliant: true, reason: None },
            Some(TelemetryValue::Number(n)) => {
                Verdict { compliant: false, reason: Some(format!("{} is {n}, below {}", p.telemetry, p.min)) }
            }
            Some(_) => Verdict { compliant: false, reason: Some(format!("{} is not a number", p.telemetry)) },
            None => Verdict { compliant: false, reason: Some(format!("{} has not been reported", p.telemetry)) },
        })
    }
}

#[cfg(target_arch = "wasm32")]
drover_sdk::export_policy_rule!(Plugin);

// Native tests: `cargo test` runs the plugin's logic on your machine, no server needed.
#[cfg(test)]
mod tests {
    use super::*;
    use drover_sdk::policy_rule::drover::plugin::types::TelemetryPoint;

    fn context(battery: Option<f64>) -> EvaluationContext {
        EvaluationContext {
            device_type: "acme".into(),
            device_id: "unit-1".into(),
            metadata: vec![],
            tags: vec![],
            telemetry: battery
                .map(|b| TelemetryPoint { name: "battery".into(), timestamp_ms: None, value: TelemetryValue::Number(b) })
                .into_iter()
                .collect(),
        }
    }

    const PARAMS: &str = r#"{"telemetry": "battery", "min": 20}"#;

    #[test]
    fn checks_parameters() {
        assert!(Plugin::check_params(PARAMS.into()).is_ok());
        assert!(Plugin::check_params(r#"{"telemetry": "battery"}"#.into()).is_err());
        assert!(Plugin::check_params("not json".into()).is_err());
    }

    #[test]
    fn evaluates() {
        assert!(Plugin::evaluate(PARAMS.into(), context(Some(80.0))).unwrap().compliant);
        let v = Plugin::evaluate(PARAMS.into(), context(Some(5.0))).unwrap();
        assert!(!v.compliant && v.reason.unwrap().contains("below 20"));
        assert!(!Plugin::evaluate(PARAMS.into(), context(None)).unwrap().compliant);
    }
}
