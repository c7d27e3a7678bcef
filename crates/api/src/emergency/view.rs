//! What the summary reads of a stored resource. The stored JSON is parsed straight into these
//! borrowed fields, and everything else is skipped unread, rather than into a `serde_json::Value`
//! tree. Every stored resource passed fhir-sdk's typed validation on write, so each field present
//! has its FHIR type; where one element name has different types in different resources (`name`,
//! `performer`, `author`, `description`, `type`, `category`), the field accepts each of them, so
//! that no resource type the summary reads can fail to parse.

use epaccs_fhir::date;
use epaccs_store::Stored;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::marker::PhantomData;

type Str<'a> = Cow<'a, str>;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct View<'a> {
    #[serde(borrow)]
    pub status: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub code: Codes<'a>,
    #[serde(borrow, default)]
    pub value_codeable_concept: Codes<'a>,
    #[serde(borrow, default, rename = "type")]
    pub kind: Codes<'a>,
    #[serde(borrow, default)]
    pub category: Codes<'a>,
    #[serde(borrow)]
    pub effective_date_time: Option<Str<'a>>,
    #[serde(borrow)]
    pub date: Option<Str<'a>>,
    #[serde(borrow)]
    pub date_time: Option<Str<'a>>,
    #[serde(borrow)]
    pub authored_on: Option<Str<'a>>,
    #[serde(borrow)]
    pub recorded_date: Option<Str<'a>>,
    #[serde(borrow)]
    pub issued: Option<Str<'a>>,
    #[serde(borrow)]
    pub performed_date_time: Option<Str<'a>>,
    #[serde(borrow)]
    pub onset_date_time: Option<Str<'a>>,
    #[serde(borrow)]
    pub effective_period: Option<Period<'a>>,
    #[serde(borrow)]
    pub period: Option<Period<'a>>,
    #[serde(borrow, default)]
    pub extension: Vec<Extension<'a>>,
    #[serde(borrow, default)]
    pub content: Vec<Content<'a>>,
    #[serde(borrow, default)]
    pub relates_to: Vec<RelatesTo<'a>>,
    #[serde(borrow, default)]
    pub performer: Refs<'a>,
    #[serde(borrow, default)]
    pub author: Refs<'a>,
    #[serde(borrow, default)]
    pub focus: Refs<'a>,
    #[serde(borrow, default)]
    pub contained: Vec<Contained<'a>>,
    #[serde(borrow, default)]
    pub note: Vec<Text<'a>>,
    pub value_boolean: Option<bool>,
    pub value_integer: Option<i64>,
    #[serde(borrow)]
    pub value_quantity: Option<Quantity<'a>>,
    #[serde(borrow)]
    pub value_string: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub data_absent_reason: Codes<'a>,
    #[serde(borrow, default)]
    pub component: Vec<Component<'a>>,
    #[serde(borrow, default)]
    pub clinical_status: Codes<'a>,
    #[serde(borrow, default)]
    pub verification_status: Codes<'a>,
    pub active: Option<bool>,
    #[serde(borrow, default)]
    pub name: Names<'a>,
    #[serde(borrow, default)]
    pub telecom: Vec<Telecom<'a>>,
    #[serde(borrow, default)]
    pub relationship: Codes<'a>,
    #[serde(borrow, default)]
    pub participant: Vec<Participant<'a>>,
    #[serde(borrow, default)]
    pub medication_codeable_concept: Codes<'a>,
    #[serde(borrow)]
    pub medication_reference: Option<RefV<'a>>,
    #[serde(borrow, default)]
    pub dosage_instruction: Vec<Text<'a>>,
    #[serde(borrow)]
    pub title: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub description: Loose<'a>,
    #[serde(borrow, default)]
    pub section: Vec<SectionV<'a>>,
}

/// What the summary reads of the Patient.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct PatientView<'a> {
    #[serde(borrow, default)]
    pub name: Names<'a>,
    #[serde(borrow, default)]
    pub identifier: Vec<Ident<'a>>,
    #[serde(borrow)]
    pub birth_date: Option<Str<'a>>,
    #[serde(borrow)]
    pub deceased_date_time: Option<Str<'a>>,
    pub deceased_boolean: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct Period<'a> {
    #[serde(borrow)]
    pub start: Option<Str<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Extension<'a> {
    #[serde(borrow)]
    pub url: Option<Str<'a>>,
    #[serde(borrow)]
    pub value_date: Option<Str<'a>>,
    #[serde(borrow)]
    pub value_date_time: Option<Str<'a>>,
    #[serde(borrow)]
    pub value_string: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(super) struct Content<'a> {
    #[serde(borrow)]
    pub attachment: Option<Target<'a>>,
}

#[derive(Deserialize)]
pub(super) struct RelatesTo<'a> {
    #[serde(borrow)]
    pub code: Option<Str<'a>>,
    #[serde(borrow)]
    pub target: Option<Target<'a>>,
}

/// An Attachment (`url`) or a Reference (`reference`): only the one link is read.
#[derive(Deserialize)]
pub(super) struct Target<'a> {
    #[serde(borrow, alias = "reference")]
    pub url: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(super) struct Ident<'a> {
    #[serde(borrow)]
    pub system: Option<Str<'a>>,
    #[serde(borrow)]
    pub value: Option<Str<'a>>,
}

/// A Reference, or a participant holding one in `actor` (Procedure.performer).
#[derive(Deserialize)]
pub(super) struct RefV<'a> {
    #[serde(borrow)]
    pub reference: Option<Str<'a>>,
    #[serde(borrow)]
    pub display: Option<Str<'a>>,
    #[serde(borrow)]
    pub identifier: Option<Ident<'a>>,
    #[serde(borrow)]
    pub actor: Option<Box<RefV<'a>>>,
}

impl<'a> RefV<'a> {
    /// The reference itself (a participant's `actor` when there is one).
    pub fn target(&self) -> &RefV<'a> {
        self.actor.as_deref().unwrap_or(self)
    }
}

#[derive(Deserialize)]
pub(super) struct Text<'a> {
    #[serde(borrow)]
    pub text: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(super) struct Quantity<'a> {
    pub value: Option<f64>,
    #[serde(borrow)]
    pub unit: Option<Str<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Component<'a> {
    #[serde(borrow, default)]
    pub code: Codes<'a>,
    #[serde(borrow, default)]
    pub value_codeable_concept: Codes<'a>,
    pub value_boolean: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct Telecom<'a> {
    #[serde(borrow)]
    pub system: Option<Str<'a>>,
    #[serde(borrow)]
    pub value: Option<Str<'a>>,
    #[serde(borrow, rename = "use")]
    pub use_: Option<Str<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Participant<'a> {
    #[serde(borrow, default)]
    pub role: Codes<'a>,
    #[serde(borrow)]
    pub member: Option<RefV<'a>>,
    #[serde(borrow)]
    pub on_behalf_of: Option<RefV<'a>>,
}

/// A contained resource, as far as naming a person or organisation needs it (Practitioner,
/// PractitionerRole, Organization, RelatedPerson).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Contained<'a> {
    #[serde(borrow)]
    pub id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub name: Names<'a>,
    #[serde(borrow)]
    pub practitioner: Option<RefV<'a>>,
    #[serde(borrow)]
    pub organization: Option<RefV<'a>>,
    #[serde(borrow, default)]
    pub code: Codes<'a>,
}

/// A section of a stored Composition (the ReSPECT form).
#[derive(Deserialize)]
pub(super) struct SectionV<'a> {
    #[serde(borrow)]
    pub title: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub code: Codes<'a>,
    #[serde(borrow)]
    pub text: Option<Div<'a>>,
    #[serde(borrow, default)]
    pub entry: Vec<RefV<'a>>,
    #[serde(borrow, default)]
    pub section: Vec<SectionV<'a>>,
}

#[derive(Deserialize)]
pub(super) struct Div<'a> {
    #[serde(borrow)]
    pub div: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(super) struct CodingV<'a> {
    #[serde(borrow)]
    pub system: Option<Str<'a>>,
    #[serde(borrow)]
    pub code: Option<Str<'a>>,
    #[serde(borrow)]
    pub display: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct Concept<'a> {
    #[serde(borrow, default)]
    coding: Vec<CodingV<'a>>,
    #[serde(borrow)]
    text: Option<Str<'a>>,
}

/// The codings of one CodeableConcept or of an array of them (`type` is either, by resource),
/// with the first `text`.
#[derive(Default)]
pub(super) struct Codes<'a> {
    pub coding: Vec<CodingV<'a>>,
    pub text: Option<Str<'a>>,
}

impl<'a> Codes<'a> {
    pub fn codes(&self) -> impl Iterator<Item = &str> {
        self.coding.iter().filter_map(|c| c.code.as_deref())
    }

    pub fn has(&self, wanted: &[&str]) -> bool {
        self.codes().any(|c| wanted.contains(&c))
    }

    pub fn is_empty(&self) -> bool {
        self.coding.is_empty() && self.text.is_none()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Codes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Visit<'a> {
            type Value = Codes<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a CodeableConcept or an array of them")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Codes<'a>, A::Error> {
                let c = Concept::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Codes {
                    coding: c.coding,
                    text: c.text,
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Codes<'a>, A::Error> {
                let mut out = Codes::default();
                while let Some(c) = seq.next_element::<Concept<'de>>()? {
                    out.coding.extend(c.coding);
                    if out.text.is_none() {
                        out.text = c.text;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_any(Visit(PhantomData))
    }
}

/// A HumanName.
#[derive(Deserialize, Default)]
pub(super) struct NameV<'a> {
    #[serde(borrow)]
    pub text: Option<Str<'a>>,
    #[serde(borrow)]
    pub family: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub given: Vec<Str<'a>>,
    #[serde(borrow, default)]
    pub prefix: Vec<Str<'a>>,
}

/// `name`: an array of HumanName (Patient, RelatedPerson, Practitioner) or a string
/// (CareTeam, Organization), read as a name with only `text`.
#[derive(Default)]
pub(super) struct Names<'a>(pub Vec<NameV<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for Names<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Visit<'a> {
            type Value = Names<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a name: a string, a HumanName or an array of them")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Names<'a>, E> {
                Ok(Names(vec![NameV {
                    text: Some(Cow::Borrowed(s)),
                    ..NameV::default()
                }]))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Names<'a>, E> {
                Ok(Names(vec![NameV {
                    text: Some(Cow::Owned(s.to_string())),
                    ..NameV::default()
                }]))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Names<'a>, A::Error> {
                Ok(Names(vec![NameV::deserialize(
                    de::value::MapAccessDeserializer::new(map),
                )?]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Names<'a>, A::Error> {
                let mut out = Vec::new();
                while let Some(n) = seq.next_element::<NameV<'de>>()? {
                    out.push(n);
                }
                Ok(Names(out))
            }
        }
        d.deserialize_any(Visit(PhantomData))
    }
}

/// One Reference or an array of them (`performer`, `author` and `focus` are either, by
/// resource).
#[derive(Default)]
pub(super) struct Refs<'a>(pub Vec<RefV<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for Refs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Visit<'a> {
            type Value = Refs<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a Reference or an array of them")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Refs<'a>, A::Error> {
                Ok(Refs(vec![RefV::deserialize(
                    de::value::MapAccessDeserializer::new(map),
                )?]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Refs<'a>, A::Error> {
                let mut out = Vec::new();
                while let Some(r) = seq.next_element::<RefV<'de>>()? {
                    out.push(r);
                }
                Ok(Refs(out))
            }
        }
        d.deserialize_any(Visit(PhantomData))
    }
}

/// A string, or an object whose `text` is read (`description` is a string on CarePlan and a
/// CodeableConcept on Goal).
#[derive(Default)]
pub(super) struct Loose<'a>(pub Option<Str<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for Loose<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Visit<'a> {
            type Value = Loose<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an object with text")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Loose<'a>, E> {
                Ok(Loose(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Loose<'a>, E> {
                Ok(Loose(Some(Cow::Owned(s.to_string()))))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Loose<'a>, A::Error> {
                let t = Text::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Loose(t.text))
            }
        }
        d.deserialize_any(Visit(PhantomData))
    }
}

impl<'a> View<'a> {
    /// Parses a stored resource. It passed validation on write, so this cannot fail short of a
    /// damaged row; such a row is logged and read as carrying no status, codes or dates.
    pub fn of(st: &'a Stored) -> View<'a> {
        serde_json::from_str(&st.content).unwrap_or_else(|e| {
            tracing::error!(resource = %format!("{}/{}", st.resource_type, st.id), error = %e, "a stored resource could not be read for the emergency summary");
            View::default()
        })
    }

    pub fn status(&self) -> &str {
        self.status.as_deref().unwrap_or("")
    }

    /// Whether its code, value or type carries one of `wanted`.
    pub fn has_code(&self, wanted: &[&str]) -> bool {
        [&self.code, &self.value_codeable_concept, &self.kind]
            .iter()
            .any(|c| c.has(wanted))
    }

    /// When it took effect, as written (the first date element present, in this order).
    pub fn when(&self) -> Option<&str> {
        [
            &self.effective_date_time,
            &self.date,
            &self.date_time,
            &self.authored_on,
            &self.recorded_date,
            &self.performed_date_time,
            &self.issued,
        ]
        .into_iter()
        .find_map(|d| d.as_deref())
        .or_else(|| {
            self.effective_period
                .as_ref()
                .and_then(|p| p.start.as_deref())
        })
    }

    /// When it took effect, for newest-first ordering.
    pub fn effective(&self) -> i64 {
        self.when()
            .and_then(date::parse_range)
            .map_or(i64::MIN, |r| r.low)
    }

    /// The value of an extension carrying a date, dateTime or string.
    pub fn extension(&self, url: &str) -> Option<&str> {
        self.extension
            .iter()
            .find(|e| e.url.as_deref() == Some(url))
            .and_then(|e| {
                e.value_date
                    .as_deref()
                    .or(e.value_date_time.as_deref())
                    .or(e.value_string.as_deref())
            })
    }
}
