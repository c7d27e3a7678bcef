//! The leak suite: an attacker in each role tries to learn about a person it may not see, or to
//! get past its token's scopes, through the compound parts of the API (chained criteria, `_has`,
//! includes, conditional writes, refusal texts, `$everything`, `$emergency-summary`, history,
//! bundles).
//!
//! The properties, over many variants each:
//! - a reference to a withheld resource behaves exactly like a reference to nothing;
//! - to a role that may not break glass, a withheld person and a person who does not exist are
//!   indistinguishable (same status, same body once ids are set aside);
//! - to a role that may break glass but has no access, content (a CPR decision, a birth date)
//!   never changes the answer, and refusals never tell the consent state;
//! - nothing a token's scopes do not name comes back, whichever operation returns it.

use crate::both_backends;
use crate::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    chained_criteria_answer_nothing_about_withheld_records,
    conditional_writes_answer_nothing_about_withheld_content,
    withheld_and_missing_people_look_alike_to_roles_that_may_not_break_glass,
    refusals_never_tell_the_consent_state_or_name_a_withheld_record,
    compound_operations_return_only_what_the_token_names,
);

/// "Not for attempted CPR" and "for attempted CPR": the decision an attacker wants to learn.
const DNACPR: &str = "450476008";
const FOR_CPR: &str = "450475007";

const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

struct World {
    app: TestApp,
    owner: Api,
    /// A person with no consent to share, registered with A81001: withheld from everyone else.
    pid: String,
    care_team: String,
    related: String,
    dnacpr: String,
}

async fn world(b: Backend) -> World {
    let app = TestApp::spawn(b).await;
    let owner = app.client("gp-system", "A81001", "gp").await;
    let pid = owner.create_id(&patient(&nhs(1), "Matrix", "A81001")).await;
    let care_team = owner
        .create_id(&json!({"resourceType": "CareTeam", "status": "active",
            "subject": {"reference": format!("Patient/{pid}")},
            "participant": [{"member": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "HOS01"}}}]}))
        .await;
    let related = owner
        .create_id(&json!({"resourceType": "RelatedPerson", "active": true,
            "patient": {"reference": format!("Patient/{pid}")},
            "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "DAU"}]}],
            "name": [{"family": "Matrix", "given": ["Clare"]}]}))
        .await;
    let dnacpr = owner.create_id(&observation(&pid, DNACPR)).await;
    World {
        app,
        owner,
        pid,
        care_team,
        related,
        dnacpr,
    }
}

/// What an answer tells, with the given ids (and NHS numbers) set aside: status, the
/// OperationOutcome's codes and texts, and for a bundle the number of entries of each mode, the
/// total and the outcome texts.
fn told(r: &Resp, ids: &[&str]) -> Value {
    let scrub = |s: &str| {
        let mut s = s.to_string();
        for id in ids.iter().filter(|i| !i.is_empty()) {
            s = s.replace(id, "<id>");
        }
        s
    };
    let issues = |v: &Value| -> Vec<Value> {
        v["issue"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|i| {
                json!([
                    i["severity"],
                    i["code"],
                    scrub(i["diagnostics"].as_str().unwrap_or(""))
                ])
            })
            .collect()
    };
    let body = match r.body["resourceType"].as_str() {
        Some("OperationOutcome") => json!({"outcome": issues(&r.body)}),
        Some("Bundle") => {
            let entries = r.body["entry"].as_array().cloned().unwrap_or_default();
            let count = |mode: &str| {
                entries
                    .iter()
                    .filter(|e| e["search"]["mode"] == mode)
                    .count()
            };
            let outcomes: Vec<Value> = entries
                .iter()
                .filter(|e| {
                    e["search"]["mode"] == "outcome" || e["response"]["outcome"].is_object()
                })
                .map(|e| {
                    let o = if e["resource"]["resourceType"] == "OperationOutcome" {
                        &e["resource"]
                    } else {
                        &e["response"]["outcome"]
                    };
                    json!(issues(o))
                })
                .collect();
            let statuses: Vec<Value> = entries
                .iter()
                .map(|e| e["response"]["status"].clone())
                .collect();
            json!({"match": count("match"), "include": count("include"), "total": r.body["total"],
                   "outcomes": outcomes, "statuses": statuses})
        }
        Some(other) => json!({"resourceType": other}),
        None => json!({"text": scrub(&r.text)}),
    };
    json!({"status": r.status, "body": body})
}

/// The search parameters the server declares for `ty` (name, type).
async fn declared_params(api: &Api, ty: &str) -> Vec<(String, String)> {
    let meta = api.get("/metadata").await;
    let resources = meta.body["rest"][0]["resource"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let r = resources
        .iter()
        .find(|r| r["type"] == ty)
        .unwrap_or_else(|| panic!("{ty} is not in the CapabilityStatement"));
    r["searchParam"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Values a chained parameter is tried with: ones the withheld records really have, and others.
fn values_for(w: &World, name: &str, kind: &str) -> Vec<String> {
    let mut v: Vec<String> = match kind {
        "token" => ["true", "false", "active", "female", "male"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        "string" => ["M", "Ma", "Matrix", "Alex", "Clare", "LS1", "LS1 4AP", "Z"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        "date" => ["1941-05-06", "ge1900", "lt1941", "gt1941-05-06", "le2100"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        "reference" => vec![format!("Patient/{}", w.pid), "Patient/nobody".into()],
        _ => vec![],
    };
    if name == "identifier" {
        v.push(format!("{NHS_SYSTEM}|{}", nhs(1)));
        v.push(format!("{NHS_SYSTEM}|{}", nhs(40)));
    }
    v
}

/// A GP practice with no relationship to the person references the person's records from its
/// own Observation, and chains through the reference with every parameter the target types
/// declare. Whatever it asks, the answer is the one a reference to nothing gets.
async fn chained_criteria_answer_nothing_about_withheld_records(b: Backend) {
    let w = world(b).await;
    let spy = w.app.client("gp-spy", "B82002", "gp").await;
    let own = spy.create_id(&patient(&nhs(2), "Spy", "B82002")).await;
    assert_eq!(
        spy.get(&format!("/Patient/{}", w.pid)).await.status,
        403,
        "the spy must not see the person"
    );
    let mut towards = observation(&own, FOR_CPR);
    towards["performer"] = json!([
        {"reference": format!("Patient/{}", w.pid)},
        {"reference": format!("CareTeam/{}", w.care_team)},
        {"reference": format!("RelatedPerson/{}", w.related)},
    ]);
    let withheld = spy.create_id(&towards).await;
    let mut nowhere = observation(&own, FOR_CPR);
    nowhere["performer"] = json!([
        {"reference": "Patient/nobody"},
        {"reference": "CareTeam/nothing"},
        {"reference": "RelatedPerson/no-one"},
    ]);
    let nothing = spy.create_id(&nowhere).await;

    let mut tried = 0;
    for target in ["Patient", "CareTeam", "RelatedPerson"] {
        for (name, kind) in declared_params(&spy, target).await {
            let mut variants = vec![
                format!("{name}:missing=false"),
                format!("{name}:missing=true"),
            ];
            if kind == "token" {
                variants.push(format!("{name}:not=female"));
            }
            variants.extend(
                values_for(&w, &name, &kind)
                    .into_iter()
                    .map(|v| format!("{name}={}", urlencoding(&v))),
            );
            for v in variants {
                let ask = |id: &str| {
                    format!("/Observation?_id={id}&performer:{target}.{v}&_total=accurate")
                };
                let a = spy.get(&ask(&withheld)).await;
                let n = spy.get(&ask(&nothing)).await;
                assert!(a.status < 500, "{target}.{v}: {}", a.text);
                assert_eq!(
                    told(&a, &[&withheld]),
                    told(&n, &[&nothing]),
                    "performer:{target}.{v} tells a withheld reference from a dangling one:\n{}\n{}",
                    a.text,
                    n.text
                );
                tried += 1;
            }
        }
    }
    assert!(tried > 60, "only {tried} variants tried");

    // Nor through notifications: subscription criteria are matched before any gate, so they
    // may not chain.
    let sub = spy
        .post(
            "/Subscription",
            &json!({"resourceType": "Subscription", "status": "requested", "reason": "probe",
                "criteria": "Observation?performer:Patient.birthdate=1941-05-06",
                "channel": {"type": "rest-hook", "endpoint": "https://receiver.example/hook", "payload": "application/fhir+json"}}),
        )
        .await;
    assert_eq!(sub.status, 422, "{}", sub.text);
    assert!(sub.text.contains("chained"), "{}", sub.text);

    // Includes, reverse includes and `_has` tell nothing either, whatever the content asked.
    for (a, n) in [
        (
            format!("/Observation?_id={withheld}&_include=Observation:performer"),
            format!("/Observation?_id={nothing}&_include=Observation:performer"),
        ),
        (
            format!("/Patient?_id={}&_has:Observation:patient:code={DNACPR}", w.pid),
            format!("/Patient?_id={}&_has:Observation:patient:code={FOR_CPR}", w.pid),
        ),
        (
            format!("/Patient?_id={}&_revinclude=Observation:patient&_total=accurate", w.pid),
            "/Patient?_id=nobody&_revinclude=Observation:patient&_total=accurate".to_string(),
        ),
        (
            format!("/Observation?_id={withheld}&performer:Patient.family=Matrix&_include=Observation:performer"),
            format!("/Observation?_id={nothing}&performer:Patient.family=Matrix&_include=Observation:performer"),
        ),
    ] {
        let (ra, rn) = (spy.get(&a).await, spy.get(&n).await);
        assert_eq!(ra.status, 200, "{a}: {}", ra.text);
        let shown = json!(ra.entries(None)).to_string();
        assert!(!shown.contains("Matrix") && !shown.contains(DNACPR), "{a}: {}", ra.text);
        assert_eq!(ra.entries(Some("include")).len(), 0, "{a}: {}", ra.text);
        assert_eq!(
            ra.entries(Some("include")).len() + ra.entries(Some("match")).len(),
            rn.entries(Some("include")).len() + rn.entries(Some("match")).len(),
            "{a} / {n}"
        );
    }
}

/// A practice with no access uses conditional writes (If-None-Exist, conditional update, a
/// transaction's ifNoneExist) with criteria on the person's CPR decision. The answer must be the
/// same for either decision: a withheld match counts as no match.
async fn conditional_writes_answer_nothing_about_withheld_content(b: Backend) {
    let w = world(b).await;
    let spy = w.app.client("gp-spy", "B82002", "gp").await;
    let own = spy.create_id(&patient(&nhs(2), "Spy", "B82002")).await;
    let criteria = |code: &str| {
        vec![
            format!("patient=Patient/{}&code={code}", w.pid),
            format!("patient.identifier={NHS_SYSTEM}|{}&code={code}", nhs(1)),
            format!("subject:Patient.family=Matrix&code={code}"),
            format!("code={code}&status=final&patient=Patient/{}", w.pid),
        ]
    };
    let mut tried = 0;
    for (subject, label) in [
        (own.as_str(), "own patient"),
        (w.pid.as_str(), "the person"),
    ] {
        for i in 0..criteria(DNACPR).len() {
            let mut answers = Vec::new();
            for code in [DNACPR, FOR_CPR] {
                let cond = &criteria(code)[i];
                let body = observation(subject, FOR_CPR);
                let create = spy
                    .post_with("/Observation", &body, &[("if-none-exist", cond)])
                    .await;
                let update = spy.put(&format!("/Observation?{cond}"), &body, &[]).await;
                let mut entry = json!({"resource": body, "request": {"method": "POST", "url": "Observation", "ifNoneExist": cond}});
                entry["fullUrl"] = json!("urn:uuid:00000000-0000-4000-8000-0000000000aa");
                let tx = spy
                    .post(
                        "/",
                        &json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]}),
                    )
                    .await;
                for r in [&create, &update, &tx] {
                    assert!(r.status < 500, "{cond}: {}", r.text);
                    assert!(!r.text.contains(&w.dnacpr), "{cond}: {}", r.text);
                }
                answers.push((told(&create, &[]), told(&update, &[]), told(&tx, &[]), code));
                tried += 1;
            }
            let (a, b2) = (&answers[0], &answers[1]);
            assert_eq!(
                (&a.0, &a.1, &a.2),
                (&b2.0, &b2.1, &b2.2),
                "criteria {} with a body about {label}: the answer depends on the withheld CPR decision",
                criteria("<code>")[i]
            );
        }
    }
    assert!(tried >= 16);
    // The person's record is unchanged: no conditional update reached the withheld decision.
    let still = w.owner.get(&format!("/Observation/{}", w.dnacpr)).await;
    assert_eq!(still.body["meta"]["versionId"], "1", "{}", still.text);
    assert_eq!(still.body["code"]["coding"][0]["code"], DNACPR);
}

/// A care home may not break glass: every interaction naming a withheld person answers exactly
/// as it does for a person who does not exist.
async fn withheld_and_missing_people_look_alike_to_roles_that_may_not_break_glass(b: Backend) {
    let w = world(b).await;
    let homes = [
        w.app.client("care-home", "CH001", "care-home").await,
        w.app.client("privacy", "PO001", "privacy-officer").await,
    ];
    // (the person's id, NHS number, one of their resources, their demographics)
    let real = (w.pid.clone(), nhs(1), w.dnacpr.clone(), "Matrix");
    let ghost = (
        "no-such-person".to_string(),
        nhs(50),
        "no-such-observation".to_string(),
        "Nobody",
    );
    let mut tried = 0;
    for home in &homes {
        let ask = |p: &(String, String, String, &'static str)| {
            let (pid, n, obs, family) = (p.0.clone(), p.1.clone(), p.2.clone(), p.3);
            let home = home.clone();
            async move {
                let mut by_nhs = observation("x", FOR_CPR);
                by_nhs["subject"] = json!({"identifier": {"system": NHS_SYSTEM, "value": n}});
                let mut upd = observation(&pid, FOR_CPR);
                upd["id"] = json!(obs);
                let mut same_nhs = patient(&n, family, "CH001");
                same_nhs["name"][0]["family"] = json!("Copy");
                let tx_entry = json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000bb",
                    "resource": observation(&pid, FOR_CPR),
                    "request": {"method": "POST", "url": "Observation", "ifNoneExist": format!("patient=Patient/{pid}&code={DNACPR}")}});
                let batch_get = json!({"request": {"method": "GET", "url": format!("Observation?patient=Patient/{pid}&code={DNACPR}")}});
                let answers = vec![
                    home.get(&format!("/Patient/{pid}")).await,
                    home.get(&format!("/Observation/{obs}")).await,
                    home.get(&format!("/Observation/{obs}/_history")).await,
                    home.get(&format!("/Patient/{pid}/$everything")).await,
                    home.get(&format!("/Observation?patient=Patient/{pid}&_total=accurate")).await,
                    home.get(&format!("/Observation?patient.identifier={NHS_SYSTEM}|{n}&_total=accurate")).await,
                    home.get(&format!("/Patient?identifier={NHS_SYSTEM}|{n}")).await,
                    home.get(&format!("/Patient?family={family}&_total=accurate")).await,
                    home.get(&format!("/Patient/$emergency-summary?identifier={NHS_SYSTEM}|{n}")).await,
                    home.get(&format!("/Patient/$emergency-summary?family={family}&birthdate=1941-05-06&address-postalcode=LS1%204AP")).await,
                    home.post("/Observation", &observation(&pid, FOR_CPR)).await,
                    home.post("/Observation", &by_nhs).await,
                    home.post_with("/Observation", &observation(&pid, FOR_CPR),
                        &[("if-none-exist", &format!("patient=Patient/{pid}&code={DNACPR}"))]).await,
                    home.put(&format!("/Observation?patient=Patient/{pid}&code={DNACPR}"), &observation(&pid, FOR_CPR), &[]).await,
                    home.put(&format!("/Observation/{obs}"), &upd, &[]).await,
                    home.delete(&format!("/Observation/{obs}")).await,
                    home.post("/Patient", &same_nhs).await,
                    home.post_with("/Patient", &same_nhs, &[("if-none-exist", &format!("identifier={NHS_SYSTEM}|{n}"))]).await,
                    home.post("/", &json!({"resourceType": "Bundle", "type": "transaction", "entry": [tx_entry]})).await,
                    home.post("/", &json!({"resourceType": "Bundle", "type": "batch", "entry": [batch_get]})).await,
                    home.send(Method::PATCH, &format!("/Observation/{obs}"),
                        Some(("application/json-patch+json", r#"[{"op": "replace", "path": "/status", "value": "entered-in-error"}]"#.into())), &[]).await,
                ];
                (answers, vec![pid, n, obs])
            }
        };
        let (a, a_ids) = ask(&real).await;
        let (g, g_ids) = ask(&ghost).await;
        for (i, (ra, rg)) in a.iter().zip(g.iter()).enumerate() {
            let ids_a: Vec<&str> = a_ids.iter().map(String::as_str).collect();
            let ids_g: Vec<&str> = g_ids.iter().map(String::as_str).collect();
            assert!(ra.status < 500, "interaction {i}: {}", ra.text);
            assert_eq!(
                told(ra, &ids_a),
                told(rg, &ids_g),
                "interaction {i} tells a withheld person from a missing one:\n{}\n{}",
                ra.text,
                rg.text
            );
            let shown = json!([ra.entries(None), ra.body["issue"]]).to_string();
            assert!(
                !shown.contains("Matrix") && !shown.contains(DNACPR),
                "{}",
                ra.text
            );
            tried += 1;
        }
    }
    assert!(tried >= 40);
    let still = w.owner.get(&format!("/Observation/{}", w.dnacpr)).await;
    assert_eq!(still.body["meta"]["versionId"], "1", "{}", still.text);
}

/// Roles that may break glass learn that a record is withheld, never why: the refusal text is
/// the same whatever the person's consent state. One record per NHS number still holds, without
/// naming a record the caller may not read.
async fn refusals_never_tell_the_consent_state_or_name_a_withheld_record(b: Backend) {
    let w = world(b).await;
    // Q: consent given (the spy has no relationship); R: consent withdrawn; S: a deny provision
    // against the spy's organisation.
    let q = w
        .owner
        .create_id(&patient(&nhs(3), "Given", "A81001"))
        .await;
    w.owner.create(&consent(&q, GIVEN, "2026-01-01")).await;
    let r = w
        .owner
        .create_id(&patient(&nhs(4), "Withdrawn", "A81001"))
        .await;
    w.owner.create(&consent(&r, GIVEN, "2025-01-01")).await;
    w.owner.create(&consent(&r, WITHDRAWN, "2026-01-01")).await;
    let s = w
        .owner
        .create_id(&patient(&nhs(5), "Denied", "A81001"))
        .await;
    let mut c = consent(&s, GIVEN, "2026-01-01");
    c["provision"] = json!({"type": "permit", "provision": [{"type": "deny",
        "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
                   "reference": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RX801"}}}]}]});
    w.owner.create(&c).await;
    let mut obs = vec![w.dnacpr.clone()];
    for p in [&q, &r, &s] {
        obs.push(w.owner.create_id(&observation(p, DNACPR)).await);
    }
    let people = [w.pid.clone(), q.clone(), r.clone(), s.clone()];
    for (client, org, role) in [
        ("gp-spy", "B82002", "gp"),
        ("hospice-other", "HOS99", "hospice"),
        ("acute", "RR801", "acute"),
        ("ambulance", "RX801", "ambulance"),
    ] {
        let api = w.app.client(client, org, role).await;
        let mut reads = Vec::new();
        let mut writes = Vec::new();
        for (i, p) in people.iter().enumerate() {
            // The crew reads Q under consent; everyone else is refused everything.
            let read = api.get(&format!("/Observation/{}", obs[i])).await;
            let write = api.post("/Observation", &observation(p, FOR_CPR)).await;
            let delete = api.delete(&format!("/Observation/{}", obs[i])).await;
            for x in [&read, &write, &delete] {
                assert!(
                    !x.text.to_lowercase().contains("consent"),
                    "{client}: {}",
                    x.text
                );
                assert!(!x.text.contains("relationship"), "{client}: {}", x.text);
            }
            if read.status != 200 {
                reads.push(told(&read, &[&obs[i]]));
            }
            writes.push(told(&write, &[p]));
            writes.push(told(&delete, &[&obs[i]]));
        }
        assert!(reads.len() >= 3, "{client}");
        assert!(
            reads.windows(2).all(|x| x[0] == x[1]),
            "{client}: {reads:?}"
        );
        assert!(
            writes.windows(2).all(|x| x[0] == x[1]),
            "{client}: {writes:?}"
        );
    }

    // The trail keeps the rules' reasons that the callers were not told.
    let po = w.app.client("privacy", "PO001", "privacy-officer").await;
    let trail = po.get(&format!("/AuditEvent?patient={r}")).await;
    assert_eq!(trail.status, 200, "{}", trail.text);
    assert!(
        trail.entries(None).iter().any(|e| e["outcomeDesc"]
            .as_str()
            .is_some_and(|d| d.contains("consent"))),
        "{}",
        trail.text
    );

    // Another record for P's NHS number is refused without naming P's record.
    let spy = w.app.client("gp-spy", "B82002", "gp").await;
    let copy = patient(&nhs(1), "Copy", "B82002");
    let plain = spy.post("/Patient", &copy).await;
    let conditional = spy
        .post_with(
            "/Patient",
            &copy,
            &[(
                "if-none-exist",
                &format!("identifier={NHS_SYSTEM}|{}", nhs(1)),
            )],
        )
        .await;
    for x in [&plain, &conditional] {
        assert_eq!(x.status, 409, "{}", x.text);
        assert!(
            !x.text.contains(&w.pid),
            "names the withheld record: {}",
            x.text
        );
    }
    assert_eq!(told(&plain, &[]), told(&conditional, &[]));
    // The GP who may read it still cannot make a second record.
    let again = w.owner.post("/Patient", &copy).await;
    assert_eq!(again.status, 409, "{}", again.text);
}

/// A token's scopes bound everything returned, whichever operation returns it.
async fn compound_operations_return_only_what_the_token_names(b: Backend) {
    let w = world(b).await;
    // The writing practice itself: the sharing rules let it see everything; only scopes limit.
    let scoped = |id: &'static str, scope: &'static str| {
        let app = &w.app;
        async move {
            app.register(id, "A81001", "gp", scope);
            let token = app.token(id, scope, None).await;
            app.api(token)
        }
    };
    let patients_only = scoped("gp-patients", "system/Patient.read").await;
    let patients_all = scoped("gp-patients-all", "system/Patient.*").await;
    let observations_only = scoped("gp-observations", "system/Observation.read").await;
    let types = |r: &Resp| -> Vec<String> {
        r.entries(None)
            .iter()
            .filter(|e| e["resourceType"] != "OperationOutcome")
            .map(|e| e["resourceType"].as_str().unwrap_or("").to_string())
            .collect()
    };
    for api in [&patients_only, &patients_all] {
        let everything = api.get(&format!("/Patient/{}/$everything", w.pid)).await;
        assert_eq!(everything.status, 200, "{}", everything.text);
        assert_eq!(types(&everything), vec!["Patient"], "{}", everything.text);
        assert!(!everything.text.contains(DNACPR));
        let typed = api
            .get(&format!("/Patient/{}/$everything?_type=Observation", w.pid))
            .await;
        assert_eq!(typed.status, 403, "{}", typed.text);
        let rev = api
            .get(&format!(
                "/Patient?_id={}&_revinclude=Observation:patient&_revinclude=CareTeam:patient&_revinclude=Consent:patient&_revinclude=RelatedPerson:patient",
                w.pid
            ))
            .await;
        assert_eq!(types(&rev), vec!["Patient"], "{}", rev.text);
        let rev_iter = api
            .get(&format!(
                "/Patient?_id={}&_revinclude:iterate=Observation:patient&_include:iterate=Observation:performer",
                w.pid
            ))
            .await;
        assert_eq!(types(&rev_iter), vec!["Patient"], "{}", rev_iter.text);
        let summary = api
            .get(&format!(
                "/Patient/$emergency-summary?identifier={NHS_SYSTEM}|{}",
                nhs(1)
            ))
            .await;
        assert_eq!(summary.status, 403, "{}", summary.text);
        assert!(summary
            .header("www-authenticate")
            .is_some_and(|h| h.contains("insufficient_scope")));
        assert!(!summary.text.contains(DNACPR));
        let history = api.get("/Patient/_history").await;
        assert!(types(&history).iter().all(|t| t == "Patient"));
        let batch = api
            .post(
                "/",
                &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                    {"request": {"method": "GET", "url": format!("Observation/{}", w.dnacpr)}},
                    {"request": {"method": "GET", "url": format!("Patient?_id={}&_revinclude=Observation:patient", w.pid)}}]}),
            )
            .await;
        assert_eq!(batch.status, 200, "{}", batch.text);
        assert!(!batch.text.contains(DNACPR), "{}", batch.text);
        assert!(batch.body["entry"][0]["response"]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("403")));
    }
    // An Observation-only token gets no Patient (or CareTeam) through _include.
    let inc = observations_only
        .get(&format!(
            "/Observation?_id={}&_include=Observation:patient&_include=Observation:subject&_include:iterate=CareTeam:patient",
            w.dnacpr
        ))
        .await;
    assert_eq!(inc.status, 200, "{}", inc.text);
    assert_eq!(types(&inc), vec!["Observation"], "{}", inc.text);
    assert!(!inc.text.contains("Matrix"));
    let hist = observations_only.get("/Observation/_history").await;
    assert!(types(&hist).iter().all(|t| t == "Observation"));
    assert_eq!(
        observations_only
            .get(&format!("/Patient/{}/_history", w.pid))
            .await
            .status,
        403
    );
    // A token that names everything still gets the whole record.
    let everything = w
        .owner
        .get(&format!("/Patient/{}/$everything", w.pid))
        .await;
    let all = types(&everything);
    for t in ["Patient", "CareTeam", "RelatedPerson", "Observation"] {
        assert!(all.iter().any(|x| x == t), "{t} missing: {all:?}");
    }
}

/// Percent-encodes a query value (`|`, spaces and the like).
fn urlencoding(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}
