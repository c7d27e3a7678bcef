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
    /// The organisation that recorded the consent statement now in force (None when no
    /// statement is recorded, or for facts stored before this was kept).
    #[serde(default)]
    pub consent_by: Option<String>,
}

/// A stored Consent and the organisation that recorded its current version.
#[derive(Debug, Clone)]
pub struct RecordedConsent {
    pub value: Value,
    pub recorded_by: Option<String>,
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
        consents: &[RecordedConsent],
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
        if let Some(c) = latest_statement(consents) {
            facts.consent = c.status;
            facts.consent_by = c.writer_org.clone();
            let top = c.value.get("provision");
            if c.status.permits_sharing() {
                if let Some(period) = top.and_then(|p| p.get("period")) {
                    facts.consent_from = period_bound(period, "start").map(|r| r.low);
                    facts.consent_until = period_bound(period, "end").map(|r| r.high);
                }
                if let Some(p) = top {
                    collect_denies(p, true, org_of, &mut facts.denies);
                }
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
        .find(|code| SHARING_CODES.contains(code))
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

/// One consent record's statement about sharing, placed in time.
struct Statement<'a> {
    value: &'a Value,
    writer_org: Option<String>,
    status: ConsentStatus,
    /// When the statement was made, as a range: `[low, high)` in microseconds.
    low: i64,
    high: i64,
}

impl Statement<'_> {
    fn restricts(&self) -> bool {
        !self.status.permits_sharing()
    }
}

/// England's clocks are UTC or one hour ahead: a date without a time may have begun up to an
/// hour before the UTC day of the same name.
const ENGLAND_OFFSET: i64 = 3_600_000_000;

/// The statement a sharing Consent makes, or None if it makes none (not about sharing, draft,
/// proposed, entered in error).
fn statement(c: &RecordedConsent) -> Option<Statement<'_>> {
    let v = &c.value;
    let status = v.get("status").and_then(Value::as_str).unwrap_or_default();
    if matches!(status, "entered-in-error" | "draft" | "proposed") {
        return None;
    }
    let code = sharing_code(v);
    if code.is_none() && !is_privacy_scope(v) {
        return None;
    }
    let top = v.get("provision");
    let top_deny = top.and_then(|p| p.get("type")).and_then(Value::as_str) == Some("deny")
        && top.is_some_and(|p| p.get("actor").is_none() && p.get("class").is_none());
    let status = match (status, code.as_deref()) {
        ("inactive" | "rejected", _) => ConsentStatus::Withdrawn,
        (_, _) if top_deny => ConsentStatus::Withdrawn,
        (_, Some(codes::consent::WITHDRAWN)) => ConsentStatus::Withdrawn,
        (_, Some(codes::consent::GIVEN)) => ConsentStatus::Given,
        (_, Some(codes::consent::BEST_INTERESTS)) => ConsentStatus::BestInterests,
        (_, Some(codes::consent::BY_LPA)) => ConsentStatus::ByLpa,
        // A privacy consent without one of the four codes says nothing that may be relied on:
        // it is read as no consent (fail closed). Such a record is refused at write.
        _ => ConsentStatus::None,
    };
    let recorded = v
        .get("meta")
        .and_then(|m| m.get("lastUpdated"))
        .and_then(Value::as_str)
        .and_then(date::parse_range)
        .map(|r| r.low);
    let stated = v.get("dateTime").and_then(Value::as_str).and_then(|s| {
        let r = date::parse_range(s)?;
        let widened = if s.contains('T') {
            r.low
        } else {
            r.low - ENGLAND_OFFSET
        };
        Some((widened, r.high))
    });
    let (mut low, mut high) = match (stated, recorded) {
        (Some(s), _) => s,
        (None, Some(r)) => (r, r + 1),
        (None, None) => (i64::MIN, i64::MIN + 1),
    };
    // A statement cannot have been made after the service recorded it: a consent dated in the
    // future is placed when it was recorded, so it never outranks a later withdrawal.
    if let Some(r) = recorded {
        low = low.min(r);
        high = high.min(r + 1);
    }
    Some(Statement {
        value: v,
        writer_org: c.recorded_by.clone(),
        status,
        low,
        high,
    })
}

/// The statement that decides the person's consent state.
///
/// The rule: statements are placed by their `dateTime` as FHIR reads it (offsets honoured; a
/// date without a time covers its whole day, in England's time as well as UTC), never later than
/// the service recorded them. The latest statement decides. A statement that permits sharing
/// decides only if every statement that restricts it (a withdrawal, an inactive or rejected
/// consent, a consent without a status code) was made strictly before it; where the two cannot
/// be put in order (their times overlap, as a withdrawal dated 4 Dec against a consent at 09:00
/// on 4 Dec), the restriction decides.
fn latest_statement(consents: &[RecordedConsent]) -> Option<Statement<'_>> {
    let mut all: Vec<Statement<'_>> = consents.iter().filter_map(statement).collect();
    all.sort_by_key(|s| (s.low, s.high));
    let latest_permit = all.iter().rposition(|s| !s.restricts());
    let latest_restrict = all.iter().rposition(Statement::restricts);
    let pick = match (latest_permit, latest_restrict) {
        (Some(p), Some(r)) => {
            let permit_low = all[p].low;
            let restricted = all
                .iter()
                .filter(|s| s.restricts())
                .any(|s| s.high > permit_low);
            if restricted {
                r
            } else {
                p
            }
        }
        (Some(p), None) => p,
        (None, Some(r)) => r,
        (None, None) => return None,
    };
    Some(all.swap_remove(pick))
}

/// Collects the deny provisions of a consent's root provision and its nested ones. A root
/// provision of type deny that names actors or classes is itself a deny provision (without
/// either it withdraws consent, see `statement`).
fn collect_denies(
    provision: &Value,
    root: bool,
    org_of: &dyn Fn(&str) -> Option<String>,
    out: &mut Vec<DenyProvision>,
) {
    let is_deny = provision.get("type").and_then(Value::as_str) == Some("deny");
    if is_deny && (!root || provision.get("actor").is_some() || provision.get("class").is_some()) {
        let mut d = DenyProvision::default();
        let mut unresolved = false;
        for actor in arr(provision, "actor") {
            let mut named = false;
            if let Some(r) = actor.get("reference") {
                match ods_of(r, org_of) {
                    Some(ods) => {
                        d.orgs.push(ods);
                        named = true;
                    }
                    None => unresolved = true,
                }
            }
            for c in actor.get("role").into_iter().flat_map(|r| arr(r, "coding")) {
                if c.get("system").and_then(Value::as_str) == Some(ROLE_SYSTEM) {
                    if let Some(code) = c.get("code").and_then(Value::as_str) {
                        d.roles.push(code.to_string());
                        named = true;
                    }
                }
            }
            unresolved |= !named;
        }
        if unresolved {
            // An actor the service cannot identify: the refusal applies to everyone (fail
            // closed) rather than to no one. Such actors are refused at write.
            d.orgs.clear();
            d.roles.clear();
        }
        for c in arr(provision, "class") {
            if let Some(code) = c.get("code").and_then(Value::as_str) {
                d.classes.push(code.to_string());
            }
        }
        if let Some(period) = provision.get("period") {
            d.from = period_bound(period, "start").map(|r| r.low);
            d.until = period_bound(period, "end").map(|r| r.high);
        }
        out.push(d);
    }
    for p in arr(provision, "provision") {
        collect_denies(p, false, org_of, out);
    }
}

/// The elements of `Consent.provision` this service honours. Any other would be ignored, so a
/// Consent using one is refused at write.
const HONOURED_PROVISION_ELEMENTS: [&str; 7] = [
    "id",
    "extension",
    "type",
    "period",
    "actor",
    "class",
    "provision",
];

/// How far ahead of the service's clock a consent may be dated (clock skew between systems).
pub const CONSENT_CLOCK_SKEW_MICROS: i64 = 5 * 60 * 1_000_000;

/// Checks a Consent before it is written: a consent to share states one of the four SCCI1580
/// consent-status codes, is not dated in the future, and uses only provision shapes the
/// service honours. Returns (FHIRPath, message) for each problem.
pub fn check_consent(consent: &Value, now: i64) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let about_sharing = sharing_code(consent).is_some() || is_privacy_scope(consent);
    if !about_sharing {
        return problems;
    }
    let codes_given: Vec<&str> = arr(consent, "category")
        .flat_map(|cc| arr(cc, "coding"))
        .filter(|c| c.get("system").and_then(Value::as_str) == Some(codes::SNOMED))
        .filter_map(|c| c.get("code").and_then(Value::as_str))
        .filter(|code| SHARING_CODES.contains(code))
        .collect();
    match codes_given.len() {
        1 => {}
        0 => problems.push((
            "Consent.category".to_string(),
            format!(
                "a consent to share the record must state its status with exactly one SNOMED CT code: {} (consent given), {} (consent withdrawn), {} (best interests decision, Mental Capacity Act 2005) or {} (consent given by a lasting power of attorney for personal welfare)",
                codes::consent::GIVEN,
                codes::consent::WITHDRAWN,
                codes::consent::BEST_INTERESTS,
                codes::consent::BY_LPA
            ),
        )),
        _ => problems.push((
            "Consent.category".to_string(),
            "a consent to share the record states exactly one consent-status code; this one states several".to_string(),
        )),
    }
    if let Some(dt) = consent.get("dateTime").and_then(Value::as_str) {
        if date::parse_range(dt).is_some_and(|r| r.low > now + CONSENT_CLOCK_SKEW_MICROS) {
            problems.push((
                "Consent.dateTime".to_string(),
                format!("{dt} is in the future: a consent is recorded when it has been given or withdrawn"),
            ));
        }
    }
    if let Some(p) = consent.get("provision") {
        check_provision(p, "Consent.provision", 0, &mut problems);
    }
    problems
}

fn check_provision(p: &Value, path: &str, depth: usize, problems: &mut Vec<(String, String)>) {
    if let Some(obj) = p.as_object() {
        for key in obj.keys() {
            if !HONOURED_PROVISION_ELEMENTS.contains(&key.as_str()) {
                problems.push((
                    format!("{path}.{key}"),
                    format!("this service cannot honour {path}.{key}; state the restriction with actor (an organisation by ODS code, or a role), class (resource types) and period"),
                ));
            }
        }
    }
    let ty = p.get("type").and_then(Value::as_str);
    if depth > 0 && ty != Some("deny") {
        problems.push((
            format!("{path}.type"),
            "nested provisions must be of type deny: exceptions that permit within a refusal are not supported".to_string(),
        ));
    }
    if depth > 1 {
        problems.push((
            path.to_string(),
            "provisions nest one level deep at most".to_string(),
        ));
    }
    for (i, actor) in arr(p, "actor").enumerate() {
        let by_org = actor.get("reference").is_some_and(|r| {
            r.get("identifier")
                .and_then(|i| i.get("system"))
                .and_then(Value::as_str)
                == Some(OdsCode::SYSTEM)
                || r.get("reference")
                    .and_then(Value::as_str)
                    .and_then(epaccs_fhir::registry::split_reference)
                    .is_some_and(|(ty, _)| ty == "Organization")
        });
        let by_role = actor
            .get("role")
            .into_iter()
            .flat_map(|r| arr(r, "coding"))
            .any(|c| c.get("system").and_then(Value::as_str) == Some(ROLE_SYSTEM));
        if actor.get("reference").is_some() && !by_org {
            problems.push((
                format!("{path}.actor[{i}].reference"),
                "an actor is named as an organisation (ODS code identifier, or Organization reference); other actors cannot be honoured".to_string(),
            ));
        }
        if !by_org && !by_role {
            problems.push((
                format!("{path}.actor[{i}]"),
                format!("an actor is an organisation by ODS code or a role coded in {ROLE_SYSTEM}"),
            ));
        }
    }
    for (i, c) in arr(p, "class").enumerate() {
        let ok = c.get("system").and_then(Value::as_str) == Some(RESOURCE_TYPES_SYSTEM)
            && c.get("code")
                .and_then(Value::as_str)
                .is_some_and(|code| epaccs_fhir::registry::kind_of(code).is_some());
        if !ok {
            problems.push((
                format!("{path}.class[{i}]"),
                format!("a class is a resource type this service holds, coded in {RESOURCE_TYPES_SYSTEM}"),
            ));
        }
    }
    for (i, nested) in arr(p, "provision").enumerate() {
        check_provision(
            nested,
            &format!("{path}.provision[{i}]"),
            depth + 1,
            problems,
        );
    }
}

const SHARING_CODES: [&str; 4] = [
    codes::consent::GIVEN,
    codes::consent::WITHDRAWN,
    codes::consent::BEST_INTERESTS,
    codes::consent::BY_LPA,
];

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
        let recorded: Vec<RecordedConsent> = consents
            .iter()
            .map(|v| RecordedConsent {
                value: v.clone(),
                recorded_by: Some("GP001".into()),
            })
            .collect();
        PatientFacts::derive(None, &recorded, &[], BTreeSet::new(), &|_| None)
    }

    fn recorded_at(mut c: Value, when: &str) -> Value {
        c["meta"] = json!({"lastUpdated": when});
        c
    }

    /// Consent order follows FHIR dateTime semantics, and a restriction wins where the order is
    /// ambiguous (hazard: withdrawn consent not honoured).
    #[test]
    fn consent_order_follows_time_not_text() {
        use codes::consent::{GIVEN, WITHDRAWN};
        let rows: &[(&str, &str, ConsentStatus)] = &[
            // a withdrawal dated the same day as a timed consent: cannot be ordered, withdrawn
            (
                "2026-12-04T09:00:00Z",
                "2026-12-04",
                ConsentStatus::Withdrawn,
            ),
            // ... and the other way round
            (
                "2026-12-04",
                "2026-12-04T09:00:00Z",
                ConsentStatus::Withdrawn,
            ),
            // an offset: 10:00+14:00 is 20:00 UTC the day before, after the consent at 09:00Z
            (
                "2026-12-03T09:00:00Z",
                "2026-12-04T10:00:00+14:00",
                ConsentStatus::Withdrawn,
            ),
            // text order would put the withdrawal (06:00+09:00, i.e. 21:00Z on the 3rd) after the
            // consent at 22:00Z on the 3rd; in time it came before
            (
                "2026-12-03T22:00:00Z",
                "2026-12-04T06:00:00+09:00",
                ConsentStatus::Given,
            ),
            // clearly before: the later consent decides
            ("2026-12-04T09:00:00Z", "2026-12-03", ConsentStatus::Given),
            (
                "2026-12-04T09:00:00Z",
                "2026-12-04T08:59:59Z",
                ConsentStatus::Given,
            ),
            // a consent dated 2099 cannot outrank a withdrawal recorded after it
            (
                "2099-01-01",
                "2026-12-04T10:00:00Z",
                ConsentStatus::Withdrawn,
            ),
        ];
        for (given_at, withdrawn_at, expected) in rows {
            let g = recorded_at(consent(GIVEN, "active", given_at), "2026-12-04T09:30:00Z");
            let w = recorded_at(
                consent(WITHDRAWN, "active", withdrawn_at),
                "2026-12-04T10:30:00Z",
            );
            assert_eq!(
                derive(&[g.clone(), w.clone()]).consent,
                *expected,
                "given {given_at}, withdrawn {withdrawn_at}"
            );
            assert_eq!(
                derive(&[w, g]).consent,
                *expected,
                "order of storage must not matter: given {given_at}, withdrawn {withdrawn_at}"
            );
        }
    }

    /// A privacy consent without one of the four status codes grants nothing (hazard: consent
    /// recorded ambiguously).
    #[test]
    fn a_consent_without_a_status_code_is_no_consent() {
        let mut c = consent(codes::consent::GIVEN, "active", "2026-01-01");
        c["category"] = json!([{"coding": [{"system": codes::SNOMED, "code": "59284002"}]}]);
        assert_eq!(
            derive(std::slice::from_ref(&c)).consent,
            ConsentStatus::None
        );
        let given = consent(codes::consent::GIVEN, "active", "2025-01-01");
        assert_eq!(derive(&[given, c.clone()]).consent, ConsentStatus::None);
        let problems = check_consent(&c, 0);
        assert!(
            problems.iter().any(|(path, m)| path == "Consent.category"
                && m.contains(codes::consent::GIVEN)
                && m.contains(codes::consent::BY_LPA)),
            "{problems:?}"
        );
    }

    #[test]
    fn root_deny_provisions_with_actors_are_honoured() {
        let mut c = consent(codes::consent::GIVEN, "active", "2026-01-01");
        c["provision"] = json!({"type": "deny", "actor": [{"role": {"coding": [{"system": ROLE_SYSTEM, "code": "ambulance"}]},
            "reference": {"identifier": {"system": OdsCode::SYSTEM, "value": "RX801"}}}]});
        let f = derive(&[c]);
        assert_eq!(f.consent, ConsentStatus::Given);
        assert_eq!(f.denies.len(), 1);
        assert_eq!(f.denies[0].orgs, vec!["RX801".to_string()]);
        assert_eq!(f.denies[0].roles, vec!["ambulance".to_string()]);
    }

    #[test]
    fn provision_shapes_the_service_cannot_honour_are_refused() {
        let now = date::now_micros();
        let mut c = consent(codes::consent::GIVEN, "active", "2026-01-01");
        assert!(check_consent(&c, now).is_empty());
        let refused = [
            json!({"type": "permit", "purpose": [{"code": "HRESCH"}]}),
            json!({"type": "permit", "provision": [{"type": "permit"}]}),
            json!({"type": "permit", "provision": [{"type": "deny", "actor": [{"reference": {"reference": "Practitioner/p1"}}]}]}),
            json!({"type": "permit", "provision": [{"type": "deny", "class": [{"system": RESOURCE_TYPES_SYSTEM, "code": "Spaceship"}]}]}),
            json!({"type": "permit", "provision": [{"type": "deny", "provision": [{"type": "deny", "provision": [{"type": "deny"}]}]}]}),
            json!({"type": "deny", "data": [{"meaning": "instance", "reference": {"reference": "Observation/1"}}]}),
        ];
        for p in refused {
            c["provision"] = p.clone();
            assert!(!check_consent(&c, now).is_empty(), "accepted {p}");
        }
        c["provision"] = json!({"type": "permit", "provision": [{"type": "deny",
            "actor": [{"reference": {"reference": "Organization/o1"}}],
            "class": [{"system": RESOURCE_TYPES_SYSTEM, "code": "Observation"}],
            "period": {"start": "2026-01-01"}}]});
        assert!(check_consent(&c, now).is_empty());
        c["dateTime"] = json!("2099-01-01");
        assert!(check_consent(&c, now)
            .iter()
            .any(|(p, _)| p == "Consent.dateTime"));
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
