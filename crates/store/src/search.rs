//! Search SQL. Filters become id subqueries on the index tables; the candidate rows are gated one
//! by one (the page is filled from visible rows only, so paging, totals and includes never count
//! or reveal what the caller may not see). Paging is keyset on (sort value, id): a next link keeps
//! working while others write, never repeating or skipping a row that existed throughout.

use crate::db::{load, Bind, DbConn, Sql};
use crate::resources::{gate_row, ResourceRow, Stored};
use crate::StoreError;
use base64::Engine;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;
use epaccs_access::{Decided, Gate};
use epaccs_fhir::date;
use epaccs_fhir::query::{DateValue, Filter, Prefix, Query, SortField, StringMode, TokenValue};
use epaccs_fhir::search::ParamType;
use std::collections::{BTreeSet, HashMap};

/// The NHS number of `Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|N` when nothing else
/// changes the page (paging, sorting, totals, includes, count-only): the commonest look-up, which
/// `Store::search_by_nhs_number` answers from the read cache.
pub fn nhs_number_only(ty: &str, q: &Query) -> Option<epaccs_core::NhsNumber> {
    use epaccs_fhir::query::{Summary, Total};
    if ty != "Patient"
        || !q.sort.is_empty()
        || q.total != Total::None
        || !q.include.is_empty()
        || !q.revinclude.is_empty()
        || q.cursor.is_some()
        || q.summary == Summary::Count
        || q.count == Some(0)
    {
        return None;
    }
    match q.filters.as_slice() {
        [Filter::Token {
            param,
            values,
            not: false,
        }] if param == "identifier" => match values.as_slice() {
            [v] if v.system.as_deref() == Some(epaccs_core::NhsNumber::SYSTEM) => {
                epaccs_core::NhsNumber::parse(v.code.as_deref()?).ok()
            }
            _ => None,
        },
        _ => None,
    }
}

/// One page of results.
#[derive(Debug, Default)]
pub struct SearchPage {
    pub matches: Vec<Stored>,
    pub includes: Vec<Stored>,
    pub next_cursor: Option<String>,
    /// Position before the first row, when rows come before this page.
    pub prev_cursor: Option<String>,
    pub total: Option<usize>,
    /// How many candidates the sharing rules withheld while filling this page.
    pub withheld: usize,
}

fn token_cond(sql: &mut Sql, v: &TokenValue) {
    sql.push("(");
    match (&v.system, &v.code) {
        (None, Some(c)) => {
            sql.push("code = ").text(c.clone());
        }
        (Some(s), Some(c)) => {
            sql.push("code = ")
                .text(c.clone())
                .push(" AND system = ")
                .text(s.clone());
        }
        (Some(s), None) => {
            sql.push("system = ").text(s.clone());
        }
        (None, None) => {
            sql.push("1 = 1");
        }
    }
    sql.push(")");
}

fn date_cond(sql: &mut Sql, low: &str, high: &str, v: &DateValue) {
    let (ql, qh) = (v.range.low, v.range.high);
    sql.push("(");
    match v.prefix {
        Prefix::Eq => sql
            .push(&format!("{low} >= "))
            .int(ql)
            .push(&format!(" AND {high} <= "))
            .int(qh),
        Prefix::Ne => sql
            .push(&format!("NOT ({low} >= "))
            .int(ql)
            .push(&format!(" AND {high} <= "))
            .int(qh)
            .push(")"),
        Prefix::Gt => sql.push(&format!("{high} > ")).int(qh),
        Prefix::Lt => sql.push(&format!("{low} < ")).int(ql),
        Prefix::Ge => sql.push(&format!("{high} > ")).int(ql),
        Prefix::Le => sql.push(&format!("{low} < ")).int(qh),
        Prefix::Sa => sql.push(&format!("{low} >= ")).int(qh),
        Prefix::Eb => sql.push(&format!("{high} <= ")).int(ql),
        Prefix::Ap => sql
            .push(&format!("{low} < "))
            .int(qh)
            .push(&format!(" AND {high} > "))
            .int(ql),
    };
    sql.push(")");
}

fn or_join<T>(sql: &mut Sql, items: &[T], mut each: impl FnMut(&mut Sql, &T)) {
    sql.push("(");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        each(sql, it);
    }
    sql.push(")");
}

/// The targets of a search's chained parameters that the caller may see, found before the
/// search runs (see `gated_where`).
struct Visible {
    pg: bool,
    /// By `chain_key`: the ids of visible targets that satisfy the chain's inner predicate
    /// (its positive form; a negated inner predicate excludes them).
    targets: HashMap<String, Vec<String>>,
}

fn chain_key(param: &str, target_type: &str, inner: &Filter) -> String {
    format!("{param}|{target_type}|{inner:?}")
}

/// A list of ids as one bound JSON array (one statement shape whatever its length, and no
/// limit on the number of bound values).
fn id_list(s: &mut Sql, pg: bool, ids: &[String]) {
    let json = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
    if pg {
        s.push("SELECT jsonb_array_elements_text(")
            .text(json)
            .push("::jsonb)");
    } else {
        s.push("SELECT value FROM json_each(").text(json).push(")");
    }
}

/// The ids of live `ty` resources that match `f`, as a subquery. Returns (subquery, negate).
/// `visible` (when given) holds the chained targets the caller may see; without it a chain
/// is evaluated over every row, which only the outbox's write-time matching does.
fn id_subquery(ty: &str, f: &Filter, visible: Option<&Visible>) -> (Sql, bool) {
    let mut s = Sql::default();
    let mut negate = false;
    match f {
        Filter::Id(ids) => {
            s.push("SELECT id FROM resource WHERE res_type = ")
                .text(ty)
                .push(" AND deleted = FALSE AND ");
            or_join(&mut s, ids, |s, id| {
                s.push("id = ").text(id.clone());
            });
        }
        Filter::LastUpdated(values) => {
            s.push("SELECT id FROM resource WHERE res_type = ")
                .text(ty)
                .push(" AND deleted = FALSE AND ");
            or_join(&mut s, values, |s, v| {
                date_cond(s, "last_updated", "(last_updated + 1)", v)
            });
        }
        Filter::Token { param, values, not } => {
            negate = *not;
            s.push("SELECT id FROM search_token WHERE res_type = ")
                .text(ty)
                .push(" AND param = ")
                .text(param.clone())
                .push(" AND ");
            or_join(&mut s, values, token_cond);
        }
        Filter::RefIdentifier { param, values } => {
            s.push("SELECT id FROM search_token WHERE res_type = ")
                .text(ty)
                .push(" AND param = ")
                .text(format!("{param}:identifier"))
                .push(" AND ");
            or_join(&mut s, values, token_cond);
        }
        Filter::String {
            param,
            values,
            mode,
        } => {
            s.push("SELECT id FROM search_string WHERE res_type = ")
                .text(ty)
                .push(" AND param = ")
                .text(param.clone())
                .push(" AND ");
            or_join(&mut s, values, |s, v| match mode {
                StringMode::StartsWith => {
                    s.push("value LIKE ").text(format!("{v}%"));
                }
                StringMode::Contains => {
                    s.push("value LIKE ").text(format!("%{v}%"));
                }
                StringMode::Exact => {
                    s.push("raw = ").text(v.clone());
                }
            });
        }
        Filter::Date { param, values } => {
            s.push("SELECT id FROM search_date WHERE res_type = ")
                .text(ty)
                .push(" AND param = ")
                .text(param.clone())
                .push(" AND ");
            or_join(&mut s, values, |s, v| date_cond(s, "low", "high", v));
        }
        Filter::Reference { param, values } => {
            s.push("SELECT id FROM search_reference WHERE res_type = ")
                .text(ty)
                .push(" AND param = ")
                .text(param.clone())
                .push(" AND ");
            or_join(&mut s, values, |s, v| {
                s.push("(target_id = ").text(v.id.clone());
                if let Some(t) = &v.target_type {
                    s.push(" AND target_type = ").text(t.clone());
                }
                s.push(")");
            });
        }
        Filter::Quantity { param, values } => {
            s.push("SELECT id FROM search_quantity WHERE res_type = ")
                .text(ty)
                .push(" AND param = ")
                .text(param.clone())
                .push(" AND ");
            or_join(&mut s, values, |s, v| {
                let op = match v.prefix {
                    Prefix::Eq | Prefix::Ap => "=",
                    Prefix::Ne => "<>",
                    Prefix::Gt | Prefix::Sa => ">",
                    Prefix::Lt | Prefix::Eb => "<",
                    Prefix::Ge => ">=",
                    Prefix::Le => "<=",
                };
                s.push(&format!("(value {op} ")).bind(Bind::Float(v.value));
                if let Some(sys) = &v.system {
                    s.push(" AND system = ").text(sys.clone());
                }
                if let Some(c) = &v.code {
                    s.push(" AND code = ").text(c.clone());
                }
                s.push(")");
            });
        }
        Filter::Chain {
            param,
            target_type,
            inner,
        } => {
            let (inner_sql, inner_neg) = id_subquery(target_type, inner, None);
            s.push("SELECT id FROM search_reference WHERE res_type = ")
                .text(ty)
                .push(" AND param = ")
                .text(param.clone());
            s.push(" AND target_type = ").text(target_type.clone());
            match visible {
                // Gated: only targets the caller may see can satisfy the inner predicate.
                Some(v) => {
                    let ids = v.targets.get(&chain_key(param, target_type, inner));
                    match (ids.map(Vec::as_slice), inner_neg) {
                        (None | Some([]), false) => {
                            s.push(" AND 1 = 0");
                        }
                        (None | Some([]), true) => {}
                        (Some(ids), neg) => {
                            s.push(if neg {
                                " AND target_id NOT IN ("
                            } else {
                                " AND target_id IN ("
                            });
                            id_list(&mut s, v.pg, ids);
                            s.push(")");
                        }
                    }
                }
                None => {
                    s.push(if inner_neg {
                        " AND target_id NOT IN ("
                    } else {
                        " AND target_id IN ("
                    });
                    s.append(&inner_sql).push(")");
                }
            }
        }
        Filter::Missing {
            param,
            kind,
            missing,
        } => {
            let table = match kind {
                ParamType::Token => "search_token",
                ParamType::String => "search_string",
                ParamType::Date => "search_date",
                ParamType::Reference => "search_reference",
                ParamType::Quantity => "search_quantity",
            };
            s.push(&format!("SELECT id FROM {table} WHERE res_type = "))
                .text(ty)
                .push(" AND param = ")
                .text(param.clone());
            negate = *missing;
        }
    }
    (s, negate)
}

/// The WHERE conditions (on alias `r`) for a type and its filters, with chains evaluated over
/// every row. Not for answering a caller: only for matching a Subscription's criteria at write
/// time (the notification itself goes through the subscriber's gate). Callers use
/// `gated_where`.
pub(crate) fn where_clause(ty: &str, filters: &[Filter]) -> Sql {
    where_with(ty, filters, None)
}

/// The WHERE conditions for a caller: every chained parameter is evaluated only over the target
/// rows the caller may see, so a reference to a withheld resource behaves exactly like a
/// reference to nothing (a chain must never answer questions about a withheld person's birth
/// date, name or postcode). Each chain's inner predicate is run first, restricted to targets
/// that rows of `ty` reference through that parameter; the gate decides each (not recorded as
/// disclosed: no target leaves the store); the search then uses the visible ids. Searches
/// without chains (the hot paths) cost nothing more.
pub(crate) fn gated_where(
    conn: &mut DbConn,
    gate: &Gate,
    ty: &str,
    filters: &[Filter],
) -> Result<Sql, StoreError> {
    if !filters.iter().any(|f| matches!(f, Filter::Chain { .. })) {
        return Ok(where_with(ty, filters, None));
    }
    let mut visible = Visible {
        pg: matches!(conn, DbConn::Pg(_)),
        targets: HashMap::new(),
    };
    let mut facts = HashMap::new();
    for f in filters {
        let Filter::Chain {
            param,
            target_type,
            inner,
        } = f
        else {
            continue;
        };
        let key = chain_key(param, target_type, inner);
        if visible.targets.contains_key(&key) {
            continue;
        }
        let (inner_sql, _) = id_subquery(target_type, inner, None);
        // The gate needs the row's writer and the person's facts, never its content.
        let mut sql = Sql::new("SELECT r.res_type, r.id, r.version_id, r.patient_key, r.writer_org, r.deleted, r.last_updated, '' AS content, pa.facts FROM resource r LEFT JOIN patient_access pa ON pa.patient_key = r.patient_key WHERE r.res_type = ");
        sql.text(target_type.clone())
            .push(" AND r.deleted = FALSE AND r.id IN (")
            .append(&inner_sql)
            // Probed per candidate (the reference index leads with these columns), so a narrow
            // inner predicate (an NHS number) never reads every reference of the type.
            .push(") AND EXISTS (SELECT 1 FROM search_reference x WHERE x.res_type = ")
            .text(ty)
            .push(" AND x.param = ")
            .text(param.clone())
            .push(" AND x.target_id = r.id AND x.target_type = ")
            .text(target_type.clone())
            .push(")");
        let mut ids = Vec::new();
        for row in load::<ResourceRow>(conn, &sql)? {
            if let Decided::Visible(s) = gate_row(gate, row, &mut facts, false)? {
                ids.push(s.id);
            }
        }
        visible.targets.insert(key, ids);
    }
    Ok(where_with(ty, filters, Some(&visible)))
}

fn where_with(ty: &str, filters: &[Filter], visible: Option<&Visible>) -> Sql {
    let mut w = Sql::new(" WHERE r.res_type = ");
    w.text(ty).push(" AND r.deleted = FALSE");
    for f in filters {
        let (sub, negate) = id_subquery(ty, f, visible);
        w.push(if negate {
            " AND r.id NOT IN ("
        } else {
            " AND r.id IN ("
        });
        w.append(&sub).push(")");
    }
    w
}

#[derive(QueryableByName)]
struct SortedRow {
    #[diesel(embed)]
    res: ResourceRow,
    #[diesel(sql_type = Nullable<BigInt>)]
    sv_int: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    sv_text: Option<String>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Cursor {
    i: Option<i64>,
    t: Option<String>,
    id: String,
    /// Backward: the page ends just before this position (a `previous` link).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    b: bool,
}

fn encode_cursor(c: &Cursor, backward: bool) -> String {
    let c = Cursor {
        b: backward,
        ..c.clone()
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&c).unwrap_or_default())
}

fn decode_cursor(s: &str) -> Result<Cursor, StoreError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| StoreError::BadRequest("the paging cursor is not valid".into()))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| StoreError::BadRequest("the paging cursor is not valid".into()))
}

/// The sort value expression: (int expression, text expression), one of them NULL.
fn sort_exprs(q: &Query) -> (String, String, bool) {
    let Some(sort) = q.sort.first() else {
        return ("NULL".into(), "r.id".into(), false);
    };
    let desc = sort.descending;
    let (int_e, text_e) = match &sort.field {
        SortField::Id => ("NULL".to_string(), "r.id".to_string()),
        SortField::LastUpdated => ("r.last_updated".to_string(), "NULL".to_string()),
        SortField::Param { code, kind } => {
            let code = code.replace('\'', "");
            match kind {
                ParamType::Date => {
                    let (agg, sentinel) = if desc {
                        ("MAX", date::MIN)
                    } else {
                        ("MIN", date::MAX)
                    };
                    (
                        format!("COALESCE((SELECT {agg}(d.low) FROM search_date d WHERE d.res_type = r.res_type AND d.id = r.id AND d.param = '{code}'), {sentinel})"),
                        "NULL".to_string(),
                    )
                }
                ParamType::String => {
                    let (agg, sentinel) = if desc { ("MAX", "") } else { ("MIN", "~~~~") };
                    ("NULL".to_string(), format!("COALESCE((SELECT {agg}(x.value) FROM search_string x WHERE x.res_type = r.res_type AND x.id = r.id AND x.param = '{code}'), '{sentinel}')"))
                }
                _ => {
                    let (agg, sentinel) = if desc { ("MAX", "") } else { ("MIN", "~~~~") };
                    ("NULL".to_string(), format!("COALESCE((SELECT {agg}(x.code) FROM search_token x WHERE x.res_type = r.res_type AND x.id = r.id AND x.param = '{code}'), '{sentinel}')"))
                }
            }
        }
    };
    (int_e, text_e, desc)
}

const ROW_COLUMNS: &str = "r.res_type, r.id, r.version_id, r.patient_key, r.writer_org, r.deleted, r.last_updated, r.content, pa.facts";

/// Runs a search for `ty`, gated row by row.
pub fn search(
    conn: &mut DbConn,
    gate: &Gate,
    ty: &str,
    q: &Query,
) -> Result<SearchPage, StoreError> {
    let page_size = q.page_size();
    let (int_e, text_e, desc) = sort_exprs(q);
    let mut cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    // A backward page walks the same order in reverse from its cursor, then flips the rows.
    let backward = cursor.as_ref().is_some_and(|c| c.b);
    let started_mid_list = cursor.is_some();
    let walk_desc = desc != backward;
    let mut page = SearchPage::default();
    let mut facts_cache = HashMap::new();
    let batch = (page_size + 1).clamp(2, 1001) as i64;
    // Positions of the first and last rows on the page, in walk order; only these become links.
    let (mut first, mut last): (Option<Cursor>, Option<Cursor>) = (None, None);
    let mut more = false;
    let filters = gated_where(conn, gate, ty, &q.filters)?;
    if page_size > 0 && q.summary != epaccs_fhir::query::Summary::Count {
        'fill: loop {
            let mut sql = Sql::new(&format!("SELECT * FROM (SELECT {ROW_COLUMNS}, {int_e} AS sv_int, {text_e} AS sv_text FROM resource r LEFT JOIN patient_access pa ON pa.patient_key = r.patient_key"));
            sql.append(&filters).push(") s");
            if let Some(c) = &cursor {
                let gt = if walk_desc { "<" } else { ">" };
                let col = if c.i.is_some() {
                    "s.sv_int"
                } else {
                    "s.sv_text"
                };
                let sv = match (&c.i, &c.t) {
                    (Some(i), _) => Bind::Int(*i),
                    (None, Some(t)) => Bind::Text(t.clone()),
                    (None, None) => Bind::Text(String::new()),
                };
                sql.push(&format!(" WHERE ({col} {gt} ")).bind(sv.clone());
                sql.push(&format!(" OR ({col} = "))
                    .bind(sv)
                    .push(&format!(" AND s.id {gt} "))
                    .text(c.id.clone())
                    .push("))");
            }
            let dir = if walk_desc { "DESC" } else { "ASC" };
            let col = if int_e == "NULL" {
                "s.sv_text"
            } else {
                "s.sv_int"
            };
            sql.push(&format!(" ORDER BY {col} {dir}, s.id {dir} LIMIT "))
                .int(batch);
            let rows: Vec<SortedRow> = load(conn, &sql)?;
            let exhausted = (rows.len() as i64) < batch;
            for r in rows {
                let here = Cursor {
                    i: r.sv_int,
                    t: r.sv_text.clone(),
                    id: r.res.id.clone(),
                    b: backward,
                };
                match gate_row(gate, r.res, &mut facts_cache, true)? {
                    Decided::Visible(s) => {
                        if page.matches.len() == page_size {
                            more = true;
                            break 'fill;
                        }
                        page.matches.push(s);
                        if first.is_none() {
                            first = Some(here.clone());
                        }
                        last = Some(here.clone());
                    }
                    Decided::Withheld { .. } => page.withheld += 1,
                }
                cursor = Some(here);
            }
            if exhausted {
                break;
            }
        }
    }
    // A backward walk came from after this page, so a next page exists; earlier rows only if
    // found. A forward walk has a previous page when it started from a cursor.
    let (page_first, page_last, has_next, has_prev) = if backward {
        page.matches.reverse();
        (last, first, true, more)
    } else {
        (first, last, more, started_mid_list)
    };
    page.next_cursor = page_last
        .filter(|_| has_next)
        .map(|c| encode_cursor(&c, false));
    page.prev_cursor = page_first
        .filter(|_| has_prev)
        .map(|c| encode_cursor(&c, true));
    if q.total == epaccs_fhir::query::Total::Accurate
        || q.summary == epaccs_fhir::query::Summary::Count
    {
        page.total = Some(count_visible(conn, gate, &filters)?);
    }
    if !q.include.is_empty() || !q.revinclude.is_empty() {
        page.includes = includes(conn, gate, q, &page.matches, &mut facts_cache)?;
    }
    Ok(page)
}

/// Counts every candidate the caller may see (the gate is asked, but the rows are not logged as
/// disclosed: only their number leaves).
fn count_visible(conn: &mut DbConn, gate: &Gate, filters: &Sql) -> Result<usize, StoreError> {
    let mut sql = Sql::new(&format!("SELECT {ROW_COLUMNS} FROM resource r LEFT JOIN patient_access pa ON pa.patient_key = r.patient_key"));
    sql.append(filters);
    let rows: Vec<ResourceRow> = load(conn, &sql)?;
    let mut cache = HashMap::new();
    let mut n = 0;
    for r in rows {
        if matches!(gate_row(gate, r, &mut cache, false)?, Decided::Visible(_)) {
            n += 1;
        }
    }
    Ok(n)
}

/// Loads live rows by (type, id), gated.
pub(crate) fn load_gated(
    conn: &mut DbConn,
    gate: &Gate,
    keys: &[(String, String)],
    cache: &mut HashMap<String, std::sync::Arc<epaccs_access::PatientFacts>>,
) -> Result<Vec<Stored>, StoreError> {
    let mut out = Vec::new();
    for chunk in keys.chunks(200) {
        let mut sql = Sql::new(&format!("SELECT {ROW_COLUMNS} FROM resource r LEFT JOIN patient_access pa ON pa.patient_key = r.patient_key WHERE r.deleted = FALSE AND "));
        or_join(&mut sql, chunk, |s, (t, id)| {
            s.push("(r.res_type = ")
                .text(t.clone())
                .push(" AND r.id = ")
                .text(id.clone())
                .push(")");
        });
        let rows: Vec<ResourceRow> = load(conn, &sql)?;
        for r in rows {
            if let Decided::Visible(s) = gate_row(gate, r, cache, true)? {
                out.push(s);
            }
        }
    }
    Ok(out)
}

#[derive(QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = Text)]
    t: String,
    #[diesel(sql_type = Text)]
    i: String,
}

fn includes(
    conn: &mut DbConn,
    gate: &Gate,
    q: &Query,
    matches: &[Stored],
    cache: &mut HashMap<String, std::sync::Arc<epaccs_access::PatientFacts>>,
) -> Result<Vec<Stored>, StoreError> {
    let mut seen: BTreeSet<(String, String)> = matches
        .iter()
        .map(|s| (s.resource_type.clone(), s.id.clone()))
        .collect();
    let mut out: Vec<Stored> = Vec::new();
    let mut frontier: Vec<Stored> = matches.to_vec();
    for level in 0..2 {
        let mut keys: Vec<(String, String)> = Vec::new();
        for inc in q.include.iter().filter(|i| level == 0 || i.iterate) {
            let sources: Vec<&Stored> = frontier
                .iter()
                .filter(|s| s.resource_type == inc.source)
                .collect();
            for chunk in sources.chunks(200) {
                if chunk.is_empty() {
                    continue;
                }
                let mut sql = Sql::new("SELECT target_type AS t, target_id AS i FROM search_reference WHERE res_type = ");
                sql.text(inc.source.clone());
                if inc.param != "*" {
                    sql.push(" AND param = ").text(inc.param.clone());
                }
                if let Some(t) = &inc.target {
                    sql.push(" AND target_type = ").text(t.clone());
                }
                sql.push(" AND ");
                or_join(&mut sql, chunk, |s, st| {
                    s.push("id = ").text(st.id.clone());
                });
                keys.extend(load::<KeyRow>(conn, &sql)?.into_iter().map(|k| (k.t, k.i)));
            }
        }
        for inc in q.revinclude.iter().filter(|i| level == 0 || i.iterate) {
            if frontier.is_empty() {
                continue;
            }
            for chunk in frontier.chunks(200) {
                let mut sql = Sql::new(
                    "SELECT res_type AS t, id AS i FROM search_reference WHERE res_type = ",
                );
                sql.text(inc.source.clone());
                if inc.param != "*" {
                    sql.push(" AND param = ").text(inc.param.clone());
                }
                sql.push(" AND ");
                or_join(&mut sql, chunk, |s, st| {
                    s.push("(target_type = ")
                        .text(st.resource_type.clone())
                        .push(" AND target_id = ")
                        .text(st.id.clone())
                        .push(")");
                });
                keys.extend(load::<KeyRow>(conn, &sql)?.into_iter().map(|k| (k.t, k.i)));
            }
        }
        keys.retain(|k| seen.insert(k.clone()));
        if keys.is_empty() {
            break;
        }
        let found = load_gated(conn, gate, &keys, cache)?;
        frontier = found.clone();
        out.extend(found);
    }
    Ok(out)
}
