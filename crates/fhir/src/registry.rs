//! The resource types the record holds, and how each is tied to the person it is about.

use epaccs_core::NhsNumber;
use serde_json::Value;

/// A resource type the service stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceKind {
    pub name: &'static str,
    /// The elements (in order) whose reference names the patient; empty for types that are not
    /// patient data (Practitioner, Organization...). `Patient` itself is keyed by its own id.
    pub patient_elements: &'static [&'static str],
    /// Whether clients may write it (AuditEvent is written by the server only).
    pub client_writable: bool,
}

impl ResourceKind {
    pub fn is_patient_data(&self) -> bool {
        self.name == "Patient" || !self.patient_elements.is_empty()
    }
}

const fn kind(name: &'static str, patient_elements: &'static [&'static str]) -> ResourceKind {
    ResourceKind {
        name,
        patient_elements,
        client_writable: true,
    }
}

/// Every resource type the service holds, in CapabilityStatement order.
pub const KINDS: &[ResourceKind] = &[
    kind("Patient", &[]),
    kind("Practitioner", &[]),
    kind("PractitionerRole", &[]),
    kind("Organization", &[]),
    kind("RelatedPerson", &["patient"]),
    kind("CareTeam", &["subject"]),
    kind("EpisodeOfCare", &["patient"]),
    kind("Consent", &["patient"]),
    kind("CarePlan", &["subject"]),
    kind("Goal", &["subject"]),
    kind("Observation", &["subject"]),
    kind("Condition", &["subject"]),
    kind("Flag", &["subject"]),
    kind("Composition", &["subject"]),
    kind("DocumentReference", &["subject"]),
    kind("MedicationRequest", &["subject"]),
    kind("Procedure", &["subject"]),
    kind("QuestionnaireResponse", &["subject"]),
    kind("Provenance", &["target"]),
    kind("Subscription", &[]),
    ResourceKind {
        name: "AuditEvent",
        patient_elements: &[],
        client_writable: false,
    },
];

pub fn kind_of(name: &str) -> Option<&'static ResourceKind> {
    KINDS.iter().find(|k| k.name == name)
}

/// How a resource names its patient, before the store resolves it to a patient key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatientLink {
    /// Not patient data.
    None,
    /// The resource is the Patient with this id.
    SelfPatient(String),
    /// `Patient/{id}`.
    Patient(String),
    /// A logical reference by NHS number (`reference.identifier`), resolved by the store.
    Nhs(NhsNumber),
    /// A reference to another resource (e.g. Provenance.target): the patient is that resource's.
    Via { resource_type: String, id: String },
    /// Patient data that names no patient: refused on write.
    Missing,
}

/// Splits a reference string into (type, id), accepting relative (`Patient/1`), versioned
/// (`Patient/1/_history/2`) and absolute (`https://host/fhir/Patient/1`) forms.
pub fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let r = reference.split('#').next().unwrap_or(reference);
    let r = match r.find("/_history/") {
        Some(i) => &r[..i],
        None => r,
    };
    let mut parts = r.rsplit('/');
    let id = parts.next()?;
    let ty = parts.next()?;
    let valid_type = ty.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && ty.chars().all(|c| c.is_ascii_alphanumeric());
    (valid_type && is_valid_id(id)).then_some((ty, id))
}

/// FHIR ids: 1 to 64 of `[A-Za-z0-9\-\.]`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Finds the patient link of a resource from its kind's patient elements.
pub fn patient_link(kind: &ResourceKind, resource: &Value) -> PatientLink {
    if kind.name == "Patient" {
        return resource
            .get("id")
            .and_then(Value::as_str)
            .map(|id| PatientLink::SelfPatient(id.to_string()))
            .unwrap_or(PatientLink::Missing);
    }
    if kind.patient_elements.is_empty() {
        return PatientLink::None;
    }
    for element in kind.patient_elements {
        let refs: Vec<&Value> = match resource.get(*element) {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v) => vec![v],
            None => vec![],
        };
        // A Patient reference wins over an indirect one.
        let mut via = None;
        for r in refs {
            if let Some((ty, id)) = r
                .get("reference")
                .and_then(Value::as_str)
                .and_then(split_reference)
            {
                if ty == "Patient" {
                    return PatientLink::Patient(id.to_string());
                }
                via.get_or_insert(PatientLink::Via {
                    resource_type: ty.to_string(),
                    id: id.to_string(),
                });
            } else if let Some(ident) = r.get("identifier") {
                let sys = ident.get("system").and_then(Value::as_str);
                let val = ident.get("value").and_then(Value::as_str);
                if let (Some(NhsNumber::SYSTEM), Some(v)) = (sys, val) {
                    if let Ok(n) = NhsNumber::parse(v) {
                        return PatientLink::Nhs(n);
                    }
                }
            }
        }
        if let Some(v) = via {
            return v;
        }
    }
    PatientLink::Missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references() {
        assert_eq!(split_reference("Patient/abc"), Some(("Patient", "abc")));
        assert_eq!(
            split_reference("http://x/fhir/Patient/abc"),
            Some(("Patient", "abc"))
        );
        assert_eq!(
            split_reference("Patient/abc/_history/3"),
            Some(("Patient", "abc"))
        );
        assert_eq!(split_reference("urn:uuid:1234"), None);
        assert_eq!(split_reference("abc"), None);
    }

    #[test]
    fn links() {
        let obs = kind_of("Observation").expect("known");
        assert_eq!(
            patient_link(obs, &json!({"subject": {"reference": "Patient/p1"}})),
            PatientLink::Patient("p1".into())
        );
        assert_eq!(patient_link(obs, &json!({})), PatientLink::Missing);
        let nhs = json!({"subject": {"identifier": {"system": NhsNumber::SYSTEM, "value": "9434765919"}}});
        assert!(matches!(patient_link(obs, &nhs), PatientLink::Nhs(_)));
        let prov = kind_of("Provenance").expect("known");
        assert_eq!(
            patient_link(prov, &json!({"target": [{"reference": "Observation/o1"}]})),
            PatientLink::Via {
                resource_type: "Observation".into(),
                id: "o1".into()
            }
        );
        assert_eq!(
            patient_link(kind_of("Organization").expect("known"), &json!({})),
            PatientLink::None
        );
    }
}
