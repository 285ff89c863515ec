//! A policy rule that accepts its parameters and traps when it evaluates: a rule plugin
//! with a bug. Its verdict must be "unknown", and nothing else may suffer.

use drover_sdk::policy_rule::Guest;
use drover_sdk::policy_rule::drover::plugin::policy_types::{EvaluationContext, RuleInfo, Verdict};
use drover_sdk::policy_rule::drover::plugin::types::PluginError;

struct RuleTrap;

impl Guest for RuleTrap {
    fn describe() -> RuleInfo {
        RuleInfo {
            name: "rule-trap".into(),
            version: "0.1.0".into(),
            description: "traps when evaluated".into(),
            params_schema: None,
        }
    }
    fn check_params(_: String) -> Result<(), PluginError> {
        Ok(())
    }
    fn evaluate(_: String, context: EvaluationContext) -> Result<Verdict, PluginError> {
        panic!("rule-trap: a bug while judging {}", context.device_id)
    }
}

drover_sdk::export_policy_rule!(RuleTrap);
