//! Typed calls into policy-rule plugins: checking a rule's parameters when a policy is
//! saved, and evaluating it against one device (`crate::policies`).

use super::bindings::policy_rule::drover::plugin::policy_types::{EvaluationContext, RuleInfo, Verdict};
use super::device_type::{CallError, flatten};
use super::runtime::{Described, Exports, LoadedPlugin};
use super::sources::Source;

impl LoadedPlugin {
    /// What `describe` said at load, for a policy rule.
    pub fn rule_info(&self) -> Option<&RuleInfo> {
        match &self.described {
            Described::PolicyRule(i) => Some(i),
            _ => None,
        }
    }

    /// Check a rule's parameters (JSON text) an admin is saving in a policy.
    pub async fn check_params(&self, params: &str) -> Result<(), CallError> {
        let Exports::PolicyRule(pre) = &self.exports else {
            return Err(CallError::WrongKind(self.label()));
        };
        let (pre, params) = (pre.clone(), params.to_string());
        flatten(
            self.caller
                .call("check-params", Source::Admin, move |store| {
                    Box::pin(async move {
                        pre.instantiate_async(&mut *store).await?.call_check_params(&mut *store, &params).await
                    })
                })
                .await,
        )
    }

    /// Evaluate the rule with `params` against one device.
    pub async fn evaluate(&self, params: &str, context: EvaluationContext) -> Result<Verdict, CallError> {
        let Exports::PolicyRule(pre) = &self.exports else {
            return Err(CallError::WrongKind(self.label()));
        };
        let (pre, params) = (pre.clone(), params.to_string());
        flatten(
            self.caller
                .call("evaluate", Source::Admin, move |store| {
                    Box::pin(async move {
                        pre.instantiate_async(&mut *store).await?.call_evaluate(&mut *store, &params, &context).await
                    })
                })
                .await,
        )
    }
}

impl super::runtime::OutputSize for Verdict {
    fn output_size(&self) -> usize {
        self.reason.as_ref().map_or(0, String::len)
    }
}
