//! `POST /` with a batch or transaction Bundle.
//!
//! A transaction runs as one job of the group-commit writer inside one savepoint: it resolves
//! `ifNoneExist` conditions and assigns ids for every `POST` first, rewrites `urn:uuid:`
//! references, then processes entries in the order the FHIR spec gives (DELETE, POST, PUT/PATCH,
//! GET); any failing entry rolls everything back and the error names the entry. A batch runs each
//! entry in its own savepoint, reporting each entry's own status. Either way the request's audit
//! record commits with it.

use crate::error::ApiError;
use crate::extract::{prefer, query_pairs, Body, BodyKind, Caller, Return};
use crate::respond::{self, bundle};
use crate::rest::{kind, prepare_put};
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use epaccs_core::Interaction;
use epaccs_fhir::query::Query;
use epaccs_store::resources::{self, WriteStatus};
use epaccs_store::{audit, search, Amendment, DbConn, StoreError, Stored, WriteOp};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    Delete,
    Post,
    Put,
    Patch,
    Get,
}

#[derive(Debug, Clone)]
struct Entry {
    index: usize,
    method: Method,
    /// Relative URL: `Type`, `Type/id`, `Type?query`, `Type/id/_history/v`.
    url: String,
    full_url: Option<String>,
    resource: Option<Value>,
    if_none_exist: Option<String>,
    if_match: Option<i64>,
}

fn parse_entries(state: &AppState, b: &Value) -> Result<(bool, Vec<Entry>), ApiError> {
    if b.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ApiError::BadRequest(
            "POST to the base URL takes a Bundle".into(),
        ));
    }
    let transaction = match b.get("type").and_then(Value::as_str) {
        Some("transaction") => true,
        Some("batch") => false,
        other => {
            return Err(ApiError::BadRequest(format!(
                "Bundle.type must be batch or transaction, not {other:?}"
            )))
        }
    };
    let raw = b
        .get("entry")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if raw.len() > state.limits.max_bundle_entries {
        return Err(ApiError::PayloadTooLarge(format!(
            "the bundle has {} entries; the limit is {}",
            raw.len(),
            state.limits.max_bundle_entries
        )));
    }
    let base = format!("{}/", state.base_url);
    let mut out = Vec::with_capacity(raw.len());
    for (index, e) in raw.iter().enumerate() {
        let req = e
            .get("request")
            .ok_or_else(|| ApiError::BadRequest(format!("entry {index} has no request")))?;
        let method = match req.get("method").and_then(Value::as_str) {
            Some("GET") | Some("HEAD") => Method::Get,
            Some("POST") => Method::Post,
            Some("PUT") => Method::Put,
            Some("PATCH") => Method::Patch,
            Some("DELETE") => Method::Delete,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "entry {index}: request.method {other:?} is not supported"
                )))
            }
        };
        let url = req
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::BadRequest(format!("entry {index} has no request.url")))?;
        let url = url
            .strip_prefix(&base)
            .unwrap_or(url)
            .trim_start_matches('/')
            .to_string();
        let if_match = req
            .get("ifMatch")
            .and_then(Value::as_str)
            .map(crate::extract::parse_etag)
            .transpose()?;
        out.push(Entry {
            index,
            method,
            url,
            full_url: e.get("fullUrl").and_then(Value::as_str).map(str::to_string),
            resource: e.get("resource").cloned(),
            if_none_exist: req
                .get("ifNoneExist")
                .and_then(Value::as_str)
                .map(str::to_string),
            if_match,
        });
    }
    Ok((transaction, out))
}

/// Replaces every `"reference": "urn:uuid:..."` with the id assigned to it.
fn rewrite(v: &mut Value, map: &HashMap<String, String>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                if k == "reference" {
                    if let Some(target) = child.as_str().and_then(|r| map.get(r)) {
                        *child = Value::String(target.clone());
                    }
                } else {
                    rewrite(child, map);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, map)),
        _ => {}
    }
}

struct Ctx<'a> {
    state: &'a AppState,
    caller: &'a Caller,
    /// Ids assigned in advance to POST entries, by entry index.
    assigned: HashMap<usize, String>,
    /// POST entries whose ifNoneExist matched an existing resource.
    existing: HashMap<usize, String>,
    /// Reasons given by the transaction's Provenance entries, by the `Type/id` they target: an
    /// amendment of a decision another organisation owns needs one.
    amendments: HashMap<String, Amendment>,
}

/// The amendments a transaction's Provenance entries give: each Provenance with an activity,
/// an agent and a reason amends every resource it targets. Run after `urn:uuid` references
/// are rewritten.
fn amendments(entries: &[Entry]) -> HashMap<String, Amendment> {
    let mut out = HashMap::new();
    for e in entries.iter().filter(|e| e.method == Method::Post) {
        let Some(p) = e.resource.as_ref() else {
            continue;
        };
        if p.get("resourceType").and_then(Value::as_str) != Some("Provenance") {
            continue;
        }
        let reason: Vec<String> = p
            .get("reason")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| {
                r.get("text")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| {
                        r.pointer("/coding/0/display")
                            .or_else(|| r.pointer("/coding/0/code"))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
            })
            .filter(|t| !t.trim().is_empty())
            .collect();
        let has_activity = p.get("activity").is_some();
        let has_agent = p
            .get("agent")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if reason.is_empty() || !has_activity || !has_agent {
            continue;
        }
        for t in p
            .get("target")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some((ty, id)) = t
                .get("reference")
                .and_then(Value::as_str)
                .and_then(epaccs_fhir::registry::split_reference)
            {
                out.insert(
                    format!("{ty}/{id}"),
                    Amendment {
                        reason: reason.join("; "),
                    },
                );
            }
        }
    }
    out
}

fn status_line(code: StatusCode) -> String {
    format!(
        "{} {}",
        code.as_u16(),
        code.canonical_reason().unwrap_or("")
    )
}

fn stored_entry(
    state: &AppState,
    s: &Stored,
    status: StatusCode,
    ret: Return,
    with_location: bool,
) -> Value {
    let mut resp = json!({"status": status_line(status), "etag": respond::etag(s.version_id), "lastModified": epaccs_fhir::date::format_instant(s.last_updated)});
    if with_location {
        resp["location"] = json!(format!(
            "{}/{}/_history/{}",
            s.resource_type, s.id, s.version_id
        ));
    }
    let mut e = json!({"fullUrl": respond::full_url(&state.base_url, s), "response": resp});
    if ret == Return::Representation && !s.deleted {
        e["resource"] = respond::parse(s);
    }
    e
}

fn written_entry(state: &AppState, w: &epaccs_store::Written, ret: Return) -> Value {
    match w.status {
        WriteStatus::Created => stored_entry(state, &w.stored, StatusCode::CREATED, ret, true),
        WriteStatus::Updated => stored_entry(state, &w.stored, StatusCode::OK, ret, true),
        WriteStatus::Existing => stored_entry(state, &w.stored, StatusCode::OK, ret, false),
        WriteStatus::Deleted | WriteStatus::AlreadyDeleted => {
            json!({"response": {"status": status_line(StatusCode::NO_CONTENT)}})
        }
    }
}

fn split_url(url: &str) -> (String, Option<String>, Option<String>, Option<String>) {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (url, None),
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let ty = parts.first().copied().unwrap_or_default().to_string();
    let id = parts.get(1).map(|s| s.to_string());
    let version = (parts.get(2) == Some(&"_history"))
        .then(|| parts.get(3).map(|s| s.to_string()))
        .flatten();
    (ty, id, version, query)
}

/// Runs one entry on the writer's connection.
fn run_entry(c: &mut DbConn, cx: &Ctx<'_>, e: &Entry, ret: Return) -> Result<Value, ApiError> {
    let gate = &cx.caller.gate;
    let params = cx.state.store.params();
    let (ty, id, version, query) = split_url(&e.url);
    let kind = kind(&ty)?;
    let amendment = id
        .as_ref()
        .and_then(|id| cx.amendments.get(&format!("{}/{id}", kind.name)));
    let need = match e.method {
        Method::Get => {
            if id.is_some() {
                Interaction::Read
            } else {
                Interaction::Search
            }
        }
        Method::Post => Interaction::Create,
        Method::Put | Method::Patch => Interaction::Update,
        Method::Delete => Interaction::Delete,
    };
    cx.caller.require(kind.name, need)?;
    if e.method != Method::Get {
        crate::rest::role_may_write(gate, kind.name)?;
    }
    let body = || {
        e.resource
            .clone()
            .ok_or_else(|| ApiError::BadRequest("this entry needs a resource".into()))
    };
    let w = match e.method {
        Method::Get => {
            return match (id, version) {
                (Some(id), Some(v)) => {
                    let v: i64 = v
                        .parse()
                        .map_err(|_| ApiError::NotFound("no such version".into()))?;
                    let s = resources::vread(c, gate, kind.name, &id, v)?;
                    Ok(stored_entry(
                        cx.state,
                        &s,
                        StatusCode::OK,
                        Return::Representation,
                        false,
                    ))
                }
                (Some(id), None) => {
                    let s = resources::read(c, gate, kind.name, &id)?;
                    Ok(stored_entry(
                        cx.state,
                        &s,
                        StatusCode::OK,
                        Return::Representation,
                        false,
                    ))
                }
                (None, _) => {
                    let q = Query::parse(
                        params,
                        kind.name,
                        &query_pairs(query.as_deref().unwrap_or("")),
                        false,
                    )?;
                    let page = search::search(c, gate, kind.name, &q)?;
                    let entries: Vec<Value> = page
                        .matches
                        .iter()
                        .map(|s| {
                            respond::entry(
                                respond::full_url(&cx.state.base_url, s),
                                respond::parse(s),
                                Some("match"),
                            )
                        })
                        .collect();
                    Ok(
                        json!({"resource": bundle("searchset", page.total, vec![], entries), "response": {"status": status_line(StatusCode::OK)}}),
                    )
                }
            };
        }
        Method::Post => {
            if let Some(existing) = cx.existing.get(&e.index) {
                let s = resources::read(c, gate, kind.name, existing)?;
                return Ok(stored_entry(cx.state, &s, StatusCode::OK, ret, false));
            }
            let put = prepare_put(cx.state, kind, body()?, "POST", None)?;
            let if_none_exist = match &e.if_none_exist {
                Some(q) => Some(
                    Query::parse(
                        params,
                        kind.name,
                        &query_pairs(q.split_once('?').map_or(q.as_str(), |(_, q)| q)),
                        true,
                    )?
                    .filters,
                ),
                None => None,
            };
            resources::apply(
                c,
                gate,
                WriteOp::Create {
                    put,
                    if_none_exist,
                    id: cx.assigned.get(&e.index).cloned(),
                },
            )?
        }
        Method::Put => match (id, query) {
            (Some(id), _) => {
                let put = prepare_put(cx.state, kind, body()?, "PUT", Some(&id))?;
                resources::apply_amended(
                    c,
                    gate,
                    WriteOp::Update {
                        id,
                        put,
                        if_match: e.if_match,
                        upsert: true,
                    },
                    amendment,
                )?
            }
            (None, Some(q)) => {
                let b = body()?;
                let body_id = b.get("id").and_then(Value::as_str).map(str::to_string);
                let put = prepare_put(cx.state, kind, b, "PUT", body_id.as_deref())?;
                let filters = Query::parse(params, kind.name, &query_pairs(&q), true)?.filters;
                resources::apply(
                    c,
                    gate,
                    WriteOp::ConditionalUpdate {
                        filters,
                        put,
                        if_match: e.if_match,
                    },
                )?
            }
            (None, None) => {
                return Err(ApiError::BadRequest(
                    "PUT needs Type/id or Type?criteria".into(),
                ))
            }
        },
        Method::Patch => {
            let id = id.ok_or_else(|| ApiError::BadRequest("PATCH needs Type/id".into()))?;
            let b = body()?;
            let data = (b.get("resourceType").and_then(Value::as_str) == Some("Binary"))
                .then(|| b.get("data").and_then(Value::as_str))
                .flatten()
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "a PATCH entry carries a Binary with a JSON Patch in data".into(),
                    )
                })?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| ApiError::BadRequest("Binary.data is not base64".into()))?;
            let ops: json_patch::Patch = serde_json::from_slice(&raw)
                .map_err(|e| ApiError::BadRequest(format!("not a JSON Patch: {e}")))?;
            let current = resources::read(c, gate, kind.name, &id)?;
            let mut doc = respond::parse(&current);
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                ApiError::Unprocessable(vec![epaccs_fhir::Issue::error(
                    "processing",
                    None,
                    format!("the patch cannot be applied: {e}"),
                )])
            })?;
            let put = prepare_put(cx.state, kind, doc, "PATCH", Some(&id))?;
            resources::apply_amended(
                c,
                gate,
                WriteOp::Update {
                    id,
                    put,
                    if_match: Some(e.if_match.unwrap_or(current.version_id)),
                    upsert: false,
                },
                amendment,
            )?
        }
        Method::Delete => {
            let id = id.ok_or_else(|| {
                ApiError::BadRequest(
                    "conditional delete is not supported; DELETE needs Type/id".into(),
                )
            })?;
            resources::apply_amended(
                c,
                gate,
                WriteOp::Delete {
                    resource_type: kind.name.to_string(),
                    id,
                    if_match: e.if_match,
                },
                amendment,
            )?
        }
    };
    Ok(written_entry(cx.state, &w, ret))
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Delete => "DELETE",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Get => "GET",
        }
    }
}

fn name(e: &Entry) -> String {
    format!("entry {} ({} {})", e.index, e.method.as_str(), e.url)
}

fn with_entry(e: &Entry, err: ApiError) -> ApiError {
    let n = name(e);
    match err {
        ApiError::BadRequest(m) => ApiError::BadRequest(format!("{n}: {m}")),
        ApiError::Forbidden(m) => ApiError::Forbidden(format!("{n}: {m}")),
        ApiError::Withheld(m) => ApiError::Withheld(format!("{n}: {m}")),
        ApiError::NotFound(m) => ApiError::NotFound(format!("{n}: {m}")),
        ApiError::Conflict(m) => ApiError::Conflict(format!("{n}: {m}")),
        ApiError::Gone(m) => ApiError::Gone(format!("{n}: {m}")),
        ApiError::PreconditionFailed(m) => ApiError::PreconditionFailed(format!("{n}: {m}")),
        ApiError::PreconditionRequired(m) => ApiError::PreconditionRequired(format!("{n}: {m}")),
        ApiError::Unprocessable(mut issues) | ApiError::Invalid(mut issues) => {
            for i in &mut issues {
                i.message = format!("{n}: {}", i.message);
            }
            ApiError::Unprocessable(issues)
        }
        other => other,
    }
}

fn run_transaction(
    c: &mut DbConn,
    cx: &mut Ctx<'_>,
    entries: &mut [Entry],
    ret: Return,
) -> Result<Vec<Value>, ApiError> {
    // 1. Ids for every POST: an existing match for ifNoneExist, or a new id.
    let mut map = HashMap::new();
    for e in entries.iter().filter(|e| e.method == Method::Post) {
        let (ty, _, _, _) = split_url(&e.url);
        let k = kind(&ty).map_err(|err| with_entry(e, err))?;
        let id = match &e.if_none_exist {
            Some(q) => {
                let filters = Query::parse(
                    cx.state.store.params(),
                    k.name,
                    &query_pairs(q.split_once('?').map_or(q.as_str(), |(_, q)| q)),
                    true,
                )
                .map_err(|err| with_entry(e, err.into()))?
                .filters;
                match resources::condition_match(c, &cx.caller.gate, k.name, &filters)
                    .map_err(|err| with_entry(e, err.into()))?
                {
                    Some(existing) => {
                        cx.existing.insert(e.index, existing.clone());
                        existing
                    }
                    None => uuid::Uuid::new_v4().to_string(),
                }
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        cx.assigned.insert(e.index, id.clone());
        if let Some(full) = &e.full_url {
            map.insert(full.clone(), format!("{}/{id}", k.name));
        }
    }
    // 2. urn:uuid references and URLs point at the assigned ids.
    for e in entries.iter_mut() {
        if let Some(r) = e.resource.as_mut() {
            rewrite(r, &map);
        }
        if let Some(target) = map.get(&e.url) {
            e.url = target.clone();
        }
    }
    cx.amendments = amendments(entries);
    // 3. The spec's order (DELETE, POST, PUT/PATCH, GET); within the POSTs, a resource is created
    //    before those that reference it. Results go back in request order.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (entries[i].method, i));
    let posts: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| entries[i].method == Method::Post)
        .collect();
    let texts: HashMap<usize, String> = posts
        .iter()
        .map(|&i| {
            (
                i,
                entries[i]
                    .resource
                    .as_ref()
                    .map(Value::to_string)
                    .unwrap_or_default(),
            )
        })
        .collect();
    let target = |i: usize| -> Option<String> {
        let (ty, _, _, _) = split_url(&entries[i].url);
        cx.assigned
            .get(&i)
            .filter(|_| !cx.existing.contains_key(&i))
            .map(|id| format!("\"{ty}/{id}\""))
    };
    let mut sorted_posts: Vec<usize> = Vec::with_capacity(posts.len());
    let mut pending = posts.clone();
    while !pending.is_empty() {
        let ready: Vec<usize> = pending
            .iter()
            .copied()
            .filter(|&i| {
                pending
                    .iter()
                    .all(|&j| j == i || target(j).is_none_or(|t| !texts[&i].contains(&t)))
            })
            .collect();
        // A reference cycle: keep request order for the rest; the store reports what is missing.
        let ready = if ready.is_empty() {
            pending.clone()
        } else {
            ready
        };
        pending.retain(|i| !ready.contains(i));
        sorted_posts.extend(ready);
    }
    let mut posts_iter = sorted_posts.into_iter();
    for slot in order.iter_mut() {
        if entries[*slot].method == Method::Post {
            if let Some(next) = posts_iter.next() {
                *slot = next;
            }
        }
    }
    let mut results = vec![Value::Null; entries.len()];
    for i in order {
        let e = &entries[i];
        results[i] = run_entry(c, cx, e, ret).map_err(|err| with_entry(e, err))?;
    }
    Ok(results)
}

pub async fn process(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let parsed = (|| {
        if body.kind != BodyKind::Fhir {
            return Err(ApiError::UnsupportedMediaType(
                "a Bundle is application/fhir+json".into(),
            ));
        }
        let b = epaccs_fhir::validate::parse_json(&body.bytes)?;
        parse_entries(&state, &b)
    })();
    let (transaction, mut entries) = match parsed {
        Ok(p) => p,
        Err(e) => {
            return caller
                .audited(&state, "transaction", None, async {
                    Err::<HttpResponse, _>(e)
                })
                .await
        }
    };
    let interaction = if transaction { "transaction" } else { "batch" };
    let ret = prefer(&req).ret;
    let state2 = state.clone();
    let probe = Caller {
        gate: caller.gate.clone(),
        target: caller.target.clone(),
    };
    let probe = Arc::new(probe);
    let result = state
        .store
        .write(move |c| {
            let mut cx = Ctx { state: &state2, caller: &probe, assigned: HashMap::new(), existing: HashMap::new(), amendments: HashMap::new() };
            let outcome: Result<Vec<Value>, ApiError> = if transaction {
                let mut failure = None;
                let r = epaccs_store::savepoint(c, |c| match run_transaction(c, &mut cx, &mut entries, ret) {
                    Ok(v) => Ok(v),
                    Err(e) => {
                        failure = Some(e);
                        Err(StoreError::Conflict("transaction rolled back".into()))
                    }
                });
                match (r, failure) {
                    (Ok(v), _) => Ok(v),
                    (Err(_), Some(e)) => Err(e),
                    (Err(e), None) => Err(e.into()),
                }
            } else {
                let mut out = Vec::with_capacity(entries.len());
                for e in &entries {
                    let mut failure = None;
                    let r = epaccs_store::savepoint(c, |c| match run_entry(c, &cx, e, ret) {
                        Ok(v) => Ok(v),
                        Err(err) => {
                            failure = Some(err);
                            Err(StoreError::Conflict("entry rolled back".into()))
                        }
                    });
                    out.push(match (r, failure) {
                        (Ok(v), _) => v,
                        (Err(se), f) => {
                            let err = f.unwrap_or_else(|| se.into());
                            let status = actix_web::ResponseError::status_code(&err);
                            json!({"response": {"status": status_line(status), "outcome": err.outcome()}})
                        }
                    });
                }
                Ok(out)
            };
            let rec = probe.audit_record(interaction, None, &outcome.as_ref().map(|_| ()));
            audit::insert(c, &rec)?;
            Ok(outcome)
        })
        .await??;
    let kind = if transaction {
        "transaction-response"
    } else {
        "batch-response"
    };
    Ok(respond::json(
        StatusCode::OK,
        &bundle(kind, None, vec![], result),
    ))
}
