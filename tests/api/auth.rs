//! SMART Backend Services: discovery, the token endpoint, and access-token checks.

use crate::both_backends;
use crate::helpers::*;
use base64::Engine;
use epaccs_auth::keys;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

both_backends!(
    discovery_and_tokens,
    token_endpoint_refusals,
    access_token_refusals,
    scopes_are_enforced,
    jwks_by_url_and_revocation
);

fn assertion_with(key: &ClientKey, kid: &str, claims: Value) -> String {
    assertion_with_jku(key, kid, None, claims)
}

fn assertion_with_jku(key: &ClientKey, kid: &str, jku: Option<&str>, claims: Value) -> String {
    let enc = match key.alg {
        keys::ClientAlg::Es384 => EncodingKey::from_ec_pem(key.pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(key.pem.as_bytes()),
    }
    .expect("key");
    let mut h = Header::new(key.alg.jwt());
    h.kid = Some(kid.to_string());
    h.jku = jku.map(str::to_string);
    jsonwebtoken::encode(&h, &claims, &enc).expect("sign")
}

fn claims(app: &TestApp, client: &str, exp_in: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": client, "sub": client, "aud": app.token_url(), "exp": now + exp_in, "iat": now, "jti": uuid::Uuid::new_v4().to_string()})
}

async fn discovery_and_tokens(b: Backend) {
    let app = TestApp::spawn(b).await;
    let d = app
        .anonymous()
        .get("/.well-known/smart-configuration")
        .await;
    assert_eq!(d.status, 200);
    assert_eq!(d.body["token_endpoint"], app.token_url());
    for alg in ["RS384", "ES384", "RS512"] {
        assert!(d.body["token_endpoint_auth_signing_alg_values_supported"]
            .as_array()
            .expect("algs")
            .contains(&json!(alg)));
    }
    for cap in [
        "permission-v1",
        "permission-v2",
        "client-confidential-asymmetric",
    ] {
        assert!(d.body["capabilities"]
            .as_array()
            .expect("caps")
            .contains(&json!(cap)));
    }
    assert!(d.body["grant_types_supported"]
        .as_array()
        .expect("grants")
        .contains(&json!("client_credentials")));

    for (client, key) in [
        ("es-client", es384()),
        ("rs384-client", rs384()),
        ("rs512-client", rs512()),
    ] {
        app.register_key(
            client,
            "A81001",
            "gp",
            "system/Patient.rs system/Observation.read",
            key,
        );
        let a = assertion_with(key, &key.kid, claims(&app, client, 240));
        let (status, body) = app
            .token_request(
                &a,
                "system/Patient.rs system/Observation.cruds system/Consent.read",
            )
            .await;
        assert_eq!(status, 200, "{client}: {body}");
        assert_eq!(body["token_type"], "bearer");
        assert!(body["expires_in"].as_i64().expect("expires_in") <= 300);
        // Narrower than asked: Observation write and Consent are not registered.
        assert_eq!(body["scope"], "system/Patient.rs");
        let api = app.api(body["access_token"].as_str().expect("token").to_string());
        assert_eq!(api.get("/Patient?family=nobody").await.status, 200);
        assert_eq!(api.get("/Observation?code=x").await.status, 403);
    }
}

async fn token_endpoint_refusals(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("client-a", "A81001", "gp", "system/*.*");
    let k = es384();
    let scope = "system/*.read";

    // Replay: the same jti twice.
    let a = assertion_with(k, &k.kid, claims(&app, "client-a", 200));
    assert_eq!(app.token_request(&a, scope).await.0, 200);
    let (s, body) = app.token_request(&a, scope).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "expired",
            assertion_with(k, &k.kid, claims(&app, "client-a", -120)),
            400,
            "invalid_grant",
        ),
        (
            "exp too far ahead",
            assertion_with(k, &k.kid, claims(&app, "client-a", 3600)),
            400,
            "invalid_grant",
        ),
        (
            "wrong audience",
            assertion_with(k, &k.kid, {
                let mut c = claims(&app, "client-a", 200);
                c["aud"] = json!("https://elsewhere/token");
                c
            }),
            401,
            "invalid_client",
        ),
        (
            "sub differs from iss",
            assertion_with(k, &k.kid, {
                let mut c = claims(&app, "client-a", 200);
                c["sub"] = json!("someone-else");
                c
            }),
            401,
            "invalid_client",
        ),
        (
            "unknown kid",
            assertion_with(k, "no-such-kid", claims(&app, "client-a", 200)),
            401,
            "invalid_client",
        ),
        (
            "unknown client",
            assertion_with(k, &k.kid, claims(&app, "nobody", 200)),
            401,
            "invalid_client",
        ),
        (
            "signed by another key",
            assertion_with(stranger(), &k.kid, claims(&app, "client-a", 200)),
            401,
            "invalid_client",
        ),
        (
            "jku header, keys registered inline",
            assertion_with_jku(
                k,
                &k.kid,
                Some("http://127.0.0.1:9/jwks.json"),
                claims(&app, "client-a", 200),
            ),
            401,
            "invalid_client",
        ),
        (
            "no jti",
            assertion_with(k, &k.kid, {
                let mut c = claims(&app, "client-a", 200);
                c.as_object_mut().expect("obj").remove("jti");
                c
            }),
            401,
            "invalid_client",
        ),
    ];
    for (what, a, status, code) in cases {
        let (s, body) = app.token_request(&a, scope).await;
        assert_eq!(
            (s, body["error"].as_str()),
            (status, Some(code)),
            "{what}: {body}"
        );
    }

    // HS256 client assertion (a shared-secret algorithm) is refused.
    let hs = jsonwebtoken::encode(
        &Header {
            alg: Algorithm::HS256,
            kid: Some(k.kid.clone()),
            ..Header::default()
        },
        &claims(&app, "client-a", 200),
        &EncodingKey::from_secret(b"secret"),
    )
    .expect("hs");
    let (s, body) = app.token_request(&hs, scope).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );

    // Scope problems.
    let a = assertion_with(k, &k.kid, claims(&app, "client-a", 200));
    let (s, body) = app.token_request(&a, "openid profile").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );
    app.register("narrow", "A81001", "gp", "system/Patient.read");
    let a = assertion_with(k, &k.kid, claims(&app, "narrow", 200));
    let (s, body) = app.token_request(&a, "system/Consent.read").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );

    // Wrong grant type; missing assertion type.
    let resp = app
        .http
        .post(app.token_url())
        .form(&[("grant_type", "password"), ("scope", scope)])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["error"],
        "unsupported_grant_type"
    );
    let resp = app
        .http
        .post(app.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion", "x"),
            ("scope", scope),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(
        resp.json::<Value>().await.expect("json")["error"],
        "invalid_request"
    );

    // Break-glass without a reason, and an organisation that is not the client's.
    let a = assertion_with(k, &k.kid, {
        let mut c = claims(&app, "client-a", 200);
        c["extensions"] = json!({"ihe_iua": {"purpose_of_use": {"code": "BTG"}}});
        c
    });
    assert_eq!(
        app.token_request(&a, scope).await.1["error"],
        "invalid_request"
    );
    let a = assertion_with(k, &k.kid, {
        let mut c = claims(&app, "client-a", 200);
        c["extensions"] = json!({"ihe_iua": {"subject_organization_id": "Z99999"}});
        c
    });
    assert_eq!(
        app.token_request(&a, scope).await.1["error"],
        "invalid_client"
    );
}

/// Signs an access token with the server's own key, as an attacker with a stolen key could;
/// used to check every claim the server verifies.
fn server_signed(app: &TestApp, claims: &Value, kid: Option<&str>) -> String {
    let mut conn = DatabaseUrlExt::connect(&app.db_url);
    let key = epaccs_store::clients::server_key(&mut conn, || {
        Err("the server created its key at start".into())
    })
    .expect("server key");
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.unwrap_or(&key.kid).to_string());
    jsonwebtoken::encode(
        &h,
        claims,
        &EncodingKey::from_ec_pem(key.private_pem.as_bytes()).expect("pem"),
    )
    .expect("sign")
}

struct DatabaseUrlExt;
impl DatabaseUrlExt {
    fn connect(url: &str) -> epaccs_store::DbConn {
        epaccs_store::DatabaseUrl::parse(url)
            .expect("url")
            .connect(false)
            .expect("connect")
    }
}

async fn access_token_refusals(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("client-a", "A81001", "gp", "system/*.*");
    let good = app.token("client-a", "system/*.*", None).await;
    assert_eq!(app.api(good.clone()).get("/Patient").await.status, 200);

    // No credentials: the scheme only, no error code (RFC 6750 §3.1); likewise another scheme.
    let r = app.anonymous().get("/Patient").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"epaccs\"")
    );
    r.outcome();
    let basic = app
        .http
        .get(format!("{}/Patient", app.base))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .expect("get");
    assert_eq!(basic.status().as_u16(), 401);
    assert_eq!(
        basic
            .headers()
            .get("www-authenticate")
            .and_then(|h| h.to_str().ok()),
        Some("Bearer realm=\"epaccs\"")
    );

    let now = chrono::Utc::now().timestamp();
    let base = json!({"iss": app.base, "sub": "client-a", "aud": app.base, "exp": now + 200, "iat": now, "nbf": now, "jti": "j",
        "scope": "system/*.*", "client_id": "client-a", "org": "A81001", "role": "gp"});
    // The forged-but-valid token works: the checks below are what refuse the others.
    assert_eq!(
        app.api(server_signed(&app, &base, None))
            .get("/Patient")
            .await
            .status,
        200
    );
    let mut expired = base.clone();
    expired["exp"] = json!(now - 60);
    let mut future = base.clone();
    future["nbf"] = json!(now + 600);
    let mut wrong_aud = base.clone();
    wrong_aud["aud"] = json!("https://other.example/fhir");
    let mut wrong_iss = base.clone();
    wrong_iss["iss"] = json!("https://other.example");
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&base)
    );
    let mid: Vec<&str> = good.split('.').collect();
    let mut payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(mid[1])
            .expect("b64"),
    )
    .expect("json");
    payload["role"] = json!("admin");
    let tampered = format!("{}.{}.{}", mid[0], b64(&payload), mid[2]);
    // HS256 "signed" with the server's public key: the classic algorithm confusion.
    let public = app
        .anonymous()
        .get("/.well-known/jwks.json")
        .await
        .body
        .to_string();
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &base,
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .expect("hs");
    let cases = vec![
        ("expired", server_signed(&app, &expired, None)),
        ("not yet valid", server_signed(&app, &future, None)),
        ("wrong audience", server_signed(&app, &wrong_aud, None)),
        ("wrong issuer", server_signed(&app, &wrong_iss, None)),
        ("unknown kid", server_signed(&app, &base, Some("other-kid"))),
        ("alg none", alg_none),
        ("tampered payload", tampered),
        ("HS256 with the public key", hs),
        ("garbage", "not.a.jwt".to_string()),
    ];
    for (what, token) in cases {
        let r = app.api(token).get("/Patient").await;
        assert_eq!(r.status, 401, "{what} was accepted: {}", r.text);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Bearer") && h.contains("error=\"invalid_token\"")),
            "{what}: {:?}",
            r.header("www-authenticate")
        );
        r.outcome();
    }
}

async fn scopes_are_enforced(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("reader", "A81001", "gp", "system/*.read");
    app.register("writer", "A81001", "gp", "system/*.*");
    let w = app.api(app.token("writer", "system/*.*", None).await);
    let p = w.create(&patient(&nhs(1), "Scoped", "A81001")).await;
    let pid = p["id"].as_str().expect("id");
    let r = app.api(app.token("reader", "system/*.read", None).await);
    assert_eq!(r.get(&format!("/Patient/{pid}")).await.status, 200);
    let denied = r.post("/Patient", &patient(&nhs(2), "No", "A81001")).await;
    assert_eq!(denied.status, 403);
    assert!(denied
        .header("www-authenticate")
        .is_some_and(|h| h.contains("error=\"insufficient_scope\"")));
    assert!(denied.outcome().contains("scope"));
    assert_eq!(r.delete(&format!("/Patient/{pid}")).await.status, 403);
    // v2 scopes: search only, no read.
    app.register("v2", "A81001", "gp", "system/Patient.s");
    let s = app.api(app.token("v2", "system/Patient.s", None).await);
    assert_eq!(s.get("/Patient?family=scoped").await.status, 200);
    assert_eq!(s.get(&format!("/Patient/{pid}")).await.status, 403);
}

async fn jwks_by_url_and_revocation(b: Backend) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let app = TestApp::spawn(b).await;
    // A real JWKS server on loopback, as a client's key service would be.
    let jwks = es384().jwks();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = HttpServer::new(move || {
        let body = jwks.clone();
        App::new().route(
            "/jwks.json",
            web::get().to(move || {
                let body = body.clone();
                async move {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listen")
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    epaccs::cli::register(
        &app.db(),
        "by-url",
        "A81001",
        "gp",
        "system/*.*",
        None,
        Some(format!("http://127.0.0.1:{port}/jwks.json")),
    )
    .expect("register");
    let token = app.token("by-url", "system/*.read", None).await;
    let api = app.api(token);
    assert_eq!(api.get("/Patient").await.status, 200);

    // A `jku` header is honoured only when it is the registered URL: keys are never fetched
    // from wherever an assertion points.
    let k = es384();
    let registered = format!("http://127.0.0.1:{port}/jwks.json");
    let elsewhere = format!("http://127.0.0.1:{port}/other/jwks.json");
    for (jku, status) in [(&registered, 200), (&elsewhere, 401)] {
        let a = assertion_with_jku(k, &k.kid, Some(jku), claims(&app, "by-url", 200));
        let (s, body) = app.token_request(&a, "system/*.read").await;
        assert_eq!(s, status, "jku {jku}: {body}");
        if status == 401 {
            assert_eq!(body["error"], "invalid_client", "{body}");
        }
    }

    // Revocation: the token stops working within seconds, and no new token is issued.
    let mut conn = DatabaseUrlExt::connect(&app.db_url);
    assert!(epaccs_store::clients::revoke(&mut conn, "by-url").expect("revoke"));
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(api.get("/Patient").await.status, 401);
    let a = keys::sign_assertion(&k.pem, k.alg, &k.kid, "by-url", &app.token_url(), None)
        .expect("sign");
    assert_eq!(
        app.token_request(&a, "system/*.read").await.1["error"],
        "invalid_client"
    );
    handle.stop(false).await;
}
