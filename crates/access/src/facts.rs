//! The facts about one person that the sharing rules need.

use epaccs_core::{codes, OdsCode};
use epaccs_fhir::date;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;

/// The state of consent to share the record, from the latest Consent resource that speaks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ConsentStatus {
    /// No consent recorded.
    #[default]
    None,
    /// Given by the person.
    Given,
    /// A best-interests decision under the Mental Capacity Act 2005.
    BestInterests,
    /// Given by the holder of a lasting power of attorney for health and welfare.
    ByLpa,
    /// Withdrawn.
    Withdrawn,
}

impl ConsentStatus {
    pub fn permits_sharing(self) -> bool {
        matches!(
            self,
            ConsentStatus::Given | ConsentStatus::BestInterests | ConsentStatus::ByLpa
        )
    }
}

/// A deny provision of the current consent: who it refuses, when, and for which data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DenyProvision {
    /// ODS codes refused.
    pub orgs: Vec<String>,
    /// Roles refused (codes of `ROLE_SYSTEM`).
    pub roles: Vec<String>,
    /// In force from (micros, inclusive); open if absent.
    pub from: Option<i64>,
    /// In force until (micros, exclusive); open if absent.
    pub until: Option<i64>,
    /// Resource types refused; all data if empty.
    pub classes: Vec<String>,
}

/// The code system used in Consent.provision.actor.role to refuse a whole role.
pub const ROLE_SYSTEM: &str = "https://fhir.epaccs.nhs.example/CodeSystem/sharing-role";
/// The code system for Consent.provision.class (resource types).
pub const RESOURCE_TYPES_SYSTEM: &str = "http://hl7.org/fhir/resource-types";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PatientFacts {
    pub consent: ConsentStatus,
    /// The period of the consent (micros); sharing outside it is refused.
    pub consent_from: Option<i64>,
    pub consent_until: Option<i64>,
    pub denies: Vec<DenyProvision>,
    /// ODS codes of the registered GP practice(s).
    pub gp_orgs: BTreeSet<String>,
    /// ODS codes of organisations in an active care team.
    pub care_team_orgs: BTreeSet<String>,
    /// ODS codes of organisations that have written to the record.
    pub writer_orgs: BTreeSet<String>,
}

impl PatientFacts {
    /// Whether `org` has a legitimate relationship with the person.
    pub fn has_relationship(&self, org: &OdsCode) -> bool {
        let o = org.as_str();
        self.gp_orgs.contains(o) || self.care_team_orgs.contains(o) || self.writer_orgs.contains(o)
    }

    /// Whether sharing under consent is in force at `now`.
    pub fn consent_in_force(&self, now: i64) -> bool {
        self.consent.permits_sharing()
            && self.consent_from.is_none_or(|f| now >= f)
            && self.consent_until.is_none_or(|u| now < u)
    }

    /// Derives the facts. `org_of` resolves an `Organization/{id}` reference to its ODS code.
    pub fn derive(
        patient: Option<&Value>,
        consents: &[Value],
        care_teams: &[Value],
        writer_orgs: BTreeSet<String>,
        org_of: &dyn Fn(&str) -> Option<String>,
    ) -> PatientFacts {
        let mut facts = PatientFacts {
            writer_orgs,
            ..Default::default()
        };
        if let Some(p) = patient {
            for gp in arr(p, "generalPractitioner") {
                if let Some(ods) = ods_of(gp, org_of) {
                    facts.gp_orgs.insert(ods);
                }
            }
        }
        for ct in care_teams {
            let status = ct.get("status").and_then(Value::as_str).unwrap_or("active");
            if !matches!(status, "active" | "proposed" | "suspended") {
                continue;
            }
            if let Some(ods) = ct
                .get("managingOrganization")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
                .find_map(|r| ods_of(r, org_of))
            {
                facts.care_team_orgs.insert(ods);
            }
            for part in arr(ct, "participant") {
                for key in ["member", "onBehalfOf"] {
                    if let Some(ods) = part.get(key).and_then(|r| ods_of(r, org_of)) {
                        facts.care_team_orgs.insert(ods);
                    }
                }
            }
        }
        // The latest consent record about sharing decides; entered-in-error ones never count.
        let mut relevant: Vec<&Value> = consents
            .iter()
            .filter(|c| c.get("status").and_then(Value::as_str) != Some("entered-in-error"))
            .filter(|c| {
                c.get("status").and_then(Value::as_str) != Some("draft")
                    && c.get("status").and_then(Value::as_str) != Some("proposed")
            })
            .filter(|c| sharing_code(c).is_some() || is_privacy_scope(c))
            .collect();
        relevant.sort_by_key(|c| consent_time(c));
        if let Some(c) = relevant.last() {
            let status = c.get("status").and_then(Value::as_str).unwrap_or_default();
            let top = c.get("provision");
            let top_deny = top.and_then(|p| p.get("type")).and_then(Value::as_str) == Some("deny")
                && top.is_some_and(|p| p.get("actor").is_none() && p.get("class").is_none());
            facts.consent = match (status, sharing_code(c).as_deref()) {
                ("inactive" | "rejected", _) => ConsentStatus::Withdrawn,
                (_, _) if top_deny => ConsentStatus::Withdrawn,
                (_, Some(codes::consent::WITHDRAWN)) => ConsentStatus::Withdrawn,
                (_, Some(codes::consent::GIVEN)) => ConsentStatus::Given,
                (_, Some(codes::consent::BEST_INTERESTS)) => ConsentStatus::BestInterests,
                (_, Some(codes::consent::BY_LPA)) => ConsentStatus::ByLpa,
                // A privacy consent without one of the four codes: permit unless it denies.
                _ => ConsentStatus::Given,
            };
            if let Some(period) = top.and_then(|p| p.get("period")) {
                facts.consent_from = period_bound(period, "start").map(|r| r.low);
                facts.consent_until = period_bound(period, "end").map(|r| r.high);
            }
            if let Some(p) = top {
                collect_denies(p, org_of, &mut facts.denies);
            }
        }
        facts
    }
}

fn arr<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn period_bound(period: &Value, key: &str) -> Option<date::Range> {
    period
        .get(key)
        .and_then(Value::as_str)
        .and_then(date::parse_range)
}

/// The ODS code a Reference names: by identifier, or by resolving `Organization/{id}`.
fn ods_of(reference: &Value, org_of: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(ident) = reference.get("identifier") {
        if ident.get("system").and_then(Value::as_str) == Some(OdsCode::SYSTEM) {
            return ident
                .get("value")
                .and_then(Value::as_str)
                .and_then(|v| OdsCode::parse(v).ok())
                .map(|o| o.to_string());
        }
    }
    let r = reference.get("reference").and_then(Value::as_str)?;
    let (ty, id) = epaccs_fhir::registry::split_reference(r)?;
    (ty == "Organization").then(|| org_of(id)).flatten()
}

fn sharing_code(consent: &Value) -> Option<String> {
    arr(consent, "category")
        .flat_map(|cc| arr(cc, "coding"))
        .filter_map(|c| c.get("code").and_then(Value::as_str))
        .find(|code| {
            [
                codes::consent::GIVEN,
                codes::consent::WITHDRAWN,
                codes::consent::BEST_INTERESTS,
                codes::consent::BY_LPA,
            ]
            .contains(code)
        })
        .map(str::to_string)
}

fn is_privacy_scope(consent: &Value) -> bool {
    consent
        .get("scope")
        .map(|s| {
            arr(s, "coding")
                .any(|c| c.get("code").and_then(Value::as_str) == Some("patient-privacy"))
        })
        .unwrap_or(false)
}

fn consent_time(c: &Value) -> (i64, i64) {
    let dt = c
        .get("dateTime")
        .and_then(Value::as_str)
        .and_then(date::parse_range)
        .map_or(i64::MIN, |r| r.low);
    let updated = c
        .get("meta")
        .and_then(|m| m.get("lastUpdated"))
        .and_then(Value::as_str)
        .and_then(date::parse_range)
        .map_or(i64::MIN, |r| r.low);
    (dt, updated)
}

fn collect_denies(
    provision: &Value,
    org_of: &dyn Fn(&str) -> Option<String>,
    out: &mut Vec<DenyProvision>,
) {
    for p in arr(provision, "provision") {
        if p.get("type").and_then(Value::as_str) == Some("deny") {
            let mut d = DenyProvision::default();
            for actor in arr(p, "actor") {
                if let Some(ods) = actor.get("reference").and_then(|r| ods_of(r, org_of)) {
                    d.orgs.push(ods);
                }
                for c in actor.get("role").into_iter().flat_map(|r| arr(r, "coding")) {
                    if c.get("system").and_then(Value::as_str) == Some(ROLE_SYSTEM) {
                        if let Some(code) = c.get("code").and_then(Value::as_str) {
                            d.roles.push(code.to_string());
                        }
                    }
                }
            }
            for c in arr(p, "class") {
                if let Some(code) = c.get("code").and_then(Value::as_str) {
                    d.classes.push(code.to_string());
                }
            }
            if let Some(period) = p.get("period") {
                d.from = period_bound(period, "start").map(|r| r.low);
                d.until = period_bound(period, "end").map(|r| r.high);
            }
            out.push(d);
        }
        collect_denies(p, org_of, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn consent(code: &str, status: &str, when: &str) -> Value {
        json!({"resourceType": "Consent", "status": status, "dateTime": when,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": codes::SNOMED, "code": code}]}]})
    }

    fn derive(consents: &[Value]) -> PatientFacts {
        PatientFacts::derive(None, consents, &[], BTreeSet::new(), &|_| None)
    }

    #[test]
    fn the_latest_consent_decides() {
        assert_eq!(derive(&[]).consent, ConsentStatus::None);
        let given = consent(codes::consent::GIVEN, "active", "2024-01-01");
        let withdrawn = consent(codes::consent::WITHDRAWN, "active", "2024-06-01");
        assert_eq!(
            derive(std::slice::from_ref(&given)).consent,
            ConsentStatus::Given
        );
        assert_eq!(
            derive(&[withdrawn.clone(), given.clone()]).consent,
            ConsentStatus::Withdrawn
        );
        let regiven = consent(codes::consent::BY_LPA, "active", "2024-07-01");
        assert_eq!(
            derive(&[given.clone(), withdrawn, regiven]).consent,
            ConsentStatus::ByLpa
        );
        let inactive = consent(codes::consent::GIVEN, "inactive", "2024-08-01");
        assert_eq!(
            derive(&[given.clone(), inactive]).consent,
            ConsentStatus::Withdrawn
        );
        let eie = consent(codes::consent::WITHDRAWN, "entered-in-error", "2024-09-01");
        assert_eq!(derive(&[given, eie]).consent, ConsentStatus::Given);
        assert_eq!(
            derive(&[consent(codes::consent::BEST_INTERESTS, "active", "2024")]).consent,
            ConsentStatus::BestInterests
        );
    }

    #[test]
    fn deny_provisions_and_relationships() {
        let mut c = consent(codes::consent::GIVEN, "active", "2024-01-01");
        c["provision"] = json!({"type": "permit", "provision": [{"type": "deny",
            "actor": [{"role": {"coding": [{"system": ROLE_SYSTEM, "code": "care-home"}]},
                       "reference": {"identifier": {"system": OdsCode::SYSTEM, "value": "X12345"}}}],
            "class": [{"system": RESOURCE_TYPES_SYSTEM, "code": "Observation"}]}]});
        let f = derive(&[c]);
        assert_eq!(f.denies.len(), 1);
        assert_eq!(f.denies[0].orgs, vec!["X12345".to_string()]);
        assert_eq!(f.denies[0].roles, vec!["care-home".to_string()]);
        assert_eq!(f.denies[0].classes, vec!["Observation".to_string()]);

        let patient = json!({"generalPractitioner": [{"identifier": {"system": OdsCode::SYSTEM, "value": "a81001"}}, {"reference": "Organization/o2"}]});
        let team = json!({"status": "active", "participant": [{"member": {"reference": "Organization/o3"}}]});
        let f = PatientFacts::derive(Some(&patient), &[], &[team], BTreeSet::new(), &|id| {
            Some(format!("ORG{id}").to_uppercase())
        });
        assert!(f.gp_orgs.contains("A81001") && f.gp_orgs.contains("ORGO2"));
        assert!(f.care_team_orgs.contains("ORGO3"));
    }
}
