//! The sharing rules: a pure decision over principal, facts, resource and action.

use crate::facts::PatientFacts;
use epaccs_core::{Principal, Purpose, Role};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
}

/// What is being touched: one resource of a person's record.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub resource_type: &'a str,
    /// The organisation that wrote the current version (None for a resource not yet written).
    pub writer_org: Option<&'a str>,
}

/// Why access was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Basis {
    /// The caller's organisation wrote this resource.
    WriterOrganisation,
    /// Consent to share is in force and the caller's role and relationship qualify.
    Consent,
    /// A clinical organisation with a legitimate relationship records care.
    Relationship,
    /// A new record.
    NewRecord,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Permit(Basis),
    /// Permitted only because the caller broke the glass: audited as an emergency override.
    BreakGlass,
    /// Refused. `reveal` says whether the caller may learn that something was withheld.
    Deny {
        reveal: bool,
        reason: String,
    },
}

impl Decision {
    pub fn permits(&self) -> bool {
        !matches!(self, Decision::Deny { .. })
    }
}

/// The configurable rule set (JSON, see the crate README for the defaults).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Rules {
    /// Roles that read the whole record under consent with a legitimate relationship.
    pub relationship_roles: Vec<Role>,
    /// Roles that read the whole record under consent without a prior relationship.
    pub emergency_roles: Vec<Role>,
    /// Roles that may write to the record of a person they have a relationship with.
    pub write_roles: Vec<Role>,
    /// Roles that may break the glass (and so may learn that a withheld record exists).
    pub break_glass_roles: Vec<Role>,
    /// The organisation that wrote a resource can always read it.
    pub writer_organisation_reads: bool,
    /// Roles that may create shared reference data (Organization, Practitioner,
    /// PractitionerRole, Location). Only the organisation that wrote an entry, or an admin,
    /// may change or delete it.
    #[serde(default = "default_reference_data_roles")]
    pub reference_data_roles: Vec<Role>,
}

fn default_reference_data_roles() -> Vec<Role> {
    vec![
        Role::Gp,
        Role::Community,
        Role::Hospice,
        Role::Acute,
        Role::Admin,
    ]
}

/// Shared reference data: not about one person, but what decides a relationship with them.
pub const REFERENCE_DATA: [&str; 4] = [
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Location",
];

#[derive(Debug, thiserror::Error)]
#[error("sharing rules are not valid: {0}")]
pub struct RulesError(#[from] serde_json::Error);

impl Default for Rules {
    fn default() -> Self {
        Rules {
            relationship_roles: vec![
                Role::Gp,
                Role::Community,
                Role::Hospice,
                Role::Acute,
                Role::CareHome,
            ],
            emergency_roles: vec![Role::Ambulance, Role::UrgentCare],
            write_roles: vec![Role::Gp, Role::Community, Role::Hospice, Role::Acute],
            break_glass_roles: vec![
                Role::Gp,
                Role::Community,
                Role::Hospice,
                Role::Ambulance,
                Role::UrgentCare,
                Role::Acute,
            ],
            writer_organisation_reads: true,
            reference_data_roles: default_reference_data_roles(),
        }
    }
}

impl Rules {
    pub fn from_json(s: &str) -> Result<Self, RulesError> {
        Ok(serde_json::from_str(s)?)
    }

    pub fn may_break_glass(&self, role: Role) -> bool {
        self.break_glass_roles.contains(&role)
    }
}

/// Decides a write of shared reference data (`REFERENCE_DATA`). Reads are open to every caller.
/// A GP practice's relationship with a person follows the ODS code of the Organization its
/// Patient names, so whoever could re-point that entry could take over the record: entries are
/// created by the reference-data roles, changed or deleted only by the organisation that wrote
/// them or by an admin (and an Organization's ODS code never changes, see the store).
pub fn decide_reference_data(rules: &Rules, who: &Principal, writer_org: Option<&str>) -> Decision {
    let deny = |reason: String| Decision::Deny {
        reveal: false,
        reason,
    };
    if !rules.reference_data_roles.contains(&who.role) {
        return deny(format!(
            "the {} role may not write shared reference data",
            who.role
        ));
    }
    match writer_org {
        Some(o) if o != who.org.as_str() && who.role != Role::Admin => deny(
            "shared reference data is changed only by the organisation that wrote it, or by an admin"
                .into(),
        ),
        _ => Decision::Permit(Basis::Relationship),
    }
}

/// Decides one access. `now` is in microseconds since the epoch.
pub fn decide(
    rules: &Rules,
    who: &Principal,
    facts: &PatientFacts,
    what: Subject<'_>,
    action: Action,
    now: i64,
) -> Decision {
    let deny = |reason: &str| Decision::Deny {
        reveal: rules.may_break_glass(who.role),
        reason: reason.to_string(),
    };
    if !who.role.is_clinical() {
        return Decision::Deny {
            reveal: false,
            reason: format!("the {} role holds no clinical data", who.role),
        };
    }
    let own = what.writer_org == Some(who.org.as_str());
    if own && action == Action::Read && rules.writer_organisation_reads {
        return Decision::Permit(Basis::WriterOrganisation);
    }
    let denied_by_provision = facts.denies.iter().any(|d| {
        let actor = d.orgs.iter().any(|o| o == who.org.as_str())
            || d.roles.iter().any(|r| r == who.role.as_str());
        let actor = actor || (d.orgs.is_empty() && d.roles.is_empty());
        let in_period = d.from.is_none_or(|f| now >= f) && d.until.is_none_or(|u| now < u);
        let class = d.classes.is_empty() || d.classes.iter().any(|c| c == what.resource_type);
        actor && in_period && class
    });
    let break_glass = || {
        if who.purpose == Purpose::BreakGlass
            && who.breaks_glass()
            && rules.may_break_glass(who.role)
            && action == Action::Read
        {
            Some(Decision::BreakGlass)
        } else {
            None
        }
    };
    if denied_by_provision {
        return break_glass().unwrap_or_else(|| deny("the person's consent refuses this access"));
    }
    match action {
        Action::Write => {
            if !rules.write_roles.contains(&who.role) {
                return Decision::Deny {
                    reveal: rules.may_break_glass(who.role),
                    reason: format!("the {} role may not write to the record", who.role),
                };
            }
            let new_record = facts.writer_orgs.is_empty()
                && facts.gp_orgs.is_empty()
                && facts.care_team_orgs.is_empty();
            let basis = if new_record {
                Basis::NewRecord
            } else if facts.has_relationship(&who.org) {
                Basis::Relationship
            } else {
                return deny("no legitimate relationship with this person");
            };
            // Never write what you may not read: changing or deleting an existing resource
            // needs a read of it permitted by the rules (break-glass reads do not count).
            if what.writer_org.is_some()
                && !matches!(
                    decide(rules, who, facts, what, Action::Read, now),
                    Decision::Permit(_)
                )
            {
                return deny("you may not read this resource, so you may not change it");
            }
            // Who may record the person's consent to share (SCCI1580: given by the person, a
            // best-interests decision, or an LPA holder, recorded by a professional): while no
            // statement is recorded, any organisation that may write to the record; after one,
            // the registered GP practice or the organisation that recorded the statement in
            // force, so an organisation that a withdrawal shut out cannot re-open the record.
            if what.resource_type == "Consent"
                && facts.consent != crate::facts::ConsentStatus::None
                && !facts.gp_orgs.contains(who.org.as_str())
                && facts.consent_by.as_deref() != Some(who.org.as_str())
            {
                return deny(
                    "the person's consent to share is recorded by their GP practice or by the organisation that recorded the statement in force",
                );
            }
            Decision::Permit(basis)
        }
        Action::Read => {
            if facts.consent_in_force(now) {
                if rules.emergency_roles.contains(&who.role) {
                    return Decision::Permit(Basis::Consent);
                }
                if rules.relationship_roles.contains(&who.role) && facts.has_relationship(&who.org)
                {
                    return Decision::Permit(Basis::Consent);
                }
                return break_glass()
                    .unwrap_or_else(|| deny("no legitimate relationship with this person"));
            }
            break_glass().unwrap_or_else(|| deny("no consent to share this record is in force"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{ConsentStatus, DenyProvision};
    use epaccs_core::{OdsCode, Scopes};

    fn principal(role: Role, org: &str, purpose: Purpose) -> Principal {
        Principal {
            client_id: "c".into(),
            org: OdsCode::parse(org).expect("ods"),
            role,
            user_id: Option::None,
            user_name: Option::None,
            user_role: Option::None,
            purpose,
            break_glass_reason: (purpose == Purpose::BreakGlass)
                .then(|| "unconscious, no NHS number".into()),
            scopes: Scopes::default(),
        }
    }

    fn facts(consent: ConsentStatus) -> PatientFacts {
        let mut f = PatientFacts {
            consent,
            ..Default::default()
        };
        f.gp_orgs.insert("GP001".into());
        f.writer_orgs.insert("GP001".into());
        f.care_team_orgs.insert("HOS01".into());
        f
    }

    #[derive(Debug, PartialEq)]
    enum E {
        Permit,
        Btg,
        DenyReveal,
        DenySilent,
    }

    fn short(d: Decision) -> E {
        match d {
            Decision::Permit(_) => E::Permit,
            Decision::BreakGlass => E::Btg,
            Decision::Deny { reveal: true, .. } => E::DenyReveal,
            Decision::Deny { reveal: false, .. } => E::DenySilent,
        }
    }

    use ConsentStatus::*;
    use Purpose::*;
    use Role::*;

    #[test]
    fn decision_table() {
        let obs_by_gp = Subject {
            resource_type: "Observation",
            writer_org: Some("GP001"),
        };
        #[rustfmt::skip]
        let rows: &[(Role, &str, Purpose, ConsentStatus, Action, E)] = &[
            // the writing organisation always reads its own data
            (Gp, "GP001", Treat, None, Action::Read, E::Permit),
            (Gp, "GP001", Treat, Withdrawn, Action::Read, E::Permit),
            // consent given: relationship roles with a relationship
            (Hospice, "HOS01", Treat, Given, Action::Read, E::Permit),
            (Hospice, "HOS01", Treat, BestInterests, Action::Read, E::Permit),
            (Hospice, "HOS01", Treat, ByLpa, Action::Read, E::Permit),
            (Hospice, "HOS99", Treat, Given, Action::Read, E::DenyReveal),
            (CareHome, "CH001", Treat, Given, Action::Read, E::DenySilent),
            (Acute, "RR801", Treat, Given, Action::Read, E::DenyReveal),
            // emergency roles read under consent, without a prior relationship
            (Ambulance, "RX801", EmergencyTreat, Given, Action::Read, E::Permit),
            (UrgentCare, "NHS11", Treat, Given, Action::Read, E::Permit),
            // no consent or withdrawn: refused, break-glass roles learn it exists
            (Ambulance, "RX801", EmergencyTreat, None, Action::Read, E::DenyReveal),
            (Ambulance, "RX801", EmergencyTreat, Withdrawn, Action::Read, E::DenyReveal),
            (Hospice, "HOS01", Treat, Withdrawn, Action::Read, E::DenyReveal),
            (CareHome, "CH001", Treat, Withdrawn, Action::Read, E::DenySilent),
            // break-glass
            (Ambulance, "RX801", BreakGlass, Withdrawn, Action::Read, E::Btg),
            (Acute, "RR801", BreakGlass, None, Action::Read, E::Btg),
            (CareHome, "CH001", BreakGlass, None, Action::Read, E::DenySilent),
            (Ambulance, "RX801", BreakGlass, None, Action::Write, E::DenyReveal),
            // non-clinical roles never see clinical data
            (PrivacyOfficer, "PO001", Treat, Given, Action::Read, E::DenySilent),
            (Admin, "AD001", BreakGlass, Given, Action::Read, E::DenySilent),
            // creates: by role and relationship, not by consent
            (Gp, "GP001", Treat, None, Action::Write, E::Permit),
            (Hospice, "HOS01", Treat, Withdrawn, Action::Write, E::Permit),
            (Hospice, "HOS99", Treat, Given, Action::Write, E::DenyReveal),
            (Ambulance, "RX801", EmergencyTreat, Given, Action::Write, E::DenyReveal),
        ];
        let rules = Rules::default();
        let new_obs = Subject {
            resource_type: "Observation",
            writer_org: Option::None,
        };
        for (role, org, purpose, consent, action, expected) in rows {
            let what = match action {
                Action::Read => obs_by_gp,
                Action::Write => new_obs,
            };
            let got = decide(
                &rules,
                &principal(*role, org, *purpose),
                &facts(*consent),
                what,
                *action,
                0,
            );
            assert_eq!(
                short(got),
                *expected,
                "{role:?} {org} {purpose:?} {consent:?} {action:?}"
            );
        }
    }

    /// A write to an existing resource needs a read of it (hazard: one organisation
    /// overwriting another's decision; withdrawn consent not honoured).
    #[test]
    fn never_write_what_you_may_not_read() {
        let rules = Rules::default();
        let hospice = principal(Hospice, "HOS01", Treat);
        let gp_obs = Subject {
            resource_type: "Observation",
            writer_org: Some("GP001"),
        };
        let own_obs = Subject {
            resource_type: "Observation",
            writer_org: Some("HOS01"),
        };
        // consent given: the hospice reads the GP's entry, so may change it (ownership of
        // decisions is the store's further rule)
        assert!(decide(&rules, &hospice, &facts(Given), gp_obs, Action::Write, 0).permits());
        // withdrawn: the GP's entry is withheld from the hospice, so it may not change it
        assert!(!decide(
            &rules,
            &hospice,
            &facts(Withdrawn),
            gp_obs,
            Action::Write,
            0
        )
        .permits());
        assert!(!decide(&rules, &hospice, &facts(None), gp_obs, Action::Write, 0).permits());
        // its own entries it still may
        assert!(decide(
            &rules,
            &hospice,
            &facts(Withdrawn),
            own_obs,
            Action::Write,
            0
        )
        .permits());
        // break-glass reads never open writes
        let crew = principal(Ambulance, "RX801", BreakGlass);
        assert!(!decide(&rules, &crew, &facts(Withdrawn), gp_obs, Action::Write, 0).permits());
    }

    /// After a consent statement, only the GP practice or the organisation that recorded the
    /// statement in force may record another.
    #[test]
    fn who_may_record_consent() {
        let rules = Rules::default();
        let consent = Subject {
            resource_type: "Consent",
            writer_org: Option::None,
        };
        let mut f = facts(Withdrawn);
        f.consent_by = Some("GP001".into());
        let hospice = principal(Hospice, "HOS01", Treat);
        let gp = principal(Gp, "GP001", Treat);
        assert!(!decide(&rules, &hospice, &f, consent, Action::Write, 0).permits());
        assert!(decide(&rules, &gp, &f, consent, Action::Write, 0).permits());
        f.consent_by = Some("HOS01".into());
        assert!(decide(&rules, &hospice, &f, consent, Action::Write, 0).permits());
        // no statement yet: any organisation with a relationship
        let f = facts(None);
        assert!(decide(&rules, &hospice, &f, consent, Action::Write, 0).permits());
    }

    /// Shared reference data is written by entitled roles only, and changed only by its writer
    /// or an admin (hazard: existence of a withheld record revealed / record takeover).
    #[test]
    fn reference_data_writers() {
        let rules = Rules::default();
        let gp = principal(Gp, "GP001", Treat);
        let other_gp = principal(Gp, "GP002", Treat);
        let crew = principal(Ambulance, "RX801", EmergencyTreat);
        let home = principal(CareHome, "CH001", Treat);
        let admin = principal(Admin, "AD001", Treat);
        assert!(decide_reference_data(&rules, &gp, Option::None).permits());
        assert!(decide_reference_data(&rules, &gp, Some("GP001")).permits());
        assert!(!decide_reference_data(&rules, &other_gp, Some("GP001")).permits());
        assert!(!decide_reference_data(&rules, &crew, Option::None).permits());
        assert!(!decide_reference_data(&rules, &home, Some("CH001")).permits());
        assert!(decide_reference_data(&rules, &admin, Some("GP001")).permits());
    }

    #[test]
    fn deny_provisions_are_honoured() {
        let mut f = facts(Given);
        f.denies.push(DenyProvision {
            orgs: vec!["HOS01".into()],
            classes: vec!["Observation".into()],
            ..Default::default()
        });
        f.denies.push(DenyProvision {
            roles: vec!["ambulance".into()],
            from: Some(100),
            until: Some(200),
            ..Default::default()
        });
        let rules = Rules::default();
        let obs = Subject {
            resource_type: "Observation",
            writer_org: Some("GP001"),
        };
        let plan = Subject {
            resource_type: "CarePlan",
            writer_org: Some("GP001"),
        };
        let hospice = principal(Hospice, "HOS01", Treat);
        assert!(!decide(&rules, &hospice, &f, obs, Action::Read, 0).permits());
        assert!(decide(&rules, &hospice, &f, plan, Action::Read, 0).permits());
        let crew = principal(Ambulance, "RX801", EmergencyTreat);
        assert!(decide(&rules, &crew, &f, plan, Action::Read, 50).permits());
        assert!(!decide(&rules, &crew, &f, plan, Action::Read, 150).permits());
        assert!(decide(&rules, &crew, &f, plan, Action::Read, 200).permits());
        // the writer organisation keeps reading its own data
        let gp = principal(Gp, "GP001", Treat);
        assert!(decide(&rules, &gp, &f, obs, Action::Read, 150).permits());
    }

    #[test]
    fn consent_period_is_honoured() {
        let mut f = facts(Given);
        f.consent_until = Some(1_000);
        let crew = principal(Ambulance, "RX801", EmergencyTreat);
        let plan = Subject {
            resource_type: "CarePlan",
            writer_org: Some("GP001"),
        };
        assert!(decide(&Rules::default(), &crew, &f, plan, Action::Read, 999).permits());
        assert!(!decide(&Rules::default(), &crew, &f, plan, Action::Read, 1_000).permits());
    }

    #[test]
    fn rules_load_from_json() {
        let json = serde_json::to_string(&Rules::default()).expect("serialise");
        assert_eq!(Rules::from_json(&json).expect("parse"), Rules::default());
        assert!(Rules::from_json(r#"{"relationship-roles": ["wizard"]}"#).is_err());
    }
}
