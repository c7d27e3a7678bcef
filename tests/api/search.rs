//! Search: parameter types, modifiers, prefixes, paging and result shaping.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{json, Value};

both_backends!(
    parameter_types_and_modifiers,
    paging_is_stable_under_concurrent_writes,
    result_shaping_and_handling,
    nhs_number_lookup_answers_as_the_general_search,
    the_index_follows_updates_and_deletes
);

fn ids(r: &Resp) -> Vec<String> {
    let mut v: Vec<String> = r
        .entries(Some("match"))
        .iter()
        .map(|e| e["id"].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

async fn parameter_types_and_modifiers(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let mut a = patient(&nhs(1), "Åberg", "A81001");
    a["birthDate"] = json!("1940-03-04");
    let a = gp.create_id(&a).await;
    let mut c = patient(&nhs(2), "Abbott", "B82002");
    c["birthDate"] = json!("1952-11-30");
    c["gender"] = json!("male");
    c.as_object_mut().expect("obj").remove("address");
    let c = gp.create_id(&c).await;
    let mut both = vec![a.clone(), c.clone()];
    both.sort();

    let cases: Vec<(&str, Vec<String>)> = vec![
        ("family=aberg", vec![a.clone()]),
        ("family=ab", both.clone()),
        ("family:exact=Åberg", vec![a.clone()]),
        ("family:exact=aberg", vec![]),
        ("family:contains=bot", vec![c.clone()]),
        ("name=alex", both.clone()),
        (
            "identifier=https://fhir.nhs.uk/Id/nhs-number|9990000018",
            vec![],
        ),
        ("gender=male", vec![c.clone()]),
        ("gender:not=male", vec![a.clone()]),
        ("gender=male,female", both.clone()),
        ("birthdate=1940", vec![a.clone()]),
        ("birthdate=1940-03", vec![a.clone()]),
        ("birthdate=gt1950-01-01", vec![c.clone()]),
        ("birthdate=lt1950", vec![a.clone()]),
        (
            "birthdate=ge1940-03-04&birthdate=le1940-03-04",
            vec![a.clone()],
        ),
        ("birthdate=ne1940-03-04", vec![c.clone()]),
        ("birthdate=sa1945", vec![c.clone()]),
        ("birthdate=eb1945", vec![a.clone()]),
        ("address-postalcode=ls14ap", vec![a.clone()]),
        ("address-postalcode:missing=true", vec![c.clone()]),
        ("address-postalcode:missing=false", vec![a.clone()]),
        (
            "general-practitioner:identifier=https://fhir.nhs.uk/Id/ods-organization-code|B82002",
            vec![c.clone()],
        ),
        ("deceased=false", both.clone()),
        ("_id=", both.clone()),
    ];
    let nhs1 = format!("identifier=https://fhir.nhs.uk/Id/nhs-number|{}", nhs(1));
    let r = gp.get(&format!("/Patient?{nhs1}")).await;
    assert_eq!(ids(&r), vec![a.clone()]);
    let r = gp.get(&format!("/Patient?identifier={}", nhs(2))).await;
    assert_eq!(ids(&r), vec![c.clone()]);
    let r = gp.get(&format!("/Patient?_id={a}")).await;
    assert_eq!(ids(&r), vec![a.clone()]);
    for (q, expected) in cases {
        let r = gp.get(&format!("/Patient?{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        assert_eq!(ids(&r), expected, "{q}");
    }
    // Reference and token searches on clinical data.
    gp.create(&observation(&a, "450476008")).await;
    gp.create(&observation(&c, "450475007")).await;
    let r = gp.get(&format!("/Observation?subject=Patient/{a}")).await;
    assert_eq!(r.entries(Some("match")).len(), 1);
    let r = gp
        .get(&format!(
            "/Observation?patient={a}&code=http://snomed.info/sct|450476008"
        ))
        .await;
    assert_eq!(r.entries(Some("match")).len(), 1);
    let r = gp.get("/Observation?code=http://snomed.info/sct|").await;
    assert_eq!(r.entries(Some("match")).len(), 2);
    let r = gp.get("/Observation?code=http://loinc.org|450476008").await;
    assert_eq!(r.entries(Some("match")).len(), 0);
    let r = gp
        .get("/Observation?date=2026-10-01&_lastUpdated=gt2020-01-01")
        .await;
    assert_eq!(r.entries(Some("match")).len(), 2);
    // Malformed values are always a 400.
    for bad in [
        "birthdate=yesterday",
        "_count=lots",
        "gender:missing=perhaps",
        "_sort=nonsense",
        "family:fuzzy=x",
    ] {
        assert_eq!(
            gp.get(&format!("/Patient?{bad}")).await.status,
            400,
            "{bad}"
        );
    }
}

async fn paging_is_stable_under_concurrent_writes(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let mut expected = Vec::new();
    for i in 0..25 {
        expected.push(
            gp.create_id(&patient(&nhs(100 + i), "Pager", "A81001"))
                .await,
        );
    }
    expected.sort();
    let mut seen: Vec<String> = Vec::new();
    let mut next = Some("/Patient?family=pager&_count=4".to_string());
    let mut extra = 0;
    while let Some(url) = next {
        let r = gp.get(&url).await;
        assert_eq!(r.status, 200, "{}", r.text);
        for e in r.entries(Some("match")) {
            seen.push(e["id"].as_str().expect("id").to_string());
        }
        // Others write while we page.
        gp.create(&patient(&nhs(200 + extra), "Pager", "A81001"))
            .await;
        extra += 1;
        next = r.body["link"]
            .as_array()
            .expect("links")
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string);
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "a row was repeated across pages");
    for id in &expected {
        assert!(seen.contains(id), "{id} was skipped while paging");
    }
    // Walking back with `previous` links from the last page gives the same rows, in order.
    let mut pages = Vec::new();
    let mut next = Some("/Patient?family=pager&_count=7&_sort=_id".to_string());
    let mut last = None;
    while let Some(url) = next {
        let r = gp.get(&url).await;
        pages.push(
            r.entries(Some("match"))
                .iter()
                .map(|e| e["id"].as_str().expect("id").to_string())
                .collect::<Vec<_>>(),
        );
        next = r.body["link"]
            .as_array()
            .expect("links")
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string);
        last = Some(r);
    }
    let mut back = Vec::new();
    let mut prev = last.expect("a page").body["link"]
        .as_array()
        .expect("links")
        .iter()
        .find(|l| l["relation"] == "previous")
        .and_then(|l| l["url"].as_str())
        .map(str::to_string);
    while let Some(url) = prev {
        let r = gp.get(&url).await;
        assert_eq!(r.status, 200, "{}", r.text);
        back.push(
            r.entries(Some("match"))
                .iter()
                .map(|e| e["id"].as_str().expect("id").to_string())
                .collect::<Vec<_>>(),
        );
        prev = r.body["link"]
            .as_array()
            .expect("links")
            .iter()
            .find(|l| l["relation"] == "previous")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string);
    }
    back.reverse();
    assert_eq!(
        back,
        pages[..pages.len() - 1].to_vec(),
        "previous links walk back over the same pages"
    );
    assert!(gp
        .get("/Patient?family=pager&_count=7&_sort=_id")
        .await
        .body["link"]
        .as_array()
        .expect("links")
        .iter()
        .all(|l| l["relation"] != "previous"));

    // Sorted paging.
    let r = gp
        .get("/Patient?family=pager&_sort=-_lastUpdated&_count=3")
        .await;
    let stamps: Vec<String> = r
        .entries(Some("match"))
        .iter()
        .map(|e| e["meta"]["lastUpdated"].as_str().unwrap_or("").to_string())
        .collect();
    let mut sorted = stamps.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(stamps, sorted);
}

async fn result_shaping_and_handling(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    for i in 0..3 {
        gp.create(&patient(&nhs(i), "Shape", "A81001")).await;
    }
    let r = gp.get("/Patient?family=shape&_summary=count").await;
    assert_eq!(r.body["total"], 3);
    assert!(r.entries(Some("match")).is_empty());
    let r = gp.get("/Patient?family=shape&_elements=birthDate").await;
    let first = &r.entries(Some("match"))[0];
    assert!(first.get("name").is_none() && first.get("birthDate").is_some());
    assert_eq!(first["meta"]["tag"][0]["code"], "SUBSETTED");
    // Unknown parameters: ignored and reported (lenient), or refused (strict).
    let r = gp.get("/Patient?family=shape&shoe-size=9").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.entries(Some("match")).len(), 3);
    let oo: Vec<Value> = r.entries(Some("outcome"));
    assert!(oo[0]["issue"][0]["diagnostics"]
        .as_str()
        .expect("diag")
        .contains("shoe-size"));
    let r = gp
        .send(
            reqwest::Method::GET,
            "/Patient?family=shape&shoe-size=9",
            None,
            &[("prefer", "handling=strict")],
        )
        .await;
    assert_eq!(r.status, 400);
    r.outcome();
}

/// `Patient?identifier=<NHS number>` is answered from the cached look-up; it must give exactly
/// what the general search gives (forced here with `_sort=_id`), for every sharing outcome.
async fn nhs_number_lookup_answers_as_the_general_search(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let consents = [Some(GIVEN), Some(WITHDRAWN), None];
    for (i, c) in consents.iter().enumerate() {
        let p = gp
            .create(&patient(&nhs(60 + i as u32), "Lookup", "A81001"))
            .await;
        if let Some(code) = c {
            gp.create(&consent(p["id"].as_str().expect("id"), code, "2026-01-01"))
                .await;
        }
    }
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let home = app.client("care-home", "CH001", "care-home").await;
    let outcome = |r: &Resp| !r.entries(Some("outcome")).is_empty();
    let mut seen = 0;
    for who in [&gp, &crew, &home] {
        for i in 0..3u32 {
            let q = format!(
                "/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
                nhs(60 + i)
            );
            let fast = who.get(&q).await;
            let general = who.get(&format!("{q}&_sort=_id")).await;
            assert_eq!(fast.status, 200, "{}", fast.text);
            assert_eq!(general.status, 200, "{}", general.text);
            assert_eq!(ids(&fast), ids(&general), "{q}");
            assert_eq!(
                outcome(&fast),
                outcome(&general),
                "{q}: withheld note differs"
            );
            assert_eq!(fast.body["type"], "searchset");
            assert_eq!(fast.body["link"][0]["relation"], "self");
            assert_eq!(
                format!(
                    "{}&_sort=_id",
                    fast.body["link"][0]["url"].as_str().unwrap_or("")
                ),
                general.body["link"][0]["url"].as_str().unwrap_or(""),
                "self links differ"
            );
            seen += ids(&fast).len();
        }
    }
    // The GP sees all three; the crew the consented one; the care home none.
    assert_eq!(seen, 3 + 1);
    // An unknown but valid number finds nothing, and says nothing.
    let none = crew
        .get(&format!(
            "/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            nhs(99)
        ))
        .await;
    assert_eq!(none.status, 200);
    assert!(none.entries(None).is_empty(), "{}", none.text);
}

/// After an update, searches find the resource by its new values only, once; after a delete,
/// not at all (each version's index rows replace the last's, in every index table).
async fn the_index_follows_updates_and_deletes(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let p = gp.create_id(&patient(&nhs(1), "Abbott", "A81001")).await;
    let mut obs = observation(&p, "1234567");
    obs["valueQuantity"] = json!({"value": 40, "system": "http://unitsofmeasure.org", "code": "%"});
    let id = gp.create_id(&obs).await;
    let found = |q: &'static str| {
        let gp = &gp;
        async move { ids(&gp.get(&format!("/Observation?{q}")).await) }
    };
    assert_eq!(found("code=1234567").await, vec![id.clone()]);

    obs["id"] = json!(id);
    obs["code"]["coding"][0]["code"] = json!("7654321");
    obs["effectiveDateTime"] = json!("2026-11-02T10:00:00Z");
    obs["valueQuantity"]["value"] = json!(20);
    obs["status"] = json!("amended");
    let r = gp.put(&format!("/Observation/{id}"), &obs, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let now = vec![id.clone()];
    for (q, want) in [
        ("code=1234567", vec![]),
        ("code=7654321", now.clone()),
        ("status=final", vec![]),
        ("status=amended", now.clone()),
        ("date=2026-10-01", vec![]),
        ("date=2026-11-02", now.clone()),
        ("value-quantity=40", vec![]),
        ("value-quantity=20", now.clone()),
    ] {
        assert_eq!(found(q).await, want, "{q} after the update");
    }
    let by_subject = gp.get(&format!("/Observation?subject=Patient/{p}")).await;
    assert_eq!(ids(&by_subject), now, "listed once: {}", by_subject.text);

    let r = gp.delete(&format!("/Observation/{id}")).await;
    assert!(r.status == 200 || r.status == 204, "{}", r.text);
    assert_eq!(found("code=7654321").await, Vec::<String>::new());
    let by_subject = gp.get(&format!("/Observation?subject=Patient/{p}")).await;
    assert_eq!(ids(&by_subject), Vec::<String>::new());
}
