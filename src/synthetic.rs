//! Synthetic people for demos, loaders and benchmarks. NHS numbers come from the 999 test range
//! with valid Modulus 11 check digits; names and places are invented.

use epaccs_core::NhsNumber;
use serde_json::{json, Value};

const FAMILIES: &[&str] = &[
    "Ashworth",
    "Begum",
    "Campbell",
    "Dlamini",
    "Evans",
    "Fraser",
    "Goldberg",
    "Hussain",
    "Iqbal",
    "Jones",
    "Kowalski",
    "Lewis",
    "Murphy",
    "Nowak",
    "Okafor",
    "Patel",
    "Quinn",
    "Roberts",
    "Singh",
    "Taylor",
    "Umar",
    "Varga",
    "Williams",
    "Xu",
    "Young",
    "Zielinski",
];
const GIVEN: &[&str] = &[
    "Ada", "Bilal", "Carys", "Dev", "Edith", "Femi", "Grace", "Harold", "Imogen", "Jamal", "Kath",
    "Leon", "Mair", "Nia", "Olu", "Priya",
];
const POSTCODES: &[&str] = &[
    "LS1 4AP", "LS6 2QB", "BD7 1DP", "HX1 5TT", "WF1 3LL", "HD1 2SP", "YO1 7HH", "S1 2JE",
];

/// The i-th synthetic NHS number (999xxxxxx with a valid check digit).
pub fn nhs_number(i: u64) -> String {
    let mut k = i * 11 / 10;
    loop {
        if let Some(n) = NhsNumber::with_check_digit(&format!("999{:06}", k % 1_000_000)) {
            return n.to_string();
        }
        k += 1;
    }
}

/// Distinct synthetic NHS numbers, `count` of them, in order.
pub fn nhs_numbers(count: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(count);
    let mut k = 0u32;
    while out.len() < count {
        if let Some(n) = NhsNumber::with_check_digit(&format!("999{k:06}")) {
            out.push(n.to_string());
        }
        k += 1;
    }
    out
}

/// Demographics of synthetic person `i`.
pub fn patient(i: usize, nhs: &str, gp_ods: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": NhsNumber::SYSTEM, "value": nhs}],
        "name": [{"family": FAMILIES[i % FAMILIES.len()], "given": [GIVEN[(i / 7) % GIVEN.len()]]}],
        "gender": if i.is_multiple_of(2) { "female" } else { "male" },
        "birthDate": format!("{}-{:02}-{:02}", 1925 + (i % 60), 1 + (i % 12), 1 + (i % 28)),
        "address": [{"line": [format!("{} Synthetic Street", 1 + i % 200)], "postalCode": POSTCODES[i % POSTCODES.len()]}],
        "generalPractitioner": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": gp_ods}}]
    })
}

/// The rest of a person's record: consent to share, care team, CPR decision, preferred place of
/// death. `patient_id` is the server's id for the Patient.
pub fn record(i: usize, patient_id: &str, hospice_ods: &str) -> Vec<Value> {
    let subject = json!({"reference": format!("Patient/{patient_id}")});
    let consent_code = match i % 10 {
        0 => "882941000000102", // withdrawn
        1 => "882961000000101", // best interests
        2 => "883001000000106", // by LPA
        _ => "882921000000109", // given
    };
    let cpr = if i.is_multiple_of(3) {
        "450475007"
    } else {
        "450476008"
    };
    let ppd = [
        "110481000000108",
        "108401000000102",
        "109401000000108",
        "89761000000106",
    ][i % 4];
    vec![
        json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": consent_code}]}],
            "patient": subject.clone(), "performer": [subject.clone()], "dateTime": "2026-01-15",
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]}}),
        json!({"resourceType": "CareTeam", "status": "active", "subject": subject, "name": "Palliative care team",
            "participant": [{"member": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": hospice_ods}}}]}),
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": cpr}]},
            "subject": subject, "effectiveDateTime": "2026-02-01T09:30:00Z", "performer": [{"display": "Dr Synthetic"}]}),
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "https://fhir.epaccs.nhs.example/CodeSystem/epaccs-observables", "code": "preferred-place-of-death"}]},
            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": ppd}]},
            "subject": subject, "effectiveDateTime": "2026-02-01T09:30:00Z"}),
    ]
}
