//! Checks a resource on write. See the crate README for the approach.

use crate::registry::{self, ResourceKind};
use epaccs_core::NhsNumber;
use fhir_sdk::r4b::resources::Resource;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IssueSeverity {
    Error,
    Warning,
    Information,
}

/// One finding about a resource, with the FHIRPath-like location it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: IssueSeverity,
    /// The OperationOutcome issue type: `structure`, `invalid`, `required`, `value`, `invariant`...
    pub code: &'static str,
    pub path: Option<String>,
    pub message: String,
}

impl Issue {
    pub fn error(
        code: &'static str,
        path: impl Into<Option<String>>,
        message: impl Into<String>,
    ) -> Self {
        Issue {
            severity: IssueSeverity::Error,
            code,
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Why a resource body was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ValidationError {
    /// The body is not JSON at all (400).
    #[error("the body is not valid JSON: {0}")]
    Malformed(String),
    /// The JSON is not a resource of a known type, or not the type the URL names (400).
    #[error("{0}")]
    WrongType(String),
    /// The resource does not conform (422), with every issue found.
    #[error("the resource is not valid: {} issue(s)", .0.len())]
    Invalid(Vec<Issue>),
    /// Valid JSON that no backend can store: a NUL character (U+0000) in a string or a name
    /// (PostgreSQL text cannot hold it). 400, at the path given.
    #[error("{0}")]
    Unstorable(String),
}

/// The path of the first string or member name holding a NUL character (U+0000), if any.
fn nul_path(v: &Value, path: &mut String) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => Some(path.clone()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = nul_path(item, path);
            path.truncate(len);
            found
        }),
        Value::Object(m) => m.iter().find_map(|(k, item)| {
            if k.contains('\0') {
                return Some(path.clone());
            }
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k);
            let found = nul_path(item, path);
            path.truncate(len);
            found
        }),
        _ => None,
    }
}

/// Refuses JSON holding a NUL character anywhere.
pub fn check_no_nul(v: &Value) -> Result<(), ValidationError> {
    match nul_path(v, &mut String::new()) {
        None => Ok(()),
        Some(p) => Err(ValidationError::Unstorable(format!(
            "the body contains a NUL character (U+0000) at {}; it is never valid in FHIR",
            if p.is_empty() {
                "its top level"
            } else {
                p.as_str()
            }
        ))),
    }
}

/// Parses a request body as a JSON object.
pub fn parse_json(body: &[u8]) -> Result<Value, ValidationError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ValidationError::Malformed(e.to_string()))?;
    if !v.is_object() {
        return Err(ValidationError::Malformed(
            "a FHIR resource is a JSON object".into(),
        ));
    }
    check_no_nul(&v)?;
    Ok(v)
}

/// Validates `resource` as a resource of `expected_type` (which the caller has checked is held
/// here). On success the value is untouched: the caller stores exactly these bytes plus `meta`.
pub fn validate(expected: &ResourceKind, resource: &Value) -> Result<(), ValidationError> {
    // Bodies that did not come through `parse_json` (a patched resource, a bundle entry).
    check_no_nul(resource)?;
    let found = resource.get("resourceType").and_then(Value::as_str);
    match found {
        None => {
            return Err(ValidationError::WrongType(
                "the resource has no resourceType".into(),
            ))
        }
        Some(t) if t != expected.name => {
            return Err(ValidationError::WrongType(format!(
                "resourceType {t} does not match the URL, which names {}",
                expected.name
            )))
        }
        Some(_) => {}
    }
    let mut issues = Vec::new();
    check_empty(resource, expected.name, &mut issues);
    if let Some(id) = resource.get("id") {
        if !id.as_str().is_some_and(registry::is_valid_id) {
            issues.push(Issue::error(
                "value",
                format!("{}.id", expected.name),
                "id must be 1-64 characters of A-Z, a-z, 0-9, '-' and '.'",
            ));
        }
    }
    check_nhs_numbers(resource, expected.name, &mut issues);
    if !issues.is_empty() {
        return Err(ValidationError::Invalid(issues));
    }
    let typed: Resource = match serde_json::from_value(resource.clone()) {
        Ok(r) => r,
        Err(e) => {
            return Err(ValidationError::Invalid(vec![Issue::error(
                "structure",
                Some(expected.name.to_string()),
                format!(
                    "does not match the FHIR R4 {} structure: {e}",
                    expected.name
                ),
            )]))
        }
    };
    let round_trip = serde_json::to_value(&typed).map_err(|e| {
        ValidationError::Invalid(vec![Issue::error("structure", None, e.to_string())])
    })?;
    unknown_elements(resource, &round_trip, expected.name, &mut issues);
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ValidationError::Invalid(issues))
    }
}

/// Validates a resource of any R4 type by name (for conformance resources the server does not
/// store as records).
pub fn validate_as(type_name: &'static str, resource: &Value) -> Result<(), ValidationError> {
    validate(
        &ResourceKind {
            name: type_name,
            patient_elements: &[],
            client_writable: false,
        },
        resource,
    )
}

/// FHIR JSON forbids empty objects, empty arrays, empty strings and nulls (nulls are allowed only
/// inside arrays of primitives that carry extensions in a `_name` sibling).
fn check_empty(v: &Value, path: &str, issues: &mut Vec<Issue>) {
    match v {
        Value::Object(map) => {
            if map.is_empty() {
                issues.push(Issue::error(
                    "structure",
                    path.to_string(),
                    "empty objects are not allowed in FHIR JSON",
                ));
            }
            for (k, child) in map {
                let p = format!("{path}.{k}");
                match child {
                    Value::Null => {
                        issues.push(Issue::error("structure", p, "null is not allowed here"))
                    }
                    Value::String(s) if s.is_empty() => issues.push(Issue::error(
                        "structure",
                        p,
                        "empty strings are not allowed in FHIR JSON",
                    )),
                    Value::Array(a) if a.is_empty() => issues.push(Issue::error(
                        "structure",
                        p,
                        "empty arrays are not allowed in FHIR JSON",
                    )),
                    Value::Array(a) => {
                        let primitive_with_ext =
                            k.starts_with('_') || map.contains_key(&format!("_{k}"));
                        for (i, item) in a.iter().enumerate() {
                            let ip = format!("{p}[{i}]");
                            match item {
                                Value::Null if primitive_with_ext => {}
                                Value::Null => issues.push(Issue::error(
                                    "structure",
                                    ip,
                                    "null is not allowed here",
                                )),
                                _ => check_empty(item, &ip, issues),
                            }
                        }
                    }
                    _ => check_empty(child, &p, issues),
                }
            }
        }
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                check_empty(item, &format!("{path}[{i}]"), issues);
            }
        }
        _ => {}
    }
}

/// Every key of `input` must survive the typed round trip; what fhir-sdk dropped, it did not
/// know. Values are not compared (numbers may be re-formatted), only the presence of elements.
fn unknown_elements(input: &Value, round_trip: &Value, path: &str, issues: &mut Vec<Issue>) {
    match (input, round_trip) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => unknown_elements(v, w, &p, issues),
                    None => issues.push(Issue::error(
                        "structure",
                        p,
                        format!("unknown element '{k}': not part of the FHIR R4 definition here (use an extension)"),
                    )),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b.iter()).enumerate() {
                unknown_elements(v, w, &format!("{path}[{i}]"), issues);
            }
        }
        _ => {}
    }
}

/// Every identifier with the NHS number system anywhere in the resource must be a valid NHS
/// number: a wrong digit here is a wrong-patient match later.
fn check_nhs_numbers(v: &Value, path: &str, issues: &mut Vec<Issue>) {
    match v {
        Value::Object(map) => {
            if map.get("system").and_then(Value::as_str) == Some(NhsNumber::SYSTEM) {
                match map.get("value").and_then(Value::as_str) {
                    Some(val) => {
                        if let Err(e) = NhsNumber::parse(val) {
                            issues.push(Issue::error(
                                "value",
                                format!("{path}.value"),
                                e.to_string(),
                            ));
                        } else if val.contains(' ') {
                            issues.push(Issue::error(
                                "value",
                                format!("{path}.value"),
                                "an NHS number is stored as 10 digits without spaces",
                            ));
                        }
                    }
                    None => issues.push(Issue::error(
                        "required",
                        format!("{path}.value"),
                        "an NHS number identifier needs a value",
                    )),
                }
            }
            for (k, child) in map {
                check_nhs_numbers(child, &format!("{path}.{k}"), issues);
            }
        }
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                check_nhs_numbers(item, &format!("{path}[{i}]"), issues);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::kind_of;
    use serde_json::json;

    fn patient() -> &'static ResourceKind {
        kind_of("Patient").expect("Patient is held")
    }

    #[test]
    fn accepts_a_valid_patient() {
        let p = json!({"resourceType": "Patient", "identifier": [{"system": NhsNumber::SYSTEM, "value": "9434765919"}],
            "name": [{"family": "Smith", "given": ["Ann"]}], "birthDate": "1940-01-02",
            "extension": [{"url": "http://example.org/x", "valueString": "y"}]});
        validate(patient(), &p).expect("valid");
    }

    #[test]
    fn refuses_nul_anywhere_with_its_path() {
        for (body, path) in [
            (r#"{"resourceType":"Patient","id":"a\u0000"}"#, "id"),
            (
                r#"{"resourceType":"Patient","name":[{"given":["x","\u0000"]}]}"#,
                "name[0].given[1]",
            ),
            (r#"{"resourceType":"Patient","x\u0000":1}"#, "its top level"),
        ] {
            let Err(ValidationError::Unstorable(m)) = parse_json(body.as_bytes()) else {
                panic!("{body} should be refused")
            };
            assert!(m.contains(path), "{m}");
        }
        parse_json(br#"{"resourceType":"Patient","id":"a\u0001"}"#)
            .expect("other controls pass here");
    }

    #[test]
    fn refuses_unknown_elements_with_their_path() {
        let p = json!({"resourceType": "Patient", "name": [{"family": "Smith", "nickname": "Annie"}], "favouriteColour": "blue"});
        let Err(ValidationError::Invalid(issues)) = validate(patient(), &p) else {
            panic!("should fail")
        };
        let paths: Vec<_> = issues.iter().filter_map(|i| i.path.clone()).collect();
        assert!(
            paths.contains(&"Patient.favouriteColour".to_string()),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"Patient.name[0].nickname".to_string()),
            "{paths:?}"
        );
    }

    #[test]
    fn refuses_bad_nhs_numbers_and_wrong_types() {
        let p = json!({"resourceType": "Patient", "identifier": [{"system": NhsNumber::SYSTEM, "value": "9434765918"}]});
        assert!(matches!(
            validate(patient(), &p),
            Err(ValidationError::Invalid(_))
        ));
        let o = json!({"resourceType": "Observation"});
        assert!(matches!(
            validate(patient(), &o),
            Err(ValidationError::WrongType(_))
        ));
        let bad_gender = json!({"resourceType": "Patient", "gender": "robot"});
        assert!(matches!(
            validate(patient(), &bad_gender),
            Err(ValidationError::Invalid(_))
        ));
        let empty = json!({"resourceType": "Patient", "name": []});
        assert!(matches!(
            validate(patient(), &empty),
            Err(ValidationError::Invalid(_))
        ));
    }
}
