//! Users who sign in at an OpenID Connect provider (Keycloak, Entra ID, Okta, Google …):
//! the admin API takes the provider's signed ID or access token (a JWT) as a bearer
//! token, checks it against the provider's published keys (JWKS), and acts as the local
//! user the token names (docs/security.md, "Users and scoped roles").
//!
//! The provider says who someone is; Drover says what they may do. A token is accepted
//! only for a user an admin added (with or without a password), with that user's role
//! and scope, read at every request, so disabling the user refuses their tokens at once.
//!
//! Keys are fetched from the `jwks_uri` of the issuer's discovery document on first use,
//! again every [`REFRESH`], and when a token names a key not seen yet (the provider
//! rotated); a fetch is tried at most once per [`MISS_REFETCH`], so a stream of made-up
//! key ids, or a provider that is down, cannot make Drover hammer the provider.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How often the keys are fetched again, whatever tokens say.
pub const REFRESH: Duration = Duration::from_secs(600);
/// At most one fetch per this long for a key id not seen yet.
pub const MISS_REFETCH: Duration = Duration::from_secs(5);
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 60;
/// Largest token looked at (headers are bounded before this anyway).
const MAX_TOKEN: usize = 16 * 1024;

/// The provider as configured.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The issuer URL (`iss`), whose `/.well-known/openid-configuration` names the keys.
    pub issuer: String,
    /// What the token's `aud` must contain (the client id Drover is registered as).
    pub audience: String,
    /// The claim that names the user (`email`, `preferred_username`, `sub` …).
    pub user_claim: String,
}

impl Settings {
    /// Why these settings cannot work, if they cannot: the keys must come over https
    /// (anyone on the path could hand out keys otherwise), except from this machine.
    pub fn problem(&self) -> Option<String> {
        let url = reqwest::Url::parse(&self.issuer).ok()?;
        let local = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        (url.scheme() != "https" && !local)
            .then(|| format!("--oidc-issuer {}: use https (only a provider on this machine may use http)", self.issuer))
            .or_else(|| self.audience.is_empty().then(|| "--oidc-issuer needs --oidc-audience".to_string()))
    }
}

struct Keys {
    set: JwkSet,
    fetched: Instant,
}

pub struct Oidc {
    settings: Settings,
    http: reqwest::Client,
    /// The keys last fetched: read by every check, never held across a fetch.
    keys: std::sync::RwLock<Option<Arc<Keys>>>,
    /// One fetch at a time; a check that finds one under way uses the keys it has.
    fetching: Mutex<()>,
    /// When a fetch was last tried (it may have failed): fetches are at most one per
    /// [`MISS_REFETCH`], also while the provider is down.
    attempted: std::sync::Mutex<Option<Instant>>,
}

/// Whether a bearer token looks like a JWT (three base64url parts), not a Drover token.
pub fn is_jwt(token: &str) -> bool {
    !token.starts_with("drv_") && token.len() <= MAX_TOKEN && token.split('.').count() == 3 && token.starts_with("eyJ")
}

impl Oidc {
    pub fn new(settings: Settings) -> anyhow::Result<Oidc> {
        if let Some(p) = settings.problem() {
            anyhow::bail!(p);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Oidc { settings, http, keys: Default::default(), fetching: Mutex::new(()), attempted: Default::default() })
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let discovery = format!("{}/.well-known/openid-configuration", self.settings.issuer.trim_end_matches('/'));
        let doc: serde_json::Value = self.get(&discovery).await?;
        let jwks_uri = doc["jwks_uri"].as_str().ok_or_else(|| format!("{discovery} names no jwks_uri"))?;
        self.get(jwks_uri).await
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let r = self.http.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("{url}: {}", r.status()));
        }
        r.json().await.map_err(|e| format!("{url}: {e}"))
    }

    fn current(&self) -> Option<Arc<Keys>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The key for `kid`, fetching the set when it is old or does not have it (bounded).
    /// A slow provider holds up only the first checks (there are no keys yet); later ones
    /// use the keys they have while a fetch is under way.
    async fn key(&self, kid: Option<&str>) -> Result<jsonwebtoken::jwk::Jwk, String> {
        let find = |set: &JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            // A token without a key id: only a provider with a single key can be asked.
            None => (set.keys.len() == 1).then(|| set.keys[0].clone()),
        };
        let wanted = |keys: &Option<Arc<Keys>>| {
            let recent =
                self.attempted.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| t.elapsed() <= MISS_REFETCH);
            !recent
                && match keys {
                    None => true,
                    Some(k) => k.fetched.elapsed() > REFRESH || find(&k.set).is_none(),
                }
        };
        if self.current().is_none() && self.fetching.try_lock().is_err() {
            // The first keys are being fetched: wait for them.
            drop(self.fetching.lock().await);
        }
        if wanted(&self.current()) {
            let guard = self.fetching.try_lock().ok();
            // Another check may have fetched since: then nothing more to do.
            if guard.is_some() && wanted(&self.current()) {
                *self.attempted.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                match self.fetch().await {
                    Ok(set) => {
                        *self.keys.write().unwrap_or_else(|p| p.into_inner()) =
                            Some(Arc::new(Keys { set, fetched: Instant::now() }));
                    }
                    Err(e) => {
                        tracing::warn!(target: "oidc", error = %e, "the provider's keys could not be fetched");
                    }
                }
            }
        }
        let keys = self.current().ok_or("the OpenID provider's keys are unavailable")?;
        find(&keys.set).ok_or_else(|| format!("the token's key `{}` is not the provider's", kid.unwrap_or("")))
    }

    /// The user a provider's token names, if the token is valid: signed by one of the
    /// provider's keys with an asymmetric algorithm, from the issuer, for the audience,
    /// unexpired.
    pub async fn user_of(&self, token: &str) -> Result<String, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("the token's header: {e}"))?;
        // Only public-key algorithms: an HS256 token "signed" with the provider's public
        // key as the secret (the classic confusion) is refused here.
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(format!("the token's algorithm {:?} is not accepted", header.alg));
        }
        let jwk = self.key(header.kid.as_deref()).await?;
        if jwk.common.key_algorithm.is_some_and(|a| a.to_string() != format!("{:?}", header.alg)) {
            return Err("the token's algorithm is not its key's".into());
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("the provider's key: {e}"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map_err(|e| format!("the token: {e}"))?;
        data.claims
            .get(&self.settings.user_claim)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("the token has no `{}` claim", self.settings.user_claim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_this_machine() {
        let s =
            |issuer: &str| Settings { issuer: issuer.into(), audience: "drover".into(), user_claim: "email".into() };
        assert!(s("http://idp.example.com/realms/x").problem().unwrap().contains("use https"));
        assert_eq!(s("https://idp.example.com/realms/x").problem(), None);
        assert_eq!(s("http://127.0.0.1:9000").problem(), None);
        let no_audience = Settings { audience: String::new(), ..s("https://idp.example.com") };
        assert!(no_audience.problem().unwrap().contains("--oidc-audience"));
    }

    #[test]
    fn drover_tokens_are_not_jwts() {
        assert!(!is_jwt("drv_admin_0123"));
        assert!(is_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!is_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0"));
    }
}
