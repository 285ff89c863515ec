//! The WSO2 Android agent's wire format.
//!
//! The agent polls with `PUT …/devices/{id}/pending-operations`; the body is a JSON array
//! of the operations it worked on since the last call (`id`, `code`, `status`,
//! `operationResponse`), and the answer is a JSON array of pending operations
//! (`id`, `code`, `type`, `status`, `payLoad`). Over MQTT the same arrays travel on
//! the device's `operations` (down) and `reply` (up) topics.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An operation as the agent receives it.
#[derive(Serialize, Debug)]
pub struct OutOperation<'a> {
    pub id: u64,
    pub code: &'a str,
    /// `COMMAND`, `PROFILE` or `POLICY`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: &'static str,
    /// The payload as a JSON *string*: the agent reads `payLoad.toString()` and parses it
    /// again, so an object here would reach it as Java's `{k=v}` and fail.
    #[serde(rename = "payLoad", skip_serializing_if = "Option::is_none")]
    pub payload: Option<&'a str>,
}

/// Encode pending operations as the JSON array the agent expects.
pub fn encode(ops: &[OutOperation<'_>]) -> Vec<u8> {
    // Serializing plain structs of strings and integers cannot fail.
    serde_json::to_vec(ops).unwrap_or_else(|_| b"[]".to_vec())
}

/// Status of an operation as the agent reports it.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentStatus {
    InProgress,
    Completed,
    Error,
    /// Some agent versions echo PENDING for operations they have queued but not started.
    Pending,
    NotNow,
}

/// One result the agent reports.
#[derive(Deserialize, Debug)]
pub struct InResult {
    pub id: u64,
    pub code: String,
    pub status: AgentStatus,
    /// A string (often JSON text) or a JSON value, depending on the operation.
    #[serde(rename = "operationResponse", default)]
    pub response: Value,
    /// What the agent puts in the operation's own payload field: the per-feature
    /// compliance list of a POLICY_MONITOR answer.
    #[serde(rename = "payLoad", default)]
    pub payload: Value,
}

/// One feature in the agent's POLICY_MONITOR answer (its `ComplianceFeature`).
#[derive(Deserialize, Debug)]
struct ComplianceFeature {
    #[serde(rename = "featureCode")]
    feature_code: String,
    compliance: bool,
    #[serde(default)]
    message: Option<String>,
}

impl InResult {
    /// The response as JSON text for the host: a string that is JSON is passed through,
    /// any other string becomes a JSON string, null becomes nothing.
    pub fn response_json(&self) -> Option<String> {
        match &self.response {
            Value::Null => None,
            Value::String(s) if serde_json::from_str::<Value>(s).is_ok_and(|v| v.is_object() || v.is_array()) => {
                Some(s.clone())
            }
            v => Some(v.to_string()),
        }
    }
}

impl InResult {
    /// A POLICY_MONITOR answer as Drover's standard per-feature record:
    /// `{"compliance": [{"feature", "compliant", "reason"}]}`. The agent sends the list as
    /// JSON text or as an array, in `payLoad` (or, from some versions, in
    /// `operationResponse`).
    pub fn compliance_json(&self) -> Result<String, String> {
        let list = [&self.payload, &self.response]
            .into_iter()
            .find(|v| !v.is_null())
            .ok_or("a POLICY_MONITOR answer carries no compliance list")?;
        let list: Vec<ComplianceFeature> = match list {
            Value::String(s) => serde_json::from_str(s),
            v => serde_json::from_value(v.clone()),
        }
        .map_err(|e| {
            format!("POLICY_MONITOR answer {}: not a list of {{featureCode, compliance, message}}: {e}", self.id)
        })?;
        let features: Vec<Value> = list
            .into_iter()
            .map(|f| {
                let mut one = serde_json::json!({"feature": f.feature_code, "compliant": f.compliance});
                if let Some(m) = f.message.filter(|m| !m.is_empty()) {
                    one["reason"] = Value::String(m);
                }
                one
            })
            .collect();
        Ok(serde_json::json!({ "compliance": features }).to_string())
    }
}

/// Decode the agent's results. An empty body or `null` means "nothing to report"; the
/// agent sends that on its first poll.
pub fn decode_results(body: &[u8]) -> Result<Vec<InResult>, String> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() || trimmed == b"null" {
        return Ok(Vec::new());
    }
    let values: Vec<Value> =
        serde_json::from_slice(trimmed).map_err(|e| format!("results must be a JSON array of operations: {e}"))?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| serde_json::from_value::<InResult>(v).map_err(|e| format!("result {i}: {e}")))
        .collect()
}

/// A device property in the agent's `[{"name": …, "value": …}]` lists.
#[derive(Deserialize, Debug)]
pub struct Property {
    pub name: String,
    #[serde(default)]
    pub value: Value,
}

impl Property {
    pub fn value_text(&self) -> String {
        match &self.value {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        }
    }
}

/// The agent's enrollment request.
#[derive(Deserialize, Debug)]
pub struct EnrollRequest {
    #[serde(rename = "deviceIdentifier")]
    pub device_identifier: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(rename = "enrolmentInfo")]
    pub enrolment_info: EnrolmentInfo,
    #[serde(default)]
    pub properties: Vec<Property>,
}

#[derive(Deserialize, Debug)]
pub struct EnrolmentInfo {
    pub ownership: String,
    #[serde(default)]
    pub owner: Option<String>,
}

/// Decode a device-info update: either `{"properties": [...]}` or a bare property list.
pub fn decode_info(body: &[u8]) -> Result<Vec<Property>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Info {
        Wrapped { properties: Vec<Property> },
        Bare(Vec<Property>),
    }
    match serde_json::from_slice::<Info>(body) {
        Ok(Info::Wrapped { properties }) | Ok(Info::Bare(properties)) => Ok(properties),
        Err(e) => Err(format!("device info must be a list of {{name, value}} properties: {e}")),
    }
}

/// Telemetry: a flat JSON object of name → number, string or boolean, with an optional
/// `timestamp` (ms since the epoch); a nested `location` object becomes `location.lat` …
/// Telemetry values by name, with the message's timestamp if it had one.
pub type Telemetry = (Option<u64>, Vec<(String, Value)>);

pub fn decode_telemetry(body: &[u8]) -> Result<Telemetry, String> {
    let map: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| format!("telemetry must be a JSON object: {e}"))?;
    let mut ts = None;
    let mut out = Vec::new();
    for (k, v) in map {
        match (k.as_str(), v) {
            ("timestamp", Value::Number(n)) => {
                ts = Some(n.as_u64().ok_or("`timestamp` must be milliseconds since the epoch")?)
            }
            (_, Value::Object(inner)) => {
                for (ik, iv) in inner {
                    if iv.is_object() || iv.is_array() {
                        return Err(format!("telemetry `{k}.{ik}` is nested too deep"));
                    }
                    out.push((format!("{k}.{ik}"), iv));
                }
            }
            (_, Value::Array(_)) => return Err(format!("telemetry `{k}` is a list; send one value")),
            (_, v) => out.push((k, v)),
        }
    }
    Ok((ts, out))
}
