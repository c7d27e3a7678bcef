//! The EPaCCS profiles (`profiles/`): loaded at start, served as conformance resources, and used
//! to validate every write of a profiled resource and `$validate`.
//!
//! Which profiles apply: those the resource claims in `meta.profile`, and those whose
//! `applies-when` rule (`<path> in <ValueSet>`, or just the type) matches it, so an Observation
//! with a CPR-decision code is checked as a CPR decision whether or not it says so.
//!
//! What is checked, from each profile's differential: cardinality (`min`/`max`), `fixed[x]` and
//! `pattern[x]` values, required bindings against the shipped ValueSets, and the named
//! invariants (`ppc-1`, `epaccs-review-1`, `epaccs-ppd-1`, `epaccs-akps-1`, `epaccs-meds-1`,
//! `epaccs-respect-1`).

use crate::date;
use crate::validate::Issue;
use include_dir::{include_dir, Dir};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

static PROFILES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../profiles");

pub const APPLIES_WHEN: &str = "https://fhir.epaccs.nhs.example/StructureDefinition/applies-when";
pub const REVIEW_DATE: &str =
    "https://fhir.epaccs.nhs.example/StructureDefinition/planned-review-date";
pub const BOX_LOCATION: &str =
    "https://fhir.epaccs.nhs.example/StructureDefinition/anticipatory-medicines-location";

#[derive(Debug, Clone)]
enum Applies {
    Always,
    Coded {
        path: Vec<String>,
        value_set: String,
    },
}

#[derive(Debug, Clone)]
struct Rule {
    path: Vec<String>,
    display: String,
    min: Option<u64>,
    max: Option<u64>,
    pattern: Option<Value>,
    fixed: Option<Value>,
    binding: Option<String>,
    invariants: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct Profile {
    url: String,
    type_: String,
    applies: Option<Applies>,
    rules: Vec<Rule>,
}

/// The loaded conformance resources.
#[derive(Debug, Default)]
pub struct Profiles {
    profiles: Vec<Profile>,
    value_sets: HashMap<String, HashSet<(String, String)>>,
    /// Every conformance resource, by type then id, for serving.
    resources: HashMap<String, Vec<Value>>,
}

#[derive(Debug, thiserror::Error)]
#[error("profile {0}: {1}")]
pub struct ProfileError(String, String);

fn split_path(p: &str) -> Vec<String> {
    p.split('.')
        .skip(1)
        .map(|s| s.trim_end_matches("[x]").to_string())
        .collect()
}

impl Profiles {
    /// The shipped profiles, compiled into the binary.
    pub fn shipped() -> Result<Self, ProfileError> {
        let mut out = Profiles::default();
        let mut files = Vec::new();
        for dir in ["structuredefinitions", "valuesets", "codesystems"] {
            if let Some(d) = PROFILES.get_dir(dir) {
                files.extend(d.files());
            }
        }
        for f in files {
            let name = f.path().display().to_string();
            let v: Value = serde_json::from_slice(f.contents())
                .map_err(|e| ProfileError(name.clone(), e.to_string()))?;
            out.add(v).map_err(|e| ProfileError(name, e))?;
        }
        let search: Value = serde_json::from_str(crate::search::DEFINITIONS_JSON)
            .map_err(|e| ProfileError("search-parameters".into(), e.to_string()))?;
        for e in search
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = e.get("resource") {
                out.resources
                    .entry("SearchParameter".into())
                    .or_default()
                    .push(r.clone());
            }
        }
        Ok(out)
    }

    fn add(&mut self, v: Value) -> Result<(), String> {
        let ty = v
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match ty.as_str() {
            "ValueSet" => {
                let url = v
                    .get("url")
                    .and_then(Value::as_str)
                    .ok_or("a ValueSet needs a url")?
                    .to_string();
                let mut codes = HashSet::new();
                for inc in v
                    .pointer("/compose/include")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let system = inc
                        .get("system")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    for c in inc
                        .get("concept")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(code) = c.get("code").and_then(Value::as_str) {
                            codes.insert((system.to_string(), code.to_string()));
                        }
                    }
                }
                self.value_sets.insert(url, codes);
            }
            "StructureDefinition" => {
                let url = v
                    .get("url")
                    .and_then(Value::as_str)
                    .ok_or("a StructureDefinition needs a url")?
                    .to_string();
                let type_ = v
                    .get("type")
                    .and_then(Value::as_str)
                    .ok_or("no type")?
                    .to_string();
                let applies = v
                    .get("extension")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|e| e.get("url").and_then(Value::as_str) == Some(APPLIES_WHEN))
                    .and_then(|e| e.get("valueString").and_then(Value::as_str))
                    .map(|s| match s.split_once(" in ") {
                        Some((path, vs)) => Applies::Coded {
                            path: split_path(path),
                            value_set: vs.trim().to_string(),
                        },
                        None => Applies::Always,
                    });
                let mut rules = Vec::new();
                for e in v
                    .pointer("/differential/element")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let p = e.get("path").and_then(Value::as_str).unwrap_or_default();
                    let pattern = e.as_object().and_then(|o| {
                        o.iter()
                            .find(|(k, _)| k.starts_with("pattern"))
                            .map(|(_, v)| v.clone())
                    });
                    let fixed = e.as_object().and_then(|o| {
                        o.iter()
                            .find(|(k, _)| k.starts_with("fixed"))
                            .map(|(_, v)| v.clone())
                    });
                    let binding = e
                        .get("binding")
                        .filter(|b| b.get("strength").and_then(Value::as_str) == Some("required"))
                        .and_then(|b| b.get("valueSet").and_then(Value::as_str))
                        .map(str::to_string);
                    let invariants = e
                        .get("constraint")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|c| {
                            Some((
                                c.get("key")?.as_str()?.to_string(),
                                c.get("human")?.as_str()?.to_string(),
                            ))
                        })
                        .collect();
                    rules.push(Rule {
                        path: split_path(p),
                        display: p.replace("[x]", ""),
                        min: e.get("min").and_then(Value::as_u64),
                        max: e
                            .get("max")
                            .and_then(Value::as_str)
                            .and_then(|m| m.parse().ok()),
                        pattern,
                        fixed,
                        binding,
                        invariants,
                    });
                }
                self.profiles.push(Profile {
                    url,
                    type_,
                    applies,
                    rules,
                });
            }
            "CodeSystem" => {}
            other => return Err(format!("unexpected resource type {other}")),
        }
        self.resources.entry(ty).or_default().push(v);
        Ok(())
    }

    /// Conformance resources of a type (StructureDefinition, ValueSet, CodeSystem, SearchParameter).
    pub fn resources(&self, ty: &str) -> &[Value] {
        self.resources.get(ty).map(Vec::as_slice).unwrap_or(&[])
    }

    fn in_value_set(&self, vs: &str, node: &Value) -> bool {
        let Some(codes) = self.value_sets.get(vs) else {
            return false;
        };
        let hit = |sys: &str, code: &str| codes.contains(&(sys.to_string(), code.to_string()));
        match node {
            Value::String(code) => codes.iter().any(|(_, c)| c == code),
            Value::Object(o) => {
                if let Some(cs) = o.get("coding").and_then(Value::as_array) {
                    cs.iter().any(|c| {
                        hit(
                            c.get("system").and_then(Value::as_str).unwrap_or(""),
                            c.get("code").and_then(Value::as_str).unwrap_or(""),
                        )
                    })
                } else {
                    hit(
                        o.get("system").and_then(Value::as_str).unwrap_or(""),
                        o.get("code").and_then(Value::as_str).unwrap_or(""),
                    )
                }
            }
            _ => false,
        }
    }

    fn applies(&self, p: &Profile, resource: &Value) -> bool {
        let claimed = resource
            .pointer("/meta/profile")
            .and_then(Value::as_array)
            .is_some_and(|ps| {
                ps.iter().any(|u| {
                    u.as_str()
                        .is_some_and(|u| u.split('|').next() == Some(p.url.as_str()))
                })
            });
        claimed
            || match &p.applies {
                Some(Applies::Always) => true,
                Some(Applies::Coded { path, value_set }) => nodes(resource, path)
                    .iter()
                    .any(|n| self.in_value_set(value_set, n)),
                None => false,
            }
    }

    /// The URLs of the profiles that apply to a resource.
    pub fn applicable(&self, resource: &Value) -> Vec<String> {
        let ty = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.profiles
            .iter()
            .filter(|p| p.type_ == ty && self.applies(p, resource))
            .map(|p| p.url.clone())
            .collect()
    }

    /// Validates a resource against every profile that applies; returns the issues found.
    pub fn validate(&self, resource: &Value) -> Vec<Issue> {
        let ty = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut issues = Vec::new();
        for p in self
            .profiles
            .iter()
            .filter(|p| p.type_ == ty && self.applies(p, resource))
        {
            let name = p.url.rsplit('/').next().unwrap_or(&p.url).to_string();
            for r in &p.rules {
                self.check_rule(&name, r, resource, &mut issues);
            }
        }
        issues
    }

    fn check_rule(&self, profile: &str, r: &Rule, resource: &Value, issues: &mut Vec<Issue>) {
        let err = |code: &'static str, msg: String| {
            Issue::error(
                code,
                Some(r.display.clone()),
                format!("{msg} (profile {profile})"),
            )
        };
        if r.path.is_empty() {
            for (key, human) in &r.invariants {
                if let Some(problem) = invariant(key, resource) {
                    issues.push(Issue::error(
                        "invariant",
                        Some(r.display.clone()),
                        format!("{key}: {human}: {problem} (profile {profile})"),
                    ));
                }
            }
            return;
        }
        // Cardinality is counted within each parent that exists.
        let (parent, last) = r.path.split_at(r.path.len() - 1);
        for parent_node in nodes(resource, parent) {
            let n = nodes(parent_node, last).len() as u64;
            if let Some(min) = r.min {
                if n < min {
                    issues.push(err(
                        "required",
                        format!("{} is required (at least {min})", r.display),
                    ));
                }
            }
            if let Some(max) = r.max {
                if n > max {
                    issues.push(err(
                        "structure",
                        format!("{} allows at most {max}, found {n}", r.display),
                    ));
                }
            }
        }
        for node in nodes(resource, &r.path) {
            if let Some(p) = &r.pattern {
                if !matches_pattern(node, p) {
                    issues.push(err("value", format!("{} must match {}", r.display, p)));
                }
            }
            if let Some(f) = &r.fixed {
                if node != f {
                    issues.push(err("value", format!("{} must be {}", r.display, f)));
                }
            }
            if let Some(vs) = &r.binding {
                if !self.in_value_set(vs, node) {
                    issues.push(err(
                        "code-invalid",
                        format!("{} has no code from the required value set {vs}", r.display),
                    ));
                }
            }
        }
    }
}

/// Values at a path below `v` (arrays flattened, choice elements matched by their stem).
fn nodes<'a>(v: &'a Value, path: &[String]) -> Vec<&'a Value> {
    let mut cur = vec![v];
    for step in path {
        let mut next = Vec::new();
        for n in cur {
            let Some(o) = n.as_object() else { continue };
            let found: Vec<&Value> = match o.get(step) {
                Some(x) => vec![x],
                None => o
                    .iter()
                    .filter(|(k, _)| {
                        k.len() > step.len()
                            && k.starts_with(step.as_str())
                            && k[step.len()..].starts_with(|c: char| c.is_ascii_uppercase())
                    })
                    .map(|(_, x)| x)
                    .collect(),
            };
            for x in found {
                match x {
                    Value::Array(a) => next.extend(a.iter()),
                    other => next.push(other),
                }
            }
        }
        cur = next;
    }
    cur
}

/// FHIR pattern matching: every element of the pattern appears in the value (arrays: each
/// pattern item is matched by some value item).
fn matches_pattern(value: &Value, pattern: &Value) -> bool {
    match (value, pattern) {
        (Value::Object(v), Value::Object(p)) => p
            .iter()
            .all(|(k, pv)| v.get(k).is_some_and(|vv| matches_pattern(vv, pv))),
        (Value::Array(v), Value::Array(p)) => p
            .iter()
            .all(|pi| v.iter().any(|vi| matches_pattern(vi, pi))),
        (v, p) => v == p,
    }
}

fn extension<'a>(v: &'a Value, url: &str) -> Option<&'a Value> {
    v.get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(url))
}

/// The named invariants; `Some(problem)` when violated.
fn invariant(key: &str, r: &Value) -> Option<String> {
    match key {
        "ppc-1" => (r.get("policy").is_none() && r.get("policyRule").is_none())
            .then(|| "neither policy nor policyRule is present".into()),
        "epaccs-review-1" => {
            let ext = extension(r, REVIEW_DATE);
            let is_plan = r.get("resourceType").and_then(Value::as_str) == Some("CarePlan");
            match ext
                .and_then(|e| e.get("valueDate").or_else(|| e.get("valueDateTime")))
                .and_then(Value::as_str)
            {
                None if is_plan => Some(format!(
                    "the planned review date (extension {REVIEW_DATE}) is missing"
                )),
                None => None,
                Some(d) => {
                    let review = date::parse_range(d)?;
                    let limit = chrono::Utc::now()
                        .date_naive()
                        .checked_add_months(chrono::Months::new(3))?;
                    let limit = date::parse_range(&limit.format("%Y-%m-%d").to_string())?;
                    (review.low >= limit.high).then(|| format!("{d} is more than 3 months ahead"))
                }
            }
        }
        "epaccs-ppd-1" => match (r.get("valueCodeableConcept"), r.get("dataAbsentReason")) {
            (None, None) => Some("neither a place nor a reason it was not recorded".into()),
            (Some(_), Some(_)) => Some("both a place and a reason it was not recorded".into()),
            _ => None,
        },
        "epaccs-akps-1" => {
            // A decimal such as 40.5 is not a score: never truncated to one.
            let v = r
                .get("valueInteger")
                .and_then(Value::as_f64)
                .or_else(|| r.pointer("/valueQuantity/value").and_then(Value::as_f64));
            match v {
                Some(n) if (0.0..=100.0).contains(&n) && n.fract() == 0.0 && n % 10.0 == 0.0 => {
                    None
                }
                Some(n) => Some(format!("{n} is not one of 0, 10, ... 100")),
                None => Some("no integer value".into()),
            }
        }
        "epaccs-respect-1" => {
            let has4 = r
                .get("section")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|sec| {
                    let by_code =
                        sec.pointer("/code/coding/0/code").and_then(Value::as_str) == Some("4");
                    let by_title = sec
                        .get("title")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.trim_start().starts_with('4'));
                    by_code || by_title
                });
            (!has4).then(|| "no section 4 (title starting '4' or code 4)".into())
        }
        "epaccs-meds-1" => extension(r, BOX_LOCATION)
            .is_none()
            .then(|| "where the box is kept is not recorded".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profiles() -> Profiles {
        Profiles::shipped().expect("profiles load")
    }

    #[test]
    fn cpr_decision_by_role() {
        let p = profiles();
        let ok = json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "450476008"}]},
            "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2026-01-01", "performer": [{"display": "Dr A"}]});
        assert!(p.validate(&ok).is_empty(), "{:?}", p.validate(&ok));
        let mut missing = ok.clone();
        missing.as_object_mut().expect("obj").remove("performer");
        missing
            .as_object_mut()
            .expect("obj")
            .remove("effectiveDateTime");
        let issues = p.validate(&missing);
        let paths: Vec<_> = issues.iter().filter_map(|i| i.path.clone()).collect();
        assert!(
            paths.contains(&"Observation.performer".to_string())
                && paths.contains(&"Observation.effective".to_string()),
            "{issues:?}"
        );
        // Other observations are not CPR decisions.
        let other =
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "weight"}});
        assert!(p.validate(&other).is_empty());
    }

    #[test]
    fn consent_and_invariants() {
        let p = profiles();
        let c = json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "882921000000109"}]}],
            "patient": {"reference": "Patient/p"}, "dateTime": "2026-01-01", "performer": [{"reference": "Patient/p"}]});
        let issues = p.validate(&c);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].message.contains("ppc-1"));
        let akps = json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "901671000000100"}]},
            "subject": {"reference": "Patient/p"}, "valueInteger": 45});
        assert!(p
            .validate(&akps)
            .iter()
            .any(|i| i.message.contains("epaccs-akps-1")));
    }

    #[test]
    fn care_plan_review_date() {
        let p = profiles();
        let far = (chrono::Utc::now().date_naive() + chrono::Days::new(200))
            .format("%Y-%m-%d")
            .to_string();
        let plan = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": "Patient/p"},
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "736373009"}]}],
            "extension": [{"url": REVIEW_DATE, "valueDate": far}]});
        assert!(p
            .validate(&plan)
            .iter()
            .any(|i| i.message.contains("more than 3 months")));
        let soon = (chrono::Utc::now().date_naive() + chrono::Days::new(30))
            .format("%Y-%m-%d")
            .to_string();
        let mut ok = plan.clone();
        ok["extension"][0]["valueDate"] = json!(soon);
        assert!(p.validate(&ok).is_empty(), "{:?}", p.validate(&ok));
    }
}
