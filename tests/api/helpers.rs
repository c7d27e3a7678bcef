#![allow(dead_code)]

use diesel::connection::SimpleConnection;
use diesel::Connection;
use epaccs::cli::DbArgs;
use epaccs::{Running, Settings};
use epaccs_api::Limits;
use epaccs_auth::keys::{self, ClientAlg};
use epaccs_core::NhsNumber;
use epaccs_store::DatabaseUrl;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::OnceLock;

/// Runs an async scenario on SQLite and on PostgreSQL, as two tests.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server the tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("EPACCS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

pub struct ClientKey {
    pub pem: String,
    pub alg: ClientAlg,
    pub jwk: Value,
    pub kid: String,
}

impl ClientKey {
    pub fn new(alg: ClientAlg) -> ClientKey {
        let pem = keys::generate_client_key(alg).expect("key generation");
        let jwk = keys::public_jwk(&pem, alg).expect("jwk");
        let kid = jwk["kid"].as_str().expect("kid").to_string();
        ClientKey { pem, alg, jwk, kid }
    }

    pub fn jwks(&self) -> String {
        json!({"keys": [self.jwk]}).to_string()
    }
}

/// One key per algorithm for the whole test run (RSA generation is slow).
pub fn es384() -> &'static ClientKey {
    static K: OnceLock<ClientKey> = OnceLock::new();
    K.get_or_init(|| ClientKey::new(ClientAlg::Es384))
}
pub fn rs384() -> &'static ClientKey {
    static K: OnceLock<ClientKey> = OnceLock::new();
    K.get_or_init(|| ClientKey::new(ClientAlg::Rs384))
}
pub fn rs512() -> &'static ClientKey {
    static K: OnceLock<ClientKey> = OnceLock::new();
    K.get_or_init(|| ClientKey::new(ClientAlg::Rs512))
}
/// A second ES384 key that is never registered (for forged assertions).
pub fn stranger() -> &'static ClientKey {
    static K: OnceLock<ClientKey> = OnceLock::new();
    K.get_or_init(|| ClientKey::new(ClientAlg::Es384))
}

/// The i-th synthetic NHS number of the 999 range with a valid check digit.
pub fn nhs(i: u32) -> String {
    let mut n = 0;
    let mut k = 0u32;
    loop {
        if let Some(num) = NhsNumber::with_check_digit(&format!("999{k:06}")) {
            if n == i {
                return num.to_string();
            }
            n += 1;
        }
        k += 1;
    }
}

pub struct TestApp {
    pub backend: Backend,
    pub base: String,
    pub db_url: String,
    running: Option<Running>,
    _dir: Option<tempfile::TempDir>,
    pg_db: Option<String>,
    nrl_url: Option<String>,
    pub http: reqwest::Client,
}

fn settings(db_url: &str) -> Settings {
    let database_url = DatabaseUrl::parse(db_url).expect("test url");
    Settings {
        audit_journal: Settings::default_audit_journal(&database_url),
        audit_committers: 2,
        database_url,
        listen: "127.0.0.1:0".parse().expect("addr"),
        base_url: None,
        workers: 2,
        pool_size: 8,
        read_cache_mb: 256,
        rules: epaccs_access::Rules::default(),
        limits: Limits {
            max_body_bytes: 256 * 1024,
            max_bundle_entries: 100,
            ..Limits::default()
        },
        notify: epaccs_notify::NotifyOptions {
            max_attempts: 4,
            base_delay: std::time::Duration::from_millis(50),
            timeout: std::time::Duration::from_secs(2),
            base_url: String::new(),
        },
        nrl_url: None,
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, None).await
    }

    /// Spawns with the record-locator feed pointed at `nrl_url`.
    pub async fn spawn_with(backend: Backend, nrl_url: Option<String>) -> TestApp {
        let (db_url, dir, pg_db) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("epaccs.db").display());
                (url, Some(dir), None)
            }
            Backend::Postgres => {
                let name = format!("epaccs_test_{}", uuid::Uuid::new_v4().simple());
                let admin = pg_admin_url();
                let mut c = diesel::PgConnection::establish(&format!("{admin}/postgres"))
                    .expect("PostgreSQL must be running for the postgres tests");
                c.batch_execute(&format!("CREATE DATABASE {name}"))
                    .expect("create database");
                (format!("{admin}/{name}"), None, Some(name))
            }
        };
        let mut s = settings(&db_url);
        s.nrl_url = nrl_url.clone();
        let running = epaccs::start(s).await.expect("server starts");
        TestApp {
            backend,
            base: running.base_url.clone(),
            db_url,
            running: Some(running),
            _dir: dir,
            pg_db,
            nrl_url,
            http: reqwest::Client::new(),
        }
    }

    /// Stops the server and starts a new one over the same database.
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        let mut s = settings(&self.db_url);
        s.nrl_url = self.nrl_url.clone();
        let running = epaccs::start(s).await.expect("server restarts");
        self.base = running.base_url.clone();
        self.running = Some(running);
    }

    /// Tries to start a second server over this app's database (it must be refused).
    pub async fn start_second(&self) -> anyhow::Result<epaccs::Running> {
        epaccs::start(settings(&self.db_url)).await
    }

    pub fn db(&self) -> DbArgs {
        DbArgs {
            database_url: self.db_url.clone(),
        }
    }

    /// Registers a client with the shared ES384 test key.
    pub fn register(&self, client_id: &str, org: &str, role: &str, scopes: &str) {
        self.register_key(client_id, org, role, scopes, es384());
    }

    pub fn register_key(
        &self,
        client_id: &str,
        org: &str,
        role: &str,
        scopes: &str,
        key: &ClientKey,
    ) {
        epaccs::cli::register(
            &self.db(),
            client_id,
            org,
            role,
            scopes,
            Some(key.jwks()),
            None,
        )
        .expect("register client");
    }

    pub fn token_url(&self) -> String {
        format!("{}/auth/token", self.base)
    }

    /// Posts a token request with the given assertion and scope.
    pub async fn token_request(&self, assertion: &str, scope: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(self.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion),
                ("scope", scope),
            ])
            .send()
            .await
            .expect("token request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A token for a registered client (ES384 key), with optional IUA claims.
    pub async fn token(&self, client_id: &str, scope: &str, iua: Option<Value>) -> String {
        let extra = iua.map(|i| json!({"extensions": {"ihe_iua": i}}));
        let k = es384();
        let a = keys::sign_assertion(
            &k.pem,
            k.alg,
            &k.kid,
            client_id,
            &self.token_url(),
            extra.as_ref(),
        )
        .expect("sign");
        let (status, body) = self.token_request(&a, scope).await;
        assert_eq!(status, 200, "token refused: {body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// Registers a client for `org` in `role` with all scopes and returns an API handle.
    pub async fn client(&self, client_id: &str, org: &str, role: &str) -> Api {
        self.register(client_id, org, role, "system/*.*");
        let token = self.token(client_id, "system/*.*", None).await;
        self.api(token)
    }

    /// Same client, new token carrying IUA claims (user, purpose, break-glass reason).
    pub async fn client_with(&self, client_id: &str, iua: Value) -> Api {
        let token = self.token(client_id, "system/*.*", Some(iua)).await;
        self.api(token)
    }

    pub fn api(&self, token: String) -> Api {
        Api {
            http: self.http.clone(),
            base: self.base.clone(),
            token: Some(token),
        }
    }

    pub fn anonymous(&self) -> Api {
        Api {
            http: self.http.clone(),
            base: self.base.clone(),
            token: None,
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The server task ends with the test's runtime; dropping the database cuts it off.
        drop(self.running.take());
        if let Some(name) = &self.pg_db {
            if let Ok(mut c) =
                diesel::PgConnection::establish(&format!("{}/postgres", pg_admin_url()))
            {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    }

    /// Asserts the body is an OperationOutcome and returns its first diagnostics.
    pub fn outcome(&self) -> String {
        assert_eq!(
            self.body["resourceType"], "OperationOutcome",
            "expected an OperationOutcome, got {}",
            self.text
        );
        self.body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {}", self.text))
            .to_string()
    }

    /// Resources of the bundle's entries with search mode `mode` (or all, for None).
    pub fn entries(&self, mode: Option<&str>) -> Vec<Value> {
        self.body["entry"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| mode.is_none_or(|m| e["search"]["mode"] == m))
            .map(|e| e["resource"].clone())
            .collect()
    }
}

#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, String)>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{}", self.base, path)
        };
        let mut req = self.http.request(method, url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some((ctype, b)) = body {
            req = req.header("content-type", ctype).body(b);
        }
        for (k, v) in headers {
            req = req.header(
                HeaderName::from_bytes(k.as_bytes()).expect("header"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, v: &Value) -> Resp {
        self.send(
            Method::POST,
            path,
            Some(("application/fhir+json", v.to_string())),
            &[],
        )
        .await
    }

    pub async fn post_with(&self, path: &str, v: &Value, headers: &[(&str, &str)]) -> Resp {
        self.send(
            Method::POST,
            path,
            Some(("application/fhir+json", v.to_string())),
            headers,
        )
        .await
    }

    pub async fn put(&self, path: &str, v: &Value, headers: &[(&str, &str)]) -> Resp {
        self.send(
            Method::PUT,
            path,
            Some(("application/fhir+json", v.to_string())),
            headers,
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, None, &[]).await
    }

    /// Creates a resource and asserts 201.
    pub async fn create(&self, v: &Value) -> Value {
        let ty = v["resourceType"].as_str().expect("resourceType");
        let r = self.post(&format!("/{ty}"), v).await;
        assert_eq!(r.status, 201, "create {ty} failed: {}", r.text);
        r.body
    }

    /// Creates a resource (asserting 201) and returns its id.
    pub async fn create_id(&self, v: &Value) -> String {
        self.create(v).await["id"].as_str().expect("id").to_string()
    }
}

/// A synthetic Patient registered with GP practice `gp_ods`.
pub fn patient(nhs: &str, family: &str, gp_ods: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
        "name": [{"family": family, "given": ["Alex"]}],
        "gender": "female",
        "birthDate": "1941-05-06",
        "address": [{"postalCode": "LS1 4AP"}],
        "generalPractitioner": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": gp_ods}}]
    })
}

/// A consent-to-share record with one of the SCCI1580 codes.
pub fn consent(patient_id: &str, code: &str, date: &str) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": code}]}],
        "patient": {"reference": format!("Patient/{patient_id}")},
        "dateTime": date,
        "performer": [{"reference": format!("Patient/{patient_id}")}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]}
    })
}

pub const GIVEN: &str = "882921000000109";
pub const WITHDRAWN: &str = "882941000000102";

/// An Observation about the patient with a SNOMED code.
pub fn observation(patient_id: &str, code: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": "2026-10-01T10:00:00Z",
        "performer": [{"display": "Dr Example, GMC 7654321"}]
    })
}

#[derive(diesel::QueryableByName)]
struct ContentRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    content: String,
}

impl TestApp {
    /// Every live resource of `ty` in the person's record, read straight from the database with
    /// no sharing filter (to count what the service holds, not what one caller may see).
    pub fn stored(&self, ty: &str, pid: &str) -> Vec<Value> {
        let url = DatabaseUrl::parse(&self.db_url).expect("url");
        let mut conn = url.connect(false).expect("connect");
        let mut sql = epaccs_store::db::Sql::new("SELECT content FROM resource WHERE res_type = ");
        sql.text(ty)
            .push(" AND patient_key = ")
            .text(pid)
            .push(" AND deleted = FALSE");
        epaccs_store::db::load::<ContentRow>(&mut conn, &sql)
            .expect("query")
            .into_iter()
            .map(|r| serde_json::from_str(&r.content).expect("json"))
            .collect()
    }

    /// The person's ReSPECT indexes that are `current`, counted without any sharing filter.
    pub fn current_respect_indexes(&self, pid: &str) -> Vec<Value> {
        self.stored("DocumentReference", pid)
            .into_iter()
            .filter(|d| {
                d["status"] == "current" && d["type"]["coding"][0]["code"] == "1382601000000107"
            })
            .collect()
    }
}
