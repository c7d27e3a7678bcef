//! Robustness and the audit trail: bad input is a 4xx OperationOutcome on both backends, limits
//! apply to what a request produces, the audit trail refuses tampering from inside the database,
//! the server contacts only allowed Subscription endpoints, and the token endpoint refuses
//! assertions from the future and tokens of a superseded registration.

use crate::both_backends;
use crate::helpers::*;
use epaccs_auth::keys;
use epaccs_fhir::registry::KINDS;
use epaccs_fhir::search::SearchParams;
use epaccs_store::db::{execute, load, Sql};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    bad_input_is_a_4xx_outcome,
    every_search_parameter_survives_hostile_values,
    hostile_bodies_are_4xx,
    json_patch_limits_apply_to_the_result,
    audit_record_lost_tampering_is_refused,
    subscription_endpoints_are_allow_listed,
    token_endpoint_refuses_future_assertions_and_superseded_registrations,
    conformance_and_validate_are_scoped_and_audited,
    over_long_requests_answer_outcomes,
    summary_unavailable_during_an_outage,
);

/// Asserts a 4xx with an OperationOutcome body, and returns its diagnostics.
fn refused(r: &Resp, status: u16, what: &str) -> String {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    r.outcome()
}

async fn bad_input_is_a_4xx_outcome(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let pid = gp.create_id(&patient(&nhs(1), "Nul", "A81001")).await;

    // Hundreds of OR values: a 400 naming the cap (SQLite's parser would refuse the SQL).
    let ids: Vec<String> = (0..500).map(|i| format!("id{i}")).collect();
    let r = gp.get(&format!("/Patient?_id={}", ids.join(","))).await;
    assert!(refused(&r, 400, "500 _id values").contains("at most 100"));
    // At the cap, it works on both backends, also as many parameters as are allowed at once.
    let mut at_cap = ids[..100].to_vec();
    at_cap[0] = pid.clone();
    let r = gp.get(&format!("/Patient?_id={}", at_cap.join(","))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.entries(Some("match")).len(), 1);
    let form: String = (0..epaccs_fhir::query::MAX_FILTERS)
        .map(|i| {
            let vals: Vec<String> = (0..100).map(|j| format!("n{i}x{j}")).collect();
            format!("family={}", vals.join(","))
        })
        .collect::<Vec<_>>()
        .join("&");
    let r = gp
        .send(
            Method::POST,
            "/Patient/_search",
            Some(("application/x-www-form-urlencoded", form)),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "the largest accepted search: {}", r.text);
    let r = gp
        .send(
            Method::POST,
            "/Observation/_search",
            Some((
                "application/x-www-form-urlencoded",
                format!("code={}", vec!["x"; 400].join(",")),
            )),
            &[],
        )
        .await;
    refused(&r, 400, "400 codes by POST");

    // A NUL character anywhere: path, search value, parameter name, JSON body, header.
    for path in [
        "/Patient/%00".to_string(),
        format!("/Patient/{pid}%00"),
        "/Patient?family=%00".to_string(),
        "/Patient?fam%00ily=x".to_string(),
        "/Observation?subject.family=a%00".to_string(),
        format!("/Patient/{pid}/_history/%00"),
        format!("/Patient/{pid}/$everything?_type=%00"),
        "/Patient/$emergency-summary?identifier=%00".to_string(),
        "/AuditEvent?patient=%00".to_string(),
    ] {
        let r = gp.get(&path).await;
        assert!(refused(&r, 400, &path).contains("NUL"), "{path}");
    }
    let mut p = patient(&nhs(2), "Bad\u{0}Name", "A81001");
    let r = gp.post("/Patient", &p).await;
    assert!(refused(&r, 400, "NUL in a body").contains("name[0].family"));
    p["name"][0]["family"] = json!("Fine");
    p["extension"] = json!([{"url": "http://example.org/x\u{0}", "valueString": "x"}]);
    refused(&gp.post("/Patient", &p).await, 400, "NUL in a body URL");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Patient"}, "resource": patient(&nhs(3), "In\u{0}Bundle", "A81001")}]});
    refused(&gp.post("/", &bundle).await, 400, "NUL in a bundle");
    let r = gp
        .post_with(
            "/Patient",
            &patient(&nhs(4), "Cond", "A81001"),
            &[("If-None-Exist", "identifier=%00")],
        )
        .await;
    refused(&r, 400, "NUL in If-None-Exist");
    let r = gp
        .send(
            Method::POST,
            "/Patient/_search",
            Some(("application/x-www-form-urlencoded", "family=a%00b".into())),
            &[],
        )
        .await;
    refused(&r, 400, "NUL in a POSTed search");
    let r = gp
        .send(
            Method::PATCH,
            &format!("/Patient/{pid}"),
            Some((
                "application/json-patch+json",
                json!([{"op": "add", "path": "/name/0/given/-", "value": "a\u{0}"}]).to_string(),
            )),
            &[],
        )
        .await;
    refused(&r, 400, "NUL by patch");
    // Nothing above was stored, and the service still answers.
    let r = gp.get(&format!("/Patient/{pid}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["meta"]["versionId"], "1");
}

/// Hostile values for a search parameter; each is sent with one of the modifiers below in turn.
fn hostile_values() -> Vec<String> {
    vec![
        "\u{0}".into(),
        "a\u{0}b".into(),
        "x".repeat(1500),
        ",".repeat(150),
        vec!["v"; 101].join(","),
        "a,b,,c".into(),
        "ge".into(),
        "eq".into(),
        "ap2024-13-45".into(),
        "sa9999-99-99T99:99:99Z".into(),
        "gt-1e400".into(),
        "le1e400|http://unitsofmeasure.org|mg".into(),
        "NaN".into(),
        "😀ñ\u{202e}ﬁ".into(),
        "|".into(),
        "||".into(),
        "http://x|".into(),
        "Patient/".into(),
        "/".into(),
        "%".into(),
        "\\".into(),
        "\\,".into(),
        "'; DROP TABLE resource; --".into(),
        "%25%".into(),
        "_".into(),
        "2024-01-01T10:00:00+99:99".into(),
        "Patient/a/_history/1".into(),
    ]
}

const MODIFIERS: &[&str] = &[
    "",
    ":missing",
    ":exact",
    ":contains",
    ":not",
    ":identifier",
    ":Patient",
    ":above",
    ":text",
    ".identifier",
    ":Patient.name",
    ".birthdate",
    ":Nope.x",
];

/// Every search parameter of every stored type, with hostile values and modifiers: never a 5xx.
async fn every_search_parameter_survives_hostile_values(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let pid = gp.create_id(&patient(&nhs(1), "Fuzz", "A81001")).await;
    gp.create(&observation(&pid, "450476008")).await;
    let params = SearchParams::shipped().expect("definitions");
    let values = hostile_values();
    let mut requests = Vec::new();
    let mut n = 0usize;
    for kind in KINDS.iter().filter(|k| k.client_writable) {
        let mut codes: Vec<String> = params
            .for_type(kind.name)
            .iter()
            .map(|p| p.code.clone())
            .collect();
        codes.extend(
            [
                "_id",
                "_lastUpdated",
                "_sort",
                "_include",
                "_count",
                "_elements",
            ]
            .map(String::from),
        );
        for code in codes {
            for v in &values {
                let modifier = MODIFIERS[n % MODIFIERS.len()];
                n += 1;
                let q: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair(&format!("{code}{modifier}"), v)
                    .finish();
                requests.push(format!("/{}?{q}", kind.name));
            }
        }
    }
    let total = requests.len();
    let failures: Vec<String> = futures::stream::iter(requests)
        .map(|path| {
            let gp = gp.clone();
            async move {
                let r = gp.get(&path).await;
                let ok = (r.status < 500)
                    && (r.status == 200 || r.body["resourceType"] == "OperationOutcome");
                (!ok).then(|| format!("{path} -> {} {}", r.status, r.text))
            }
        })
        .buffer_unordered(8)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} of {total} hostile searches failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // And the service is still itself.
    assert_eq!(gp.get(&format!("/Patient/{pid}")).await.status, 200);
}

/// Hostile body shapes for every writable type: never a 5xx, always an OperationOutcome.
async fn hostile_bodies_are_4xx(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let pid = gp.create_id(&patient(&nhs(1), "Body", "A81001")).await;
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    for kind in KINDS.iter().filter(|k| k.client_writable) {
        let ty = kind.name;
        let shapes: Vec<String> = vec![
            json!({"resourceType": ty, "id": "\u{0}"}).to_string(),
            json!({"resourceType": ty, "text": {"status": "generated", "div": "<div>\u{0}</div>"}}).to_string(),
            json!({"resourceType": ty, "subject": {"reference": format!("Patient/{pid}\u{0}")}}).to_string(),
            json!({"resourceType": ty, "meta": {"profile": ["\u{0}"]}}).to_string(),
            json!({"resourceType": ty, "extension": vec![json!({"url": "http://x", "valueString": "y"}); 2000]}).to_string(),
            json!({"resourceType": ty, "id": "x".repeat(5000)}).to_string(),
            json!({"resourceType": ty, "identifier": "not-an-array"}).to_string(),
            json!({"resourceType": ty, "contained": [{"resourceType": "Patient", "id": "\u{0}"}]}).to_string(),
            format!("{{\"resourceType\": \"{ty}\", \"x\": {deep}}}"),
            format!("{{\"resourceType\": \"{ty}\", \"\\u0000\": 1}}"),
            "[]".into(),
            "\"\\u0000\"".into(),
            "{\"resourceType\": 5}".into(),
            "{".into(),
        ];
        for body in shapes {
            for (method, path) in [
                (Method::POST, format!("/{ty}")),
                (Method::PUT, format!("/{ty}/some-id")),
                (Method::POST, format!("/{ty}/$validate")),
            ] {
                let r = gp
                    .send(
                        method.clone(),
                        &path,
                        Some(("application/fhir+json", body.clone())),
                        &[],
                    )
                    .await;
                let what = format!("{method} {path} {}", &body[..body.len().min(80)]);
                let text = &r.text[..r.text.len().min(300)];
                assert!(r.status < 500, "{what}: {} {text}", r.status);
                if r.status >= 400 {
                    assert_eq!(r.body["resourceType"], "OperationOutcome", "{what}: {text}");
                }
            }
        }
    }
}

async fn json_patch_limits_apply_to_the_result(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let pid = gp.create_id(&patient(&nhs(1), "Patched", "A81001")).await;
    let patch = |ops: Value| {
        let gp = gp.clone();
        let pid = pid.clone();
        async move {
            gp.send(
                Method::PATCH,
                &format!("/Patient/{pid}"),
                Some(("application/json-patch+json", ops.to_string())),
                &[],
            )
            .await
        }
    };
    // Each copy appends the names to themselves, doubling them: 40 would make terabytes.
    let mut ops = vec![json!({"op": "add", "path": "/name/0/given/-", "value": "x".repeat(200)})];
    for _ in 0..40 {
        ops.push(json!({"op": "copy", "from": "/name", "path": "/name/-"}));
    }
    let body = Value::Array(ops);
    assert!(body.to_string().len() < 4 * 1024);
    let r = patch(body).await;
    assert!(
        refused(&r, 422, "doubling copies").contains("larger than the limit"),
        "{}",
        r.text
    );
    let many: Vec<Value> = (0..101)
        .map(|_| json!({"op": "test", "path": "/id", "value": pid}))
        .collect();
    assert!(
        refused(&patch(Value::Array(many)).await, 422, "101 operations").contains("at most 100")
    );
    // Nothing was stored; a patch within the limits still works.
    let r = gp.get(&format!("/Patient/{pid}")).await;
    assert_eq!(r.body["meta"]["versionId"], "1");
    assert!(r.text.len() < 2048);
    let r = patch(json!([{"op": "replace", "path": "/gender", "value": "male"}])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["gender"], "male");
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn count(conn: &mut epaccs_store::DbConn, sql: &str) -> i64 {
    load::<Count>(conn, &Sql::new(sql)).expect("count")[0].n
}

/// Hazard "audit record lost": statements run directly on the database, as an operator or an
/// intruder with the service's credentials could, cannot replace, empty or change the trail, and
/// the API keeps answering it.
async fn audit_record_lost_tampering_is_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let po = app.client("privacy", "PO001", "privacy-officer").await;
    let pid = gp.create_id(&patient(&nhs(1), "Audited", "A81001")).await;
    assert_eq!(gp.get(&format!("/Patient/{pid}")).await.status, 200);
    let trail = po.get(&format!("/AuditEvent?patient={pid}")).await;
    assert_eq!(trail.status, 200, "{}", trail.text);
    let events = trail.entries(Some("match"));
    assert!(events.len() >= 2, "{}", trail.text);
    let id = events[0]["id"].as_str().expect("id").to_string();
    let before = po.get(&format!("/AuditEvent/{id}")).await;
    assert_eq!(before.status, 200);

    let mut conn = epaccs_store::DatabaseUrl::parse(&app.db_url)
        .expect("url")
        .connect(false)
        .expect("connect");
    let rows = count(&mut conn, "SELECT count(*) AS n FROM audit_event");
    let links = count(
        &mut conn,
        "SELECT (SELECT count(*) FROM audit_patient) + (SELECT count(*) FROM audit_patient_recent) AS n",
    );
    let forged = format!(
        "(id, recorded, client_id, user_id, org, role, purpose, outcome, break_glass, content) \
         VALUES ('{id}', 0, 'intruder', NULL, 'X1', 'gp', 'TREAT', '0', FALSE, 'forged')"
    );
    // (statement, a table it needs rows in: row triggers do not fire on an empty table)
    let mut tampering = vec![
        (
            format!("UPDATE audit_event SET content = 'forged' WHERE id = '{id}'"),
            "audit_event",
        ),
        (
            format!("DELETE FROM audit_event WHERE id = '{id}'"),
            "audit_event",
        ),
        ("DELETE FROM audit_patient".to_string(), "audit_patient"),
        (
            "UPDATE audit_patient SET patient_key = 'someone-else'".to_string(),
            "audit_patient",
        ),
        (
            "UPDATE audit_patient_recent SET patient_key = 'someone-else'".to_string(),
            "audit_patient_recent",
        ),
    ];
    match b {
        Backend::Sqlite => tampering.extend([
            (format!("INSERT OR REPLACE INTO audit_event {forged}"), "audit_event"),
            (format!("REPLACE INTO audit_event {forged}"), "audit_event"),
            (format!("INSERT INTO audit_event {forged} ON CONFLICT (id) DO UPDATE SET content = 'forged'"), "audit_event"),
            (
                "INSERT OR REPLACE INTO audit_patient_recent (seq, audit_id, patient_key, recorded) \
                 SELECT seq, 'forged', 'forged', 0 FROM audit_patient_recent"
                    .to_string(),
                "audit_patient_recent",
            ),
        ]),
        Backend::Postgres => tampering.extend([
            ("TRUNCATE audit_event".to_string(), "audit_event"),
            ("TRUNCATE audit_patient, audit_patient_recent".to_string(), "audit_event"),
            ("TRUNCATE audit_patient_recent".to_string(), "audit_event"),
            ("TRUNCATE audit_event, audit_patient, audit_patient_recent CASCADE".to_string(), "audit_event"),
            (format!("INSERT INTO audit_event {forged} ON CONFLICT (id) DO UPDATE SET content = 'forged'"), "audit_event"),
        ]),
    }
    let mut tried = 0;
    for (sql, needs) in &tampering {
        if count(&mut conn, &format!("SELECT count(*) AS n FROM {needs}")) == 0 {
            continue;
        }
        tried += 1;
        let r = execute(&mut conn, &Sql::new(sql));
        assert!(r.is_err(), "the database accepted: {sql}");
    }
    assert!(tried >= 5, "too few tamper attempts could be made");
    // Reads' records may still be arriving (the journal or the committers): nothing fewer.
    assert!(count(&mut conn, "SELECT count(*) AS n FROM audit_event") >= rows);
    assert!(
        count(
            &mut conn,
            "SELECT (SELECT count(*) FROM audit_patient) + (SELECT count(*) FROM audit_patient_recent) AS n"
        ) >= links
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM audit_event WHERE content = 'forged' OR client_id = 'intruder'"
        ),
        0
    );
    // The record reads as it did, and the trail still answers.
    let after = po.get(&format!("/AuditEvent/{id}")).await;
    assert_eq!(after.status, 200, "{}", after.text);
    assert_eq!(after.body, before.body);

    // Appending is allowed, so a row the service never wrote can be added: it must not take the
    // trail down (a 500 would hide every other record from the privacy officer).
    execute(
        &mut conn,
        &Sql::new(&format!(
            "INSERT INTO audit_event {}",
            forged.replace(&format!("'{id}'"), "'appended-garbage'")
        )),
    )
    .expect("append");
    let all = po.get("/AuditEvent?_count=1000").await;
    assert_eq!(all.status, 200, "{}", all.text);
    let damaged = all
        .entries(Some("match"))
        .into_iter()
        .find(|e| e["id"] == "appended-garbage")
        .expect("the damaged record is listed");
    assert_eq!(damaged["outcome"], "8");
    assert!(damaged["outcomeDesc"]
        .as_str()
        .unwrap_or_default()
        .contains("damaged"));
    assert_eq!(po.get(&format!("/AuditEvent/{id}")).await.status, 200);
}

fn rest_hook(endpoint: &str) -> Value {
    json!({"resourceType": "Subscription", "status": "requested", "reason": "keep the hospice EPR in step",
        "criteria": "Observation?code=450476008", "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}})
}

async fn subscription_endpoints_are_allow_listed(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    // The default allows this machine only (tests and the demo); production lists its hosts.
    for (endpoint, rule) in [
        (
            "https://hospice.example.org/hook",
            "EPACCS_SUBSCRIPTION_HOSTS",
        ),
        ("http://hospice.example.org/hook", "https"),
        ("http://169.254.169.254/latest/meta-data", "https"),
        ("https://10.0.0.5:5432/", "EPACCS_SUBSCRIPTION_HOSTS"),
        ("https://user:secret@hospice.example.org/", "credentials"),
        ("file:///etc/passwd", "http(s)"),
        ("gopher://127.0.0.1/", "http(s)"),
    ] {
        let r = gp.post("/Subscription", &rest_hook(endpoint)).await;
        let msg = refused(&r, 422, endpoint);
        assert!(msg.contains(rule), "{endpoint}: {msg}");
        assert_eq!(
            r.body["issue"][0]["expression"][0], "Subscription.channel.endpoint",
            "{}",
            r.text
        );
    }
    for endpoint in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
    ] {
        let r = gp.post("/Subscription", &rest_hook(endpoint)).await;
        assert_eq!(r.status, 201, "{endpoint}: {}", r.text);
    }
    // An update is a write too: it cannot re-point an existing Subscription.
    let sub = gp.create(&rest_hook("http://127.0.0.1:9/hook")).await;
    let mut moved = sub.clone();
    moved["channel"]["endpoint"] = json!("https://attacker.example/");
    let id = sub["id"].as_str().expect("id");
    refused(
        &gp.put(&format!("/Subscription/{id}"), &moved, &[]).await,
        422,
        "re-pointed",
    );
}

fn assertion(app: &TestApp, client: &str, extra: Value) -> String {
    let k = es384();
    keys::sign_assertion(
        &k.pem,
        k.alg,
        &k.kid,
        client,
        &app.token_url(),
        Some(&extra),
    )
    .expect("sign")
}

async fn token_endpoint_refuses_future_assertions_and_superseded_registrations(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("timely", "A81001", "gp", "system/*.*");
    let now = chrono::Utc::now().timestamp();
    // RFC 7523 §3.2 / SMART: a failed client assertion check is invalid_client (401).
    for (claim, at) in [("iat", now + 600), ("nbf", now + 600), ("iat", now + 60)] {
        let (status, body) = app
            .token_request(
                &assertion(&app, "timely", json!({claim: at})),
                "system/*.read",
            )
            .await;
        assert_eq!(status, 401, "{claim} {at}: {body}");
        assert_eq!(body["error"], "invalid_client", "{body}");
        assert!(body["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains(claim));
    }
    // Within the stated skew (5 s), and in the past, an assertion is fine.
    for extra in [
        json!({"iat": now + 2, "nbf": now + 2}),
        json!({"nbf": now - 30}),
    ] {
        let (status, body) = app
            .token_request(&assertion(&app, "timely", extra), "system/*.read")
            .await;
        assert_eq!(status, 200, "{body}");
    }

    // Re-registration with another role bites as revocation does: the old token is refused.
    let gp = app.client("rereg", "A81001", "gp").await;
    let pid = gp
        .create_id(&patient(&nhs(1), "Registered", "A81001"))
        .await;
    assert_eq!(gp.get(&format!("/Patient/{pid}")).await.status, 200);
    app.register("rereg", "A81001", "care-home", "system/*.read");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = gp.get(&format!("/Patient/{pid}")).await;
        if r.status == 401 {
            assert!(r.outcome().contains("registered again"), "{}", r.text);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            std::time::Instant::now() < deadline,
            "the token of the old registration still works"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A new token carries the new registration: read-only now.
    let home = app.api(app.token("rereg", "system/*.read", None).await);
    let r = home
        .post("/Patient", &patient(&nhs(2), "Nope", "A81001"))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
}

async fn conformance_and_validate_are_scoped_and_audited(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("narrow", "A81001", "gp", "system/Patient.*");
    let narrow = app.api(app.token("narrow", "system/Patient.*", None).await);
    let wide = app.client("gp-system", "A81001", "gp").await;
    let po = app.client("privacy", "PO001", "privacy-officer").await;
    let sd = "/StructureDefinition?url=https://fhir.epaccs.nhs.example/StructureDefinition/EPaCCS-CPRDecision";
    let r = wide.get(sd).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sd_id = r.entries(Some("match"))[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        wide.get(&format!("/StructureDefinition/{sd_id}"))
            .await
            .status,
        200
    );
    for path in [
        sd.to_string(),
        format!("/StructureDefinition/{sd_id}"),
        "/ValueSet".into(),
    ] {
        let r = narrow.get(&path).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text);
        assert!(r
            .header("www-authenticate")
            .unwrap_or_default()
            .contains("insufficient_scope"));
    }
    let obs = observation("p1", "450476008");
    let r = narrow.post("/Observation/$validate", &obs).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = wide.post("/Observation/$validate", &obs).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // No token at all: 401, as everywhere.
    assert_eq!(
        app.anonymous()
            .post("/Observation/$validate", &obs)
            .await
            .status,
        401
    );
    assert_eq!(app.anonymous().get("/ValueSet").await.status, 401);
    // Each of those calls with a token is on the record, refused or not.
    let trail = po.get("/AuditEvent?agent=narrow&_count=100").await;
    assert_eq!(trail.status, 200, "{}", trail.text);
    let texts: Vec<String> = trail
        .entries(Some("match"))
        .iter()
        .map(Value::to_string)
        .collect();
    for needle in ["StructureDefinition", "ValueSet", "$validate"] {
        assert!(
            texts.iter().any(|t| t.contains(needle)),
            "no audit record of {needle} by the narrow client: {texts:?}"
        );
    }
    let trail = po.get("/AuditEvent?agent=gp-system&_count=100").await;
    assert!(trail.text.contains("$validate"), "{}", trail.text);

    // Writes to the trail: who you are first (401), then 405 (and a known caller's attempt is
    // itself audited).
    let ae = json!({"resourceType": "AuditEvent"});
    assert_eq!(app.anonymous().post("/AuditEvent", &ae).await.status, 401);
    assert_eq!(app.anonymous().delete("/AuditEvent/x").await.status, 401);
    assert_eq!(
        app.anonymous().put("/AuditEvent/x", &ae, &[]).await.status,
        401
    );
    refused(
        &po.post("/AuditEvent", &ae).await,
        405,
        "po writes the trail",
    );
    refused(
        &wide.delete("/AuditEvent/x").await,
        405,
        "gp deletes from the trail",
    );
    let trail = po.get("/AuditEvent?agent=gp-system&_count=100").await;
    assert!(trail.text.contains("/AuditEvent/x"), "{}", trail.text);
}

async fn over_long_requests_answer_outcomes(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    // Over-long URL: 414 with an OperationOutcome; the same search by POST works.
    let long = format!("/Patient?family={}", "a".repeat(9000));
    let r = gp.get(&long).await;
    assert!(refused(&r, 414, "long URL").contains("_search"));
    let r = app.anonymous().get(&long).await;
    refused(&r, 414, "long URL without a token");
    // Over-long headers: 431 with an OperationOutcome.
    let big = "x".repeat(20 * 1024);
    let r = gp
        .send(
            Method::GET,
            "/Patient",
            None,
            &[("x-one", &big), ("x-two", &big)],
        )
        .await;
    refused(&r, 431, "long headers");
    // Requests the HTTP layer refuses before the application sees them: still an outcome.
    let token = gp.token.clone().expect("token");
    for (head, status) in [
        (
            format!("GET /Patient?family={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)),
            414,
        ),
        (
            format!("GET /Patient HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-Note: a\0b\r\n\r\n"),
            400,
        ),
        (
            format!("GET /Patient HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(140_000)),
            431,
        ),
        ("GET /Patient HTTP/1.1\r\nHost x\r\n\r\n".to_string(), 400),
    ] {
        let (got, body) = raw_request(&app.base, head.as_bytes()).await;
        assert_eq!(got, status, "{}: {body}", &head[..head.len().min(60)]);
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(v["resourceType"], "OperationOutcome", "{body}");
    }
    // Ordinary traffic on the same kind of connection is untouched, keep-alive included.
    let (got, _) = raw_request(
        &app.base,
        format!("GET /Patient?_count=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(got, 200);
    // The token endpoint stays OAuth JSON, and a 503 there carries Retry-After (see
    // `smart::token`); a malformed token request is a 400 with an error code, never empty.
    let r = app
        .http
        .post(app.token_url())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token");
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "invalid_request");
}

/// Sends raw bytes on a new connection and reads the response until the server closes it.
async fn raw_request(base: &str, bytes: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may refuse before reading everything; what it answered is still readable.
    let _ = conn.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut out),
    )
    .await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Hazard "summary unavailable during an outage": while the database is unavailable the crew's
/// emergency summary and the token endpoint answer at once with 503 and `Retry-After` (an
/// OperationOutcome, and OAuth JSON), never a 500 or an empty body, and recover with the
/// database. PostgreSQL: connections refused and cut. SQLite (one file, no network): another
/// process holds the write lock, so reads and their audit go on while writes, such as the token
/// endpoint's replay record, wait for SQLite's busy timeout (10 s) before their 503.
async fn summary_unavailable_during_an_outage(b: Backend) {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let number = nhs(1);
    let pid = gp.create_id(&patient(&number, "Outage", "A81001")).await;
    gp.create(&consent(&pid, GIVEN, "2026-11-01")).await;
    app.register("ambulance", "RX801", "ambulance", "system/*.read");
    let crew = app.api(app.token("ambulance", "system/*.read", None).await);
    let summary = format!(
        "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{number}"
    );
    let r = crew.get(&summary).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let unavailable = |status: u16, retry: Option<String>, what: &str| {
        assert_eq!(status, 503, "{what}");
        let secs: u64 = retry.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!((1..=60).contains(&secs), "{what}: Retry-After {retry:?}");
    };
    let started = std::time::Instant::now();
    match b {
        Backend::Postgres => {
            let name = app.db_url.rsplit('/').next().expect("db name").to_string();
            let mut admin =
                diesel::PgConnection::establish(&format!("{}/postgres", pg_admin_url()))
                    .expect("admin");
            admin
                .batch_execute(&format!(
                    "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
                     SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
                ))
                .expect("cut off");
            // Past the token's registration re-check, so every part needs the database.
            tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
            let r = crew.get(&summary).await;
            unavailable(r.status, r.header("retry-after"), &r.text);
            r.outcome();
            let resp = app
                .http
                .post(app.token_url())
                .form(&[
                    ("grant_type", "client_credentials"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &assertion(&app, "ambulance", json!({}))),
                    ("scope", "system/*.read"),
                ])
                .send()
                .await
                .expect("token");
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|h| h.to_str().ok())
                .map(str::to_string);
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("OAuth JSON");
            unavailable(status, retry, &body.to_string());
            assert_eq!(body["error"], "temporarily_unavailable");
            admin
                .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
                .expect("back");
        }
        Backend::Sqlite => {
            let path = app.db_url.trim_start_matches("sqlite://").to_string();
            let mut other = diesel::SqliteConnection::establish(&path).expect("open");
            other.batch_execute("BEGIN IMMEDIATE").expect("write lock");
            // Reads and their audit records (the journal) do not need the write lock: the
            // crew's summary goes on. (Writes, such as the token endpoint's replay record, wait
            // out SQLite's busy timeout, 10 s a statement, and then answer 503 with Retry-After;
            // the PostgreSQL run checks that answer.)
            for _ in 0..3 {
                let r = crew.get(&summary).await;
                assert_eq!(r.status, 200, "{}", r.text);
            }
            other.batch_execute("ROLLBACK").expect("release");
        }
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // Back: the summary and tokens work again without a restart.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let a = assertion(&app, "ambulance", json!({}));
        let (status, body) = app.token_request(&a, "system/*.read").await;
        let r = crew.get(&summary).await;
        if status == 200 && r.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery: token {status} {body}, summary {} {}",
            r.status,
            r.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
