//! Device-facing endpoints: `/agent/v1/{type}/{*path}` routed to the type's plugin.
//!
//! The host does not know any device type's paths. It reserves these sub-paths: `enroll`
//! (through the plugin's `enroll`), `enroll/…` for a type with an enrollment exchange
//! (`device-type-enrolling`: its `enroll-step`, unauthenticated like `enroll`),
//! `certificate` (POST a CSR), `scep` (SCEP, RFC 8894: `scep.rs`) and `credential` (POST: refresh the caller's
//! credential); everything else is authenticated by the device's credential and handed
//! to the delivery engine (`delivery.rs`), which decodes it with the plugin, records what
//! it carried and answers as the plugin's `reply` says. This file only carries HTTP.

use super::Path;
use super::extract::{AuthDevice, client_addr, device_token_hash, throttle, unknown_device_token};
use super::{ApiError, AppState};
use crate::enrollment::Issued;
use crate::plugins::Source;
use crate::plugins::types::{Channel, HttpMethod, HttpRequest, Outbound};
use crate::store::{DeviceKey, DeviceRow};
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new().route("/agent/v1/{device_type}/{*path}", any(agent))
}

fn http_channel(method: &Method, path: &str, uri: &Uri, headers: &HeaderMap) -> Result<Channel, ApiError> {
    let method = match *method {
        Method::GET => HttpMethod::Get,
        Method::HEAD => HttpMethod::Head,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::PATCH => HttpMethod::Patch,
        Method::DELETE => HttpMethod::Delete,
        ref m => {
            return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method", format!("{m} is not an agent method")));
        }
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    // The plugin never sees credentials: the host has already authenticated the device.
    let headers = headers
        .iter()
        .filter(|(n, _)| *n != header::AUTHORIZATION && *n != header::COOKIE)
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    Ok(Channel::Http(HttpRequest {
        method,
        path: path.to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        content_type,
        headers,
    }))
}

async fn agent(
    State(state): State<AppState>,
    Path((device_type, path)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    // Nothing of the body is read before the request is authenticated (or, for an
    // enrollment, with a limit fit for an unauthenticated sender).
    let (mut parts, body) = request.into_parts();
    let plugin = state.device_type(&device_type)?;
    let channel = http_channel(&method, &path, &uri, &headers)?;
    // `enroll/…`: the steps of an enrollment exchange, for a type that has one (MS-MDE2).
    let exchange = path.starts_with("enroll/") && plugin.has_enroll_exchange();
    if path == "enroll" || exchange {
        throttle(&state, &parts)?;
        let body = read_body(&state, body, MAX_ENROLL_BODY).await?;
        // An enrollment token may come as a bearer token or as `?token=` (the QR-code URL).
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::to_string)
            .or_else(|| {
                uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token="))).map(str::to_string)
            });
        // No credential yet: a fault its body causes is charged to the peer's address.
        let source = Source::Peer(client_addr(&parts));
        if exchange {
            let answer =
                crate::enrollment::exchange(&state, &plugin, &device_type, source, channel, &body, token.as_deref())
                    .await?;
            return render(Outbound::Http(answer));
        }
        let issued =
            crate::enrollment::enroll(&state, &plugin, &device_type, source, channel, &body, token.as_deref()).await?;
        return Ok((StatusCode::CREATED, Json(credential_body(&issued))).into_response());
    }
    if path == "scep" || path == "scep/pending" {
        // SCEP (RFC 8894): unauthenticated like an enrollment; a PKIOperation's challenge
        // is its enrollment token (`scep.rs`).
        throttle(&state, &parts)?;
        let query = axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(&uri)
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?
            .0;
        let operation = query.get("operation").map(String::as_str).unwrap_or_default();
        let body = if method == Method::POST { read_body(&state, body, MAX_ENROLL_BODY).await? } else { Bytes::new() };
        let answer = crate::scep::serve(
            &state,
            &device_type,
            path == "scep/pending",
            operation,
            query.get("message").map(String::as_str),
            &body,
        )
        .await?;
        return Ok(([(header::CONTENT_TYPE, answer.content_type)], answer.body).into_response());
    }
    if path == "certificate" {
        if method != Method::POST {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                "ask for a certificate with POST /agent/v1/{type}/certificate and a CSR as the body",
            ));
        }
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::to_string);
        let (_, issued) = match bearer.as_deref() {
            // An enrollment token: the challenge of a first certificate. The token is
            // checked with the CSR's CN, so the body (at most 16 KiB, less than an
            // enrollment's) is read first, as for an enrollment.
            Some(t) if t.starts_with("drv_enroll_") => {
                throttle(&state, &parts)?;
                let body = read_body(&state, body, crate::identity::MAX_CSR).await?;
                crate::enrollment::certify(&state, &device_type, &body, crate::enrollment::CertifyAs::Challenge(t))
                    .await?
            }
            // A device: authenticated before anything of the body is read.
            _ => {
                let AuthDevice(device, _) = AuthDevice::from_request_parts(&mut parts, &state).await?;
                same_type(&device, &device_type)?;
                let body = read_body(&state, body, crate::identity::MAX_CSR).await?;
                crate::enrollment::certify(&state, &device_type, &body, crate::enrollment::CertifyAs::Device(&device))
                    .await?
            }
        };
        return Ok((
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
            issued.chain_pem,
        )
            .into_response());
    }
    if path == "credential" {
        let AuthDevice(device, credential) = AuthDevice::from_request_parts(&mut parts, &state).await?;
        same_type(&device, &device_type)?;
        if method != Method::POST {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                "refresh a credential with POST /agent/v1/{type}/credential",
            ));
        }
        let issued = crate::enrollment::refresh(&state, &device, &credential).await?;
        return Ok((StatusCode::OK, Json(credential_body(&issued))).into_response());
    }
    // The device and its queue in one read: most messages are polls, which need both.
    let credential = device_token_hash(&parts)?;
    let limit = crate::delivery::queue_limit(&plugin);
    let (device, queue, body) = match state.store.device_and_queue(DeviceKey::Credential(&credential), limit).await? {
        Some((device, queue)) => (device, queue, read_body(&state, body, state.max_agent_body).await?),
        None => {
            // A certificate issued to an enrollment whose device was not known yet (SCEP at
            // `scep/pending`): this first request names the device and claims it, then is
            // the device's own.
            let pending = match parts.extensions.get::<crate::tls::ClientCertificate>() {
                Some(c) if credential == c.0 => {
                    throttle(&state, &parts)?;
                    state.store.pending_certificate(&credential).await?
                }
                _ => None,
            };
            if pending.is_none() {
                return Err(unknown_device_token());
            }
            let body = read_body(&state, body, MAX_ENROLL_BODY).await?;
            let source = Source::Peer(client_addr(&parts));
            crate::enrollment::claim_pending(
                &state,
                &plugin,
                &device_type,
                &credential,
                source,
                channel.clone(),
                &body,
            )
            .await?;
            let (device, queue) = state
                .store
                .device_and_queue(DeviceKey::Credential(&credential), limit)
                .await?
                .ok_or_else(unknown_device_token)?;
            (device, queue, body)
        }
    };
    same_type(&device, &device_type)?;
    match crate::delivery::exchange(&state, &plugin, &device, channel, &body, queue).await? {
        Some(out) => render(out),
        None => Ok(StatusCode::OK.into_response()),
    }
}

/// Largest enrollment request: it comes before any credential. (An Apple Authenticate
/// check-in is about 2 KiB, a Windows enrollment SOAP message about 10.)
pub const MAX_ENROLL_BODY: usize = 64 << 10;

/// Read a request body of at most `limit` bytes within the body timeout.
async fn read_body(state: &AppState, body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {} s", state.body_timeout.as_secs()),
        )),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("this request's body is limited to {limit} bytes"),
        )),
        Ok(Ok(b)) => Ok(b),
    }
}

/// The credential answer of enrollment and refresh (OAuth-style field names).
fn credential_body(issued: &Issued) -> serde_json::Value {
    let device = &issued.device;
    json!({
        "device_type": device.device_type, "device_id": device.device_id, "status": device.status,
        "access_token": issued.token, "token_type": "Bearer", "expires_in": issued.expires_in_secs,
    })
}

/// A credential is good only at its own device type's paths.
fn same_type(device: &DeviceRow, device_type: &str) -> Result<(), ApiError> {
    if device.device_type != device_type {
        return Err(ApiError::forbidden(format!(
            "this credential is for a {} device, not {device_type}",
            device.device_type
        )));
    }
    Ok(())
}

fn render(out: Outbound) -> Result<Response, ApiError> {
    match out {
        Outbound::Http(r) => {
            let mut resp = Response::builder().status(
                StatusCode::from_u16(r.status)
                    .map_err(|_| ApiError::internal(format!("plugin answered with HTTP status {}", r.status)))?,
            );
            if let Some(ct) = r.content_type {
                resp = resp.header(header::CONTENT_TYPE, ct);
            }
            for (k, v) in r.headers {
                resp = resp.header(k, v);
            }
            resp.body(axum::body::Body::from(r.body))
                .map_err(|e| ApiError::internal(format!("plugin answer is not valid HTTP: {e}")))
        }
        _ => Err(ApiError::internal("the plugin answered an HTTP request with a non-HTTP message")),
    }
}
