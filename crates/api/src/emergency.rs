//! `Patient/$emergency-summary` for ambulance crews, 111 and out-of-hours, and
//! `Patient/[id]/$everything`.

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
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::borrow::Cow;

/// Extension marking the planned review date of a plan or decision.
pub const REVIEW_DATE_URL: &str =
    "https://fhir.epaccs.nhs.example/StructureDefinition/planned-review-date";
/// Extension on a summary section: the review date has passed.
pub const REVIEW_OVERDUE_URL: &str =
    "https://fhir.epaccs.nhs.example/StructureDefinition/review-overdue";

/// What the summary reads of a stored resource. The stored JSON is parsed straight into these
/// borrowed fields, and everything else is skipped unread, rather than into a
/// `serde_json::Value` tree. Every stored resource passed fhir-sdk's typed validation on write,
/// so each field present has its FHIR type.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct View<'a> {
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Codes<'a>,
    #[serde(borrow, default)]
    value_codeable_concept: Codes<'a>,
    #[serde(borrow, default, rename = "type")]
    kind: Codes<'a>,
    #[serde(borrow)]
    effective_date_time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    date: Option<Cow<'a, str>>,
    #[serde(borrow)]
    date_time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    authored_on: Option<Cow<'a, str>>,
    #[serde(borrow)]
    recorded_date: Option<Cow<'a, str>>,
    #[serde(borrow)]
    issued: Option<Cow<'a, str>>,
    #[serde(borrow)]
    effective_period: Option<Period<'a>>,
    #[serde(borrow, default)]
    extension: Vec<Extension<'a>>,
    #[serde(borrow, default)]
    content: Vec<Content<'a>>,
    #[serde(borrow, default)]
    relates_to: Vec<RelatesTo<'a>>,
}

#[derive(Deserialize)]
struct Period<'a> {
    #[serde(borrow)]
    start: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Extension<'a> {
    #[serde(borrow)]
    url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    value_date: Option<Cow<'a, str>>,
    #[serde(borrow)]
    value_date_time: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow)]
    attachment: Option<Target<'a>>,
}

#[derive(Deserialize)]
struct RelatesTo<'a> {
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    target: Option<Target<'a>>,
}

/// An Attachment (`url`) or a Reference (`reference`): only the one link is read.
#[derive(Deserialize)]
struct Target<'a> {
    #[serde(borrow, alias = "reference")]
    url: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Concept<'a> {
    #[serde(borrow, default)]
    coding: Vec<Coding<'a>>,
}

#[derive(Deserialize)]
struct Coding<'a> {
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

/// The codes of one CodeableConcept or of an array of them (`type` is either, by resource).
#[derive(Default)]
struct Codes<'a>(Vec<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Codes<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Codes<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a CodeableConcept or an array of them")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Codes<'a>, A::Error> {
                let c = Concept::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Codes(c.coding.into_iter().filter_map(|c| c.code).collect()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Codes<'a>, A::Error> {
                let mut out = Vec::new();
                while let Some(c) = seq.next_element::<Concept<'de>>()? {
                    out.extend(c.coding.into_iter().filter_map(|c| c.code));
                }
                Ok(Codes(out))
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

impl<'a> View<'a> {
    /// Parses a stored resource. It passed validation on write, so this cannot fail short of a
    /// damaged row; such a row is logged and read as carrying no status, codes or dates (as
    /// the `Value` path before it did).
    fn of(st: &'a Stored) -> View<'a> {
        serde_json::from_str(&st.content).unwrap_or_else(|e| {
            tracing::error!(resource = %format!("{}/{}", st.resource_type, st.id), error = %e, "a stored resource could not be read for the emergency summary");
            View::default()
        })
    }

    fn status(&self) -> &str {
        self.status.as_deref().unwrap_or("")
    }

    /// Whether its code, value or type carries one of `wanted`.
    fn has_code(&self, wanted: &[&str]) -> bool {
        [&self.code, &self.value_codeable_concept, &self.kind]
            .iter()
            .flat_map(|c| c.0.iter())
            .any(|code| wanted.contains(&code.as_ref()))
    }

    /// When it took effect (the first date element present, in this order), for newest-first.
    fn effective(&self) -> i64 {
        [
            &self.effective_date_time,
            &self.date,
            &self.date_time,
            &self.authored_on,
            &self.recorded_date,
            &self.issued,
        ]
        .into_iter()
        .find_map(|d| d.as_deref().and_then(date::parse_range))
        .or_else(|| {
            self.effective_period
                .as_ref()
                .and_then(|p| p.start.as_deref())
                .and_then(date::parse_range)
        })
        .map_or(i64::MIN, |r| r.low)
    }

    /// The planned review date, if the resource carries one and it has passed.
    fn overdue(&self) -> Option<String> {
        let review = self
            .extension
            .iter()
            .find(|e| e.url.as_deref() == Some(REVIEW_DATE_URL))
            .and_then(|e| e.value_date.as_deref().or(e.value_date_time.as_deref()))?;
        let r = date::parse_range(review)?;
        (r.high <= date::now_micros()).then(|| review.to_string())
    }
}

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

/// What the summary reads of the Patient.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Deceased<'a> {
    #[serde(borrow)]
    deceased_date_time: Option<Cow<'a, str>>,
    deceased_boolean: Option<bool>,
}

struct Summary<'a> {
    items: Vec<(&'a Stored, View<'a>)>,
}

impl<'a> Summary<'a> {
    fn live(&self, ty: &str) -> impl Iterator<Item = &(&'a Stored, View<'a>)> + '_ {
        let ty = ty.to_string();
        self.items
            .iter()
            .filter(move |(s, v)| s.resource_type == ty && !INACTIVE.contains(&v.status()))
    }

    fn with_code(&self, ty: &str, wanted: &[&str]) -> Vec<&(&'a Stored, View<'a>)> {
        let mut v: Vec<_> = self.live(ty).filter(|(_, v)| v.has_code(wanted)).collect();
        v.sort_by_key(|(_, v)| std::cmp::Reverse(v.effective()));
        v
    }
}

/// The last segment of a reference or URL (`Composition/abc` → `abc`).
fn last_segment(r: &str) -> &str {
    r.rsplit('/').next().unwrap_or(r)
}

/// The current ReSPECT form: final, not entered-in-error, and not replaced by a later form (a
/// DocumentReference index marked superseded, or one that another `relatesTo: replaces` names).
fn current_respect<'s, 'a>(s: &'s Summary<'a>) -> Option<&'s (&'a Stored, View<'a>)> {
    let mut superseded: Vec<&str> = Vec::new();
    for (_, v) in s
        .items
        .iter()
        .filter(|(st, _)| st.resource_type == "DocumentReference")
    {
        if matches!(v.status(), "superseded" | "entered-in-error") {
            superseded.extend(
                v.content
                    .iter()
                    .filter_map(|c| c.attachment.as_ref()?.url.as_deref())
                    .map(last_segment),
            );
        }
        superseded.extend(
            v.relates_to
                .iter()
                .filter(|r| r.code.as_deref() == Some("replaces"))
                .filter_map(|r| r.target.as_ref()?.url.as_deref())
                .map(last_segment),
        );
    }
    s.with_code("Composition", &[codes::RESPECT_FORM])
        .into_iter()
        .find(|(st, v)| {
            matches!(v.status(), "final" | "amended") && !superseded.contains(&st.id.as_str())
        })
}

fn section(
    title: &'static str,
    code: Option<&'static str>,
    entries: &[&(&Stored, View)],
    empty_reason: &'static str,
    base: &str,
) -> Section {
    let mut text = String::new();
    let overdue_since = entries.iter().rev().find_map(|(_, v)| v.overdue());
    let mut sec = Section {
        title,
        code: code.map(|c| Concept1::snomed(c, None)),
        empty_reason: None,
        entry: Vec::new(),
        extension: Vec::new(),
        text: Narrative::default(),
    };
    if entries.is_empty() {
        sec.empty_reason = Some(Concept1 {
            coding: [CodingOut {
                system: "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                code: "unavailable",
                display: None,
            }],
            text: Some(empty_reason),
        });
        text.push_str(empty_reason);
    } else {
        sec.entry = entries
            .iter()
            .map(|(s, _)| RefOut {
                reference: full_url(base, s),
            })
            .collect();
        let latest = entries
            .iter()
            .map(|(s, _)| s.last_updated)
            .max()
            .unwrap_or(0);
        text.push_str(&format!(
            "{} item(s); last updated {}",
            entries.len(),
            date::format_instant(latest)
        ));
    }
    if let Some(d) = overdue_since {
        text.push_str(&format!(
            ". REVIEW OVERDUE: planned review date {d} has passed"
        ));
        sec.extension.push(OverdueOut {
            url: REVIEW_OVERDUE_URL,
            value_date: d,
        });
    }
    sec.text = Narrative::of(&text);
    sec
}

/// The summary's Composition, serialized straight into the document (no `Value` tree).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SummaryComposition<'a> {
    resource_type: &'static str,
    id: String,
    status: &'static str,
    #[serde(rename = "type")]
    kind: Concept1,
    subject: RefOut,
    date: &'a str,
    author: [Display; 1],
    title: &'static str,
    extension: [InstantOut; 1],
    section: Vec<Section>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Section {
    title: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<Concept1>,
    #[serde(skip_serializing_if = "Option::is_none")]
    empty_reason: Option<Concept1>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<RefOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extension: Vec<OverdueOut>,
    text: Narrative,
}

/// A CodeableConcept with one coding.
#[derive(Serialize)]
struct Concept1 {
    coding: [CodingOut; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'static str>,
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
#[serde(rename_all = "camelCase")]
struct OverdueOut {
    url: &'static str,
    value_date: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InstantOut {
    url: &'static str,
    value_instant: String,
}

#[derive(Serialize, Default)]
struct Narrative {
    status: &'static str,
    div: String,
}

impl Narrative {
    fn of(text: &str) -> Narrative {
        Narrative {
            status: "generated",
            div: format!(
                "<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>",
                html_escape(text)
            ),
        }
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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

/// The summary as a serialized document Bundle.
fn build_document(
    state: &AppState,
    patient: &Stored,
    items: &[Stored],
) -> Result<String, ApiError> {
    let base = &state.base_url;
    let parsed: Vec<(&Stored, View)> = items.iter().map(|s| (s, View::of(s))).collect();
    let s = Summary { items: parsed };
    let cpr = s.with_code("Observation", &[codes::FOR_CPR, codes::NOT_FOR_CPR]);
    let respect: Vec<_> = current_respect(&s).into_iter().collect();
    let mut advance = s.with_code(
        "Observation",
        &[codes::HAS_ADRT, codes::HAS_ADRT_LIFE_SUSTAINING],
    );
    advance.extend(s.with_code("Observation", &[codes::HAS_ADVANCE_STATEMENT]));
    let mut lpa: Vec<_> = s.live("RelatedPerson").collect();
    lpa.extend(s.with_code(
        "Observation",
        &[codes::HAS_LPA_WELFARE, codes::HAS_LPA_LIFE_SUSTAINING],
    ));
    let places = s.with_code(
        "Observation",
        &[
            &codes::PREFERRED_PLACE_OF_DEATH[..],
            &[
                "517111000000103",
                "517131000000106",
                "766391000000108",
                "517161000000101",
            ],
        ]
        .concat(),
    );
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
    let mut other: Vec<_> = s.live("Condition").collect();
    other.extend(s.live("Flag"));
    other.extend(s.with_code("Observation", &[codes::AKPS]));
    other.extend(s.with_code("Observation", &codes::PROGNOSIS));

    let p: Deceased = serde_json::from_str(&patient.content).unwrap_or_else(|e| {
        tracing::error!(patient = %patient.id, error = %e, "a stored Patient could not be read for the emergency summary");
        Deceased::default()
    });
    let deceased = p
        .deceased_date_time
        .map(Cow::into_owned)
        .or_else(|| p.deceased_boolean.filter(|b| *b).map(|_| "yes".to_string()));
    let mut sections = vec![
        section(
            "CPR decision",
            Some(codes::FOR_CPR),
            &cpr.iter().take(1).copied().collect::<Vec<_>>(),
            "No CPR decision recorded: follow usual resuscitation guidance",
            base,
        ),
        section(
            "ReSPECT recommendations (current form only)",
            Some(codes::RESPECT_FORM),
            &respect,
            "No current ReSPECT form",
            base,
        ),
        section(
            "Advance decisions (ADRT first, then advance statements)",
            Some(codes::HAS_ADRT),
            &advance,
            "No advance decision or statement recorded",
            base,
        ),
        section(
            "Lasting power of attorney and personal contacts",
            Some(codes::HAS_LPA_WELFARE),
            &lpa,
            "No LPA holder or personal contact recorded",
            base,
        ),
        section(
            "Preferred place of care and death",
            None,
            &places,
            "ALERT: preferred place of death not recorded",
            base,
        ),
        section(
            "Anticipatory medicines and where they are kept",
            Some(codes::ANTICIPATORY_MEDS_BOX),
            &meds,
            "No anticipatory medicines recorded",
            base,
        ),
        section(
            "Key worker and 24-hour contacts",
            None,
            &team,
            "No care team recorded",
            base,
        ),
        section(
            "Care plans",
            Some(codes::EOL_CARE_PLAN),
            &plans,
            "No care plan recorded",
            base,
        ),
        section(
            "Conditions, register and status",
            None,
            &other,
            "Nothing further recorded",
            base,
        ),
    ];
    if let Some(d) = &deceased {
        sections.insert(
            0,
            Section {
                title: "Deceased",
                code: None,
                empty_reason: None,
                entry: Vec::new(),
                extension: Vec::new(),
                text: Narrative::of(&format!("This person has died ({d})")),
            },
        );
    }
    let latest = items
        .iter()
        .map(|s| s.last_updated)
        .chain([patient.last_updated])
        .max()
        .unwrap_or(0);
    let now = date::format_instant(date::now_micros());
    let composition = SummaryComposition {
        resource_type: "Composition",
        id: uuid::Uuid::new_v4().to_string(),
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
        extension: [InstantOut {
            url: "https://fhir.epaccs.nhs.example/StructureDefinition/record-last-updated",
            value_instant: date::format_instant(latest),
        }],
        section: sections,
    };
    let composition_url = format!("urn:uuid:{}", composition.id);
    // The resources each section names, once each, in section order.
    let mut order: Vec<(&str, &str)> = Vec::new();
    for group in [
        &cpr, &respect, &advance, &lpa, &places, &meds, &team, &plans, &other,
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
    let capacity = 2048
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
            build_document(&state, &patient, &items)
        })
        .await?;
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
        assert_eq!(v.overdue().as_deref(), Some("2001-02-03T04:05:06Z"));

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
