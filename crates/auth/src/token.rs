//! The token endpoint and access-token verification.

use crate::keys;
use epaccs_core::{OdsCode, Principal, Purpose, Role, Scopes};
use epaccs_store::{clients, Store, StoreError};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// Lifetime of an access token, in seconds.
pub const ACCESS_TOKEN_LIFETIME: i64 = 300;
/// The longest a client assertion may live, in seconds (SMART: five minutes).
const MAX_ASSERTION_LIFETIME: i64 = 300;
/// Clock skew tolerated between a client and this server, in seconds: for an assertion's `exp`,
/// and for an `iat` or `nbf` ahead of the server's clock.
const LEEWAY: u64 = 5;
const JWKS_TTL: Duration = Duration::from_secs(300);
const CLIENT_RECHECK: Duration = Duration::from_secs(2);

/// RFC 6749 §5.2 errors of the token endpoint.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidClient(String),
    #[error("{0}")]
    InvalidGrant(String),
    #[error("{0}")]
    InvalidScope(String),
    #[error("{0}")]
    UnsupportedGrantType(String),
    #[error("{0}")]
    Unavailable(String),
}

impl OAuthError {
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) => "invalid_request",
            OAuthError::InvalidClient(_) => "invalid_client",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::Unavailable(_) => "temporarily_unavailable",
        }
    }
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub scope: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
    scope: String,
    client_id: String,
    org: String,
    role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    extensions: Option<Value>,
    /// The client registration the token was issued under (its `created` stamp). A token is
    /// honoured only while that registration is current: re-registering a client (another role,
    /// organisation, scopes or keys) ends its tokens as revocation does. Tokens issued before
    /// this claim existed (at most `ACCESS_TOKEN_LIFETIME` old at an upgrade) have none and are
    /// checked for revocation only; nothing without the server's key can remove it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reg: Option<i64>,
}

struct CachedToken {
    principal: Principal,
    exp: i64,
    reg: Option<i64>,
}

/// Issues and verifies tokens.
pub struct TokenService {
    store: Store,
    issuer: String,
    token_url: String,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Value,
    http: reqwest::Client,
    jwks_cache: Mutex<HashMap<String, (Instant, Value)>>,
    verified: RwLock<HashMap<String, CachedToken>>,
    /// Per client, when it was last read and its current registration (None: revoked or gone).
    client_active: Mutex<HashMap<String, (Instant, Option<i64>)>>,
}

fn unavailable(e: StoreError) -> OAuthError {
    OAuthError::Unavailable(e.to_string())
}

impl TokenService {
    /// Loads (or creates, once) the server's signing key. `base_url` is the FHIR base; the token
    /// endpoint is `{base_url}/auth/token`.
    pub async fn new(store: Store, base_url: &str) -> Result<TokenService, StoreError> {
        let key = store
            .write(|c| {
                clients::server_key(c, || keys::generate_server_key().map_err(|e| e.to_string()))
            })
            .await?;
        let encoding = EncodingKey::from_ec_pem(key.private_pem.as_bytes())
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let public = keys::server_public_pem(&key.private_pem)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let decoding = DecodingKey::from_ec_pem(public.as_bytes())
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let jwk = keys::server_jwk(&key.private_pem, &key.kid)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let base = base_url.trim_end_matches('/').to_string();
        Ok(TokenService {
            store,
            token_url: format!("{base}/auth/token"),
            issuer: base,
            kid: key.kid,
            encoding,
            decoding,
            jwk,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            jwks_cache: Mutex::new(HashMap::new()),
            verified: RwLock::new(HashMap::new()),
            client_active: Mutex::new(HashMap::new()),
        })
    }

    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// The server's public JWK Set.
    pub fn jwks(&self) -> Value {
        serde_json::json!({"keys": [self.jwk]})
    }

    /// `POST /auth/token` with the form fields.
    pub async fn issue(&self, form: &HashMap<String, String>) -> Result<TokenResponse, OAuthError> {
        let field = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
        match field("grant_type") {
            Some("client_credentials") => {}
            Some(other) => {
                return Err(OAuthError::UnsupportedGrantType(format!(
                    "grant_type {other} is not supported; use client_credentials"
                )))
            }
            None => return Err(OAuthError::InvalidRequest("grant_type is required".into())),
        }
        if field("client_assertion_type")
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(OAuthError::InvalidRequest("client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()));
        }
        let assertion = field("client_assertion")
            .ok_or_else(|| OAuthError::InvalidRequest("client_assertion is required".into()))?;
        let requested =
            field("scope").ok_or_else(|| OAuthError::InvalidScope("scope is required".into()))?;

        let header = jsonwebtoken::decode_header(assertion).map_err(|e| {
            OAuthError::InvalidClient(format!("the client assertion is not a valid JWT: {e}"))
        })?;
        if !matches!(
            header.alg,
            Algorithm::RS384 | Algorithm::ES384 | Algorithm::RS512
        ) {
            return Err(OAuthError::InvalidClient(format!(
                "signing algorithm {:?} is not accepted; use RS384, ES384 or RS512",
                header.alg
            )));
        }
        let kid = header.kid.clone().ok_or_else(|| {
            OAuthError::InvalidClient("the client assertion header has no kid".into())
        })?;
        let unverified = keys::unverified_claims(assertion).ok_or_else(|| {
            OAuthError::InvalidClient("the client assertion payload is not JSON".into())
        })?;
        let client_id = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| OAuthError::InvalidClient("the client assertion has no iss".into()))?
            .to_string();
        let cid = client_id.clone();
        let client = self
            .store
            .with_conn(move |c| clients::get(c, &cid))
            .await
            .map_err(unavailable)?
            .ok_or_else(|| OAuthError::InvalidClient(format!("unknown client {client_id}")))?;
        if client.revoked {
            return Err(OAuthError::InvalidClient(format!(
                "client {client_id} is revoked"
            )));
        }
        // SMART: a `jku` header must be the JWKS URL registered for the client; the keys are
        // never fetched from wherever an assertion points.
        if let Some(jku) = &header.jku {
            if client.jwks_url.as_deref() != Some(jku.as_str()) {
                return Err(OAuthError::InvalidClient(format!(
                    "the assertion's jku {jku} is not the JWKS URL registered for client {client_id}"
                )));
            }
        }
        let jwk = self.find_key(&client, &kid).await?;
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).map_err(|e| {
            OAuthError::InvalidClient(format!("the registered key {kid} is not a usable JWK: {e}"))
        })?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| {
            OAuthError::InvalidClient(format!("the registered key {kid} is not usable: {e}"))
        })?;
        let mut v = Validation::new(header.alg);
        v.set_audience(&[self.token_url.as_str()]);
        v.set_issuer(&[client_id.as_str()]);
        v.sub = Some(client_id.clone());
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        v.leeway = LEEWAY;
        let now = chrono::Utc::now().timestamp();
        let claims = jsonwebtoken::decode::<Value>(assertion, &key, &v)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => {
                    OAuthError::InvalidGrant(format!(
                        "the client assertion is outside its validity period: {e}"
                    ))
                }
                _ => OAuthError::InvalidClient(format!("the client assertion was refused: {e}")),
            })?
            .claims;
        check_not_future(&claims, now)?;
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if exp > now + MAX_ASSERTION_LIFETIME + LEEWAY as i64 {
            return Err(OAuthError::InvalidGrant(
                "the client assertion's exp is more than five minutes ahead".into(),
            ));
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty())
            .ok_or_else(|| OAuthError::InvalidClient("the client assertion has no jti".into()))?
            .to_string();
        let principal_context = iua_context(&claims, &client)?;

        let registered = Scopes::parse_strict(&client.scopes).map_err(|e| {
            OAuthError::InvalidClient(format!("the client's registered scopes are invalid: {e}"))
        })?;
        let asked: Vec<&str> = requested
            .split_whitespace()
            .filter(|s| Scopes::parse_strict(s).is_ok())
            .collect();
        if asked.is_empty() {
            return Err(OAuthError::InvalidScope("no supported scope requested; ask for system/<Type>.<read|write|*> or system/<Type>.<cruds>".into()));
        }
        let asked = Scopes::parse_strict(&asked.join(" "))
            .map_err(|e| OAuthError::InvalidScope(e.to_string()))?;
        let granted = registered.narrow(&asked);
        if granted.is_empty() {
            return Err(OAuthError::InvalidScope(
                "none of the requested scopes is registered for this client".into(),
            ));
        }

        let (cid, j) = (client_id.clone(), jti);
        let fresh = self
            .store
            .write_bookkeeping(move |c| {
                clients::remember_jti(c, &cid, &j, exp + LEEWAY as i64, now)
            })
            .await
            .map_err(unavailable)?;
        if !fresh {
            return Err(OAuthError::InvalidGrant(
                "this client assertion's jti was used before (replay)".into(),
            ));
        }

        let scope = granted.to_scope_string();
        let access = AccessClaims {
            iss: self.issuer.clone(),
            sub: client_id.clone(),
            aud: self.issuer.clone(),
            exp: now + ACCESS_TOKEN_LIFETIME,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            scope: scope.clone(),
            client_id,
            org: client.org.clone(),
            role: client.role.clone(),
            extensions: principal_context,
            reg: Some(client.created),
        };
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&h, &access, &self.encoding)
            .map_err(|e| OAuthError::Unavailable(e.to_string()))?;
        Ok(TokenResponse {
            access_token: token,
            token_type: "bearer",
            expires_in: ACCESS_TOKEN_LIFETIME,
            scope,
        })
    }

    async fn find_key(&self, client: &clients::Client, kid: &str) -> Result<Value, OAuthError> {
        let pick = |set: &Value| -> Option<Value> {
            set.get("keys")?
                .as_array()?
                .iter()
                .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
                .cloned()
        };
        if let Some(inline) = &client.jwks {
            let set: Value = serde_json::from_str(inline).map_err(|e| {
                OAuthError::InvalidClient(format!("the registered JWKS is not JSON: {e}"))
            })?;
            return pick(&set).ok_or_else(|| {
                OAuthError::InvalidClient(format!("no registered key has kid {kid}"))
            });
        }
        let url = client
            .jwks_url
            .clone()
            .ok_or_else(|| OAuthError::InvalidClient("the client has no registered keys".into()))?;
        let cached = self
            .jwks_cache
            .lock()
            .ok()
            .and_then(|c| c.get(&url).cloned());
        if let Some((at, set)) = &cached {
            if let Some(k) = pick(set) {
                if at.elapsed() < JWKS_TTL {
                    return Ok(k);
                }
            } else if at.elapsed() < Duration::from_secs(10) {
                // Fetched moments ago: do not hammer the client's server for an unknown kid.
                return Err(OAuthError::InvalidClient(format!(
                    "no registered key has kid {kid}"
                )));
            }
        }
        let set: Value = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| {
                OAuthError::InvalidClient(format!("could not fetch the client's JWKS: {e}"))
            })?
            .json()
            .await
            .map_err(|e| {
                OAuthError::InvalidClient(format!("the client's JWKS is not JSON: {e}"))
            })?;
        let found = pick(&set);
        if let Ok(mut c) = self.jwks_cache.lock() {
            c.insert(url, (Instant::now(), set));
        }
        found.ok_or_else(|| OAuthError::InvalidClient(format!("no registered key has kid {kid}")))
    }

    /// Verifies a bearer access token and returns the caller.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let now = chrono::Utc::now().timestamp();
        let cached = self
            .verified
            .read()
            .ok()
            .and_then(|m| m.get(token).map(|c| (c.principal.clone(), c.exp, c.reg)));
        let (principal, reg) = match cached {
            Some((p, exp, reg)) => {
                if exp + LEEWAY as i64 <= now {
                    return Err(AuthError::Invalid("the access token has expired".into()));
                }
                (p, reg)
            }
            None => {
                let (p, exp, reg) = self.verify_uncached(token)?;
                if let Ok(mut m) = self.verified.write() {
                    if m.len() > 50_000 {
                        m.retain(|_, c| c.exp > now);
                    }
                    m.insert(
                        token.to_string(),
                        CachedToken {
                            principal: p.clone(),
                            exp,
                            reg,
                        },
                    );
                }
                (p, reg)
            }
        };
        self.check_registration(&principal.client_id, reg).await?;
        Ok(principal)
    }

    fn verify_uncached(&self, token: &str) -> Result<(Principal, i64, Option<i64>), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("not a valid JWT: {e}")))?;
        if header.alg != Algorithm::ES256 {
            return Err(AuthError::Invalid(
                "the access token is not signed by this server".into(),
            ));
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(AuthError::Invalid(
                "the access token's key is unknown".into(),
            ));
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[self.issuer.as_str()]);
        v.set_issuer(&[self.issuer.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
        v.validate_nbf = true;
        v.leeway = LEEWAY;
        let c = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &v)
            .map_err(|e| AuthError::Invalid(format!("the access token was refused: {e}")))?
            .claims;
        let org = OdsCode::parse(&c.org).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let role: Role = c.role.parse().map_err(AuthError::Invalid)?;
        let scopes =
            Scopes::parse_strict(&c.scope).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let iua = c.extensions.as_ref().and_then(|e| e.get("ihe_iua"));
        let text = |k: &str| {
            iua.and_then(|i| i.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let purpose = iua
            .and_then(|i| i.get("purpose_of_use"))
            .and_then(|p| p.get("code"))
            .and_then(Value::as_str)
            .and_then(Purpose::from_code)
            .unwrap_or(Purpose::Treat);
        let user_role = iua.and_then(|i| i.get("subject_role")).map(|r| {
            let sys = r.get("system").and_then(Value::as_str).unwrap_or_default();
            let code = r.get("code").and_then(Value::as_str).unwrap_or_default();
            format!("{sys}|{code}")
        });
        let principal = Principal {
            client_id: c.client_id,
            org,
            role,
            user_id: text("subject_id"),
            user_name: text("subject_name"),
            user_role,
            purpose,
            break_glass_reason: text("break_glass_reason"),
            scopes,
        };
        Ok((principal, c.exp, c.reg))
    }

    /// Refuses a token unless its client is still registered, unrevoked, under the same
    /// registration it was issued under (re-read at most every `CLIENT_RECHECK`).
    async fn check_registration(&self, client_id: &str, reg: Option<i64>) -> Result<(), AuthError> {
        let known = self
            .client_active
            .lock()
            .ok()
            .and_then(|m| m.get(client_id).copied());
        let current = match known {
            Some((at, current)) if at.elapsed() < CLIENT_RECHECK => current,
            _ => {
                let id = client_id.to_string();
                let client = self
                    .store
                    .with_conn(move |c| clients::get(c, &id))
                    .await
                    .map_err(|e| AuthError::Unavailable(e.to_string()))?;
                let current = client.filter(|c| !c.revoked).map(|c| c.created);
                if let Ok(mut m) = self.client_active.lock() {
                    m.insert(client_id.to_string(), (Instant::now(), current));
                }
                current
            }
        };
        match current {
            None => Err(AuthError::Invalid("the client is revoked".into())),
            Some(r) if reg.is_some_and(|reg| reg != r) => Err(AuthError::Invalid(
                "the client was registered again after this token was issued; get a new token"
                    .into(),
            )),
            Some(_) => Ok(()),
        }
    }
}

/// RFC 7523 §3: an assertion is not to be used before its `nbf`, and one issued (`iat`) in the
/// future is not a real one. Either beyond the clock skew is refused as `invalid_client`, as
/// every failed client assertion check is (RFC 7523 §3.2; SMART Backend Services).
fn check_not_future(claims: &Value, now: i64) -> Result<(), OAuthError> {
    for name in ["nbf", "iat"] {
        let Some(v) = claims.get(name) else { continue };
        let t = v.as_f64().ok_or_else(|| {
            OAuthError::InvalidClient(format!("the client assertion's {name} is not a number"))
        })?;
        if t > (now + LEEWAY as i64) as f64 {
            return Err(OAuthError::InvalidClient(format!(
                "the client assertion's {name} is {:.0} s in the future; clocks may differ by at most {LEEWAY} s",
                t - now as f64
            )));
        }
    }
    Ok(())
}

/// Checks the IHE IUA claims of an assertion and returns what goes into the access token.
fn iua_context(claims: &Value, client: &clients::Client) -> Result<Option<Value>, OAuthError> {
    let Some(iua) = claims.get("extensions").and_then(|e| e.get("ihe_iua")) else {
        return Ok(None);
    };
    if !iua.is_object() {
        return Err(OAuthError::InvalidRequest(
            "extensions.ihe_iua must be an object".into(),
        ));
    }
    if let Some(org) = iua.get("subject_organization_id").and_then(Value::as_str) {
        let org = OdsCode::parse(org)
            .map_err(|e| OAuthError::InvalidRequest(format!("subject_organization_id: {e}")))?;
        if org.as_str() != client.org {
            return Err(OAuthError::InvalidClient(format!(
                "subject_organization_id {org} is not the client's registered organisation"
            )));
        }
    }
    if let Some(p) = iua.get("purpose_of_use") {
        let code = p.get("code").and_then(Value::as_str).unwrap_or_default();
        let purpose = Purpose::from_code(code).ok_or_else(|| {
            OAuthError::InvalidRequest(format!(
                "purpose_of_use {code:?} is not TREAT, ETREAT or BTG"
            ))
        })?;
        if purpose == Purpose::BreakGlass {
            let reason = iua
                .get("break_glass_reason")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if reason.trim().is_empty() {
                return Err(OAuthError::InvalidRequest(
                    "purpose_of_use BTG needs a break_glass_reason".into(),
                ));
            }
        }
    }
    let mut kept = serde_json::Map::new();
    for k in [
        "subject_id",
        "subject_name",
        "subject_role",
        "subject_organization_id",
        "purpose_of_use",
        "break_glass_reason",
    ] {
        if let Some(v) = iua.get(k) {
            kept.insert(k.to_string(), v.clone());
        }
    }
    Ok(Some(serde_json::json!({"ihe_iua": kept})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_from_the_future_are_refused() {
        let now = 1_800_000_000;
        for (claims, ok) in [
            (serde_json::json!({}), true),
            (serde_json::json!({"iat": now, "nbf": now}), true),
            (serde_json::json!({"iat": now + LEEWAY as i64}), true),
            (serde_json::json!({"iat": now + 60}), false),
            (serde_json::json!({"nbf": now + 60}), false),
            (
                serde_json::json!({"nbf": now - 60, "iat": now + 3600}),
                false,
            ),
            (serde_json::json!({"iat": "soon"}), false),
        ] {
            let r = check_not_future(&claims, now);
            assert_eq!(r.is_ok(), ok, "{claims}");
            if let Err(e) = r {
                assert_eq!(e.code(), "invalid_client");
            }
        }
    }
}
