//! Parses FHIR search query parameters into typed filters, using the search parameter
//! definitions. Comma-separated values are OR; repeated parameters are AND.

use crate::date::{self, Range};
use crate::registry::split_reference;
use crate::search::{normalize, ParamType, SearchParams};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

fn split_prefix(v: &str) -> (Prefix, &str) {
    let p = match v.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, v),
    };
    (p, &v[2..])
}

#[derive(Debug, Clone, PartialEq)]
pub struct DateValue {
    pub prefix: Prefix,
    pub range: Range,
}

/// `system|code`: `system` None means any system, Some("") means no system; `code` None means any
/// code in the system.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenValue {
    pub system: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMode {
    StartsWith,
    Exact,
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RefValue {
    pub target_type: Option<String>,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuantityValue {
    pub prefix: Prefix,
    pub value: f64,
    pub system: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Id(Vec<String>),
    LastUpdated(Vec<DateValue>),
    Token {
        param: String,
        values: Vec<TokenValue>,
        not: bool,
    },
    String {
        param: String,
        values: Vec<String>,
        mode: StringMode,
    },
    Date {
        param: String,
        values: Vec<DateValue>,
    },
    Reference {
        param: String,
        values: Vec<RefValue>,
    },
    /// `param:identifier=system|value` against the reference's logical identifier.
    RefIdentifier {
        param: String,
        values: Vec<TokenValue>,
    },
    /// `param.inner=...` or `param:Type.inner=...`: resources whose `param` references a
    /// `target_type` that matches `inner`.
    Chain {
        param: String,
        target_type: String,
        inner: Box<Filter>,
    },
    Quantity {
        param: String,
        values: Vec<QuantityValue>,
    },
    Missing {
        param: String,
        kind: ParamType,
        missing: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortField {
    Id,
    LastUpdated,
    Param { code: String, kind: ParamType },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sort {
    pub field: SortField,
    pub descending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Total {
    #[default]
    None,
    Accurate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Summary {
    #[default]
    False,
    True,
    Count,
    Data,
}

/// `_include=Source:param[:Target]` or `_revinclude=Source:param[:Target]`; `*` for all params.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub source: String,
    pub param: String,
    pub target: Option<String>,
    pub iterate: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub filters: Vec<Filter>,
    pub count: Option<usize>,
    pub sort: Vec<Sort>,
    pub total: Total,
    pub summary: Summary,
    pub elements: Vec<String>,
    pub include: Vec<Include>,
    pub revinclude: Vec<Include>,
    /// Opaque paging position from a `next` link.
    pub cursor: Option<String>,
    /// Parameters that were not understood and were ignored (lenient handling).
    pub ignored: Vec<String>,
}

pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 1000;

// Limits on a query's shape. Each comma-separated value becomes one `OR` term and each parameter
// one `AND` of a subquery, so the SQL grows with them; SQLite refuses an expression tree deeper
// than 1000 ("Expression tree is too large") and a LIKE pattern longer than 50,000 bytes. These
// caps keep every accepted query well inside both backends' limits, and a query beyond them is a
// 400 naming the limit rather than a database error.
/// Most comma-separated (OR) values in one parameter.
pub const MAX_VALUES_PER_PARAMETER: usize = 100;
/// Most filter parameters (ANDed) in one query, chains included.
pub const MAX_FILTERS: usize = 40;
/// Most `_include` plus `_revinclude` parameters, and most `_sort` keys.
pub const MAX_INCLUDES: usize = 20;
pub const MAX_SORT_KEYS: usize = 5;
/// Longest single value (after splitting on commas), and longest parameter name, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;
pub const MAX_NAME_BYTES: usize = 128;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadValue(String),
    #[error("unknown search parameter '{0}'")]
    Unknown(String),
    /// The query is larger than the service accepts (see the `MAX_*` limits).
    #[error("{0}")]
    TooLarge(String),
}

/// Refuses names and values no backend can store or search: a NUL character (PostgreSQL text
/// cannot hold U+0000), an over-long name or value, or too many OR values.
fn check_pair(name: &str, value: &str) -> Result<(), QueryError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(QueryError::TooLarge(format!(
            "a search parameter name is longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    if name.contains('\0') || value.contains('\0') {
        return Err(QueryError::BadValue(format!(
            "search parameter '{}' contains a NUL character (U+0000), which is never valid",
            name.replace('\0', "\\0")
        )));
    }
    if name == "_cursor" {
        // The server's own paging position: its length follows the sort value it carries.
        return Ok(());
    }
    // Commas split values; a value list longer than the cap is refused before splitting.
    let values = value.split(',').count();
    if values > MAX_VALUES_PER_PARAMETER {
        return Err(QueryError::TooLarge(format!(
            "search parameter '{name}' has {values} values; at most {MAX_VALUES_PER_PARAMETER} \
             comma-separated values are accepted per parameter (split the search)"
        )));
    }
    if value.split(',').any(|v| v.len() > MAX_VALUE_BYTES) {
        return Err(QueryError::TooLarge(format!(
            "a value of search parameter '{name}' is longer than {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Splits on commas not escaped with a backslash, and unescapes `\,` `\|` `\$` `\\`.
fn split_values(v: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    if let Some(last) = out.last_mut() {
                        last.push(n);
                    }
                }
            }
            ',' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

fn bad(name: &str, v: &str, why: &str) -> QueryError {
    QueryError::BadValue(format!(
        "invalid value '{v}' for search parameter '{name}': {why}"
    ))
}

fn parse_token(v: &str) -> TokenValue {
    match v.split_once('|') {
        None => TokenValue {
            system: None,
            code: Some(v.to_string()),
        },
        Some((s, c)) => TokenValue {
            system: Some(s.to_string()),
            code: (!c.is_empty()).then(|| c.to_string()),
        },
    }
}

/// Parses a comma-separated list of prefixed dates (`ge2024-01,lt2025`).
pub fn parse_dates(name: &str, v: &str) -> Result<Vec<DateValue>, QueryError> {
    split_values(v)
        .iter()
        .map(|s| {
            let (prefix, rest) = split_prefix(s);
            let range = date::parse_range(rest)
                .ok_or_else(|| bad(name, s, "expected a FHIR date or dateTime, e.g. 2024-03-01"))?;
            Ok(DateValue { prefix, range })
        })
        .collect()
}

impl Query {
    /// Parses query pairs for a search on `resource_type`. With `strict`, unknown parameters
    /// are an error; otherwise they are listed in `ignored`.
    pub fn parse(
        params: &SearchParams,
        resource_type: &str,
        pairs: &[(String, String)],
        strict: bool,
    ) -> Result<Query, QueryError> {
        let mut q = Query::default();
        for (name, value) in pairs {
            check_pair(name, value)?;
            if value.is_empty() {
                // A parameter with an empty value is ignored, as the spec says.
                continue;
            }
            match name.as_str() {
                "_id" => q.filters.push(Filter::Id(split_values(value))),
                "_lastUpdated" => q
                    .filters
                    .push(Filter::LastUpdated(parse_dates(name, value)?)),
                "_count" => {
                    let n: usize = value
                        .parse()
                        .map_err(|_| bad(name, value, "expected a whole number"))?;
                    q.count = Some(n.min(MAX_COUNT));
                }
                "_sort" => {
                    for s in value.split(',').filter(|s| !s.is_empty()) {
                        let (descending, code) = match s.strip_prefix('-') {
                            Some(c) => (true, c),
                            None => (false, s),
                        };
                        let field = match code {
                            "_id" => SortField::Id,
                            "_lastUpdated" => SortField::LastUpdated,
                            c => match params.get(resource_type, c) {
                                Some(p)
                                    if matches!(
                                        p.kind,
                                        ParamType::Date | ParamType::String | ParamType::Token
                                    ) =>
                                {
                                    SortField::Param {
                                        code: c.to_string(),
                                        kind: p.kind,
                                    }
                                }
                                Some(_) => {
                                    return Err(bad(
                                        name,
                                        s,
                                        "sorting is supported on date, string and token parameters",
                                    ))
                                }
                                None => {
                                    return Err(bad(name, s, "not a search parameter of this type"))
                                }
                            },
                        };
                        q.sort.push(Sort { field, descending });
                    }
                }
                "_total" => {
                    q.total = match value.as_str() {
                        "none" => Total::None,
                        "accurate" | "estimate" => Total::Accurate,
                        _ => return Err(bad(name, value, "expected none, estimate or accurate")),
                    }
                }
                "_summary" => {
                    q.summary = match value.as_str() {
                        "true" => Summary::True,
                        "false" => Summary::False,
                        "count" => Summary::Count,
                        "data" => Summary::Data,
                        _ => return Err(bad(name, value, "expected true, false, count or data")),
                    }
                }
                "_elements" => {
                    q.elements = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                "_cursor" => q.cursor = Some(value.clone()),
                "_format" | "_pretty" => {}
                n if n == "_include"
                    || n == "_include:iterate"
                    || n == "_revinclude"
                    || n == "_revinclude:iterate" =>
                {
                    let iterate = n.ends_with(":iterate");
                    let mut parts = value.split(':');
                    let source = parts.next().unwrap_or_default().to_string();
                    let param = parts
                        .next()
                        .ok_or_else(|| bad(n, value, "expected Source:param[:Target]"))?
                        .to_string();
                    let target = parts.next().map(str::to_string);
                    if crate::registry::kind_of(&source).is_none() {
                        return Err(bad(n, value, "unknown source type"));
                    }
                    if param != "*"
                        && params
                            .get(&source, &param)
                            .is_none_or(|p| p.kind != ParamType::Reference)
                    {
                        return Err(bad(
                            n,
                            value,
                            "not a reference parameter of the source type",
                        ));
                    }
                    let inc = Include {
                        source,
                        param,
                        target,
                        iterate,
                    };
                    if n.starts_with("_include") {
                        q.include.push(inc);
                    } else {
                        q.revinclude.push(inc);
                    }
                }
                n => match parse_filter(params, resource_type, n, value)? {
                    Some(f) => q.filters.push(f),
                    None if strict => return Err(QueryError::Unknown(n.to_string())),
                    None => q.ignored.push(n.to_string()),
                },
            }
        }
        q.check_size()?;
        Ok(q)
    }

    fn check_size(&self) -> Result<(), QueryError> {
        let too = |what: &str, n: usize, max: usize| {
            Err(QueryError::TooLarge(format!(
                "the search has {n} {what}; at most {max} are accepted"
            )))
        };
        if self.filters.len() > MAX_FILTERS {
            return too("filter parameters", self.filters.len(), MAX_FILTERS);
        }
        let includes = self.include.len() + self.revinclude.len();
        if includes > MAX_INCLUDES {
            return too("_include/_revinclude parameters", includes, MAX_INCLUDES);
        }
        if self.sort.len() > MAX_SORT_KEYS {
            return too("_sort keys", self.sort.len(), MAX_SORT_KEYS);
        }
        Ok(())
    }

    pub fn page_size(&self) -> usize {
        self.count.unwrap_or(DEFAULT_COUNT)
    }
}

/// Parses one `name[:modifier][.chain]=value` filter; `None` if the parameter is unknown.
fn parse_filter(
    params: &SearchParams,
    resource_type: &str,
    name: &str,
    value: &str,
) -> Result<Option<Filter>, QueryError> {
    // Chains: patient.identifier=..., subject:Patient.identifier=...
    if let Some((head, inner_name)) = name.split_once('.') {
        let (code, target) = match head.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (head, None),
        };
        let Some(p) = params.get(resource_type, code) else {
            return Ok(None);
        };
        if p.kind != ParamType::Reference {
            return Err(QueryError::BadValue(format!(
                "'{code}' is not a reference parameter, so it cannot be chained"
            )));
        }
        let target_type = target.unwrap_or("Patient").to_string();
        if inner_name.contains('.') {
            return Err(QueryError::BadValue(
                "chains of more than one level are not supported".into(),
            ));
        }
        let Some(inner) = parse_filter(params, &target_type, inner_name, value)? else {
            return Ok(None);
        };
        return Ok(Some(Filter::Chain {
            param: code.to_string(),
            target_type,
            inner: Box::new(inner),
        }));
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    if code == "_id" || code == "_lastUpdated" {
        if modifier == Some("missing") {
            return Err(bad(name, value, "_id and _lastUpdated are never missing"));
        }
        return Ok(None);
    }
    let Some(p) = params.get(resource_type, code) else {
        return Ok(None);
    };
    let param = code.to_string();
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(bad(name, value, "expected true or false")),
        };
        return Ok(Some(Filter::Missing {
            param,
            kind: p.kind,
            missing,
        }));
    }
    let values = split_values(value);
    let f = match (p.kind, modifier) {
        (ParamType::Token, None | Some("not")) => Filter::Token {
            param,
            values: values.iter().map(|v| parse_token(v)).collect(),
            not: modifier == Some("not"),
        },
        (ParamType::String, None | Some("exact") | Some("contains")) => {
            let mode = match modifier {
                Some("exact") => StringMode::Exact,
                Some("contains") => StringMode::Contains,
                _ => StringMode::StartsWith,
            };
            let values = values
                .into_iter()
                .map(|v| {
                    if mode == StringMode::Exact {
                        v
                    } else {
                        normalize(&v)
                    }
                })
                .collect();
            Filter::String {
                param,
                values,
                mode,
            }
        }
        (ParamType::Date, None) => Filter::Date {
            param,
            values: parse_dates(name, value)?,
        },
        (ParamType::Reference, Some("identifier")) => Filter::RefIdentifier {
            param,
            values: values.iter().map(|v| parse_token(v)).collect(),
        },
        (ParamType::Reference, None) | (ParamType::Reference, Some(_))
            if modifier.is_none_or(|m| crate::registry::kind_of(m).is_some()) =>
        {
            let mut refs = Vec::new();
            for v in &values {
                let r = match split_reference(v) {
                    Some((t, id)) => RefValue {
                        target_type: Some(t.to_string()),
                        id: id.to_string(),
                    },
                    None if crate::registry::is_valid_id(v) => RefValue {
                        target_type: modifier.map(str::to_string),
                        id: v.clone(),
                    },
                    None => return Err(bad(name, v, "expected Type/id or an id")),
                };
                refs.push(r);
            }
            Filter::Reference {
                param,
                values: refs,
            }
        }
        (ParamType::Quantity, None) => {
            let mut out = Vec::new();
            for v in &values {
                let (prefix, rest) = split_prefix(v);
                let mut parts = rest.splitn(3, '|');
                let number = parts.next().unwrap_or_default();
                let value: f64 = number
                    .parse()
                    .ok()
                    .filter(|n: &f64| n.is_finite())
                    .ok_or_else(|| bad(name, v, "expected a number[|system|code]"))?;
                let system = parts.next().filter(|s| !s.is_empty()).map(str::to_string);
                let code = parts.next().filter(|s| !s.is_empty()).map(str::to_string);
                out.push(QuantityValue {
                    prefix,
                    value,
                    system,
                    code,
                });
            }
            Filter::Quantity { param, values: out }
        }
        (kind, Some(m)) => {
            return Err(QueryError::BadValue(format!(
                "modifier ':{m}' is not supported on {} parameter '{code}'",
                kind.as_str()
            )))
        }
        (kind, None) => {
            return Err(QueryError::BadValue(format!(
                "{} parameter '{code}' cannot be searched here",
                kind.as_str()
            )))
        }
    };
    Ok(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_filters() {
        let sp = SearchParams::shipped().expect("load");
        let q = Query::parse(&sp, "Observation", &pairs("patient=Patient/p1&code=http://snomed.info/sct|450476008,450475007&date=ge2024-01&_count=5&status:not=cancelled&patient.identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919"), true).expect("ok");
        assert_eq!(q.count, Some(5));
        assert_eq!(q.filters.len(), 5);
        assert!(
            matches!(&q.filters[1], Filter::Token { values, .. } if values.len() == 2 && values[0].system.as_deref() == Some("http://snomed.info/sct"))
        );
        assert!(
            matches!(&q.filters[2], Filter::Date { values, .. } if values[0].prefix == Prefix::Ge)
        );
        assert!(
            matches!(&q.filters[4], Filter::Chain { target_type, .. } if target_type == "Patient")
        );
    }

    #[test]
    fn unknown_and_bad_values() {
        let sp = SearchParams::shipped().expect("load");
        let lenient =
            Query::parse(&sp, "Patient", &pairs("foo=bar&family=smith"), false).expect("lenient");
        assert_eq!(lenient.ignored, vec!["foo".to_string()]);
        assert!(matches!(
            Query::parse(&sp, "Patient", &pairs("foo=bar"), true),
            Err(QueryError::Unknown(_))
        ));
        assert!(Query::parse(&sp, "Patient", &pairs("birthdate=notadate"), false).is_err());
        assert!(Query::parse(&sp, "Patient", &pairs("_count=many"), false).is_err());
        assert!(Query::parse(&sp, "Patient", &pairs("gender:missing=maybe"), false).is_err());
        assert!(Query::parse(&sp, "Patient", &pairs("family:fuzzy=x"), false).is_err());
    }

    #[test]
    fn refuses_nul_and_oversized_queries() {
        let sp = SearchParams::shipped().expect("load");
        let one = |k: &str, v: String| vec![(k.to_string(), v)];
        let parse = |p: Vec<(String, String)>| Query::parse(&sp, "Patient", &p, false);
        assert!(matches!(
            parse(one("family", "a\0b".into())),
            Err(QueryError::BadValue(_))
        ));
        assert!(matches!(
            parse(one("fam\0ily", "x".into())),
            Err(QueryError::BadValue(_))
        ));
        let ids = |n: usize| {
            (0..n)
                .map(|i| format!("id{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        parse(one("_id", ids(MAX_VALUES_PER_PARAMETER))).expect("at the cap");
        assert!(matches!(
            parse(one("_id", ids(500))),
            Err(QueryError::TooLarge(_))
        ));
        assert!(matches!(
            parse(one("family", "x".repeat(MAX_VALUE_BYTES + 1))),
            Err(QueryError::TooLarge(_))
        ));
        let many: Vec<(String, String)> = (0..=MAX_FILTERS)
            .map(|i| ("family".to_string(), format!("n{i}")))
            .collect();
        assert!(matches!(parse(many), Err(QueryError::TooLarge(_))));
        assert!(
            parse(one("value-quantity", "1e400".into())).is_ok(),
            "Patient has no value-quantity: ignored"
        );
        let obs = Query::parse(
            &sp,
            "Observation",
            &one("value-quantity", "1e400".into()),
            false,
        );
        assert!(matches!(obs, Err(QueryError::BadValue(_))));
    }
}
