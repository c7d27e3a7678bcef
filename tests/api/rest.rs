//! The record store's REST interactions and their errors (FHIR R4 RESTful API).

use crate::both_backends;
use crate::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    create_read_update_vread_delete_history,
    validation_and_error_outcomes,
    conditional_create_and_update,
    concurrent_if_match_exactly_one_wins,
    nothing_lost_across_restart,
    reads_never_go_back_and_one_instance_per_database,
    json_patch_and_prefer,
    one_record_per_person_and_patient_links,
    capability_statement_reflects_the_server,
    fhir_sdk_client_round_trip,
);

async fn create_read_update_vread_delete_history(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let r = gp
        .post("/Patient", &patient(&nhs(1), "Ashworth", "A81001"))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.id();
    assert_eq!(r.header("etag").as_deref(), Some("W/\"1\""));
    assert_eq!(
        r.header("location"),
        Some(format!("{}/Patient/{id}/_history/1", app.base))
    );
    assert!(r.header("last-modified").is_some());
    assert_eq!(r.body["meta"]["versionId"], "1");
    // The stored JSON is what was sent, plus id and meta, in the same order.
    assert_eq!(r.body["name"][0]["family"], "Ashworth");

    let read = gp.get(&format!("/Patient/{id}")).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body, r.body);

    let mut changed = read.body.clone();
    changed["name"][0]["family"] = json!("Ashworth-Hale");
    let up = gp
        .put(
            &format!("/Patient/{id}"),
            &changed,
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_eq!(up.status, 200, "{}", up.text);
    assert_eq!(up.header("etag").as_deref(), Some("W/\"2\""));
    assert_eq!(up.body["meta"]["versionId"], "2");

    let v1 = gp.get(&format!("/Patient/{id}/_history/1")).await;
    assert_eq!(v1.status, 200);
    assert_eq!(v1.body["name"][0]["family"], "Ashworth");
    let v2 = gp.get(&format!("/Patient/{id}/_history/2")).await;
    assert_eq!(v2.body["name"][0]["family"], "Ashworth-Hale");
    assert_eq!(
        gp.get(&format!("/Patient/{id}/_history/9")).await.status,
        404
    );

    let del = gp.delete(&format!("/Patient/{id}")).await;
    assert_eq!(del.status, 200, "{}", del.text);
    let gone = gp.get(&format!("/Patient/{id}")).await;
    assert_eq!(gone.status, 410);
    gone.outcome();
    // Deleting again is idempotent.
    assert_eq!(gp.delete(&format!("/Patient/{id}")).await.status, 200);
    // Older versions remain readable.
    assert_eq!(
        gp.get(&format!("/Patient/{id}/_history/2")).await.status,
        200
    );

    let hist = gp.get(&format!("/Patient/{id}/_history")).await;
    assert_eq!(hist.status, 200);
    assert_eq!(hist.body["type"], "history");
    let entries = hist.body["entry"].as_array().expect("entries").clone();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[2]["request"]["method"], "POST");

    // Type history with _count paging and _since.
    for i in 0..3 {
        gp.create(&patient(&nhs(10 + i), "Paging", "A81001")).await;
    }
    let page1 = gp.get("/Patient/_history?_count=2").await;
    assert_eq!(page1.body["entry"].as_array().map(Vec::len), Some(2));
    let next = page1.body["link"]
        .as_array()
        .expect("links")
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("next link")["url"]
        .as_str()
        .expect("url")
        .to_string();
    let page2 = gp.get(&next).await;
    assert_eq!(page2.status, 200, "{}", page2.text);
    let ids1: Vec<Value> = page1.body["entry"]
        .as_array()
        .expect("e")
        .iter()
        .map(|e| e["response"]["etag"].clone())
        .collect();
    assert!(!ids1.is_empty());
    let since = gp.get("/Patient/_history?_since=2999-01-01").await;
    assert_eq!(since.body["entry"].as_array().map(Vec::len), Some(0));
}

async fn validation_and_error_outcomes(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;

    let r = gp
        .send(
            Method::POST,
            "/Patient",
            Some(("application/fhir+json", "{not json".into())),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    r.outcome();

    let mut p = patient(&nhs(1), "Smith", "A81001");
    p["favouriteColour"] = json!("blue");
    p["name"][0]["nickname"] = json!("Al");
    let r = gp.post("/Patient", &p).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let exprs: Vec<String> = r.body["issue"]
        .as_array()
        .expect("issues")
        .iter()
        .filter_map(|i| i["expression"][0].as_str().map(str::to_string))
        .collect();
    assert!(
        exprs.contains(&"Patient.favouriteColour".to_string()),
        "{exprs:?}"
    );
    assert!(
        exprs.contains(&"Patient.name[0].nickname".to_string()),
        "{exprs:?}"
    );

    let bad_nhs = patient("9990000019", "Smith", "A81001");
    let r = gp.post("/Patient", &bad_nhs).await;
    assert_eq!(r.status, 422);
    assert!(r.outcome().contains("Modulus 11"), "{}", r.text);

    let r = gp
        .post(
            "/Patient",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
        )
        .await;
    assert_eq!(r.status, 400);
    r.outcome();

    let r = gp
        .post(
            "/Patient",
            &json!({"resourceType": "Patient", "gender": "robot"}),
        )
        .await;
    assert_eq!(r.status, 422);

    let created = gp.create(&patient(&nhs(2), "Jones", "A81001")).await;
    let id = created["id"].as_str().expect("id");
    let mut wrong = created.clone();
    wrong["id"] = json!("another-id");
    let r = gp.put(&format!("/Patient/{id}"), &wrong, &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.outcome().contains("does not match"));

    let r = gp
        .put(
            &format!("/Patient/{id}"),
            &created,
            &[("if-match", "W/\"7\"")],
        )
        .await;
    assert_eq!(r.status, 412);
    r.outcome();

    let r = gp.get("/Spaceship/1").await;
    assert_eq!(r.status, 404);
    r.outcome();
    let r = gp.get("/no/such/route/here/at/all").await;
    assert_eq!(r.status, 404);
    r.outcome();
    let r = gp.send(Method::DELETE, "/metadata", None, &[]).await;
    assert_eq!(r.status, 405);
    r.outcome();
    let r = gp.send(Method::PATCH, "/Patient", None, &[]).await;
    assert_eq!(r.status, 405);
    r.outcome();

    let r = gp
        .send(
            Method::POST,
            "/Patient",
            Some(("text/plain", "hello".into())),
            &[],
        )
        .await;
    assert_eq!(r.status, 415);
    r.outcome();

    let mut big = patient(&nhs(3), "Big", "A81001");
    big["name"][0]["text"] = json!("x".repeat(300 * 1024));
    let r = gp.post("/Patient", &big).await;
    assert_eq!(r.status, 413);
    r.outcome();

    let r = gp.get("/Patient/does-not-exist").await;
    assert_eq!(r.status, 404);
    r.outcome();

    // Observation about nobody, or about a person who does not exist.
    let r = gp
        .post(
            "/Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
        )
        .await;
    assert_eq!(r.status, 422);
    let r = gp
        .post("/Observation", &observation("nobody", "450476008"))
        .await;
    assert_eq!(r.status, 422);
    assert!(r.outcome().contains("does not exist"));
}

async fn conditional_create_and_update(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let n = nhs(5);
    let cond = format!("identifier=https://fhir.nhs.uk/Id/nhs-number|{n}");
    let first = gp
        .post_with(
            "/Patient",
            &patient(&n, "Khan", "A81001"),
            &[("if-none-exist", &cond)],
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    let again = gp
        .post_with(
            "/Patient",
            &patient(&n, "Khan", "A81001"),
            &[("if-none-exist", &cond)],
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.id(), first.id());
    let search = gp.get(&format!("/Patient?{cond}")).await;
    assert_eq!(search.entries(Some("match")).len(), 1);

    // Conditional update by identifier: updates the one match.
    let mut p = patient(&n, "Khan-Ali", "A81001");
    p["id"] = json!(first.id());
    let up = gp.put(&format!("/Patient?{cond}"), &p, &[]).await;
    assert_eq!(up.status, 200, "{}", up.text);
    assert_eq!(up.body["meta"]["versionId"], "2");

    // Conditional update with no match creates.
    let n2 = nhs(6);
    let up = gp
        .put(
            &format!("/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{n2}"),
            &patient(&n2, "New", "A81001"),
            &[],
        )
        .await;
    assert_eq!(up.status, 201, "{}", up.text);

    // Update of an unknown id with a client-chosen id creates it.
    let mut q = patient(&nhs(7), "Chosen", "A81001");
    q["id"] = json!("client-chosen-1");
    let r = gp.put("/Patient/client-chosen-1", &q, &[]).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(gp.get("/Patient/client-chosen-1").await.status, 200);

    // Malformed criteria are a 400.
    let r = gp
        .post_with(
            "/Patient",
            &patient(&nhs(8), "X", "A81001"),
            &[("if-none-exist", "birthdate=notadate")],
        )
        .await;
    assert_eq!(r.status, 400);
}

async fn concurrent_if_match_exactly_one_wins(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    for round in 0..5 {
        let created = gp
            .create(&patient(&nhs(20 + round), "Race", "A81001"))
            .await;
        let id = created["id"].as_str().expect("id").to_string();
        let mut a = created.clone();
        a["name"][0]["given"] = json!(["From GP"]);
        let mut h = created.clone();
        h["name"][0]["given"] = json!(["From hospice"]);
        let path = format!("/Patient/{id}");
        let (ra, rh) = tokio::join!(
            gp.put(&path, &a, &[("if-match", "W/\"1\"")]),
            gp.put(&path, &h, &[("if-match", "W/\"1\"")])
        );
        let mut statuses = vec![ra.status, rh.status];
        statuses.sort();
        assert_eq!(
            statuses,
            vec![200, 412],
            "round {round}: {} / {}",
            ra.text,
            rh.text
        );
        let now = gp.get(&path).await;
        assert_eq!(now.body["meta"]["versionId"], "2");
    }
}

async fn nothing_lost_across_restart(b: Backend) {
    let mut app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let mut ids = Vec::new();
    let writes = (0..20).map(|i| {
        let gp = gp.clone();
        async move { gp.create(&patient(&nhs(40 + i), "Durable", "A81001")).await }
    });
    for r in futures::future::join_all(writes).await {
        ids.push(r["id"].as_str().expect("id").to_string());
    }
    app.restart().await;
    let token = app.token("gp-system", "system/*.*", None).await;
    let gp = app.api(token);
    for id in &ids {
        let r = gp.get(&format!("/Patient/{id}")).await;
        assert_eq!(r.status, 200, "Patient/{id} lost across restart");
    }
    let all = gp
        .get("/Patient?family=durable&_total=accurate&_count=100")
        .await;
    assert_eq!(all.body["total"], 20);
}

/// Reads are served from memory when they can be; they must never show an older version than
/// one already acknowledged, to the writer or to concurrent readers. A second instance over the
/// same database (which would not empty this one's cache) is refused.
async fn reads_never_go_back_and_one_instance_per_database(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let created = gp.create(&patient(&nhs(7), "Current", "A81001")).await;
    let id = created["id"].as_str().expect("id").to_string();
    let path = format!("/Patient/{id}");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (gp, path, done) = (gp.clone(), path.clone(), done.clone());
            tokio::spawn(async move {
                let mut last = 0u64;
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = gp.get(&path).await;
                    assert_eq!(r.status, 200);
                    let v: u64 = r.body["meta"]["versionId"]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .expect("versionId");
                    assert!(v >= last, "a read went back from version {last} to {v}");
                    last = v;
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut body = created.clone();
    for v in 2..=16u64 {
        body["name"][0]["given"] = json!([format!("Version{v}")]);
        let put = gp.put(&path, &body, &[]).await;
        assert_eq!(put.status, 200, "{}", put.text);
        let read = gp.get(&path).await;
        assert_eq!(read.body["meta"]["versionId"], v.to_string());
        assert_eq!(read.body["name"][0]["given"][0], format!("Version{v}"));
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for r in readers {
        assert!(r.await.expect("reader") > 0);
    }
    let second = app.start_second().await;
    let err = second.err().expect("a second instance must be refused");
    assert!(
        format!("{err:#}").contains("another epaccs instance"),
        "unexpected refusal: {err:#}"
    );
    // The first instance still serves.
    assert_eq!(gp.get(&path).await.status, 200);
}

async fn json_patch_and_prefer(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let created = gp.create(&patient(&nhs(1), "Patchy", "A81001")).await;
    let id = created["id"].as_str().expect("id");
    let patch = json!([{"op": "replace", "path": "/gender", "value": "male"}, {"op": "add", "path": "/active", "value": true}]).to_string();
    let r = gp
        .send(
            Method::PATCH,
            &format!("/Patient/{id}"),
            Some(("application/json-patch+json", patch.clone())),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["gender"], "male");
    assert_eq!(r.body["active"], true);
    assert_eq!(r.body["meta"]["versionId"], "2");
    // A stale If-Match on PATCH is refused.
    let r = gp
        .send(
            Method::PATCH,
            &format!("/Patient/{id}"),
            Some(("application/json-patch+json", patch)),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_eq!(r.status, 412);
    // A patch that breaks the resource is refused.
    let bad = json!([{"op": "add", "path": "/shoeSize", "value": 9}]).to_string();
    let r = gp
        .send(
            Method::PATCH,
            &format!("/Patient/{id}"),
            Some(("application/json-patch+json", bad)),
            &[],
        )
        .await;
    assert_eq!(r.status, 422);

    let r = gp
        .post_with(
            "/Patient",
            &patient(&nhs(2), "Minimal", "A81001"),
            &[("prefer", "return=minimal")],
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(r.text.is_empty());
    assert!(r.header("location").is_some());
    let r = gp
        .post_with(
            "/Patient",
            &patient(&nhs(3), "Outcome", "A81001"),
            &[("prefer", "return=OperationOutcome")],
        )
        .await;
    assert_eq!(r.status, 201);
    r.outcome();
}

async fn one_record_per_person_and_patient_links(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let n = nhs(1);
    let p = gp.create(&patient(&n, "Only", "A81001")).await;
    let r = gp
        .post("/Patient", &patient(&n, "Duplicate", "A81001"))
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    // Data can name its patient by NHS number; the store resolves it.
    let mut o = observation("x", "450476008");
    o["subject"] =
        json!({"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": n}});
    let r = gp.post("/Observation", &o).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let pid = p["id"].as_str().expect("id");
    let found = gp.get(&format!("/Observation?patient=Patient/{pid}")).await;
    assert_eq!(found.entries(Some("match")).len(), 1);
    // Moving a resource to another person's record is refused.
    let other = gp.create(&patient(&nhs(2), "Other", "A81001")).await;
    let mut moved = r.body.clone();
    moved["subject"] =
        json!({"reference": format!("Patient/{}", other["id"].as_str().expect("id"))});
    let oid = r.body["id"].as_str().expect("id");
    let r = gp.put(&format!("/Observation/{oid}"), &moved, &[]).await;
    assert_eq!(r.status, 422, "{}", r.text);
}

async fn capability_statement_reflects_the_server(b: Backend) {
    let app = TestApp::spawn(b).await;
    let r = app.anonymous().get("/metadata").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["resourceType"], "CapabilityStatement");
    assert_eq!(r.body["fhirVersion"], "4.0.1");
    let resources = r.body["rest"][0]["resource"].as_array().expect("resources");
    let param_names = |ty: &str| -> Vec<&str> {
        resources
            .iter()
            .find(|x| x["type"] == ty)
            .unwrap_or_else(|| panic!("{ty} missing"))["searchParam"]
            .as_array()
            .expect("params")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect()
    };
    let names = param_names("Patient");
    for expected in [
        "identifier",
        "family",
        "birthdate",
        "address-postalcode",
        "general-practitioner",
        "deceased",
        "_id",
    ] {
        assert!(names.contains(&expected), "{expected} missing");
    }
    // The audit trail lists the parameters its own search takes, and only those.
    let audit_names = param_names("AuditEvent");
    for expected in ["patient", "agent", "date", "subtype", "outcome", "_id"] {
        assert!(
            audit_names.contains(&expected),
            "AuditEvent {expected} missing"
        );
    }
    assert!(!audit_names.contains(&"_lastUpdated"));
    for t in [
        "Consent",
        "CarePlan",
        "Composition",
        "DocumentReference",
        "Provenance",
        "QuestionnaireResponse",
    ] {
        assert!(resources.iter().any(|x| x["type"] == t), "{t} missing");
    }
    assert!(
        r.body["rest"][0]["security"]["extension"][0]["extension"][0]["valueUri"]
            .as_str()
            .is_some_and(|u| u.ends_with("/auth/token"))
    );
}

async fn fhir_sdk_client_round_trip(b: Backend) {
    use fhir_sdk::client::{Client, RequestSettings};
    use fhir_sdk::r4b::resources::Patient;
    use fhir_sdk::r4b::types::{HumanName, Identifier};
    use fhir_sdk::version::FhirR4B;
    let app = TestApp::spawn(b).await;
    app.register("sdk-client", "A81001", "gp", "system/*.*");
    let token = app.token("sdk-client", "system/*.*", None).await;
    let settings = RequestSettings::default().header(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    let client: Client<FhirR4B> = Client::builder()
        .base_url(format!("{}/", app.base).parse().expect("url"))
        .request_settings(settings)
        .allow_version_mismatch()
        .build()
        .expect("client");
    let n = nhs(3);
    let p = Patient::builder()
        .identifier(vec![Some(
            Identifier::builder()
                .system("https://fhir.nhs.uk/Id/nhs-number".to_string())
                .value(n.clone())
                .build()
                .expect("identifier"),
        )])
        .name(vec![Some(
            HumanName::builder()
                .family("Sdk".to_string())
                .build()
                .expect("name"),
        )])
        .build()
        .expect("patient");
    let (id, version) = client.create(&p).await.expect("create through fhir-sdk");
    assert_eq!(version.as_deref(), Some("1"));
    let read: Patient = client.read(&id).await.expect("read").expect("exists");
    assert_eq!(
        read.name[0]
            .as_ref()
            .and_then(|n| n.family.clone())
            .as_deref(),
        Some("Sdk")
    );
    assert_eq!(
        read.identifier[0].as_ref().and_then(|i| i.value.clone()),
        Some(n)
    );
    assert!(client
        .read::<Patient>("missing")
        .await
        .expect("read")
        .is_none());
}

/// The database goes away (connections refused, existing ones cut): 503 with Retry-After as an
/// OperationOutcome, then recovery once it is back. PostgreSQL only: a SQLite file cannot be cut
/// off from a running process this way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_unavailable_is_503_then_recovers() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let app = TestApp::spawn(Backend::Postgres).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let p = gp.create(&patient(&nhs(1), "Outage", "A81001")).await;
    let path = format!("/Patient/{}", p["id"].as_str().expect("id"));
    let name = app.db_url.rsplit('/').next().expect("db name").to_string();
    let mut admin =
        diesel::PgConnection::establish(&format!("{}/postgres", pg_admin_url())).expect("admin");
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"))
        .expect("cut off");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = gp.get(&path).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.header("retry-after").is_some());
    r.outcome();
    assert!(
        !r.text.to_lowercase().contains("postgres"),
        "a 503 leaked internals: {}",
        r.text
    );
    let w = gp
        .post("/Patient", &patient(&nhs(2), "Lost", "A81001"))
        .await;
    assert_eq!(w.status, 503, "{}", w.text);

    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .expect("restore");
    let mut recovered = false;
    for _ in 0..40 {
        if gp.get(&path).await.status == 200
            && gp
                .post("/Patient", &patient(&nhs(3), "Back", "A81001"))
                .await
                .status
                == 201
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        recovered,
        "the service did not recover when the database came back"
    );
    // The write refused during the outage was not stored.
    let lost = gp
        .get(&format!(
            "/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            nhs(2)
        ))
        .await;
    assert_eq!(lost.entries(Some("match")).len(), 0);
}
