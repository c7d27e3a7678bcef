//! `Patient/$emergency-summary` for ambulance crews, 111 and out-of-hours, and
//! `Patient/[id]/$everything`.
//!
//! The summary is a FHIR document: its Composition's narrative (`text`) and each section's
//! narrative are what a viewer shows and what is attested, so they say the content in words:
//! the CPR decision (who decided, when, review date), the current ReSPECT form's
//! recommendations, advance decisions (ADRT first), LPA holders and contacts with telephone
//! numbers, the key worker and 24-hour numbers, anticipatory medicines and where they are, and
//! the preferred places of care and death (or the recorded reason there is none). Dates are
//! shown in Europe/London as "2 Mar 2026".
//!
//! Invariants:
//! - **A conflict is shown, never resolved.** Current CPR decisions that disagree (the newest of
//!   each decider), a CPR decision against the current ReSPECT form's CPR recommendation, and
//!   more than one current ReSPECT form all make the top line and the section say CONFLICT,
//!   list every entry concerned with its author and date, and carry the `decision-conflict`
//!   extension (profiles/structuredefinitions/EPaCCS-DecisionConflict.json).
//! - **Section codes name the section** (a local CodeSystem, with LOINC where one fits), never a
//!   value such as 450475007.
//! - **After death nothing is actionable**: when `Patient.deceased[x]` is set or an actual place
//!   of death is recorded, the top line says DECEASED with the date and every section says it
//!   was recorded before death.
//! - Only live entries: statuses that are not current, refuted or entered-in-error Conditions,
//!   resolved or inactive Conditions, and inactive RelatedPersons are left out.
//! - No database round trip beyond the Patient and its compartment; text is built with plain
//!   string building.

mod page;
mod view;
mod words;

use crate::error::ApiError;
use crate::extract::{query_pairs, Caller};
use crate::respond::{self, bundle, full_url};
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use epaccs_core::{codes, Interaction, NhsNumber};
use epaccs_fhir::date;
use epaccs_fhir::validate::Issue;
use epaccs_store::resources;
use epaccs_store::{StoreError, Stored};
use serde::Serialize;
use serde_json::{json, Value};
use view::{PatientView, RefV, SectionV, View};

/// Extension marking the planned review date of a plan or decision.
pub const REVIEW_DATE_URL: &str =
    "https://fhir.epaccs.nhs.example/StructureDefinition/planned-review-date";
/// Extension on a summary section: the review date has passed.
pub const REVIEW_OVERDUE_URL: &str =
    "https://fhir.epaccs.nhs.example/StructureDefinition/review-overdue";
/// Extension on the summary's Composition and on a section: decisions in the record conflict.
pub const CONFLICT_URL: &str =
    "https://fhir.epaccs.nhs.example/StructureDefinition/decision-conflict";
/// The kinds of conflict (`decision-conflict.type`).
pub const CONFLICT_SYSTEM: &str = "https://fhir.epaccs.nhs.example/CodeSystem/decision-conflict";
/// The summary's section codes.
pub const SECTION_SYSTEM: &str =
    "https://fhir.epaccs.nhs.example/CodeSystem/emergency-summary-section";
/// Observables without a SNOMED CT code (preferred place of care/death and their parts).
const OBSERVABLES: &str = "https://fhir.epaccs.nhs.example/CodeSystem/epaccs-observables";

const INACTIVE: &[&str] = &[
    "entered-in-error",
    "cancelled",
    "superseded",
    "inactive",
    "revoked",
    "stopped",
    "completed",
    "preliminary",
    "draft",
    "rejected",
];

/// The "not recorded because" codes of a preferred place.
const PLACE_NOT_RECORDED: [&str; 4] = [
    "517111000000103",
    "517131000000106",
    "766391000000108",
    "517161000000101",
];

type Item<'s, 'a> = &'s (&'a Stored, View<'a>);

struct Summary<'a> {
    items: Vec<(&'a Stored, View<'a>)>,
}

impl<'a> Summary<'a> {
    fn live<'s>(&'s self, ty: &'s str) -> impl Iterator<Item = Item<'s, 'a>> + 's {
        self.items
            .iter()
            .filter(move |(s, v)| s.resource_type == ty && !INACTIVE.contains(&v.status()))
    }

    /// Live resources of a type carrying one of `wanted`, newest first.
    fn with_code<'s>(&'s self, ty: &'s str, wanted: &[&str]) -> Vec<Item<'s, 'a>> {
        let mut v: Vec<_> = self.live(ty).filter(|(_, v)| v.has_code(wanted)).collect();
        v.sort_by_key(|(_, v)| std::cmp::Reverse(v.effective()));
        v
    }

    /// The resource a reference names, if it is in the summary (`Type/id`, absolute or
    /// versioned).
    fn resolve(&self, reference: &str) -> Option<Item<'_, 'a>> {
        let r = reference.split("/_history/").next().unwrap_or(reference);
        let mut parts = r.rsplit('/');
        let id = parts.next()?;
        let ty = parts.next()?;
        self.items
            .iter()
            .find(|(s, _)| s.id == id && s.resource_type == ty)
    }

    /// Who a set of references names, in words, from what the record holds: a display, a
    /// contained Practitioner/PractitionerRole/Organization, a RelatedPerson in the record, or an
    /// identifier. Unknown references are left out, never guessed at. "Dr A Smith (GP,
    /// Riverside Practice)".
    fn who(&self, owner: &View, refs: &[RefV]) -> Option<String> {
        let parts: Vec<String> = refs
            .iter()
            .filter_map(|r| self.one(owner, r.target(), 0))
            .collect();
        let (first, rest) = parts.split_first()?;
        Some(if rest.is_empty() {
            first.clone()
        } else {
            format!("{first} ({})", rest.join(", "))
        })
    }

    fn one(&self, owner: &View, r: &RefV, depth: u8) -> Option<String> {
        if let Some(d) = r
            .display
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            return Some(d.to_string());
        }
        if let Some(reference) = r.reference.as_deref() {
            if let Some(local) = reference.strip_prefix('#') {
                if let Some(c) = owner
                    .contained
                    .iter()
                    .find(|c| c.id.as_deref() == Some(local))
                {
                    let own = c.name.0.iter().find_map(words::name);
                    let person = (depth == 0)
                        .then_some(c.practitioner.as_ref())
                        .flatten()
                        .and_then(|p| self.one(owner, p, 1));
                    let org = (depth == 0)
                        .then_some(c.organization.as_ref())
                        .flatten()
                        .and_then(|o| self.one(owner, o, 1));
                    let role = words::concept(&c.code);
                    let mut out: Vec<String> = Vec::new();
                    out.extend(own.or(person));
                    let detail: Vec<String> = role.into_iter().chain(org).collect();
                    return match (out.pop(), detail.is_empty()) {
                        (Some(n), true) => Some(n),
                        (Some(n), false) => Some(format!("{n} ({})", detail.join(", "))),
                        (None, false) => Some(detail.join(", ")),
                        (None, true) => None,
                    };
                }
            } else if let Some((_, v)) = self.resolve(reference) {
                if let Some(n) = v.name.0.iter().find_map(words::name) {
                    return Some(n);
                }
            }
        }
        r.identifier.as_ref().and_then(|i| {
            i.value
                .as_deref()
                .map(|val| words::identifier(i.system.as_deref(), val))
        })
    }
}

/// The last segment of a reference or URL (`Composition/abc` → `abc`).
fn last_segment(r: &str) -> &str {
    r.rsplit('/').next().unwrap_or(r)
}

/// The current ReSPECT forms, newest first: final or amended, not entered-in-error, and not
/// replaced by a later form (a DocumentReference index marked superseded, or one that another
/// `relatesTo: replaces` names). There should be at most one; more is a conflict, shown.
fn current_respect<'s, 'a>(s: &'s Summary<'a>) -> Vec<Item<'s, 'a>> {
    let mut superseded: Vec<&str> = Vec::new();
    let indexes: Vec<_> = s
        .items
        .iter()
        .filter(|(st, _)| st.resource_type == "DocumentReference")
        .collect();
    for (_, v) in &indexes {
        if matches!(v.status(), "superseded" | "entered-in-error") {
            superseded.extend(
                v.content
                    .iter()
                    .filter_map(|c| c.attachment.as_ref()?.url.as_deref())
                    .map(last_segment),
            );
        }
    }
    // An index another index replaces: the form it points to is replaced too.
    let replaced: Vec<&str> = indexes
        .iter()
        .flat_map(|(_, v)| v.relates_to.iter())
        .filter(|r| r.code.as_deref() == Some("replaces"))
        .filter_map(|r| r.target.as_ref()?.url.as_deref())
        .map(last_segment)
        .collect();
    for (st, v) in &indexes {
        if replaced.contains(&st.id.as_str()) {
            superseded.extend(
                v.content
                    .iter()
                    .filter_map(|c| c.attachment.as_ref()?.url.as_deref())
                    .map(last_segment),
            );
        }
    }
    superseded.extend(replaced.iter().copied());
    s.with_code("Composition", &[codes::RESPECT_FORM])
        .into_iter()
        .filter(|(st, v)| {
            matches!(v.status(), "final" | "amended") && !superseded.contains(&st.id.as_str())
        })
        .collect()
}

/// A CPR decision or recommendation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cpr {
    For,
    Not,
    /// The entry carries both codes, or says "false" of its code: it does not say plainly.
    Unclear,
    /// Recorded as not yet discussed: no decision has been made.
    NotDiscussed,
}

impl Cpr {
    fn of(v: &View) -> Cpr {
        let f = v.has_code(&[codes::FOR_CPR]);
        let n = v.has_code(&[codes::NOT_FOR_CPR]);
        if !f && !n && v.has_code(&[codes::CPR_NOT_DISCUSSED]) {
            return Cpr::NotDiscussed;
        }
        match (f, n, v.value_boolean) {
            (_, _, Some(false)) => Cpr::Unclear,
            (true, false, _) => Cpr::For,
            (false, true, _) => Cpr::Not,
            _ => Cpr::Unclear,
        }
    }

    /// As the CPR decision section states it.
    fn decision(self) -> &'static str {
        match self {
            Cpr::For => "FOR ATTEMPTED CPR (cardiopulmonary resuscitation)",
            Cpr::Not => "NOT FOR CARDIOPULMONARY RESUSCITATION (NOT FOR CPR)",
            Cpr::Unclear => "CPR DECISION UNCLEAR (the entry does not say plainly whether CPR should be attempted)",
            Cpr::NotDiscussed => "NO CPR DECISION YET: not yet discussed; follow usual resuscitation guidance",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Cpr::For => "FOR ATTEMPTED CPR",
            Cpr::Not => "NOT FOR CPR",
            Cpr::Unclear => "UNCLEAR",
            Cpr::NotDiscussed => "NOT YET DISCUSSED",
        }
    }

    /// As a ReSPECT form's recommendation.
    fn recommendation(self) -> &'static str {
        match self {
            Cpr::For => "CPR attempts recommended",
            Cpr::Not => "CPR attempts NOT recommended",
            Cpr::Unclear => "unclear (the form's words say both)",
            Cpr::NotDiscussed => "not yet discussed",
        }
    }

    /// A CPR recommendation in a form's own words. Only the ReSPECT form's wording and the
    /// standard phrases count; anything else is not read as a recommendation (the words are
    /// still shown).
    fn in_text(text: &str) -> Option<Cpr> {
        const NOT: &[&str] = &[
            "cpr attempts not recommended",
            "cpr not recommended",
            "not for attempted cpr",
            "not for cpr",
            "not for attempted cardiopulmonary resuscitation",
            "not for cardiopulmonary resuscitation",
            "do not attempt cpr",
            "do not attempt cardiopulmonary resuscitation",
        ];
        const FOR: &[&str] = &[
            "cpr attempts recommended",
            "cpr recommended",
            "for attempted cpr",
            "for cpr",
            "for modified cpr",
            "for attempted cardiopulmonary resuscitation",
            "for cardiopulmonary resuscitation",
        ];
        let mut t = text.to_lowercase();
        let not = NOT.iter().any(|p| t.contains(p));
        for p in NOT {
            t = t.replace(p, " ");
        }
        let for_ = FOR.iter().any(|p| t.contains(p));
        match (for_, not) {
            (true, true) => Some(Cpr::Unclear),
            (true, false) => Some(Cpr::For),
            (false, true) => Some(Cpr::Not),
            (false, false) => None,
        }
    }
}

/// Whether a form's section is section 4, "Clinical recommendations for emergency care and
/// treatment" (by its code "4", its number or its title), or a section about CPR.
fn recommendations_section(sec: &SectionV) -> bool {
    let title = sec.title.as_deref().unwrap_or("").trim_start();
    let t = title.to_lowercase();
    sec.code.has(&["4"])
        || title.starts_with('4')
        || t.contains("recommendation")
        || t.contains("cpr")
}

/// Whether a form's section is one the summary shows: the recommendations and section 3,
/// "What matters to me".
fn shown_respect_section(sec: &SectionV) -> bool {
    let title = sec.title.as_deref().unwrap_or("").trim_start();
    recommendations_section(sec)
        || sec.code.has(&["3"])
        || title.starts_with('3')
        || title.to_lowercase().contains("what matters")
}

/// A ReSPECT form's CPR recommendation: coded (a section code or an entry that is a CPR
/// decision) or in the words of its recommendations section.
fn respect_cpr(s: &Summary, form: &View) -> Option<Cpr> {
    fn walk(s: &Summary, secs: &[SectionV], found: &mut Vec<Cpr>) {
        for sec in secs {
            if sec.code.has(&[codes::FOR_CPR]) {
                found.push(Cpr::For);
            }
            if sec.code.has(&[codes::NOT_FOR_CPR]) {
                found.push(Cpr::Not);
            }
            for e in &sec.entry {
                if let Some((_, v)) = e.reference.as_deref().and_then(|r| s.resolve(r)) {
                    if v.has_code(&[codes::FOR_CPR, codes::NOT_FOR_CPR]) {
                        found.push(Cpr::of(v));
                    }
                }
            }
            if recommendations_section(sec) {
                if let Some(div) = sec.text.as_ref().and_then(|t| t.div.as_deref()) {
                    found.extend(Cpr::in_text(&words::strip_xhtml(div)));
                }
            }
            walk(s, &sec.section, found);
        }
    }
    let mut found = Vec::new();
    walk(s, &form.section, &mut found);
    let first = *found.first()?;
    Some(if found.iter().all(|c| *c == first) {
        first
    } else {
        Cpr::Unclear
    })
}

/// Who an entry's decider is, for "the newest decision of each decider": the performers'
/// references, identifiers or names. An entry naming nobody is a decider of its own.
fn decider_key(st: &Stored, v: &View) -> String {
    let key: Vec<String> = v
        .performer
        .0
        .iter()
        .map(|r| {
            let r = r.target();
            match (&r.reference, &r.identifier, &r.display) {
                (Some(x), _, _) if !x.starts_with('#') => x.to_string(),
                (_, Some(i), _) if i.value.is_some() => format!(
                    "{}|{}",
                    i.system.as_deref().unwrap_or(""),
                    i.value.as_deref().unwrap_or("")
                ),
                (_, _, Some(d)) => d.trim().to_lowercase(),
                (Some(x), _, _) => x.to_string(),
                _ => String::new(),
            }
        })
        .filter(|k| !k.is_empty())
        .collect();
    if key.is_empty() {
        format!("{}/{}", st.resource_type, st.id)
    } else {
        key.join("|")
    }
}

/// The current CPR decisions: the newest of each decider (a decider's later decision replaces
/// their earlier one), newest first. Two of one decider with the same date both stand.
fn current_cpr<'s, 'a>(all: Vec<Item<'s, 'a>>) -> Vec<Item<'s, 'a>> {
    let mut kept: Vec<(String, i64, Item<'s, 'a>)> = Vec::new();
    for it in all {
        let key = decider_key(it.0, &it.1);
        let when = it.1.effective();
        let newest = kept.iter().find(|(k, _, _)| *k == key).map(|(_, w, _)| *w);
        if newest.is_none_or(|w| w == when) {
            kept.push((key, when, it));
        }
    }
    kept.into_iter().map(|(_, _, it)| it).collect()
}

/// A conflict the summary shows.
struct Conflict<'a> {
    code: &'static str,
    display: &'static str,
    entries: Vec<&'a Stored>,
}

const CPR_DISAGREE: &str = "cpr-decisions-disagree";
const CPR_RESPECT_DISAGREE: &str = "cpr-decision-respect-disagree";
const RESPECT_MULTIPLE: &str = "multiple-current-respect-forms";

/// The current ReSPECT forms whose CPR recommendation (where the form states one plainly)
/// disagrees with a current CPR decision (where it states one plainly), with that
/// recommendation.
fn disagreeing_forms<'s, 'a>(
    s: &Summary<'a>,
    cpr: &[Item<'_, 'a>],
    respect: &[Item<'s, 'a>],
) -> Vec<(Item<'s, 'a>, Cpr)> {
    respect
        .iter()
        .filter_map(|it| {
            let rec = respect_cpr(s, &it.1).filter(|r| *r != Cpr::Unclear)?;
            cpr.iter()
                .any(|(_, v)| {
                    let d = Cpr::of(v);
                    d != Cpr::Unclear && d != rec
                })
                .then_some((*it, rec))
        })
        .collect()
}

fn conflicts<'a>(
    s: &Summary<'a>,
    cpr: &[Item<'_, 'a>],
    respect: &[Item<'_, 'a>],
) -> Vec<Conflict<'a>> {
    let mut out = Vec::new();
    if let Some(first) = cpr.first() {
        let v = Cpr::of(&first.1);
        if cpr.iter().any(|(_, x)| Cpr::of(x) != v) {
            out.push(Conflict {
                code: CPR_DISAGREE,
                display: "Current CPR decisions disagree",
                entries: cpr.iter().map(|(st, _)| *st).collect(),
            });
        }
    }
    if respect.len() > 1 {
        out.push(Conflict {
            code: RESPECT_MULTIPLE,
            display: "More than one ReSPECT form is current",
            entries: respect.iter().map(|(st, _)| *st).collect(),
        });
    }
    let mut against: Vec<&'a Stored> = Vec::new();
    for ((form, _), rec) in disagreeing_forms(s, cpr, respect) {
        let differing = cpr
            .iter()
            .filter(|(_, v)| !matches!(Cpr::of(v), Cpr::Unclear) && Cpr::of(v) != rec)
            .map(|(st, _)| *st);
        for st in differing.chain([*form]) {
            if !against.iter().any(|a| std::ptr::eq(*a, st)) {
                against.push(st);
            }
        }
    }
    if !against.is_empty() {
        out.push(Conflict {
            code: CPR_RESPECT_DISAGREE,
            display:
                "The CPR decision disagrees with the current ReSPECT form's CPR recommendation",
            entries: against,
        });
    }
    out
}

/// What a section is, by code.
struct Kind {
    code: &'static str,
    display: &'static str,
    loinc: Option<(&'static str, &'static str)>,
}

const DECEASED: Kind = Kind {
    code: "deceased",
    display: "Deceased",
    loinc: None,
};
const CPR_SECTION: Kind = Kind {
    code: "cpr-decision",
    display: "CPR decision",
    loinc: None,
};
const RESPECT_SECTION: Kind = Kind {
    code: "respect-recommendations",
    display: "ReSPECT recommendations",
    loinc: None,
};
const ADVANCE_SECTION: Kind = Kind {
    code: "advance-decisions",
    display: "Advance decisions and advance statements",
    loinc: Some(("42348-3", "Advance directives")),
};
const LPA_SECTION: Kind = Kind {
    code: "lpa-and-contacts",
    display: "Lasting power of attorney and personal contacts",
    loinc: None,
};
const PLACE_SECTION: Kind = Kind {
    code: "preferred-place",
    display: "Preferred place of care and death",
    loinc: None,
};
const MEDS_SECTION: Kind = Kind {
    code: "anticipatory-medicines",
    display: "Anticipatory medicines and where they are kept",
    loinc: Some(("10160-0", "History of Medication use Narrative")),
};
const TEAM_SECTION: Kind = Kind {
    code: "key-worker-and-contacts",
    display: "Key worker and 24-hour contacts",
    loinc: None,
};
const PLANS_SECTION: Kind = Kind {
    code: "care-plans",
    display: "Care plans",
    loinc: Some(("18776-5", "Plan of care note")),
};
const OTHER_SECTION: Kind = Kind {
    code: "conditions-and-status",
    display: "Conditions, register and status",
    loinc: None,
};

/// What every section is built from.
struct Part<'s, 'a> {
    title: &'static str,
    kind: Kind,
    entries: Vec<Item<'s, 'a>>,
    lines: Vec<String>,
    empty: String,
    /// The conflicts this section shows.
    conflicts: Vec<usize>,
}

fn section(part: Part, all: &[Conflict], deceased: Option<&str>, base: &str) -> Section {
    let Part {
        title,
        kind,
        entries,
        mut lines,
        empty,
        conflicts,
    } = part;
    let mut sec = Section {
        title,
        code: SectionCode::of(&kind),
        empty_reason: None,
        entry: Vec::new(),
        extension: Vec::new(),
        text: Narrative::default(),
    };
    if let Some(d) = deceased {
        lines.insert(
            0,
            format!("This person has died ({d}). Recorded before death, not for action:"),
        );
    }
    if entries.is_empty() {
        sec.empty_reason = Some(Concept1 {
            coding: [CodingOut {
                system: "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                code: "unavailable",
                display: None,
            }],
            text: Some(empty.clone()),
        });
        if lines.iter().all(|l| l.starts_with("This person has died")) {
            lines.push(empty);
        }
    } else {
        sec.entry = entries
            .iter()
            .map(|(s, _)| RefOut {
                reference: full_url(base, s),
            })
            .collect();
    }
    let overdue_since = entries.iter().rev().find_map(|(_, v)| {
        let review = v.extension(REVIEW_DATE_URL)?;
        let r = date::parse_range(review)?;
        (r.high <= date::now_micros()).then(|| review.to_string())
    });
    if let Some(d) = overdue_since {
        lines.push(format!(
            "REVIEW OVERDUE: planned review date {} has passed",
            words::day(&d)
        ));
        sec.extension.push(ExtOut::Date {
            url: REVIEW_OVERDUE_URL,
            value_date: d,
        });
    }
    for i in conflicts {
        if let Some(c) = all.get(i) {
            sec.extension.push(ExtOut::conflict(c, base));
        }
    }
    sec.text = Narrative::of(&lines);
    sec
}

/// The summary's Composition, serialized straight into the document (no `Value` tree).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SummaryComposition<'a> {
    resource_type: &'static str,
    id: String,
    text: Narrative,
    extension: Vec<ExtOut>,
    status: &'static str,
    #[serde(rename = "type")]
    kind: Concept1,
    subject: RefOut,
    date: &'a str,
    author: [Display; 1],
    title: &'static str,
    section: Vec<Section>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Section {
    title: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extension: Vec<ExtOut>,
    code: SectionCode,
    text: Narrative,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<RefOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    empty_reason: Option<Concept1>,
}

/// A CodeableConcept with one coding.
#[derive(Serialize)]
struct Concept1 {
    coding: [CodingOut; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

impl Concept1 {
    fn snomed(code: &'static str, display: Option<&'static str>) -> Concept1 {
        Concept1 {
            coding: [CodingOut {
                system: codes::SNOMED,
                code,
                display,
            }],
            text: None,
        }
    }
}

/// A section's code: the local code, and the LOINC section code where one fits.
#[derive(Serialize)]
struct SectionCode {
    coding: Vec<CodingOut>,
}

impl SectionCode {
    fn of(k: &Kind) -> SectionCode {
        let mut coding = vec![CodingOut {
            system: SECTION_SYSTEM,
            code: k.code,
            display: Some(k.display),
        }];
        if let Some((code, display)) = k.loinc {
            coding.push(CodingOut {
                system: codes::LOINC,
                code,
                display: Some(display),
            });
        }
        SectionCode { coding }
    }
}

#[derive(Serialize)]
struct CodingOut {
    system: &'static str,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'static str>,
}

#[derive(Serialize)]
struct RefOut {
    reference: String,
}

#[derive(Serialize)]
struct Display {
    display: &'static str,
}

#[derive(Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
enum ExtOut {
    Date {
        url: &'static str,
        value_date: String,
    },
    Instant {
        url: &'static str,
        value_instant: String,
    },
    Complex {
        url: &'static str,
        extension: Vec<SubExt>,
    },
}

#[derive(Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
enum SubExt {
    Coding {
        url: &'static str,
        value_coding: CodingOut,
    },
    Reference {
        url: &'static str,
        value_reference: RefOut,
    },
}

impl ExtOut {
    /// `decision-conflict`: the kind of conflict and every entry concerned.
    fn conflict(c: &Conflict, base: &str) -> ExtOut {
        let mut extension = vec![SubExt::Coding {
            url: "type",
            value_coding: CodingOut {
                system: CONFLICT_SYSTEM,
                code: c.code,
                display: Some(c.display),
            },
        }];
        extension.extend(c.entries.iter().map(|st| SubExt::Reference {
            url: "entry",
            value_reference: RefOut {
                reference: full_url(base, st),
            },
        }));
        ExtOut::Complex {
            url: CONFLICT_URL,
            extension,
        }
    }
}

#[derive(Serialize, Default)]
struct Narrative {
    status: &'static str,
    div: String,
}

impl Narrative {
    fn of(paragraphs: &[String]) -> Narrative {
        Narrative {
            status: "generated",
            div: words::div(paragraphs),
        }
    }
}

/// The resource types an emergency summary draws on besides the Patient (read on its own).
const SUMMARY_TYPES: &[&str] = &[
    "Observation",
    "Composition",
    "DocumentReference",
    "RelatedPerson",
    "CareTeam",
    "CarePlan",
    "Goal",
    "MedicationRequest",
    "Procedure",
    "Condition",
    "Flag",
    "Consent",
    "EpisodeOfCare",
];

/// " by X" / " (decider not named in the record)".
fn by(who: Option<String>, missing: &str) -> String {
    match who {
        Some(w) => format!(" by {w}"),
        None => format!(" ({missing})"),
    }
}

/// "recorded 2 Mar 2026" or "date not recorded".
fn on(v: &View, verb: &str) -> String {
    match v.when() {
        Some(d) => format!("{verb} {}", words::day(d)),
        None => format!("{verb} on a date not recorded"),
    }
}

fn notes(v: &View) -> String {
    let n: Vec<&str> = v
        .note
        .iter()
        .filter_map(|n| n.text.as_deref())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if n.is_empty() {
        String::new()
    } else {
        format!(" Note: {}", n.join(" "))
    }
}

fn review(v: &View) -> String {
    v.extension(REVIEW_DATE_URL)
        .map(|d| format!("; review by {}", words::day(d)))
        .unwrap_or_default()
}

/// "NOT FOR CARDIOPULMONARY RESUSCITATION (NOT FOR CPR): decided 2 Mar 2026 by Dr A Smith (GP,
/// Riverside Practice); review by 2 Jun 2026".
fn decision_line(s: &Summary, v: &View) -> String {
    format!(
        "{}: {}{}{}.{}",
        Cpr::of(v).decision(),
        on(v, "decided"),
        by(
            s.who(v, &v.performer.0),
            "the decider is not named in the record"
        ),
        review(v),
        notes(v)
    )
}

/// "ReSPECT form of 2 Mar 2026 (Dr A Smith)".
fn form_label(s: &Summary, v: &View) -> String {
    format!(
        "ReSPECT form {}{}",
        on(v, "of"),
        by(s.who(v, &v.author.0), "author not named in the record")
    )
}

fn respect_lines(s: &Summary, forms: &[Item], lines: &mut Vec<String>) {
    for (_, f) in forms {
        lines.push(format!("{}:", form_label(s, f)));
        let mut shown = 0;
        fn walk(secs: &[SectionV], all: bool, lines: &mut Vec<String>, shown: &mut usize) {
            for sec in secs {
                let title = sec.title.as_deref().unwrap_or("").trim();
                if all || shown_respect_section(sec) {
                    if let Some(div) = sec.text.as_ref().and_then(|t| t.div.as_deref()) {
                        let text = words::strip_xhtml(div);
                        if !text.is_empty() {
                            lines.push(if title.is_empty() {
                                text
                            } else {
                                format!("{title}: {text}")
                            });
                            *shown += 1;
                        }
                    }
                }
                walk(&sec.section, all, lines, shown);
            }
        }
        walk(&f.section, false, lines, &mut shown);
        if shown == 0 {
            walk(&f.section, true, lines, &mut shown);
        }
        lines.push(match respect_cpr(s, f) {
            Some(c) => format!("CPR recommendation on this form: {}.", c.recommendation()),
            None => "CPR recommendation on this form: not stated in words the summary can read; see the form's own words above.".to_string(),
        });
    }
}

/// A preferred place Observation: of care, of death, or not said.
fn place_kind(v: &View) -> &'static str {
    let coded = |c: &str| {
        v.code
            .coding
            .iter()
            .any(|x| x.system.as_deref() == Some(OBSERVABLES) && x.code.as_deref() == Some(c))
    };
    if coded("preferred-place-of-death") {
        "death"
    } else if coded("preferred-place-of-care") {
        "care"
    } else {
        "unstated"
    }
}

/// "Preferred place of death: 1st choice home; 2nd choice hospice; home is the usual place of
/// residence (recorded 2 Mar 2026)", or the recorded reason there is none.
fn place_line(label: &str, v: &View) -> String {
    let first = (!v.value_codeable_concept.is_empty())
        .then(|| words::concept(&v.value_codeable_concept))
        .flatten();
    let second = v
        .component
        .iter()
        .find(|c| c.code.has(&["second-choice"]))
        .and_then(|c| words::concept(&c.value_codeable_concept));
    let usual = v
        .component
        .iter()
        .find(|c| c.code.has(&["usual-residence"]))
        .and_then(|c| c.value_boolean);
    let reason = if !v.data_absent_reason.is_empty() {
        words::concept(&v.data_absent_reason)
    } else if v.code.has(&PLACE_NOT_RECORDED) {
        words::concept(&v.code)
    } else if v.value_codeable_concept.has(&PLACE_NOT_RECORDED) {
        words::concept(&v.value_codeable_concept)
    } else {
        None
    };
    let when = on(v, "recorded");
    match (first, reason) {
        (_, Some(r)) => format!("{label}: not recorded because {r} ({when})."),
        (Some(f), None) => {
            let mut out = format!("{label}: 1st choice {f}");
            match second {
                Some(s) => out.push_str(&format!("; 2nd choice {s}")),
                None => out.push_str("; no 2nd choice recorded"),
            }
            if usual == Some(true) {
                out.push_str("; the 1st choice is the person's usual place of residence");
            }
            out.push_str(&format!(" ({when})."));
            out
        }
        (None, None) => format!("{label}: entry without a place or a reason ({when})."),
    }
}

/// A RelatedPerson in words: "Clare Ashworth (daughter): 07700 900123".
fn person_line(v: &View) -> String {
    let name = v
        .name
        .0
        .iter()
        .find_map(words::name)
        .unwrap_or_else(|| "name not recorded".to_string());
    let rel = words::concept(&v.relationship)
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let phones = words::phones(&v.telecom);
    let phones = if phones.is_empty() {
        "no telephone number recorded".to_string()
    } else {
        format!("telephone {}", phones.join(", "))
    };
    format!("{name}{rel}: {phones}")
}

/// Whether a Condition is current: not refuted or entered in error, and not resolved,
/// inactive or in remission (a Condition without a clinical status is shown).
fn condition_current(v: &View) -> bool {
    !v.verification_status.has(&["refuted", "entered-in-error"])
        && !v
            .clinical_status
            .has(&["inactive", "resolved", "remission"])
}

/// The summary as a serialized document Bundle.
fn build_document(base: &str, patient: &Stored, items: &[Stored]) -> Result<String, ApiError> {
    let parsed: Vec<(&Stored, View)> = items.iter().map(|s| (s, View::of(s))).collect();
    let s = Summary { items: parsed };
    let pv: PatientView = serde_json::from_str(&patient.content).unwrap_or_else(|e| {
        tracing::error!(patient = %patient.id, error = %e, "a stored Patient could not be read for the emergency summary");
        PatientView::default()
    });
    // Death: `Patient.deceased[x]`, or an actual place of death recorded.
    let died_at: Option<Item> = s
        .live("Observation")
        .filter(|(_, v)| {
            v.code.coding.iter().any(|c| {
                c.system.as_deref() == Some(OBSERVABLES)
                    && c.code.as_deref() == Some("actual-place-of-death")
            })
        })
        .max_by_key(|(_, v)| v.effective());
    let deceased: Option<String> = pv
        .deceased_date_time
        .as_deref()
        .map(words::day)
        .or_else(|| {
            pv.deceased_boolean
                .filter(|b| *b)
                .map(|_| "date of death not recorded".to_string())
        })
        .or_else(|| {
            died_at.map(|(_, v)| {
                v.when()
                    .map(words::day)
                    .unwrap_or_else(|| "date of death not recorded".to_string())
            })
        });

    // Selection.
    let cpr = current_cpr(s.with_code(
        "Observation",
        &[codes::FOR_CPR, codes::NOT_FOR_CPR, codes::CPR_NOT_DISCUSSED],
    ));
    let respect = current_respect(&s);
    let conflicts = conflicts(&s, &cpr, &respect);
    let shows = |codes: &[&str]| -> Vec<usize> {
        conflicts
            .iter()
            .enumerate()
            .filter(|(_, c)| codes.contains(&c.code))
            .map(|(i, _)| i)
            .collect()
    };
    let mut advance = s.with_code(
        "Observation",
        &[codes::HAS_ADRT, codes::HAS_ADRT_LIFE_SUSTAINING],
    );
    advance.extend(s.with_code("Observation", &[codes::HAS_ADVANCE_STATEMENT]));
    let lpa_obs = s.with_code(
        "Observation",
        &[codes::HAS_LPA_WELFARE, codes::HAS_LPA_LIFE_SUSTAINING],
    );
    let people: Vec<_> = s
        .live("RelatedPerson")
        .filter(|(_, v)| v.active != Some(false))
        .collect();
    let mut place_list: Vec<Item> = s
        .live("Observation")
        .filter(|(_, v)| {
            place_kind(v) != "unstated"
                || v.has_code(&codes::PREFERRED_PLACE_OF_DEATH)
                || v.has_code(&PLACE_NOT_RECORDED)
        })
        .collect();
    let mut places: Vec<Item> = Vec::new();
    place_list.sort_by_key(|(_, v)| std::cmp::Reverse(v.effective()));
    for it in place_list {
        let k = place_kind(&it.1);
        if k == "unstated" || !places.iter().any(|(_, v)| place_kind(v) == k) {
            places.push(it);
        }
    }
    let mut meds = s.with_code(
        "MedicationRequest",
        &[
            codes::ANTICIPATORY_MEDS_BOX,
            codes::ANTICIPATORY_MEDS_PRESCRIPTION,
        ],
    );
    meds.extend(
        s.live("MedicationRequest")
            .filter(|m| !meds.iter().any(|x| x.0.id == m.0.id))
            .collect::<Vec<_>>(),
    );
    meds.extend(s.with_code(
        "Procedure",
        &[
            codes::ANTICIPATORY_MEDS_BOX,
            codes::ANTICIPATORY_MEDS_PRESCRIPTION,
        ],
    ));
    let team: Vec<_> = s.live("CareTeam").collect();
    let plans: Vec<_> = s.live("CarePlan").collect();
    let mut other: Vec<_> = s
        .live("Condition")
        .filter(|(_, v)| condition_current(v))
        .collect();
    other.extend(s.live("Flag"));
    other.extend(s.with_code("Observation", &[codes::AKPS]));
    other.extend(s.with_code("Observation", &codes::PROGNOSIS));

    // CPR decision.
    let mut lines = Vec::new();
    let cpr_conflict = conflicts.iter().any(|c| c.code == CPR_DISAGREE);
    let respect_conflict = conflicts.iter().any(|c| c.code == CPR_RESPECT_DISAGREE);
    if cpr_conflict {
        lines.push(format!(
            "CONFLICT: the current CPR decisions disagree ({}). Each is listed below with who decided and when.",
            cpr.iter().map(|(_, v)| Cpr::of(v).short()).collect::<Vec<_>>().join(" and ")
        ));
    }
    let against: Vec<String> = disagreeing_forms(&s, &cpr, &respect)
        .into_iter()
        .map(|((_, f), rec)| format!("{} records {}", form_label(&s, f), rec.recommendation()))
        .collect();
    if respect_conflict {
        lines.push(format!(
            "CONFLICT: the CPR decision disagrees with the current ReSPECT form: {}.",
            against.join("; ")
        ));
    }
    for (_, v) in &cpr {
        lines.push(decision_line(&s, v));
    }
    // No decision: what each current form recommends (more than one disagreeing is a conflict).
    let recs: Vec<String> = respect
        .iter()
        .filter_map(|(_, f)| {
            respect_cpr(&s, f).map(|c| {
                format!(
                    "the current {} records: {}",
                    form_label(&s, f),
                    c.recommendation()
                )
            })
        })
        .collect();
    let recs_disagree = {
        let plain: Vec<Cpr> = respect
            .iter()
            .filter_map(|(_, f)| respect_cpr(&s, f))
            .collect();
        plain.iter().any(|c| Some(c) != plain.first())
    };
    let mut cpr_conflicts = vec![CPR_DISAGREE, CPR_RESPECT_DISAGREE];
    let cpr_empty = if cpr.is_empty() && !recs.is_empty() {
        if recs_disagree {
            lines.push("CONFLICT: the current ReSPECT forms' CPR recommendations disagree; each is listed below.".to_string());
            cpr_conflicts.push(RESPECT_MULTIPLE);
        }
        lines.push("No separate CPR decision recorded.".to_string());
        for r in &recs {
            let mut r = r.clone();
            if let Some(f) = r.get_mut(..1) {
                f.make_ascii_uppercase();
            }
            lines.push(format!("{r}."));
        }
        "No separate CPR decision recorded".to_string()
    } else {
        "No CPR decision recorded: follow usual resuscitation guidance".to_string()
    };
    // The top line's CPR words.
    let cpr_top = if cpr_conflict || respect_conflict {
        let mut t = "CPR: CONFLICT, see the CPR decision section: ".to_string();
        let listed: Vec<String> = cpr
            .iter()
            .map(|(_, v)| {
                format!(
                    "{} ({}{})",
                    Cpr::of(v).short(),
                    s.who(v, &v.performer.0)
                        .map(|w| format!("{w}, "))
                        .unwrap_or_default(),
                    v.when()
                        .map(words::day)
                        .unwrap_or_else(|| "date not recorded".into())
                )
            })
            .chain(against.iter().cloned())
            .collect();
        t.push_str(&listed.join("; "));
        t.push('.');
        t
    } else if let Some((_, v)) = cpr.first() {
        decision_line(&s, v)
    } else if !recs.is_empty() {
        format!(
            "{}No separate CPR decision recorded; {}.",
            if recs_disagree {
                "CPR: CONFLICT, see the CPR decision section. "
            } else {
                ""
            },
            recs.join("; ")
        )
    } else {
        "No CPR decision recorded: follow usual resuscitation guidance.".to_string()
    };
    let mut parts: Vec<Part> = Vec::new();
    parts.push(Part {
        title: "CPR decision",
        kind: CPR_SECTION,
        entries: cpr.clone(),
        lines,
        empty: cpr_empty,
        conflicts: shows(&cpr_conflicts),
    });

    // ReSPECT.
    let mut lines = Vec::new();
    if respect.len() > 1 {
        lines.push(format!(
            "CONFLICT: {} ReSPECT forms are current; only one should be. Each is listed below with its author and date: confirm which form stands.",
            respect.len()
        ));
    }
    if respect_conflict {
        lines.push(
            "CONFLICT: the CPR recommendation here disagrees with the recorded CPR decision (see the CPR decision section).".to_string(),
        );
    }
    respect_lines(&s, &respect, &mut lines);
    parts.push(Part {
        title: "ReSPECT recommendations (current form only)",
        kind: RESPECT_SECTION,
        entries: respect.clone(),
        lines,
        empty: "No current ReSPECT form".to_string(),
        conflicts: shows(&[RESPECT_MULTIPLE, CPR_RESPECT_DISAGREE]),
    });

    // Advance decisions: ADRT first.
    let lines = advance
        .iter()
        .map(|(_, v)| {
            let what = if v.has_code(&[codes::HAS_ADRT_LIFE_SUSTAINING]) {
                "HAS AN ADVANCE DECISION TO REFUSE TREATMENT (ADRT), INCLUDING LIFE-SUSTAINING TREATMENT"
            } else if v.has_code(&[codes::HAS_ADRT]) {
                "HAS AN ADVANCE DECISION TO REFUSE TREATMENT (ADRT)"
            } else {
                "Has an advance statement (wishes and preferences)"
            };
            let what = if v.value_boolean == Some(false) {
                format!("Recorded as NOT present: {}", what.to_lowercase())
            } else {
                what.to_string()
            };
            format!(
                "{what}: {}{}{}.{}",
                on(v, "recorded"),
                by(s.who(v, &v.performer.0), "recorder not named in the record"),
                review(v),
                notes(v)
            )
        })
        .collect();
    parts.push(Part {
        title: "Advance decisions (ADRT first, then advance statements)",
        kind: ADVANCE_SECTION,
        entries: advance.clone(),
        lines,
        empty: "No advance decision or statement recorded".to_string(),
        conflicts: Vec::new(),
    });

    // LPA holders, then other personal contacts.
    let mut lines = Vec::new();
    let mut holders: Vec<&str> = Vec::new();
    let mut lpa: Vec<Item> = Vec::new();
    for it in &lpa_obs {
        let v = &it.1;
        let what = if v.has_code(&[codes::HAS_LPA_LIFE_SUSTAINING]) {
            "LPA for health and welfare, with authority for life-sustaining treatment decisions"
        } else {
            "LPA for health and welfare"
        };
        let mut named: Vec<String> = Vec::new();
        for f in &v.focus.0 {
            let resolved = f.reference.as_deref().and_then(|r| s.resolve(r));
            match resolved {
                Some(p) if p.0.resource_type == "RelatedPerson" && p.1.active != Some(false) => {
                    holders.push(p.0.id.as_str());
                    named.push(person_line(&p.1));
                    if !lpa.iter().any(|x| std::ptr::eq(*x, p)) {
                        lpa.push(p);
                    }
                }
                Some(p) if p.0.resource_type == "RelatedPerson" => {
                    named.push("the holder's record is marked inactive".to_string())
                }
                _ => named.extend(f.display.as_deref().map(str::to_string)),
            }
        }
        let holders_text = if named.is_empty() {
            "holder not named in the record".to_string()
        } else {
            named.join("; ")
        };
        let absent = if v.value_boolean == Some(false) {
            "Recorded as NOT present: "
        } else {
            ""
        };
        lines.push(format!(
            "{absent}{what}: {holders_text} ({}).",
            on(v, "recorded")
        ));
        lpa.push(it);
    }
    for it in &people {
        if !holders.contains(&it.0.id.as_str()) {
            lines.push(format!("Contact: {}.", person_line(&it.1)));
            lpa.push(it);
        }
    }
    parts.push(Part {
        title: "Lasting power of attorney and personal contacts",
        kind: LPA_SECTION,
        entries: lpa.clone(),
        lines,
        empty: "No LPA holder or personal contact recorded".to_string(),
        conflicts: Vec::new(),
    });

    // Preferred places.
    let mut lines = Vec::new();
    let mut death_known = false;
    for kind in ["death", "care", "unstated"] {
        for (_, v) in places.iter().filter(|(_, v)| place_kind(v) == kind) {
            let label = match kind {
                "death" => "Preferred place of death",
                "care" => "Preferred place of care",
                _ => "Preferred place (of care or death not stated)",
            };
            if kind != "care" {
                death_known = true;
            }
            lines.push(place_line(label, v));
        }
        if kind == "death" && !death_known {
            lines.push("ALERT: preferred place of death not recorded".to_string());
        }
    }
    parts.push(Part {
        title: "Preferred place of care and death",
        kind: PLACE_SECTION,
        entries: places.clone(),
        lines: if places.is_empty() { Vec::new() } else { lines },
        empty: "ALERT: preferred place of death not recorded".to_string(),
        conflicts: Vec::new(),
    });

    // Anticipatory medicines.
    let lines = meds
        .iter()
        .map(|(_, v)| {
            let what = words::concept(&v.medication_codeable_concept)
                .or_else(|| {
                    v.medication_reference
                        .as_ref()
                        .and_then(|r| r.display.as_deref().map(str::to_string))
                })
                .or_else(|| words::concept(&v.code))
                .unwrap_or_else(|| "Medicine not named in the record".to_string());
            let dose: Vec<&str> = v
                .dosage_instruction
                .iter()
                .filter_map(|d| d.text.as_deref())
                .collect();
            let dose = if dose.is_empty() {
                String::new()
            } else {
                format!(" Dose: {}.", dose.join("; "))
            };
            let place = match v.extension(epaccs_fhir::profile::BOX_LOCATION) {
                Some(p) => format!("Kept at: {p}."),
                None => "Where they are kept: not recorded.".to_string(),
            };
            format!("{what} ({}). {place}{dose}{}", on(v, "recorded"), notes(v))
        })
        .collect();
    parts.push(Part {
        title: "Anticipatory medicines and where they are kept",
        kind: MEDS_SECTION,
        entries: meds.clone(),
        lines,
        empty: "No anticipatory medicines recorded".to_string(),
        conflicts: Vec::new(),
    });

    // Key worker and 24-hour contacts: key workers first.
    let mut lines = Vec::new();
    for (_, v) in &team {
        let team_name = v
            .name
            .0
            .iter()
            .find_map(words::name)
            .unwrap_or_else(|| "Care team".to_string());
        let mut ps: Vec<_> = v.participant.iter().collect();
        ps.sort_by_key(|p| {
            !words::concept(&p.role).is_some_and(|r| r.to_lowercase().contains("key worker"))
        });
        for p in ps {
            let role = words::concept(&p.role).unwrap_or_else(|| "Member".to_string());
            let member = p.member.as_ref().and_then(|m| {
                let resolved =
                    m.reference
                        .as_deref()
                        .and_then(|r| s.resolve(r))
                        .filter(|(st, pv)| {
                            st.resource_type == "RelatedPerson" && pv.active != Some(false)
                        });
                match resolved {
                    Some((_, pv)) => Some(person_line(pv)),
                    None => s.who(v, std::slice::from_ref(m)),
                }
            });
            let org = p
                .on_behalf_of
                .as_ref()
                .and_then(|o| s.who(v, std::slice::from_ref(o)))
                .map(|o| format!(" ({o})"))
                .unwrap_or_default();
            lines.push(format!(
                "{team_name}, {role}: {}{org}.",
                member.unwrap_or_else(|| "not named in the record".to_string())
            ));
        }
        let phones = words::phones(&v.telecom);
        if !phones.is_empty() {
            lines.push(format!("{team_name} telephone: {}.", phones.join(", ")));
        }
    }
    parts.push(Part {
        title: "Key worker and 24-hour contacts",
        kind: TEAM_SECTION,
        entries: team.clone(),
        lines,
        empty: "No care team recorded".to_string(),
        conflicts: Vec::new(),
    });

    // Care plans.
    let lines = plans
        .iter()
        .map(|(_, v)| {
            let what = v
                .title
                .as_deref()
                .map(str::to_string)
                .or_else(|| words::concept(&v.category))
                .unwrap_or_else(|| "Care plan".to_string());
            let desc = v
                .description
                .0
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            format!("{what}{desc}{}.", review(v))
        })
        .collect();
    parts.push(Part {
        title: "Care plans",
        kind: PLANS_SECTION,
        entries: plans.clone(),
        lines,
        empty: "No care plan recorded".to_string(),
        conflicts: Vec::new(),
    });

    // Conditions, register and status.
    let lines = other
        .iter()
        .map(|(st, v)| {
            let what =
                words::concept(&v.code).unwrap_or_else(|| "Entry without a code".to_string());
            match st.resource_type.as_str() {
                "Condition" => {
                    let qual = if v.verification_status.has(&[
                        "unconfirmed",
                        "provisional",
                        "differential",
                    ]) {
                        " (not confirmed)"
                    } else {
                        ""
                    };
                    let since = v
                        .onset_date_time
                        .as_deref()
                        .map(|d| format!(", since {}", words::day(d)))
                        .unwrap_or_default();
                    format!("{what}{qual}{since}.")
                }
                "Flag" => {
                    let since = v
                        .period
                        .as_ref()
                        .and_then(|p| p.start.as_deref())
                        .map(|d| format!(" since {}", words::day(d)))
                        .unwrap_or_default();
                    format!("{what}{since}.")
                }
                _ => {
                    let value = if let Some(i) = v.value_integer {
                        format!(" {i}")
                    } else if let Some(q) = &v.value_quantity {
                        format!(
                            " {}{}",
                            q.value.map(|x| x.to_string()).unwrap_or_default(),
                            q.unit
                                .as_deref()
                                .map(|u| format!(" {u}"))
                                .unwrap_or_default()
                        )
                    } else if let Some(t) = &v.value_string {
                        format!(": {t}")
                    } else {
                        String::new()
                    };
                    let what = if v.has_code(&codes::PROGNOSIS) {
                        format!("Prognosis: {what}")
                    } else {
                        what
                    };
                    format!("{what}{value} ({}).", on(v, "recorded"))
                }
            }
        })
        .collect();
    parts.push(Part {
        title: "Conditions, register and status",
        kind: OTHER_SECTION,
        entries: other.clone(),
        lines,
        empty: "Nothing further recorded".to_string(),
        conflicts: Vec::new(),
    });

    let mut sections: Vec<Section> = parts
        .into_iter()
        .map(|p| section(p, &conflicts, deceased.as_deref(), base))
        .collect();
    if let Some(d) = &deceased {
        sections.insert(
            0,
            Section {
                title: "Deceased",
                extension: Vec::new(),
                code: SectionCode::of(&DECEASED),
                text: Narrative::of(&[
                    format!(
                        "This person has died ({d}). Nothing in this summary is a current recommendation for care."
                    ),
                    died_at
                        .and_then(|(_, v)| words::concept(&v.value_codeable_concept))
                        .map(|place| format!("Place of death: {place}."))
                        .unwrap_or_default(),
                ]),
                entry: died_at
                    .iter()
                    .map(|(st, _)| RefOut {
                        reference: full_url(base, st),
                    })
                    .collect(),
                empty_reason: None,
            },
        );
    }

    // The top line: identity, the CPR decision, deceased, conflicts.
    let name = pv
        .name
        .0
        .iter()
        .find_map(words::name)
        .unwrap_or_else(|| "Name not recorded".to_string());
    let nhs = pv
        .identifier
        .iter()
        .find(|i| i.system.as_deref() == Some(NhsNumber::SYSTEM))
        .and_then(|i| i.value.as_deref())
        .map(|n| format!("NHS number {}", words::nhs_number(n)))
        .unwrap_or_else(|| "NHS number not recorded".to_string());
    let born = pv
        .birth_date
        .as_deref()
        .map(|b| format!("born {}", words::day(b)))
        .unwrap_or_else(|| "date of birth not recorded".to_string());
    let identity = format!("{name}, {nhs}, {born}.");
    let conflict_words = conflicts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                c.display.to_string()
            } else {
                let mut w = c.display.chars();
                w.next()
                    .map(|f| f.to_lowercase().chain(w).collect())
                    .unwrap_or_default()
            }
        })
        .collect::<Vec<String>>()
        .join("; ");
    let top = match &deceased {
        Some(d) => {
            let mut t = format!(
                "DECEASED ({d}): this person has died. {identity} Nothing in this summary is a current recommendation for care."
            );
            if !conflicts.is_empty() {
                t.push_str(&format!(
                    " The record also holds a CONFLICT: {conflict_words}."
                ));
            }
            t
        }
        None if !conflicts.is_empty() => {
            format!("CONFLICT: {conflict_words}. {identity} {cpr_top}")
        }
        None => format!("{identity} {cpr_top}"),
    };

    let latest = items
        .iter()
        .map(|s| s.last_updated)
        .chain([patient.last_updated])
        .max()
        .unwrap_or(0);
    let now = date::format_instant(date::now_micros());
    let mut extension = vec![ExtOut::Instant {
        url: "https://fhir.epaccs.nhs.example/StructureDefinition/record-last-updated",
        value_instant: date::format_instant(latest),
    }];
    extension.extend(conflicts.iter().map(|c| ExtOut::conflict(c, base)));
    let composition = SummaryComposition {
        resource_type: "Composition",
        id: uuid::Uuid::new_v4().to_string(),
        text: Narrative::of(&[top]),
        extension,
        status: "final",
        kind: Concept1::snomed(
            "861421000000109",
            Some("End of life care coordination summary"),
        ),
        subject: RefOut {
            reference: full_url(base, patient),
        },
        date: &now,
        author: [Display {
            display: "epaccs emergency summary service",
        }],
        title: "Emergency summary",
        section: sections,
    };
    let composition_url = format!("urn:uuid:{}", composition.id);
    // The resources each section names, once each, in section order.
    let mut order: Vec<(&str, &str)> = Vec::new();
    let died: Vec<Item> = died_at.into_iter().collect();
    for group in [
        &died, &cpr, &respect, &advance, &lpa, &places, &meds, &team, &plans, &other,
    ] {
        for &&(st, _) in group.iter() {
            let key = (st.resource_type.as_str(), st.id.as_str());
            if !order.contains(&key) {
                order.push(key);
            }
        }
    }
    let stored: std::collections::HashMap<(&str, &str), &Stored> = s
        .items
        .iter()
        .map(|(st, _)| ((st.resource_type.as_str(), st.id.as_str()), *st))
        .collect();
    // The Bundle is written out by hand so that the stored resources go out byte for byte as
    // stored, as a read sends them: never parsed again to be embedded, never re-serialized.
    let mut entries: Vec<(String, &str)> = vec![(full_url(base, patient), &patient.content)];
    for key in &order {
        if let Some(st) = stored.get(key) {
            entries.push((full_url(base, st), &st.content));
        }
    }
    let capacity = 4096
        + entries
            .iter()
            .map(|(u, c)| u.len() + c.len() + 32)
            .sum::<usize>();
    let mut out: Vec<u8> = Vec::with_capacity(capacity);
    let fail = |e: serde_json::Error| ApiError::Internal(format!("summary: {e}"));
    let string = |out: &mut Vec<u8>, s: &str| serde_json::to_writer(out, s).map_err(fail);
    out.extend_from_slice(br#"{"resourceType":"Bundle","id":"#);
    string(&mut out, &uuid::Uuid::new_v4().to_string())?;
    out.extend_from_slice(br#","meta":{"lastUpdated":"#);
    string(&mut out, &now)?;
    out.extend_from_slice(
        br#"},"type":"document","identifier":{"system":"urn:ietf:rfc:3986","value":"#,
    );
    string(&mut out, &format!("urn:uuid:{}", uuid::Uuid::new_v4()))?;
    out.extend_from_slice(br#"},"timestamp":"#);
    string(&mut out, &now)?;
    out.extend_from_slice(br#","entry":[{"fullUrl":"#);
    string(&mut out, &composition_url)?;
    out.extend_from_slice(br#","resource":"#);
    serde_json::to_writer(&mut out, &composition).map_err(fail)?;
    out.push(b'}');
    for (url, content) in &entries {
        out.extend_from_slice(br#",{"fullUrl":"#);
        string(&mut out, url)?;
        out.extend_from_slice(br#","resource":"#);
        out.extend_from_slice(content.as_bytes());
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    String::from_utf8(out).map_err(|e| ApiError::Internal(format!("summary: {e}")))
}

enum Lookup {
    Nhs(NhsNumber),
    Demographics {
        family: String,
        birth: date::Range,
        postcode: String,
    },
}

fn parse_lookup(pairs: &[(String, String)]) -> Result<Lookup, ApiError> {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(ident) = get("identifier") {
        let (system, value) = ident
            .split_once('|')
            .unwrap_or((NhsNumber::SYSTEM, ident.as_str()));
        if system != NhsNumber::SYSTEM {
            return Err(ApiError::BadRequest(format!(
                "identifier system must be {}",
                NhsNumber::SYSTEM
            )));
        }
        let n = NhsNumber::parse(value).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        return Ok(Lookup::Nhs(n));
    }
    match (get("family"), get("birthdate"), get("address-postalcode")) {
        (Some(f), Some(b), Some(p)) => {
            if !date::is_date(&b) || b.len() != 10 {
                return Err(ApiError::BadRequest("birthdate must be a full date, YYYY-MM-DD".into()));
            }
            let birth = date::parse_range(&b).ok_or_else(|| ApiError::BadRequest("birthdate is not a valid date".into()))?;
            Ok(Lookup::Demographics { family: epaccs_fhir::search::normalize(&f), birth, postcode: epaccs_fhir::search::normalize(&p) })
        }
        _ => Err(ApiError::BadRequest(
            "give identifier=https://fhir.nhs.uk/Id/nhs-number|<NHS number>, or all of family, birthdate and address-postalcode".into(),
        )),
    }
}

pub async fn summary(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(req.query_string());
    // The page is the same answer (same look-up, sharing decision and audit record), rendered
    // from the same document Bundle.
    let as_page = page::wants_html(&req, &pairs);
    let doc = caller
        .audited(&state, "operation", Some("Patient"), async {
            caller.require("Patient", Interaction::Read)?;
            // The summary is made of these types. A token that may not read them all gets no
            // summary, rather than one with sections left empty: a crew could take a missing
            // DNACPR decision for none.
            for t in SUMMARY_TYPES {
                caller.require(t, Interaction::Read)?;
            }
            let lookup = parse_lookup(&pairs)?;
            // Whether two people share these details, and so whether the look-up refuses to
            // choose, depends on people the caller may not see; a role that may not learn that a
            // withheld record exists must name the person by NHS number (one record each).
            if matches!(lookup, Lookup::Demographics { .. }) && !caller.gate.may_know_withheld() {
                return Err(ApiError::Forbidden(
                    "a look-up by name, birth date and postcode is for roles that may break glass; give the NHS number".into(),
                ));
            }
            let gate = caller.gate.clone();
            let store = &state.store;
            let not_found = |e| match e {
                StoreError::NotFound => ApiError::NotFound("no record matches these details".into()),
                other => ApiError::from(other),
            };
            let candidates = match &lookup {
                Lookup::Nhs(n) => store.patients_by_nhs(n).await,
                Lookup::Demographics { family, birth, postcode } => store.patients_by_demographics(family, *birth, postcode).await,
            }
            .map_err(not_found)?;
            let one = match candidates.as_slice() {
                [] => return Err(not_found(StoreError::NotFound)),
                [one] => one,
                _ => {
                    return Err(StoreError::Unprocessable(vec![Issue::error(
                        "multiple-matches",
                        None,
                        "more than one person matches these details: no clinical data is returned. Give the NHS number, or more detail, to identify the person",
                    )])
                    .into())
                }
            };
            let patient = store.read(gate.clone(), "Patient", one).await.map_err(not_found)?;
            let (items, _) = store.compartment(gate, one, SUMMARY_TYPES).await.map_err(not_found)?;
            build_document(&state.base_url, &patient, &items)
        })
        .await;
    if as_page {
        let reader = page::Reader::of(caller.principal(), caller.gate.may_know_withheld());
        return Ok(page::answer(doc, &reader));
    }
    let doc = doc?;
    Ok(HttpResponse::Ok()
        .content_type(respond::FHIR_JSON_UTF8)
        .body(doc))
}

pub async fn everything(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let pairs = query_pairs(req.query_string());
    let b = caller
        .audited(&state, "operation", Some("Patient"), async {
            caller.require("Patient", Interaction::Read)?;
            let mut since = None;
            let mut types: Vec<String> = Vec::new();
            let mut count = epaccs_fhir::query::MAX_COUNT;
            let mut after: Option<String> = None;
            for (k, v) in &pairs {
                match k.as_str() {
                    "_since" => since = Some(date::parse_range(v).ok_or_else(|| ApiError::BadRequest("_since is not a FHIR instant".into()))?.low),
                    "_type" => {
                        for t in v.split(',') {
                            crate::rest::kind(t)?;
                            types.push(t.to_string());
                        }
                    }
                    "_count" => count = v.parse::<usize>().map_err(|_| ApiError::BadRequest("_count must be a whole number".into()))?.clamp(1, epaccs_fhir::query::MAX_COUNT),
                    "_cursor" => after = Some(v.clone()),
                    "_format" | "_pretty" => {}
                    other => return Err(ApiError::BadRequest(format!("'{other}' is not a $everything parameter (_since, _type, _count)"))),
                }
            }
            // Only the types the token may read: asked for by name, each must be; otherwise
            // the record's types it may read (none named: all of them).
            for t in &types {
                caller.require(t, Interaction::Read)?;
            }
            if types.is_empty() {
                let readable: Vec<String> = epaccs_fhir::registry::KINDS
                    .iter()
                    .filter(|k| k.is_patient_data() && k.client_writable)
                    .map(|k| k.name.to_string())
                    .filter(|t| caller.gate.scope_reads(t))
                    .collect();
                if !caller.gate.scope_reads("*") {
                    types = readable;
                }
            }
            let gate = caller.gate.clone();
            let pid = id.clone();
            let (mut items, withheld) = state
                .store
                .with_conn(move |c| {
                    resources::read(c, &gate, "Patient", &pid)?;
                    let t: Vec<&str> = types.iter().map(String::as_str).collect();
                    resources::compartment(c, &gate, &pid, &t, since)
                })
                .await?;
            if let Some(a) = &after {
                let pos = items.iter().position(|s| format!("{}/{}", s.resource_type, s.id) == *a).map_or(0, |p| p + 1);
                items.drain(..pos);
            }
            let next = (items.len() > count).then(|| format!("{}/{}", items[count - 1].resource_type, items[count - 1].id));
            items.truncate(count);
            let base = &state.base_url;
            let mut entries: Vec<Value> = items.iter().map(|s| respond::entry(full_url(base, s), respond::parse(s), Some("match"))).collect();
            if withheld > 0 && caller.gate.may_know_withheld() {
                // How many, and of what, would describe what is withheld: only that some is.
                entries.push(json!({"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "suppressed",
                    "diagnostics": "some of this record is withheld by the sharing rules; in an emergency, request access with purpose of use BTG and a reason"}]}, "search": {"mode": "outcome"}}));
            }
            let self_url = format!("{base}/Patient/{id}/$everything");
            let mut links = vec![("self", if req.query_string().is_empty() { self_url.clone() } else { format!("{self_url}?{}", req.query_string()) })];
            if let Some(n) = next {
                let mut p: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k != "_cursor").cloned().collect();
                p.push(("_cursor".into(), n));
                let qs: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(p).finish();
                links.push(("next", format!("{self_url}?{qs}")));
            }
            Ok(bundle("searchset", None, links, entries))
        })
        .await?;
    Ok(respond::json(StatusCode::OK, &b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(ty: &str, content: Value) -> Stored {
        Stored {
            resource_type: ty.to_string(),
            id: "x".to_string(),
            version_id: 1,
            last_updated: 0,
            deleted: false,
            patient_key: None,
            content: content.to_string(),
        }
    }

    #[test]
    fn the_view_reads_what_the_value_tree_did() {
        let episode = stored(
            "EpisodeOfCare",
            json!({"resourceType": "EpisodeOfCare", "status": "active",
                "type": [{"coding": [{"system": "s", "code": "a"}]}, {"coding": [{"code": "b"}, {"display": "no code"}]}],
                "period": {"start": "2026-01-01"}, "unknown": {"deep": [1, {"x": null}]}}),
        );
        let v = View::of(&episode);
        assert_eq!(v.status(), "active");
        assert!(v.has_code(&["b"]) && v.has_code(&["a"]) && !v.has_code(&["c"]));
        assert_eq!(v.effective(), i64::MIN, "period is not an effective date");

        // Escaped strings are read unescaped; the first date present decides.
        let obs = stored(
            "Observation",
            json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"code": "450476008"}], "text": "\"quoted\""},
                "valueCodeableConcept": {"coding": [{"code": "v\\1"}]},
                "issued": "2026-03-01T00:00:00Z", "effectivePeriod": {"start": "2026-02-01"},
                "extension": [{"url": "other", "valueDate": "2000-01-01"},
                              {"url": REVIEW_DATE_URL, "valueDateTime": "2001-02-03T04:05:06Z"}]}),
        );
        let v = View::of(&obs);
        assert_eq!(v.status(), "final");
        assert!(v.has_code(&["450476008"]) && v.has_code(&["v\\1"]));
        assert_eq!(
            v.effective(),
            date::parse_range("2026-03-01T00:00:00Z").expect("date").low
        );
        assert_eq!(v.extension(REVIEW_DATE_URL), Some("2001-02-03T04:05:06Z"));

        let index = stored(
            "DocumentReference",
            json!({"resourceType": "DocumentReference", "status": "superseded",
                "content": [{"attachment": {"url": "Composition/old"}}],
                "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/prev"}},
                              {"code": "appends", "target": {"reference": "DocumentReference/other"}}]}),
        );
        let v = View::of(&index);
        let urls: Vec<_> = v
            .content
            .iter()
            .filter_map(|c| c.attachment.as_ref()?.url.as_deref())
            .collect();
        assert_eq!(urls, ["Composition/old"]);
        let replaced: Vec<_> = v
            .relates_to
            .iter()
            .filter(|r| r.code.as_deref() == Some("replaces"))
            .filter_map(|r| r.target.as_ref()?.url.as_deref())
            .collect();
        assert_eq!(replaced, ["DocumentReference/prev"]);
    }

    fn stored_as(ty: &str, id: &str, content: Value) -> Stored {
        Stored {
            id: id.to_string(),
            ..stored(ty, content)
        }
    }

    fn document(patient: Value, items: &[Stored]) -> Value {
        let p = stored_as("Patient", "p", patient);
        let doc = build_document("https://x.example", &p, items).expect("document");
        serde_json::from_str(&doc).expect("JSON")
    }

    fn form(id: &str, date: &str, author: &str, recommendation: &str) -> Stored {
        stored_as(
            "Composition",
            id,
            json!({"resourceType": "Composition", "status": "final",
                "type": {"coding": [{"system": codes::SNOMED, "code": codes::RESPECT_FORM}]},
                "date": date, "author": [{"display": author}],
                "section": [{"title": "4. Clinical recommendations", "text": {"status": "generated",
                    "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{recommendation}</div>")}}]}),
        )
    }

    fn index(id: &str, form: &str, status: &str) -> Stored {
        stored_as(
            "DocumentReference",
            id,
            json!({"resourceType": "DocumentReference", "status": status,
                "type": {"coding": [{"system": codes::SNOMED, "code": codes::RESPECT_FORM}]},
                "content": [{"attachment": {"url": format!("Composition/{form}")}}]}),
        )
    }

    fn conflict_codes(element: &Value) -> Vec<String> {
        element["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["url"] == CONFLICT_URL)
            .filter_map(|e| e["extension"][0]["valueCoding"]["code"].as_str())
            .map(str::to_string)
            .collect()
    }

    /// Hazard "superseded ReSPECT shown as current": when more than one form is current (the
    /// store should never let it happen, but data from before, or a defect, can), the summary
    /// shows both and says CONFLICT rather than picking the newest.
    #[test]
    fn two_current_respect_forms_are_a_conflict_not_a_choice() {
        let items = [
            form(
                "gp",
                "2026-03-02",
                "Dr A Smith",
                "CPR attempts NOT recommended",
            ),
            index("i-gp", "gp", "current"),
            form(
                "hosp",
                "2026-02-01",
                "Dr B Jones",
                "Focus on comfort. CPR attempts NOT recommended",
            ),
            index("i-hosp", "hosp", "current"),
            form("old", "2025-01-01", "Dr C", "CPR attempts recommended"),
            index("i-old", "old", "superseded"),
        ];
        let doc = document(json!({"resourceType": "Patient"}), &items);
        let c = &doc["entry"][0]["resource"];
        assert!(c["text"]["div"]
            .as_str()
            .expect("div")
            .contains("<p>CONFLICT: More than one ReSPECT form is current"));
        assert_eq!(conflict_codes(c), vec![RESPECT_MULTIPLE]);
        let sec = &c["section"][1];
        assert_eq!(sec["code"]["coding"][0]["code"], "respect-recommendations");
        assert_eq!(conflict_codes(sec), vec![RESPECT_MULTIPLE]);
        let div = sec["text"]["div"].as_str().expect("div");
        assert!(
            div.contains("CONFLICT: 2 ReSPECT forms are current"),
            "{div}"
        );
        assert!(
            div.contains("ReSPECT form of 2 Mar 2026 by Dr A Smith")
                && div.contains("ReSPECT form of 1 Feb 2026 by Dr B Jones"),
            "{div}"
        );
        assert!(!div.contains("Dr C"), "a superseded form was shown: {div}");
        let entries: Vec<&str> = sec["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["reference"].as_str())
            .collect();
        assert_eq!(
            entries,
            [
                "https://x.example/Composition/gp",
                "https://x.example/Composition/hosp"
            ]
        );

        // No CPR decision, and two current forms that disagree on CPR: the CPR section says
        // CONFLICT and states both, never only the newest.
        let disagree = [
            form(
                "gp",
                "2026-03-02",
                "Dr A Smith",
                "CPR attempts NOT recommended",
            ),
            form(
                "hosp",
                "2026-02-01",
                "Dr B Jones",
                "CPR attempts recommended",
            ),
        ];
        let doc = document(json!({"resourceType": "Patient"}), &disagree);
        let cpr = &doc["entry"][0]["resource"]["section"][0];
        let div = cpr["text"]["div"].as_str().expect("div");
        assert!(
            div.contains("CONFLICT: the current ReSPECT forms' CPR recommendations disagree"),
            "{div}"
        );
        assert!(
            div.contains(
                "ReSPECT form of 2 Mar 2026 by Dr A Smith records: CPR attempts NOT recommended"
            ),
            "{div}"
        );
        assert!(
            div.contains(
                "ReSPECT form of 1 Feb 2026 by Dr B Jones records: CPR attempts recommended"
            ),
            "{div}"
        );
        assert!(!div.contains("usual resuscitation guidance"), "{div}");
        assert_eq!(conflict_codes(cpr), vec![RESPECT_MULTIPLE]);

        // One current form: no conflict.
        let doc = document(json!({"resourceType": "Patient"}), &items[..2]);
        assert!(conflict_codes(&doc["entry"][0]["resource"]).is_empty());
    }

    /// The CPR section names the form that disagrees, not merely the newest one.
    #[test]
    fn the_disagreeing_form_is_the_one_named() {
        let decision = stored_as(
            "Observation",
            "d",
            json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": codes::SNOMED, "code": codes::NOT_FOR_CPR}]},
                "effectiveDateTime": "2026-03-02", "performer": [{"display": "Dr A Smith"}]}),
        );
        let items = [
            decision,
            form(
                "new",
                "2026-03-02",
                "Dr A Smith",
                "CPR attempts NOT recommended",
            ),
            form("old", "2025-06-01", "Dr C Old", "CPR attempts recommended"),
        ];
        let doc = document(json!({"resourceType": "Patient"}), &items);
        let c = &doc["entry"][0]["resource"];
        assert_eq!(
            conflict_codes(c),
            vec![RESPECT_MULTIPLE, CPR_RESPECT_DISAGREE]
        );
        let cpr = &c["section"][0];
        let against: Vec<&str> = cpr["extension"][0]["extension"]
            .as_array()
            .expect("parts")
            .iter()
            .filter_map(|p| p["valueReference"]["reference"].as_str())
            .collect();
        assert_eq!(
            against,
            [
                "https://x.example/Observation/d",
                "https://x.example/Composition/old"
            ]
        );
        let div = cpr["text"]["div"].as_str().expect("div");
        assert!(
            div.contains("disagrees with the current ReSPECT form: ReSPECT form of 1 Jun 2025 by Dr C Old records CPR attempts recommended"),
            "{div}"
        );
        assert!(!div.contains("2 Mar 2026 by Dr A Smith records"), "{div}");
    }

    /// Hazard "deceased person's record still active": an actual place of death recorded
    /// without `Patient.deceased[x]` still makes the summary say DECEASED, with the date.
    #[test]
    fn an_actual_place_of_death_means_deceased() {
        let place = stored_as(
            "Observation",
            "died",
            json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": OBSERVABLES, "code": "actual-place-of-death"}]},
                "effectiveDateTime": "2026-08-09T23:15:00Z",
                "valueCodeableConcept": {"coding": [{"system": codes::SNOMED, "code": "183676005", "display": "Died in hospital"}]}}),
        );
        let dnacpr = stored_as(
            "Observation",
            "d",
            json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": codes::SNOMED, "code": codes::NOT_FOR_CPR}]},
                "effectiveDateTime": "2026-03-02", "performer": [{"display": "Dr A Smith"}]}),
        );
        let doc = document(
            json!({"resourceType": "Patient", "name": [{"given": ["Ann"], "family": "Smith"}]}),
            &[place, dnacpr],
        );
        let c = &doc["entry"][0]["resource"];
        let top = c["text"]["div"].as_str().expect("div");
        assert!(
            top.contains("<p>DECEASED (10 Aug 2026): this person has died. Ann Smith"),
            "{top}"
        );
        assert!(!top.contains("NOT FOR"), "{top}");
        let dead = &c["section"][0];
        assert_eq!(dead["code"]["coding"][0]["code"], "deceased");
        assert!(dead["text"]["div"]
            .as_str()
            .expect("div")
            .contains("<p>Place of death: Died in hospital.</p>"));
        assert_eq!(
            dead["entry"][0]["reference"],
            "https://x.example/Observation/died"
        );
        assert!(doc["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["resource"]["effectiveDateTime"] == "2026-08-09T23:15:00Z"));
    }

    #[test]
    fn cpr_recommendations_are_read_only_from_plain_words() {
        for (text, expected) in [
            (
                "Focus on comfort. CPR attempts NOT recommended",
                Some(Cpr::Not),
            ),
            ("CPR attempts recommended", Some(Cpr::For)),
            ("For modified CPR", Some(Cpr::For)),
            ("Not for CPR", Some(Cpr::Not)),
            (
                "Do not attempt cardiopulmonary resuscitation",
                Some(Cpr::Not),
            ),
            (
                "CPR attempts recommended. CPR attempts NOT recommended",
                Some(Cpr::Unclear),
            ),
            ("Focus on comfort", None),
            ("Discuss CPR with family", None),
        ] {
            assert_eq!(Cpr::in_text(text), expected, "{text}");
        }
    }

    /// The decider is named from what the record holds: a contained PractitionerRole with its
    /// Practitioner and Organization, or an identifier; an unresolvable reference is not guessed.
    #[test]
    fn the_decider_is_named_from_the_record_only() {
        let obs = stored_as(
            "Observation",
            "d",
            json!({"resourceType": "Observation", "status": "final",
                "contained": [
                    {"resourceType": "Practitioner", "id": "pr", "name": [{"prefix": ["Dr"], "given": ["Ann"], "family": "Smith"}]},
                    {"resourceType": "Organization", "id": "org", "name": "Riverside Practice"},
                    {"resourceType": "PractitionerRole", "id": "role", "practitioner": {"reference": "#pr"},
                     "organization": {"reference": "#org"}, "code": [{"text": "GP"}]}],
                "code": {"coding": [{"system": codes::SNOMED, "code": codes::NOT_FOR_CPR}]},
                "effectiveDateTime": "2026-03-02", "performer": [{"reference": "#role"}]}),
        );
        let unknown = stored_as(
            "Observation",
            "u",
            json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": codes::SNOMED, "code": codes::NOT_FOR_CPR}]},
                "effectiveDateTime": "2026-03-01", "performer": [{"reference": "Practitioner/elsewhere"}]}),
        );
        let with_id = stored_as(
            "Observation",
            "i",
            json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": codes::SNOMED, "code": codes::NOT_FOR_CPR}]},
                "effectiveDateTime": "2026-02-01", "performer": [{"identifier": {"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "7654321"}}]}),
        );
        let doc = document(json!({"resourceType": "Patient"}), &[obs, unknown, with_id]);
        let div = doc["entry"][0]["resource"]["section"][0]["text"]["div"]
            .as_str()
            .expect("div");
        assert!(
            div.contains("decided 2 Mar 2026 by Dr Ann Smith (GP, Riverside Practice)"),
            "{div}"
        );
        assert!(
            div.contains("decided 1 Mar 2026 (the decider is not named in the record)"),
            "{div}"
        );
        assert!(div.contains("decided 1 Feb 2026 by GMC 7654321"), "{div}");
        assert!(
            !div.contains("CONFLICT"),
            "decisions that agree are no conflict: {div}"
        );
    }

    /// Element names with different types in different resources never make a row unreadable.
    #[test]
    fn every_summary_type_parses_with_its_own_shapes() {
        for (ty, content) in [
            (
                "Goal",
                json!({"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "Stay at home"}}),
            ),
            (
                "CareTeam",
                json!({"resourceType": "CareTeam", "status": "active", "name": "Palliative care team",
                "participant": [{"role": [{"text": "Key worker"}], "member": {"display": "Sam Nurse"}}]}),
            ),
            (
                "Procedure",
                json!({"resourceType": "Procedure", "status": "completed", "category": {"text": "x"},
                "performer": [{"function": {"text": "f"}, "actor": {"display": "Nurse"}}]}),
            ),
            (
                "CarePlan",
                json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "author": {"display": "Dr A"},
                "description": "Care at home"}),
            ),
            (
                "MedicationRequest",
                json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                "performer": {"display": "Pharmacy"}, "medicationReference": {"display": "Morphine"}}),
            ),
            (
                "EpisodeOfCare",
                json!({"resourceType": "EpisodeOfCare", "status": "active", "type": [{"text": "x"}]}),
            ),
        ] {
            let st = stored(ty, content);
            let v: Result<View, _> = serde_json::from_str(&st.content);
            assert!(v.is_ok(), "{ty}: {:?}", v.err());
        }
    }

    #[test]
    fn a_damaged_row_reads_as_empty_rather_than_failing_the_summary() {
        let damaged = Stored {
            content: "{\"status\": 7".to_string(),
            ..stored("Observation", json!({}))
        };
        let v = View::of(&damaged);
        assert_eq!(v.status(), "");
        assert!(!v.has_code(&["450476008"]));
    }
}
