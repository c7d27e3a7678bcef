//! Search parameters defined as data and the index values they give for a resource.
//!
//! The definitions are SearchParameter resources in `profiles/search-parameters.json`. Their
//! `expression` uses a small FHIRPath subset: `Type.element.element` paths joined by `|`. A path
//! step matches a choice element by its stem (`Observation.effective` finds `effectiveDateTime`
//! and `effectivePeriod`). The same definitions fill the index at write time and parse queries,
//! so what can be searched is exactly what is indexed.

use crate::date;
use crate::registry::split_reference;
use serde_json::Value;
use std::collections::HashMap;
use unicode_normalization::UnicodeNormalization;

/// The shipped definitions.
pub const DEFINITIONS_JSON: &str = include_str!("../../../profiles/search-parameters.json");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Token,
    String,
    Date,
    Reference,
    Quantity,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Token => "token",
            ParamType::String => "string",
            ParamType::Date => "date",
            ParamType::Reference => "reference",
            ParamType::Quantity => "quantity",
        }
    }
}

/// One search parameter as it applies to one resource type.
#[derive(Debug, Clone)]
pub struct ParamDef {
    pub code: String,
    pub kind: ParamType,
    pub description: String,
    /// Canonical URL of the SearchParameter resource.
    pub url: String,
    /// Paths below the resource root.
    paths: Vec<Vec<String>>,
}

/// All search parameters, by resource type then code.
#[derive(Debug, Default)]
pub struct SearchParams {
    by_type: HashMap<String, Vec<ParamDef>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("search parameter definitions are not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("search parameter {0}: {1}")]
    Bad(String, String),
}

impl SearchParams {
    /// Loads the definitions from a Bundle of SearchParameter resources.
    pub fn load(bundle_json: &str) -> Result<Self, DefinitionError> {
        let bundle: Value = serde_json::from_str(bundle_json)?;
        let mut out = SearchParams::default();
        let entries = bundle
            .get("entry")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for e in entries {
            let sp = e.get("resource").cloned().unwrap_or(Value::Null);
            let field = |k: &str| {
                sp.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let code = field("code");
            let kind = match field("type").as_str() {
                "token" => ParamType::Token,
                "string" => ParamType::String,
                "date" => ParamType::Date,
                "reference" => ParamType::Reference,
                "quantity" => ParamType::Quantity,
                other => {
                    return Err(DefinitionError::Bad(
                        code,
                        format!("unsupported type {other}"),
                    ))
                }
            };
            let expression = field("expression");
            let bases: Vec<String> = sp
                .get("base")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            for base in bases {
                let paths: Vec<Vec<String>> = expression
                    .split('|')
                    .map(str::trim)
                    .filter_map(|p| p.strip_prefix(&format!("{base}.")))
                    .map(|p| p.split('.').map(str::to_string).collect())
                    .collect();
                if paths.is_empty() {
                    return Err(DefinitionError::Bad(
                        code.clone(),
                        format!("no path for base {base}"),
                    ));
                }
                out.by_type.entry(base).or_default().push(ParamDef {
                    code: code.clone(),
                    kind,
                    description: field("description"),
                    url: field("url"),
                    paths,
                });
            }
        }
        Ok(out)
    }

    /// The shipped definitions; they are compiled in, so a failure is a build defect.
    pub fn shipped() -> Result<Self, DefinitionError> {
        Self::load(DEFINITIONS_JSON)
    }

    pub fn get(&self, resource_type: &str, code: &str) -> Option<&ParamDef> {
        self.by_type
            .get(resource_type)?
            .iter()
            .find(|p| p.code == code)
    }

    pub fn for_type(&self, resource_type: &str) -> &[ParamDef] {
        self.by_type
            .get(resource_type)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The index rows a resource gives.
    pub fn index(&self, resource_type: &str, resource: &Value) -> IndexRows {
        let mut rows = IndexRows::default();
        for p in self.for_type(resource_type) {
            for path in &p.paths {
                let mut nodes = Vec::new();
                collect(resource, path, &mut nodes);
                for node in nodes {
                    p.index_node(node, &mut rows);
                }
            }
            if resource_type == "Patient"
                && p.code == "deceased"
                && !rows.tokens.iter().any(|t| t.param == "deceased")
            {
                rows.tokens.push(TokenRow {
                    param: p.code.clone(),
                    system: String::new(),
                    code: "false".into(),
                });
            }
        }
        rows.dedup();
        rows
    }
}

impl ParamDef {
    fn index_node(&self, node: &Value, rows: &mut IndexRows) {
        let param = || self.code.clone();
        match self.kind {
            ParamType::Token => {
                for (system, code) in tokens_of(node, &self.code) {
                    rows.tokens.push(TokenRow {
                        param: param(),
                        system,
                        code,
                    });
                }
            }
            ParamType::String => {
                for s in strings_of(node) {
                    let value = normalize(&s);
                    if !value.is_empty() {
                        rows.strings.push(StringRow {
                            param: param(),
                            value,
                            raw: s,
                        });
                    }
                }
            }
            ParamType::Date => {
                if let Some(r) = range_of(node) {
                    rows.dates.push(DateRow {
                        param: param(),
                        low: r.low,
                        high: r.high,
                    });
                }
            }
            ParamType::Reference => {
                if let Some((ty, id)) = node
                    .get("reference")
                    .and_then(Value::as_str)
                    .and_then(split_reference)
                {
                    rows.references.push(RefRow {
                        param: param(),
                        target_type: ty.into(),
                        target_id: id.into(),
                    });
                }
                if let Some(ident) = node.get("identifier") {
                    for (system, code) in tokens_of(ident, "") {
                        rows.tokens.push(TokenRow {
                            param: format!("{}:identifier", self.code),
                            system,
                            code,
                        });
                    }
                }
            }
            ParamType::Quantity => {
                let (value, system, code) = match node {
                    Value::Number(n) => (n.as_f64(), String::new(), String::new()),
                    Value::Object(o) => (
                        o.get("value").and_then(Value::as_f64),
                        o.get("system")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        o.get("code")
                            .or_else(|| o.get("unit"))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    ),
                    _ => (None, String::new(), String::new()),
                };
                if let Some(value) = value {
                    rows.quantities.push(QuantityRow {
                        param: param(),
                        value,
                        system,
                        code,
                    });
                }
            }
        }
    }
}

/// Walks `path` from `v`, flattening arrays and matching choice elements by stem.
fn collect<'a>(v: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    let Some((step, rest)) = path.split_first() else {
        match v {
            Value::Array(a) => out.extend(a.iter()),
            other => out.push(other),
        }
        return;
    };
    match v {
        Value::Array(a) => {
            for item in a {
                collect(item, path, out);
            }
        }
        Value::Object(map) => {
            if let Some(child) = map.get(step) {
                collect(child, rest, out);
            } else {
                for (k, child) in map {
                    let is_choice = k.len() > step.len()
                        && k.starts_with(step.as_str())
                        && k[step.len()..].starts_with(|c: char| c.is_ascii_uppercase());
                    if is_choice {
                        collect(child, rest, out);
                    }
                }
            }
        }
        _ => {}
    }
}

fn tokens_of(node: &Value, code: &str) -> Vec<(String, String)> {
    if code == "deceased" {
        // deceasedBoolean keeps its value; a deceasedDateTime means true.
        let dead = node.as_bool().unwrap_or(true);
        return vec![(String::new(), dead.to_string())];
    }
    match node {
        Value::String(s) => vec![(String::new(), s.clone())],
        Value::Bool(b) => vec![(String::new(), b.to_string())],
        Value::Number(n) => vec![(String::new(), n.to_string())],
        Value::Object(o) => {
            let sys = |x: &serde_json::Map<String, Value>| {
                x.get("system")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            if let Some(codings) = o.get("coding").and_then(Value::as_array) {
                codings
                    .iter()
                    .filter_map(|c| c.as_object())
                    .filter_map(|c| {
                        c.get("code")
                            .and_then(Value::as_str)
                            .map(|code| (sys(c), code.to_string()))
                    })
                    .collect()
            } else if let Some(code) = o.get("code").and_then(Value::as_str) {
                vec![(sys(o), code.to_string())]
            } else if let Some(value) = o.get("value").and_then(Value::as_str) {
                vec![(sys(o), value.to_string())]
            } else {
                vec![]
            }
        }
        _ => vec![],
    }
}

fn strings_of(node: &Value) -> Vec<String> {
    match node {
        Value::String(s) => vec![s.clone()],
        Value::Object(o) => {
            let mut out = Vec::new();
            for k in [
                "text",
                "family",
                "given",
                "prefix",
                "suffix",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ] {
                match o.get(k) {
                    Some(Value::String(s)) => out.push(s.clone()),
                    Some(Value::Array(a)) => {
                        out.extend(a.iter().filter_map(Value::as_str).map(str::to_string))
                    }
                    _ => {}
                }
            }
            out
        }
        _ => vec![],
    }
}

fn range_of(node: &Value) -> Option<date::Range> {
    match node {
        Value::String(s) => date::parse_range(s),
        Value::Object(o) if o.contains_key("start") || o.contains_key("end") => {
            let low = o
                .get("start")
                .and_then(Value::as_str)
                .and_then(date::parse_range)
                .map_or(date::MIN, |r| r.low);
            let high = o
                .get("end")
                .and_then(Value::as_str)
                .and_then(date::parse_range)
                .map_or(date::MAX, |r| r.high);
            Some(date::Range { low, high })
        }
        _ => None,
    }
}

/// String search folding: case- and accent-insensitive, ignoring spaces and punctuation
/// (so `LS1 4AP` and `ls14ap` are the same postcode, `O'Brien` matches `obrien`).
pub fn normalize(s: &str) -> String {
    s.nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub param: String,
    pub system: String,
    pub code: String,
}
#[derive(Debug, Clone, PartialEq)]
pub struct StringRow {
    pub param: String,
    /// Folded for the default and `:contains` searches.
    pub value: String,
    /// As written, for `:exact`.
    pub raw: String,
}
#[derive(Debug, Clone, PartialEq)]
pub struct DateRow {
    pub param: String,
    pub low: i64,
    pub high: i64,
}
#[derive(Debug, Clone, PartialEq)]
pub struct RefRow {
    pub param: String,
    pub target_type: String,
    pub target_id: String,
}
#[derive(Debug, Clone, PartialEq)]
pub struct QuantityRow {
    pub param: String,
    pub value: f64,
    pub system: String,
    pub code: String,
}

/// The index rows of one resource version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexRows {
    pub tokens: Vec<TokenRow>,
    pub strings: Vec<StringRow>,
    pub dates: Vec<DateRow>,
    pub references: Vec<RefRow>,
    pub quantities: Vec<QuantityRow>,
}

impl IndexRows {
    fn dedup(&mut self) {
        fn d<T: PartialEq + Clone>(v: &mut Vec<T>) {
            let mut out: Vec<T> = Vec::with_capacity(v.len());
            for x in v.drain(..) {
                if !out.contains(&x) {
                    out.push(x);
                }
            }
            *v = out;
        }
        d(&mut self.tokens);
        d(&mut self.strings);
        d(&mut self.dates);
        d(&mut self.references);
        d(&mut self.quantities);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn indexes_a_patient() {
        let sp = SearchParams::shipped().expect("definitions load");
        let p = json!({"resourceType": "Patient", "id": "p1",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}],
            "name": [{"family": "Ó Briain", "given": ["Seán", "Pat"]}], "birthDate": "1940-03-04",
            "address": [{"postalCode": "LS1 4AP"}], "gender": "female",
            "generalPractitioner": [{"reference": "Organization/gp1", "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "A81001"}}]});
        let rows = sp.index("Patient", &p);
        assert!(rows.tokens.contains(&TokenRow {
            param: "identifier".into(),
            system: "https://fhir.nhs.uk/Id/nhs-number".into(),
            code: "9434765919".into()
        }));
        assert!(rows.tokens.contains(&TokenRow {
            param: "deceased".into(),
            system: String::new(),
            code: "false".into()
        }));
        assert!(rows.strings.contains(&StringRow {
            param: "family".into(),
            value: "obriain".into(),
            raw: "Ó Briain".into()
        }));
        assert!(rows.strings.contains(&StringRow {
            param: "given".into(),
            value: "sean".into(),
            raw: "Seán".into()
        }));
        assert!(rows.strings.contains(&StringRow {
            param: "address-postalcode".into(),
            value: "ls14ap".into(),
            raw: "LS1 4AP".into()
        }));
        assert!(rows.references.contains(&RefRow {
            param: "general-practitioner".into(),
            target_type: "Organization".into(),
            target_id: "gp1".into()
        }));
        assert_eq!(rows.dates.len(), 1);
    }

    #[test]
    fn choice_elements_and_periods() {
        let sp = SearchParams::shipped().expect("definitions load");
        let o = json!({"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "450476008"}]},
            "effectivePeriod": {"start": "2024-01-01"}, "valueInteger": 40});
        let rows = sp.index("Observation", &o);
        assert!(rows
            .dates
            .iter()
            .any(|d| d.param == "date" && d.high == date::MAX));
        assert!(rows
            .references
            .iter()
            .any(|r| r.param == "patient" && r.target_id == "p1"));
        assert!(rows
            .quantities
            .iter()
            .any(|q| q.param == "value-quantity" && q.value == 40.0));
        let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2024-05-01"});
        assert!(sp
            .index("Patient", &dead)
            .tokens
            .iter()
            .any(|t| t.param == "deceased" && t.code == "true"));
    }
}
