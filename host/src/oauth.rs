//! Access tokens for push providers, obtained and renewed by the host.
//!
//! FCM's HTTP v1 API takes an OAuth 2.0 access token that lives one hour; WNS takes one
//! that lives a day. A token pasted into a plugin's config stops working when it expires,
//! so an admin can instead give the host what mints them (`oauth` in the plugin's
//! settings, the server's or a tenant's), and the host hands a fresh token to the plugin's
//! `build-request` call as config value `access_token` (that call's config only: a
//! tenant's token never reaches a call for another tenant's device):
//!
//! * a Google service account key (the JSON file): the host signs an RS256 JWT assertion
//!   with its private key and exchanges it at the key's `token_uri` (RFC 7523, Google's
//!   "OAuth 2.0 for server to server applications");
//! * client credentials (`token_url`, `client_id`, `client_secret`; RFC 6749 §4.4), as WNS
//!   takes them at `https://login.live.com/accesstoken.srf`.
//!
//! Tokens are kept until a minute before they expire (or half their life, if shorter), and
//! dropped when the provider answers 401 or the settings change. The plugin sees the token,
//! never the key or the secret.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Google's token endpoint, when a service account key names none.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// An assertion's lifetime (Google accepts at most one hour).
const ASSERTION_SECS: u64 = 3600;

/// How the host obtains access tokens for a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth {
    /// The scope asked for: `https://www.googleapis.com/auth/firebase.messaging` (FCM),
    /// `notify.windows.com` (WNS).
    pub scope: String,
    /// A Google service account key, the JSON file as an object (`client_email`,
    /// `private_key`, `token_uri`, `private_key_id`; other fields are kept as given).
    /// Shown with `private_key` as `***`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub service_account: Option<serde_json::Map<String, serde_json::Value>>,
    /// Client credentials: the token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Shown as `***`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

/// What a grant needs, checked.
enum Grant<'a> {
    ServiceAccount { email: &'a str, key: jsonwebtoken::EncodingKey, key_id: Option<&'a str>, token_uri: &'a str },
    ClientCredentials { token_url: &'a str, client_id: &'a str, client_secret: &'a str },
}

const SHOWN_SECRET: &str = "***";

impl OAuth {
    /// These settings as the API shows them: no private key, no secret.
    pub fn shown(mut self) -> OAuth {
        if let Some(key) = self.service_account.as_mut().and_then(|sa| sa.get_mut("private_key")) {
            *key = SHOWN_SECRET.into();
        }
        if let Some(secret) = self.client_secret.as_mut() {
            *secret = SHOWN_SECRET.into();
        }
        self
    }

    /// Where this shows `***` for a secret that `stored` has, take the stored one (an
    /// admin writing back what GET showed keeps the secrets).
    pub fn keep_secrets(&mut self, stored: &OAuth) {
        if self.client_secret.as_deref() == Some(SHOWN_SECRET) {
            self.client_secret.clone_from(&stored.client_secret);
        }
        if let Some(sa) = self.service_account.as_mut()
            && sa.get("private_key").and_then(|k| k.as_str()) == Some(SHOWN_SECRET)
            && let Some(key) = stored.service_account.as_ref().and_then(|s| s.get("private_key"))
        {
            sa.insert("private_key".into(), key.clone());
        }
    }

    /// Check what the grant needs (the key parses, URLs are http(s)); errors name the field.
    pub fn check(&self) -> Result<(), String> {
        self.grant().map(|_| ())
    }

    fn grant(&self) -> Result<Grant<'_>, String> {
        let url = |field: &str, u: &str| -> Result<(), String> {
            match reqwest::Url::parse(u) {
                Ok(p) if matches!(p.scheme(), "https" | "http") => Ok(()),
                _ => Err(format!("`oauth.{field}`: `{u}` is not an http(s) URL")),
            }
        };
        if self.scope.trim().is_empty() {
            return Err("`oauth.scope` is empty".into());
        }
        match (&self.service_account, &self.token_url, &self.client_id, &self.client_secret) {
            (Some(sa), None, None, None) => {
                let text = |k: &str| sa.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
                let email = text("client_email")
                    .ok_or("`oauth.service_account` has no `client_email` (is it a service account key file?)")?;
                let pem = text("private_key").ok_or("`oauth.service_account` has no `private_key`")?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                    format!("`oauth.service_account.private_key`: {e} (expected the key file's RSA PEM private key)")
                })?;
                let token_uri = text("token_uri").unwrap_or(GOOGLE_TOKEN_URI);
                url("service_account.token_uri", token_uri)?;
                Ok(Grant::ServiceAccount { email, key, key_id: text("private_key_id"), token_uri })
            }
            (None, Some(token_url), Some(client_id), Some(client_secret)) => {
                url("token_url", token_url)?;
                Ok(Grant::ClientCredentials { token_url, client_id, client_secret })
            }
            _ => Err("`oauth` takes either `service_account` (a Google service account key) or all of `token_url`, \
                      `client_id` and `client_secret` (client credentials)"
                .into()),
        }
    }
}

/// Claims of a service account's assertion.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

struct Minted {
    made_for: OAuth,
    token: String,
    renew_at: Instant,
}

/// Tokens by plugin name. Each plugin's slot has its own lock, held through an exchange,
/// so a slow token endpoint delays only its own plugin's requests.
#[derive(Default)]
pub struct Tokens(std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<Option<Minted>>>>>);

impl Tokens {
    fn slot(&self, plugin: &str) -> Arc<tokio::sync::Mutex<Option<Minted>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(plugin.to_string()).or_default().clone()
    }

    /// A valid access token for `plugin`: the kept one, or a new one from the token
    /// endpoint. Callers for one plugin wait for one exchange instead of each making one.
    pub async fn get(&self, http: &reqwest::Client, plugin: &str, oauth: &OAuth) -> Result<String, String> {
        let slot = self.slot(plugin);
        let mut kept = slot.lock().await;
        if let Some(m) = kept.as_ref()
            && m.made_for == *oauth
            && Instant::now() < m.renew_at
        {
            return Ok(m.token.clone());
        }
        let (token, lifetime) = mint(http, oauth).await?;
        let margin = Duration::from_secs(60).min(lifetime / 2);
        *kept = Some(Minted {
            made_for: oauth.clone(),
            token: token.clone(),
            renew_at: Instant::now() + lifetime - margin,
        });
        Ok(token)
    }

    /// The provider refused `plugin`'s token: the next request gets a new one.
    pub async fn forget(&self, plugin: &str) {
        *self.slot(plugin).lock().await = None;
    }
}

/// One exchange at the token endpoint: the token and how long it lives.
async fn mint(http: &reqwest::Client, oauth: &OAuth) -> Result<(String, Duration), String> {
    let (url, form): (&str, Vec<(&str, String)>) = match oauth.grant()? {
        Grant::ServiceAccount { email, key, key_id, token_uri } => {
            let iat = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_secs();
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            header.kid = key_id.map(str::to_string);
            let claims = Claims { iss: email, scope: &oauth.scope, aud: token_uri, iat, exp: iat + ASSERTION_SECS };
            let assertion =
                jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("signing the assertion: {e}"))?;
            (
                token_uri,
                vec![("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer".into()), ("assertion", assertion)],
            )
        }
        Grant::ClientCredentials { token_url, client_id, client_secret } => (
            token_url,
            vec![
                ("grant_type", "client_credentials".into()),
                ("client_id", client_id.into()),
                ("client_secret", client_secret.into()),
                ("scope", oauth.scope.clone()),
            ],
        ),
    };
    let response = http
        .post(url)
        .form(&form)
        .send()
        .await
        .map_err(|e| format!("token endpoint {url}: {}", crate::egress::error_chain(&e)))?;
    let status = response.status();
    let body = crate::egress::read_capped(response).await;
    let body = body.as_slice();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!("token endpoint {url} answered HTTP {}: {text}", status.as_u16()));
    }
    let answer: TokenAnswer =
        serde_json::from_slice(body).map_err(|e| format!("token endpoint {url}: not a token answer: {e}"))?;
    if answer.access_token.is_empty() {
        return Err(format!("token endpoint {url} answered an empty access_token"));
    }
    // No lifetime given: assume the shortest common one (an hour). Kept at most a day,
    // whatever the endpoint says (a huge value must not overflow the renewal time).
    Ok((answer.access_token, Duration::from_secs(answer.expires_in.unwrap_or(3600).clamp(1, 86_400))))
}
