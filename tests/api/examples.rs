//! Every file under examples/ and profiles/ is checked: records load, conformance resources
//! are well-formed FHIR, and deliberately invalid resources fail with the expected issues.

use crate::both_backends;
use crate::helpers::*;
use serde_json::Value;
use std::path::Path;

both_backends!(
    example_records_load_and_mean_what_they_say,
    invalid_examples_fail_as_expected,
    conformance_resources_are_served_and_valid
);

fn json_files(dir: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let v = serde_json::from_str(&std::fs::read_to_string(&p).expect("read"))
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                out.push((
                    p.file_stem().expect("stem").to_string_lossy().into_owned(),
                    v,
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

async fn example_records_load_and_mean_what_they_say(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let records = json_files("examples/records");
    assert!(records.len() >= 3);
    for (name, bundle) in &records {
        let r = gp.post("/", bundle).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text);
    }
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    // Consent given, two ReSPECT forms: only the later one is current and shown.
    let s = crew
        .get("/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|9990000026")
        .await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert!(
        s.text.contains("avoid hospital admission")
            && !s.text.contains("Focus on life-sustaining treatment")
    );
    assert!(s.text.contains("Kitchen, top cupboard"));
    let pid = s.body["entry"][1]["resource"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let current = gp.get(&format!("/DocumentReference?patient={pid}&type=http://snomed.info/sct|1382601000000107&status=current")).await;
    assert_eq!(current.entries(Some("match")).len(), 1);
    // No consent: the crew is refused (and may break glass).
    assert_eq!(
        crew.get(
            "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|9990000034"
        )
        .await
        .status,
        403
    );
    // Deceased: preferred nursing home, died in hospital.
    let s = crew
        .get("/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|9990000042")
        .await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert!(s.text.contains("This person has died"));
    let dead = s.body["entry"][1]["resource"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let places = gp.get(&format!("/Observation?patient={dead}&code=https://fhir.epaccs.nhs.example/CodeSystem/epaccs-observables|actual-place-of-death,https://fhir.epaccs.nhs.example/CodeSystem/epaccs-observables|preferred-place-of-death")).await;
    let values: Vec<String> = places
        .entries(Some("match"))
        .iter()
        .map(|o| {
            o["valueCodeableConcept"]["coding"][0]["code"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(values.len(), 2);
    assert!(
        values.contains(&"183676005".to_string()) && values.contains(&"89761000000106".to_string())
    );
}

async fn invalid_examples_fail_as_expected(b: Backend) {
    let app = TestApp::spawn(b).await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let files = json_files("examples/invalid");
    let expected = files
        .iter()
        .find(|(n, _)| n == "expected-issues")
        .map(|(_, v)| v.clone())
        .expect("expected-issues.json");
    let mut checked = 0;
    for (name, resource) in files.iter().filter(|(n, _)| n != "expected-issues") {
        let ty = resource["resourceType"].as_str().expect("type");
        let r = gp.post(&format!("/{ty}/$validate"), resource).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text);
        assert_eq!(r.body["resourceType"], "OperationOutcome");
        assert_eq!(
            r.body["issue"][0]["severity"], "error",
            "{name} validated: {}",
            r.text
        );
        for want in expected[name.as_str()]
            .as_array()
            .unwrap_or_else(|| panic!("no expectation for {name}"))
        {
            assert!(
                r.text.contains(want.as_str().expect("text")),
                "{name}: expected {want} in {}",
                r.text
            );
        }
        checked += 1;
    }
    assert!(checked >= 8);
    // The records validate cleanly, entry by entry.
    for (name, bundle) in json_files("examples/records") {
        for e in bundle["entry"].as_array().expect("entries") {
            let ty = e["resource"]["resourceType"].as_str().expect("type");
            let r = gp.post(&format!("/{ty}/$validate"), &e["resource"]).await;
            assert_eq!(
                r.body["issue"][0]["severity"], "information",
                "{name} {ty}: {}",
                r.text
            );
        }
    }
}

async fn conformance_resources_are_served_and_valid(b: Backend) {
    let app = TestApp::spawn(b).await;
    let api = app.client("reader", "A81001", "gp").await;
    for (dir, ty) in [
        ("profiles/structuredefinitions", "StructureDefinition"),
        ("profiles/valuesets", "ValueSet"),
        ("profiles/codesystems", "CodeSystem"),
    ] {
        let files = json_files(dir);
        assert!(!files.is_empty());
        for (name, v) in files {
            assert_eq!(v["resourceType"], ty, "{name}");
            // Well-formed FHIR: the typed model knows every element.
            epaccs_fhir::validate::validate_as(ty, &v).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let id = v["id"].as_str().expect("id");
            let r = api.get(&format!("/{ty}/{id}")).await;
            assert_eq!(r.status, 200, "{ty}/{id}");
            assert_eq!(r.body, v);
        }
        let all = api.get(&format!("/{ty}")).await;
        assert!(all.body["total"].as_u64().expect("total") >= 1);
    }
    let cpr = api.get("/StructureDefinition?url=https://fhir.epaccs.nhs.example/StructureDefinition/EPaCCS-CPRDecision").await;
    assert_eq!(cpr.entries(Some("match")).len(), 1);
    assert!(
        api.get("/SearchParameter?code=patient").await.body["total"]
            .as_u64()
            .expect("total")
            >= 1
    );
    assert_eq!(
        app.anonymous().get("/StructureDefinition").await.status,
        401
    );
}
