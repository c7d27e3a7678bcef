//! Key helpers: server key generation, JWKs from PEM keys, client-assertion signing (for the CLI
//! and the tests).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

fn err(e: impl std::fmt::Display) -> KeyError {
    KeyError(e.to_string())
}

/// A fresh P-256 key for the server's access tokens: (kid, PKCS#8 PEM).
pub fn generate_server_key() -> Result<(String, String), KeyError> {
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(err)?
        .to_string();
    let kid = format!("epaccs-{}", &hex(&Sha256::digest(pem.as_bytes()))[..16]);
    Ok((kid, pem))
}

/// The public PEM of the server's P-256 private key.
pub fn server_public_pem(private_pem: &str) -> Result<String, KeyError> {
    let secret = p256::SecretKey::from_pkcs8_pem(private_pem).map_err(err)?;
    secret
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(err)
}

/// The server's public key as a JWK (for the published JWKS).
pub fn server_jwk(private_pem: &str, kid: &str) -> Result<Value, KeyError> {
    let secret = p256::SecretKey::from_pkcs8_pem(private_pem).map_err(err)?;
    let point = p256::EncodedPoint::from(secret.public_key());
    let (x, y) = (
        point.x().ok_or_else(|| err("no x"))?,
        point.y().ok_or_else(|| err("no y"))?,
    );
    Ok(
        json!({"kty": "EC", "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y), "kid": kid, "alg": "ES256", "use": "sig"}),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A client key algorithm the token endpoint accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAlg {
    Rs384,
    Rs512,
    Es384,
}

impl ClientAlg {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        match s {
            "RS384" => Ok(ClientAlg::Rs384),
            "RS512" => Ok(ClientAlg::Rs512),
            "ES384" => Ok(ClientAlg::Es384),
            other => Err(KeyError(format!(
                "unsupported algorithm {other}; use RS384, RS512 or ES384"
            ))),
        }
    }

    pub fn jwt(self) -> Algorithm {
        match self {
            ClientAlg::Rs384 => Algorithm::RS384,
            ClientAlg::Rs512 => Algorithm::RS512,
            ClientAlg::Es384 => Algorithm::ES384,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ClientAlg::Rs384 => "RS384",
            ClientAlg::Rs512 => "RS512",
            ClientAlg::Es384 => "ES384",
        }
    }
}

/// Generates a client private key (PKCS#8 PEM) for `alg`.
pub fn generate_client_key(alg: ClientAlg) -> Result<String, KeyError> {
    match alg {
        ClientAlg::Es384 => {
            let k = p384::SecretKey::random(&mut rand::rngs::OsRng);
            Ok(k.to_pkcs8_pem(LineEnding::LF).map_err(err)?.to_string())
        }
        ClientAlg::Rs384 | ClientAlg::Rs512 => {
            let k = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(err)?;
            Ok(k.to_pkcs8_pem(LineEnding::LF).map_err(err)?.to_string())
        }
    }
}

/// The public JWK of a client private key, with `kid` set to its RFC 7638 thumbprint.
pub fn public_jwk(private_pem: &str, alg: ClientAlg) -> Result<Value, KeyError> {
    let mut jwk = match alg {
        ClientAlg::Es384 => {
            let k = p384::SecretKey::from_pkcs8_pem(private_pem).map_err(err)?;
            let point = p384::EncodedPoint::from(k.public_key());
            let (x, y) = (
                point.x().ok_or_else(|| err("no x"))?,
                point.y().ok_or_else(|| err("no y"))?,
            );
            json!({"crv": "P-384", "kty": "EC", "x": B64.encode(x), "y": B64.encode(y)})
        }
        ClientAlg::Rs384 | ClientAlg::Rs512 => {
            let k = rsa::RsaPrivateKey::from_pkcs8_pem(private_pem).map_err(err)?;
            json!({"e": B64.encode(k.e().to_bytes_be()), "kty": "RSA", "n": B64.encode(k.n().to_bytes_be())})
        }
    };
    // Thumbprint: SHA-256 of the required members in lexicographic order, no spaces.
    let thumb = B64.encode(Sha256::digest(
        serde_json::to_string(&jwk).map_err(err)?.as_bytes(),
    ));
    jwk["kid"] = json!(thumb);
    jwk["alg"] = json!(alg.name());
    jwk["use"] = json!("sig");
    Ok(jwk)
}

/// Signs a client assertion for the token endpoint. `extra` is merged into the claims (e.g.
/// `{"extensions": {"ihe_iua": {...}}}`).
pub fn sign_assertion(
    private_pem: &str,
    alg: ClientAlg,
    kid: &str,
    client_id: &str,
    token_url: &str,
    extra: Option<&Value>,
) -> Result<String, KeyError> {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({"iss": client_id, "sub": client_id, "aud": token_url, "exp": now + 240, "iat": now, "jti": uuid::Uuid::new_v4().to_string()});
    if let (Some(Value::Object(extra)), Some(map)) = (extra, claims.as_object_mut()) {
        for (k, v) in extra {
            map.insert(k.clone(), v.clone());
        }
    }
    let key = match alg {
        ClientAlg::Es384 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
    }
    .map_err(err)?;
    let mut header = Header::new(alg.jwt());
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &key).map_err(err)
}

/// Decodes a JWT's payload without checking it (to find the client before verifying).
pub fn unverified_claims(jwt: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&B64.decode(payload).ok()?).ok()
}
