//! Subscriptions delivered to a real HTTP receiver on loopback.

use crate::both_backends;
use crate::helpers::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

both_backends!(
    record_locator_pointers_follow_the_form_and_the_consent,
    delivers_in_order_and_never_a_rolled_back_change,
    survives_receiver_outage_and_server_restart,
    retry_limit_sets_error_and_resumes,
    payloads_follow_the_subscribers_access,
    record_locator_pointers_are_withdrawn_at_death
);

#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
    /// What the receiver answered.
    status: u16,
}

struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let status = Arc::new(AtomicU16::new(200));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (s, g) = (status.clone(), got.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/fhir", listener.local_addr().expect("addr"));
        let server = HttpServer::new(move || {
            let (s, g) = (s.clone(), g.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (s, g) = (s.clone(), g.clone());
                async move {
                    let status = s.load(Ordering::SeqCst);
                    g.lock().expect("lock").push(Received {
                        method: req.method().to_string(),
                        path: req.path().to_string(),
                        headers: req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect(),
                        body: String::from_utf8_lossy(&body).into_owned(),
                        status,
                    });
                    HttpResponse::build(
                        actix_web::http::StatusCode::from_u16(status).expect("status"),
                    )
                    .finish()
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .expect("listen")
        .run();
        tokio::spawn(server);
        Receiver { url, status, got }
    }

    fn delivered(&self) -> Vec<Received> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.status < 300)
            .cloned()
            .collect()
    }

    fn header(r: &Received, name: &str) -> Option<String> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    /// Waits until `f` holds of the successful deliveries (10 s at most).
    async fn wait(&self, what: &str, f: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        for _ in 0..200 {
            let d = self.delivered();
            if f(&d) {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for {what}; got {:?}",
            self.got
                .lock()
                .expect("lock")
                .iter()
                .map(|r| (r.method.clone(), r.path.clone(), r.status))
                .collect::<Vec<_>>()
        );
    }
}

fn subscription(criteria: &str, endpoint: &str, payload: bool) -> Value {
    let mut s = json!({"resourceType": "Subscription", "status": "requested", "reason": "keep the hospice EPR in step",
        "criteria": criteria, "channel": {"type": "rest-hook", "endpoint": endpoint, "header": ["Authorization: Bearer receiver-secret"]}});
    if payload {
        s["channel"]["payload"] = json!("application/fhir+json");
    }
    s
}

fn puts(d: &[Received]) -> Vec<Received> {
    d.iter().filter(|r| r.method != "POST").cloned().collect()
}

async fn delivers_in_order_and_never_a_rolled_back_change(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let pid = gp
        .create_id(&patient(&nhs(1), "Subscribed", "A81001"))
        .await;
    let rx = Receiver::start().await;
    let ping_rx = Receiver::start().await;
    let sub = gp
        .create(&subscription(
            &format!("Observation?patient=Patient/{pid}"),
            &rx.url,
            true,
        ))
        .await;
    assert_eq!(sub["status"], "active");
    gp.create(&subscription(
        &format!("Observation?patient={pid}&code=450476008"),
        &ping_rx.url,
        false,
    ))
    .await;
    rx.wait("handshake", |d| d.len() == 1).await;
    assert_eq!(
        Receiver::header(&rx.delivered()[0], "x-epaccs-event").as_deref(),
        Some("handshake")
    );

    let o1 = gp.create(&observation(&pid, "450476008")).await;
    let o1id = o1["id"].as_str().expect("id").to_string();
    let mut o1b = o1.clone();
    o1b["status"] = json!("amended");
    let r = gp.put(&format!("/Observation/{o1id}"), &o1b, &[]).await;
    assert_eq!(r.status, 200);
    let o2 = gp.create(&observation(&pid, "450475007")).await;
    let o2id = o2["id"].as_str().expect("id").to_string();
    assert_eq!(gp.delete(&format!("/Observation/{o2id}")).await.status, 200);
    // Another person's data does not match.
    let other = gp.create_id(&patient(&nhs(2), "Other", "A81001")).await;
    gp.create(&observation(&other, "450476008")).await;

    let d = rx.wait("four changes", |d| puts(d).len() >= 4).await;
    let seen: Vec<(String, String, Option<String>)> = puts(&d)
        .iter()
        .map(|r| {
            (
                r.method.clone(),
                r.path.clone(),
                serde_json::from_str::<Value>(&r.body)
                    .ok()
                    .and_then(|v| v["meta"]["versionId"].as_str().map(str::to_string)),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "PUT".into(),
                format!("/fhir/Observation/{o1id}"),
                Some("1".into())
            ),
            (
                "PUT".into(),
                format!("/fhir/Observation/{o1id}"),
                Some("2".into())
            ),
            (
                "PUT".into(),
                format!("/fhir/Observation/{o2id}"),
                Some("1".into())
            ),
            ("DELETE".into(), format!("/fhir/Observation/{o2id}"), None),
        ]
    );
    assert!(
        puts(&d)
            .iter()
            .all(|r| Receiver::header(r, "authorization").as_deref()
                == Some("Bearer receiver-secret"))
    );
    let pings = ping_rx
        .wait("ping", |d| {
            d.iter()
                .filter(|r| Receiver::header(r, "x-epaccs-event").as_deref() == Some("create"))
                .count()
                == 1
        })
        .await;
    assert!(
        pings.iter().all(|r| r.body.is_empty()),
        "a ping carries no data"
    );

    // A rolled-back transaction sends nothing.
    let mut bad = observation(&pid, "450476008");
    bad["shoeSize"] = json!(1);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Observation"}, "resource": observation(&pid, "450476008")},
        {"request": {"method": "POST", "url": "Observation"}, "resource": bad}]});
    assert_eq!(gp.post("/", &tx).await.status, 422);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        puts(&rx.delivered()).len(),
        4,
        "a rolled-back change was announced"
    );

    // Subscriptions are their owner's: another organisation cannot see them.
    let other_gp = app.client("gp-two", "B82002", "gp").await;
    assert_eq!(
        other_gp
            .get(&format!(
                "/Subscription/{}",
                sub["id"].as_str().expect("id")
            ))
            .await
            .status,
        404
    );
    // Bad subscriptions are refused.
    assert_eq!(
        gp.post(
            "/Subscription",
            &subscription("Spaceship?x=1", &rx.url, true)
        )
        .await
        .status,
        422
    );
    assert_eq!(
        gp.post(
            "/Subscription",
            &subscription("Observation?shoe=1", &rx.url, true)
        )
        .await
        .status,
        422
    );
    assert_eq!(
        gp.post(
            "/Subscription",
            &subscription("Observation?code=1", "ftp://x", true)
        )
        .await
        .status,
        422
    );
}

async fn survives_receiver_outage_and_server_restart(b: Backend) {
    let mut app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let pid = gp.create_id(&patient(&nhs(1), "Outage", "A81001")).await;
    let rx = Receiver::start().await;
    gp.create(&subscription(
        &format!("Observation?patient={pid}"),
        &rx.url,
        true,
    ))
    .await;
    rx.wait("handshake", |d| d.len() == 1).await;

    // The receiver is down: events queue up, in order.
    rx.status.store(503, Ordering::SeqCst);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(gp.create_id(&observation(&pid, "450476008")).await);
    }
    for _ in 0..40 {
        if !rx.got.lock().expect("lock").iter().any(|r| r.status == 503) {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    // The service restarts with events pending; the receiver comes back.
    app.restart().await;
    rx.status.store(200, Ordering::SeqCst);
    let d = rx
        .wait("three events after restart", |d| puts(d).len() >= 3)
        .await;
    let paths: Vec<String> = puts(&d).iter().map(|r| r.path.clone()).collect();
    let expected: Vec<String> = ids
        .iter()
        .map(|id| format!("/fhir/Observation/{id}"))
        .collect();
    assert_eq!(paths, expected, "lost or out of order");
    let token = app.token("gp-system", "system/*.*", None).await;
    let gp = app.api(token);
    // Nothing left pending; more changes keep flowing.
    let more = gp.create_id(&observation(&pid, "450475007")).await;
    let d = rx
        .wait("event after recovery", |d| puts(d).len() >= 4)
        .await;
    assert_eq!(puts(&d)[3].path, format!("/fhir/Observation/{more}"));
}

async fn retry_limit_sets_error_and_resumes(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let pid = gp.create_id(&patient(&nhs(1), "Retry", "A81001")).await;
    let rx = Receiver::start().await;
    rx.status.store(500, Ordering::SeqCst);
    let sub = gp
        .create(&subscription(
            &format!("Observation?patient={pid}"),
            &rx.url,
            true,
        ))
        .await;
    let sid = sub["id"].as_str().expect("id").to_string();
    let oid = gp.create_id(&observation(&pid, "450476008")).await;
    let mut errored = Value::Null;
    for _ in 0..200 {
        errored = gp.get(&format!("/Subscription/{sid}")).await.body;
        if errored["status"] == "error" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(errored["status"], "error", "{errored}");
    assert!(errored["error"]
        .as_str()
        .expect("error text")
        .contains("500"));
    let attempts = rx.got.lock().expect("lock").len();
    assert_eq!(attempts, 4, "the retry limit is 4 attempts");
    // Set back to requested: handshake, then the pending event.
    rx.status.store(200, Ordering::SeqCst);
    let mut again = errored.clone();
    again["status"] = json!("requested");
    let r = gp.put(&format!("/Subscription/{sid}"), &again, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "active");
    let d = rx
        .wait("pending event after resume", |d| puts(d).len() == 1)
        .await;
    assert_eq!(puts(&d)[0].path, format!("/fhir/Observation/{oid}"));
}

async fn payloads_follow_the_subscribers_access(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let po = app.client("privacy", "PO001", "privacy-officer").await;
    let p = gp.create_id(&patient(&nhs(1), "NoConsent", "A81001")).await;
    let q = gp.create_id(&patient(&nhs(2), "Consented", "A81001")).await;
    gp.create(&consent(&q, GIVEN, "2026-01-01")).await;
    let rx = Receiver::start().await;
    crew.create(&subscription(
        "Observation?code=http://snomed.info/sct|450476008",
        &rx.url,
        true,
    ))
    .await;
    let alerts = Receiver::start().await;
    let r = po
        .post(
            "/Subscription",
            &subscription("AuditEvent?subtype=110127", &alerts.url, true),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        crew.post(
            "/Subscription",
            &subscription("AuditEvent?subtype=110127", &alerts.url, true)
        )
        .await
        .status,
        403
    );
    rx.wait("handshake", |d| !d.is_empty()).await;

    let hidden = gp.create_id(&observation(&p, "450476008")).await;
    let shown = gp.create_id(&observation(&q, "450476008")).await;
    let d = rx
        .wait("the consented person's change", |d| !puts(d).is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = rx.got.lock().expect("lock").clone();
    assert!(
        all.iter()
            .all(|r| !r.path.contains(&hidden) && !r.body.contains(&p)),
        "a withheld change reached the subscriber"
    );
    assert_eq!(puts(&d)[0].path, format!("/fhir/Observation/{shown}"));

    // Break-glass by the crew: the privacy officer's endpoint is told.
    let btg = app.client_with("ambulance", json!({"purpose_of_use": {"code": "BTG"}, "break_glass_reason": "collapsed in the street"})).await;
    assert_eq!(btg.get(&format!("/Observation/{hidden}")).await.status, 200);
    let a = alerts
        .wait("break-glass alert", |d| {
            puts(d)
                .iter()
                .any(|r| r.path.starts_with("/fhir/AuditEvent/"))
        })
        .await;
    let alert: Value = serde_json::from_str(&puts(&a)[0].body).expect("json");
    assert_eq!(alert["type"]["code"], "110113");
    assert!(alert.to_string().contains(&p));
}

async fn record_locator_pointers_follow_the_form_and_the_consent(b: Backend) {
    let nrl = Receiver::start().await;
    let app = TestApp::spawn_with(b, Some(nrl.url.clone())).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let n = nhs(1);
    let pid = gp.create_id(&patient(&n, "Pointer", "A81001")).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    let form = |focus: &str| {
        json!({"resourceType": "Composition", "status": "final",
        "type": {"coding": [{"system": "http://snomed.info/sct", "code": "1382601000000107"}]},
        "subject": {"reference": format!("Patient/{pid}")}, "date": "2026-10-01", "author": [{"display": "Dr A"}], "title": "ReSPECT form",
        "section": [{"title": "4", "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{focus}</div>")}}]})
    };
    gp.create(&form("first")).await;
    let d = nrl
        .wait("first pointer", |d| {
            puts(d).iter().any(|r| r.method == "PUT")
        })
        .await;
    let first = puts(&d)
        .into_iter()
        .find(|r| r.method == "PUT")
        .expect("put");
    let p1: Value = serde_json::from_str(&first.body).expect("json");
    assert_eq!(p1["status"], "current");
    assert_eq!(p1["subject"]["identifier"]["value"], n.as_str());
    assert_eq!(p1["custodian"]["identifier"]["value"], "A81001");
    assert_eq!(p1["type"]["coding"][0]["code"], "1382601000000107");
    assert_eq!(p1["category"][0]["coding"][0]["code"], "734163000");
    assert!(p1["content"][0]["attachment"]["url"]
        .as_str()
        .expect("url")
        .starts_with(&app.base));
    let first_path = first.path.clone();

    gp.create(&form("second")).await;
    let d = nrl
        .wait("supersession", |d| {
            puts(d).iter().filter(|r| r.method == "PUT").count() >= 3
        })
        .await;
    let latest = |path: &str| -> Value {
        puts(&d)
            .iter()
            .rfind(|r| r.path == path && r.method == "PUT")
            .map(|r| serde_json::from_str(&r.body).expect("json"))
            .expect("pointer")
    };
    assert_eq!(latest(&first_path)["status"], "superseded");
    let second = puts(&d)
        .iter()
        .rfind(|r| r.method == "PUT" && r.path != first_path)
        .expect("second")
        .clone();
    let p2: Value = serde_json::from_str(&second.body).expect("json");
    assert_eq!(p2["status"], "current");
    assert_eq!(p2["relatesTo"][0]["code"], "replaces");
    assert!(first_path.ends_with(
        p2["relatesTo"][0]["target"]["reference"]
            .as_str()
            .expect("ref")
            .trim_start_matches("DocumentReference/")
    ));

    // Withdrawal of consent: every pointer for the person is removed.
    gp.create(&consent(&pid, WITHDRAWN, "2026-11-01")).await;
    let d = nrl
        .wait("pointers removed", |d| {
            d.iter().filter(|r| r.method == "DELETE").count() >= 2
        })
        .await;
    let deleted: Vec<String> = d
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path.clone())
        .collect();
    assert!(
        deleted.contains(&first_path) && deleted.contains(&second.path),
        "{deleted:?}"
    );
}

/// Hazard H09 (deceased person's record still active): a person's death withdraws their
/// record-locator pointers, with consent still in force.
async fn record_locator_pointers_are_withdrawn_at_death(b: Backend) {
    let nrl = Receiver::start().await;
    let app = TestApp::spawn_with(b, Some(nrl.url.clone())).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let pid = gp.create_id(&patient(&nhs(1), "Pointer", "A81001")).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    gp.create(&json!({"resourceType": "Composition", "status": "final",
        "type": {"coding": [{"system": "http://snomed.info/sct", "code": "1382601000000107"}]},
        "subject": {"reference": format!("Patient/{pid}")}, "date": "2026-10-01", "author": [{"display": "Dr A"}], "title": "ReSPECT form",
        "section": [{"title": "4", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Focus on comfort</div>"}}]}))
        .await;
    let d = nrl
        .wait("pointer", |d| puts(d).iter().any(|r| r.method == "PUT"))
        .await;
    let path = puts(&d)
        .into_iter()
        .find(|r| r.method == "PUT")
        .expect("put")
        .path;
    let mut p = gp.get(&format!("/Patient/{pid}")).await.body;
    p["deceasedDateTime"] = json!("2026-11-30");
    assert_eq!(
        gp.put(&format!("/Patient/{pid}"), &p, &[]).await.status,
        200
    );
    let d = nrl
        .wait("pointer withdrawn", |d| {
            d.iter().any(|r| r.method == "DELETE" && r.path == path)
        })
        .await;
    assert!(d.iter().any(|r| r.method == "DELETE" && r.path == path));
}
