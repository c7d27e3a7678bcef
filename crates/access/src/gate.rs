//! The gate: the value every patient-data query requires, and the memory of what it decided.

use crate::facts::PatientFacts;
use crate::rules::{decide, Action, Decision, Rules, Subject};
use epaccs_core::{Interaction, Principal, Role};
use std::sync::{Arc, Mutex};

/// One decision the gate made, for the audit record.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub patient_key: Option<String>,
    /// `Type/id`.
    pub resource: String,
    pub decision: Decision,
}

/// The outcome of gating one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided<T> {
    Visible(T),
    /// Withheld by the sharing rules; `reveal` says whether the caller may be told so.
    Withheld {
        reveal: bool,
        reason: String,
    },
}

/// A principal's pass through the sharing layer for one request.
///
/// The store takes `&Gate` in every function that returns or changes patient data and asks it
/// about each candidate row; nothing else can say yes. Every decision also consults the access
/// token's scopes: a row of a type the token may not read (`r` or `s`) is withheld, and a write
/// of a type it may not write (`c`, `u` or `d`) refused, whichever operation asked (a search's
/// includes, `$everything`, history, bundles, notifications), so no compound operation returns
/// more than the token's scopes name.
#[derive(Debug)]
pub struct Gate {
    principal: Principal,
    rules: Arc<Rules>,
    now: i64,
    log: Mutex<Vec<LogEntry>>,
    /// The record locator publishes pointers only while consent to share is in force.
    locator: bool,
}

impl Gate {
    pub fn new(principal: Principal, rules: Arc<Rules>) -> Self {
        Gate {
            principal,
            rules,
            now: epaccs_fhir::date::now_micros(),
            log: Mutex::new(Vec::new()),
            locator: false,
        }
    }

    /// The gate of the national record locator feed: it sees a person's data (to publish
    /// pointers) only while their consent to share is in force, whoever wrote it.
    pub fn for_locator(principal: Principal, rules: Arc<Rules>) -> Self {
        Gate {
            locator: true,
            ..Gate::new(principal, rules)
        }
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Whether this caller may be told that withheld data exists.
    pub fn may_know_withheld(&self) -> bool {
        self.rules.may_break_glass(self.principal.role)
    }

    /// Whether the token's scopes let it see resources of this type (read or search).
    pub fn scope_reads(&self, resource_type: &str) -> bool {
        let s = &self.principal.scopes;
        s.allows(resource_type, Interaction::Read) || s.allows(resource_type, Interaction::Search)
    }

    /// Whether the token's scopes let it change resources of this type (create, update or delete).
    pub fn scope_writes(&self, resource_type: &str) -> bool {
        let s = &self.principal.scopes;
        [
            Interaction::Create,
            Interaction::Update,
            Interaction::Delete,
        ]
        .into_iter()
        .any(|i| s.allows(resource_type, i))
    }

    /// Decides, before any person is looked up, whether this caller may write patient data of
    /// this type at all: the decision the rules would make for a record nobody has written to
    /// yet. A refusal here depends on the role and the token only, never on a person, so a
    /// caller that may not write learns nothing from it about who exists (a refusal that came
    /// after looking the person up would differ between a withheld and a missing person).
    /// Refusals are recorded; a permit is not (the write's own decision follows).
    pub fn check_write_role(&self, resource_type: &str) -> Decision {
        let decision = if !self.scope_writes(resource_type) {
            scope_denied(resource_type)
        } else {
            decide(
                &self.rules,
                &self.principal,
                &PatientFacts::default(),
                Subject {
                    resource_type,
                    writer_org: None,
                },
                Action::Write,
                self.now,
            )
        };
        if let Decision::Deny { reason, .. } = &decision {
            self.record(
                None,
                format!("{resource_type}/*"),
                Decision::Deny {
                    reveal: false,
                    reason: reason.clone(),
                },
            );
            return Decision::Deny {
                reveal: false,
                reason: reason.clone(),
            };
        }
        decision
    }

    /// Decides a read of one row. `patient` is `None` for data about no person.
    pub fn check_read(
        &self,
        patient: Option<(&str, &PatientFacts)>,
        resource_type: &str,
        id: &str,
        writer_org: &str,
    ) -> Decision {
        self.check(patient, resource_type, id, Some(writer_org), Action::Read)
    }

    /// Decides a read without recording it as a disclosure (for counting what may be seen).
    pub fn would_read(
        &self,
        patient: Option<(&str, &PatientFacts)>,
        resource_type: &str,
        writer_org: &str,
    ) -> bool {
        if !self.scope_reads(resource_type) {
            return false;
        }
        match patient {
            Some((_, facts)) if self.locator => facts.consent_in_force(self.now),
            Some((_, facts)) => decide(
                &self.rules,
                &self.principal,
                facts,
                Subject {
                    resource_type,
                    writer_org: Some(writer_org),
                },
                Action::Read,
                self.now,
            )
            .permits(),
            None if resource_type == "Subscription" => writer_org == self.principal.org.as_str(),
            None => resource_type != "AuditEvent" || self.principal.role == Role::PrivacyOfficer,
        }
    }

    /// Decides a write. `writer_org` is the organisation that wrote the current version, if any.
    pub fn check_write(
        &self,
        patient: Option<(&str, &PatientFacts)>,
        resource_type: &str,
        id: &str,
        writer_org: Option<&str>,
    ) -> Decision {
        self.check(patient, resource_type, id, writer_org, Action::Write)
    }

    fn check(
        &self,
        patient: Option<(&str, &PatientFacts)>,
        resource_type: &str,
        id: &str,
        writer_org: Option<&str>,
        action: Action,
    ) -> Decision {
        let in_scope = match action {
            Action::Read => self.scope_reads(resource_type),
            Action::Write => self.scope_writes(resource_type),
        };
        let decision = match patient {
            _ if !in_scope => scope_denied(resource_type),
            Some((_, facts)) if self.locator => {
                if action == Action::Read && facts.consent_in_force(self.now) {
                    Decision::Permit(crate::rules::Basis::Consent)
                } else {
                    Decision::Deny {
                        reveal: false,
                        reason: "no consent to share is in force".into(),
                    }
                }
            }
            Some((_, facts)) => decide(
                &self.rules,
                &self.principal,
                facts,
                Subject {
                    resource_type,
                    writer_org,
                },
                action,
                self.now,
            ),
            None if resource_type == "AuditEvent" => {
                if self.principal.role == Role::PrivacyOfficer && action == Action::Read {
                    Decision::Permit(crate::rules::Basis::Relationship)
                } else {
                    Decision::Deny {
                        reveal: false,
                        reason: "only privacy officers read the audit trail".into(),
                    }
                }
            }
            // A Subscription holds its owner's endpoint and secrets: only its organisation sees it.
            None if resource_type == "Subscription" => match writer_org {
                Some(o) if o != self.principal.org.as_str() => Decision::Deny {
                    reveal: false,
                    reason: "a subscription belongs to the organisation that made it".into(),
                },
                _ => Decision::Permit(crate::rules::Basis::WriterOrganisation),
            },
            None if action == Action::Write
                && crate::rules::REFERENCE_DATA.contains(&resource_type) =>
            {
                crate::rules::decide_reference_data(&self.rules, &self.principal, writer_org)
            }
            None => Decision::Permit(crate::rules::Basis::Relationship),
        };
        self.record(
            patient.map(|(k, _)| k.to_string()),
            format!("{resource_type}/{id}"),
            decision.clone(),
        );
        decision
    }

    /// Records a decision made elsewhere in this layer (e.g. a refusal before any row was read).
    pub fn record(&self, patient_key: Option<String>, resource: String, decision: Decision) {
        if let Ok(mut log) = self.log.lock() {
            log.push(LogEntry {
                patient_key,
                resource,
                decision,
            });
        }
    }

    /// Gates a value: visible only if the decision permits.
    pub fn gated<T>(decision: Decision, value: T) -> Decided<T> {
        match decision {
            Decision::Permit(_) | Decision::BreakGlass => Decided::Visible(value),
            Decision::Deny { reveal, reason } => Decided::Withheld { reveal, reason },
        }
    }

    /// The reasons of the refusals decided so far, each once, in order: for the audit record,
    /// never for the caller (they would tell the person's consent state).
    pub fn refusal_reasons(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in self.log() {
            if let Decision::Deny { reason, .. } = e.decision {
                if !out.contains(&reason) {
                    out.push(reason);
                }
            }
        }
        out
    }

    /// Everything decided so far.
    pub fn log(&self) -> Vec<LogEntry> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// A refusal because the token's scopes do not name the type. It says nothing about any
/// person, so it is never marked as revealing withheld data.
fn scope_denied(resource_type: &str) -> Decision {
    Decision::Deny {
        reveal: false,
        reason: format!("the access token's scopes do not cover {resource_type}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::ConsentStatus;
    use epaccs_core::{OdsCode, Purpose, Scopes};

    fn gate(role: Role, org: &str, scopes: &str) -> Gate {
        let principal = Principal {
            client_id: "c".into(),
            org: OdsCode::parse(org).expect("ods"),
            role,
            user_id: None,
            user_name: None,
            user_role: None,
            purpose: Purpose::Treat,
            break_glass_reason: None,
            scopes: Scopes::parse_strict(scopes).expect("scopes"),
        };
        Gate::new(principal, Arc::new(Rules::default()))
    }

    /// The token's scopes bound every decision, whatever the sharing rules would allow: rows
    /// as (scopes, type, expected read, expected write), for the writing organisation itself.
    #[test]
    fn scopes_bound_every_decision() {
        let facts = PatientFacts {
            consent: ConsentStatus::Given,
            ..Default::default()
        };
        #[rustfmt::skip]
        let rows: &[(&str, &str, bool, bool)] = &[
            ("system/*.*", "Observation", true, true),
            ("system/Patient.read", "Patient", true, false),
            ("system/Patient.read", "Observation", false, false),
            ("system/Patient.*", "Consent", false, false),
            ("system/Observation.s", "Observation", true, false),
            ("system/Observation.write", "Observation", false, true),
            ("system/Observation.read", "Patient", false, false),
            ("system/Observation.read", "Organization", false, false),
            ("system/*.read", "CareTeam", true, false),
        ];
        for (scopes, ty, read, write) in rows {
            let g = gate(Role::Gp, "A81001", scopes);
            let p = Some(("p1", &facts));
            let patient = if *ty == "Organization" { None } else { p };
            assert_eq!(
                g.would_read(patient, ty, "A81001"),
                *read,
                "{scopes} would_read {ty}"
            );
            assert_eq!(
                g.check_read(patient, ty, "x", "A81001").permits(),
                *read,
                "{scopes} read {ty}"
            );
            assert_eq!(
                g.check_write(patient, ty, "x", Some("A81001")).permits(),
                *write,
                "{scopes} write {ty}"
            );
            // A scope refusal never tells anyone that something is withheld.
            if let Decision::Deny { reveal, .. } = g.check_read(patient, ty, "x", "A81001") {
                assert!(!reveal, "{scopes} {ty}");
            }
        }
    }

    /// A refusal before any person is looked up depends on the role and the token only.
    #[test]
    fn write_role_refusals_name_no_person() {
        #[rustfmt::skip]
        let rows: &[(Role, &str, bool)] = &[
            (Role::Gp, "system/*.*", true),
            (Role::Hospice, "system/Observation.write", true),
            (Role::Gp, "system/Observation.read", false),
            (Role::CareHome, "system/*.*", false),
            (Role::Ambulance, "system/*.*", false),
            (Role::PrivacyOfficer, "system/*.*", false),
            (Role::Admin, "system/*.*", false),
        ];
        for (role, scopes, expected) in rows {
            let g = gate(*role, "X26", scopes);
            let d = g.check_write_role("Observation");
            assert_eq!(d.permits(), *expected, "{role:?} {scopes}");
            if let Decision::Deny { reveal, reason } = d {
                assert!(!reveal);
                assert!(!reason.contains("consent"), "{reason}");
                assert_eq!(g.refusal_reasons(), vec![reason]);
            } else {
                assert!(
                    g.log().is_empty(),
                    "a permit here is not a decision about a row"
                );
            }
        }
    }
}
