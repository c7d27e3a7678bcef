//! The FHIR REST interactions on resource types: thin handlers over the store.

use crate::error::{outcome_info, ApiError};
use crate::extract::{if_match, prefer, query_pairs, Body, BodyKind, Caller, Return};
use crate::respond::{self, bundle, full_url};
use crate::state::AppState;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use epaccs_core::Interaction;
use epaccs_fhir::query::{Query, Summary};
use epaccs_fhir::registry::{self, PatientLink, ResourceKind};
use epaccs_fhir::validate::{self, IssueSeverity};
use epaccs_store::resources::{self, WriteStatus};
use epaccs_store::{audit, search, Put, Stored, WriteOp, Written};
use serde_json::{json, Value};

/// The kind for a type named in a URL: 404 if the service does not hold it.
pub fn kind(ty: &str) -> Result<&'static ResourceKind, ApiError> {
    registry::kind_of(ty)
        .filter(|k| k.client_writable)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "resource type '{ty}' is not supported by this server"
            ))
        })
}

/// Validates a body for a write and derives its index rows and patient link.
pub fn prepare_put(
    state: &AppState,
    kind: &'static ResourceKind,
    mut body: Value,
    method: &'static str,
    url_id: Option<&str>,
) -> Result<Put, ApiError> {
    validate::validate(kind, &body)?;
    let issues = state.profiles.validate(&body);
    if !issues.is_empty() {
        return Err(ApiError::Unprocessable(issues));
    }
    if kind.name == "Subscription" {
        subscription_rules(state, &mut body)?;
    }
    if kind.name == "Consent" {
        let problems = epaccs_access::facts::check_consent(&body, epaccs_fhir::date::now_micros());
        if !problems.is_empty() {
            return Err(ApiError::Unprocessable(
                problems
                    .into_iter()
                    .map(|(path, message)| {
                        validate::Issue::error("business-rule", Some(path), message)
                    })
                    .collect(),
            ));
        }
    }
    match (url_id, body.get("id").and_then(Value::as_str)) {
        (Some(url), Some(b)) if url != b => {
            return Err(ApiError::BadRequest(format!(
                "the id in the body ({b}) does not match the id in the URL ({url})"
            )))
        }
        (Some(_), None) => {
            return Err(ApiError::BadRequest(
                "an update must carry the resource id in the body".into(),
            ))
        }
        _ => {}
    }
    if let Some(id) = url_id {
        if !registry::is_valid_id(id) {
            return Err(ApiError::BadRequest(format!(
                "'{id}' is not a valid FHIR id"
            )));
        }
    }
    let index = state.store.params().index(kind.name, &body);
    let link = if kind.name == "Patient" {
        PatientLink::SelfPatient(url_id.unwrap_or_default().to_string())
    } else {
        registry::patient_link(kind, &body)
    };
    Ok(Put {
        kind,
        body,
        index,
        link,
        method,
    })
}

/// Checks a Subscription and takes the server's part of it: a `requested` subscription becomes
/// `active` (a handshake is then sent), an `error` one stays in error until set back.
fn subscription_rules(state: &AppState, body: &mut Value) -> Result<(), ApiError> {
    let bad = |path: &str, msg: String| {
        ApiError::Unprocessable(vec![validate::Issue::error(
            "value",
            Some(format!("Subscription.{path}")),
            msg,
        )])
    };
    let criteria = body
        .get("criteria")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (ty, query) = criteria.split_once('?').unwrap_or((criteria.as_str(), ""));
    if ty == "AuditEvent" {
        if query != "subtype=110127"
            && query != "subtype=http://dicom.nema.org/resources/ontology/DCM|110127"
        {
            return Err(bad(
                "criteria",
                "AuditEvent subscriptions are for break-glass alerts: AuditEvent?subtype=110127"
                    .into(),
            ));
        }
    } else {
        let k = registry::kind_of(ty)
            .filter(|k| k.client_writable && k.name != "Subscription")
            .ok_or_else(|| {
                bad(
                    "criteria",
                    format!("'{ty}' is not a resource type that can be subscribed to"),
                )
            })?;
        let q = Query::parse(state.store.params(), k.name, &query_pairs(query), true)
            .map_err(|e| bad("criteria", e.to_string()))?;
        // Criteria are matched as the data is written, before any gate: a chain would be
        // evaluated over records the subscriber may not see, and whether a notification came
        // would answer questions about them (a withheld person's birth date).
        if q.filters
            .iter()
            .any(|f| matches!(f, epaccs_fhir::query::Filter::Chain { .. }))
        {
            return Err(bad(
                "criteria",
                "chained parameters are not supported in subscription criteria".into(),
            ));
        }
    }
    let channel = body.get("channel").cloned().unwrap_or(Value::Null);
    if channel.get("type").and_then(Value::as_str) != Some("rest-hook") {
        return Err(bad(
            "channel.type",
            "only rest-hook channels are supported".into(),
        ));
    }
    let endpoint = channel
        .get("endpoint")
        .and_then(Value::as_str)
        .unwrap_or_default();
    state
        .limits
        .subscription_endpoints
        .check(endpoint)
        .map_err(|rule| bad("channel.endpoint", rule))?;
    match channel.get("payload").and_then(Value::as_str) {
        None | Some("application/fhir+json") | Some("application/json") => {}
        Some(other) => {
            return Err(bad(
                "channel.payload",
                format!("payload '{other}' is not supported; use application/fhir+json or none"),
            ))
        }
    }
    if body.get("status").and_then(Value::as_str) == Some("requested") {
        body["status"] = Value::String("active".into());
        if let Some(m) = body.as_object_mut() {
            m.remove("error");
        }
    }
    Ok(())
}

/// Break-glass alert subscriptions are for privacy officers and GPs only.
fn check_subscriber(caller: &Caller, put: &Put) -> Result<(), ApiError> {
    let is_alerts = put.kind.name == "Subscription"
        && put
            .body
            .get("criteria")
            .and_then(Value::as_str)
            .is_some_and(|c| c.starts_with("AuditEvent"));
    if is_alerts
        && !matches!(
            caller.principal().role,
            epaccs_core::Role::PrivacyOfficer | epaccs_core::Role::Gp
        )
    {
        return Err(ApiError::Forbidden(
            "only privacy officers and GP practices may subscribe to break-glass alerts".into(),
        ));
    }
    Ok(())
}

fn fhir_body(body: &Body) -> Result<Value, ApiError> {
    if body.kind != BodyKind::Fhir {
        return Err(ApiError::UnsupportedMediaType(
            "this interaction takes application/fhir+json".into(),
        ));
    }
    Ok(validate::parse_json(&body.bytes)?)
}

/// Refuses, before any person is looked up, a write of patient data by a caller that may not
/// write it to anyone's record (`Gate::check_write_role`). The refusal depends on the role and
/// the token only, so it is the same whether the person named exists, is withheld or not: a
/// role that may not learn of withheld records learns nothing from a write it could never make.
pub fn role_may_write(gate: &epaccs_access::Gate, ty: &str) -> Result<(), ApiError> {
    match registry::kind_of(ty).filter(|k| k.is_patient_data()) {
        Some(k) => match gate.check_write_role(k.name) {
            epaccs_access::Decision::Deny { reason, .. } => Err(ApiError::Forbidden(reason)),
            _ => Ok(()),
        },
        None => Ok(()),
    }
}

/// Runs a write and its audit record in one transaction of the group commit. A write that fails
/// leaves nothing behind (its savepoint is rolled back), and its audit record is then made
/// durable on the audit path of reads, before the refusal is answered.
pub async fn write_audited(
    state: &AppState,
    caller: &Caller,
    interaction: &'static str,
    ty: &str,
    op: Result<WriteOp, ApiError>,
) -> Result<Written, ApiError> {
    let op = match op.and_then(|op| role_may_write(&caller.gate, ty).map(|()| op)) {
        Ok(op) => op,
        Err(e) => {
            return caller
                .audited(state, interaction, Some(ty), async { Err(e) })
                .await
        }
    };
    let gate = caller.gate.clone();
    let target = caller.target.clone();
    let ty_owned = ty.to_string();
    let written = state
        .store
        .write(move |c| {
            let w = resources::apply(c, &gate, op)?;
            let probe = Caller { gate, target };
            let rec = probe.audit_record(interaction, Some(&ty_owned), &Ok(()));
            audit::insert(c, &rec)?;
            Ok(w)
        })
        .await;
    match written {
        Ok(w) => Ok(w),
        Err(e) => {
            caller
                .audited(state, interaction, Some(ty), async {
                    Err(ApiError::from(e))
                })
                .await
        }
    }
}

fn write_response(state: &AppState, req: &HttpRequest, w: &Written) -> HttpResponse {
    let ret = prefer(req).ret;
    match w.status {
        WriteStatus::Created => {
            respond::resource(&w.stored, StatusCode::CREATED, &state.base_url, true, ret)
        }
        WriteStatus::Updated | WriteStatus::Existing => respond::resource(
            &w.stored,
            StatusCode::OK,
            &state.base_url,
            w.status == WriteStatus::Updated,
            ret,
        ),
        WriteStatus::Deleted | WriteStatus::AlreadyDeleted => {
            let mut b = HttpResponse::Ok();
            if w.status == WriteStatus::Deleted {
                b.insert_header((header::ETAG, respond::etag(w.stored.version_id)));
            }
            b.content_type(respond::FHIR_JSON_UTF8).body(
                outcome_info(
                    IssueSeverity::Information,
                    "informational",
                    format!("{}/{} deleted", w.stored.resource_type, w.stored.id),
                )
                .to_string(),
            )
        }
    }
}

pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let ty = path.into_inner();
    let op = (|| {
        let kind = kind(&ty)?;
        caller.require(kind.name, Interaction::Create)?;
        let put = prepare_put(&state, kind, fhir_body(&body)?, "POST", None)?;
        check_subscriber(&caller, &put)?;
        let if_none_exist = match req.headers().get("if-none-exist") {
            Some(h) => {
                let q = h
                    .to_str()
                    .map_err(|_| ApiError::BadRequest("If-None-Exist is not valid text".into()))?;
                let q = q.split_once('?').map_or(q, |(_, q)| q);
                Some(Query::parse(state.store.params(), kind.name, &query_pairs(q), true)?.filters)
            }
            None => None,
        };
        Ok(WriteOp::Create {
            put,
            if_none_exist,
            id: None,
        })
    })();
    let w = write_audited(&state, &caller, "create", &ty, op).await?;
    Ok(write_response(&state, &req, &w))
}

pub async fn update(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let (ty, id) = path.into_inner();
    let op = (|| {
        let kind = kind(&ty)?;
        caller.require(kind.name, Interaction::Update)?;
        let put = prepare_put(&state, kind, fhir_body(&body)?, "PUT", Some(&id))?;
        Ok(WriteOp::Update {
            id: id.clone(),
            put,
            if_match: if_match(&req)?,
            upsert: true,
        })
    })();
    let w = write_audited(&state, &caller, "update", &ty, op).await?;
    Ok(write_response(&state, &req, &w))
}

pub async fn conditional_update(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let ty = path.into_inner();
    let op = (|| {
        let kind = kind(&ty)?;
        caller.require(kind.name, Interaction::Update)?;
        let value = fhir_body(&body)?;
        let body_id = value.get("id").and_then(Value::as_str).map(str::to_string);
        let put = prepare_put(&state, kind, value, "PUT", body_id.as_deref())?;
        let filters = Query::parse(
            state.store.params(),
            kind.name,
            &query_pairs(req.query_string()),
            true,
        )?
        .filters;
        Ok(WriteOp::ConditionalUpdate {
            filters,
            put,
            if_match: if_match(&req)?,
        })
    })();
    let w = write_audited(&state, &caller, "update", &ty, op).await?;
    Ok(write_response(&state, &req, &w))
}

pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (ty, id) = path.into_inner();
    let op = (|| {
        let kind = kind(&ty)?;
        caller.require(kind.name, Interaction::Delete)?;
        Ok(WriteOp::Delete {
            resource_type: kind.name.to_string(),
            id: id.clone(),
            if_match: if_match(&req)?,
        })
    })();
    let w = write_audited(&state, &caller, "delete", &ty, op).await?;
    Ok(write_response(&state, &req, &w))
}

pub async fn patch(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let (ty, id) = path.into_inner();
    // Read the current version through the gate (audited as part of this request).
    let current = caller
        .audited(&state, "read", Some(&ty), async {
            let kind = kind(&ty)?;
            caller.require(kind.name, Interaction::Update)?;
            if body.kind != BodyKind::JsonPatch {
                return Err(ApiError::UnsupportedMediaType(
                    "PATCH takes application/json-patch+json".into(),
                ));
            }
            let gate = caller.gate.clone();
            let (t, i) = (kind.name.to_string(), id.clone());
            Ok(state
                .store
                .with_conn(move |c| resources::read(c, &gate, &t, &i))
                .await?)
        })
        .await?;
    let op = (|| {
        let kind = kind(&ty)?;
        let ops: json_patch::Patch = serde_json::from_slice(&body.bytes).map_err(|e| {
            ApiError::BadRequest(format!("the body is not a JSON Patch document: {e}"))
        })?;
        let doc = apply_patch(&state.limits, respond::parse(&current), &ops)?;
        if doc.get("id").and_then(Value::as_str) != Some(id.as_str())
            || doc.get("resourceType").and_then(Value::as_str) != Some(kind.name)
        {
            return Err(ApiError::Unprocessable(vec![validate::Issue::error(
                "processing",
                None,
                "a patch may not change the resource's id or type",
            )]));
        }
        let put = prepare_put(&state, kind, doc, "PATCH", Some(&id))?;
        // Without If-Match, guard against a lost update anyway: patch what was read.
        let expected = if_match(&req)?.unwrap_or(current.version_id);
        Ok(WriteOp::Update {
            id: id.clone(),
            put,
            if_match: Some(expected),
            upsert: false,
        })
    })();
    let w = write_audited(&state, &caller, "patch", &ty, op).await?;
    Ok(write_response(&state, &req, &w))
}

/// Applies a JSON Patch within the limits: at most `max_patch_operations` operations, and a
/// result never larger than `max_body_bytes` (the largest resource a client could PUT). The size
/// is checked as the operations run, so repeated `copy`s that double the resource are stopped
/// before they exhaust memory, not after.
fn apply_patch(
    limits: &crate::state::Limits,
    mut doc: Value,
    ops: &json_patch::Patch,
) -> Result<Value, ApiError> {
    use json_patch::PatchOperation as Op;
    let too_long =
        |msg: String| ApiError::Unprocessable(vec![validate::Issue::error("too-long", None, msg)]);
    if ops.0.len() > limits.max_patch_operations {
        return Err(too_long(format!(
            "the patch has {} operations; at most {} are accepted",
            ops.0.len(),
            limits.max_patch_operations
        )));
    }
    let max = limits.max_body_bytes;
    let size = |v: &Value| serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
    // An upper bound on the size, re-measured only when it passes the limit.
    let mut bound = size(&doc);
    for op in &ops.0 {
        let added = match op {
            Op::Add(o) => size(&o.value),
            Op::Replace(o) => size(&o.value),
            Op::Copy(o) => doc.pointer(o.from.as_str()).map_or(0, size),
            Op::Remove(_) | Op::Move(_) | Op::Test(_) => 0,
        };
        bound = bound.saturating_add(added);
        if bound > max {
            bound = size(&doc).saturating_add(added);
        }
        if bound > max {
            return Err(too_long(format!(
                "the patched resource would be larger than the limit of {max} bytes"
            )));
        }
        json_patch::patch(&mut doc, std::slice::from_ref(op)).map_err(|e| {
            ApiError::Unprocessable(vec![validate::Issue::error(
                "processing",
                None,
                format!("the patch cannot be applied: {e}"),
            )])
        })?;
    }
    if size(&doc) > max {
        return Err(too_long(format!(
            "the patched resource is larger than the limit of {max} bytes"
        )));
    }
    Ok(doc)
}

pub async fn read(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (ty, id) = path.into_inner();
    let stored = caller
        .audited(&state, "read", Some(&ty), async {
            let kind = kind(&ty)?;
            caller.require(kind.name, Interaction::Read)?;
            Ok(state
                .store
                .read(caller.gate.clone(), kind.name, &id)
                .await?)
        })
        .await?;
    if let Some(inm) = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
    {
        if crate::extract::parse_etag(inm).ok() == Some(stored.version_id) {
            return Ok(HttpResponse::NotModified()
                .insert_header((header::ETAG, respond::etag(stored.version_id)))
                .finish());
        }
    }
    Ok(respond::resource(
        &stored,
        StatusCode::OK,
        &state.base_url,
        false,
        Return::Representation,
    ))
}

pub async fn vread(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (ty, id, vid) = path.into_inner();
    let stored = caller
        .audited(&state, "vread", Some(&ty), async {
            let kind = kind(&ty)?;
            caller.require(kind.name, Interaction::Read)?;
            let v: i64 = vid
                .parse()
                .map_err(|_| ApiError::NotFound(format!("version '{vid}' does not exist")))?;
            let gate = caller.gate.clone();
            let (t, i) = (kind.name.to_string(), id.clone());
            Ok(state
                .store
                .with_conn(move |c| resources::vread(c, &gate, &t, &i, v))
                .await?)
        })
        .await?;
    Ok(respond::resource(
        &stored,
        StatusCode::OK,
        &state.base_url,
        false,
        Return::Representation,
    ))
}

fn history_bundle(
    state: &AppState,
    entries: Vec<resources::HistoryEntry>,
    self_url: String,
    next: Option<String>,
) -> Value {
    let base = &state.base_url;
    let items = entries
        .into_iter()
        .map(|e| {
            let s = &e.stored;
            let (status, url) = match e.method.as_str() {
                "POST" => ("201 Created", s.resource_type.clone()),
                "DELETE" => ("204 No Content", format!("{}/{}", s.resource_type, s.id)),
                _ => ("200 OK", format!("{}/{}", s.resource_type, s.id)),
            };
            let method = if e.method == "PATCH" { "PATCH" } else { e.method.as_str() };
            let mut entry = json!({
                "fullUrl": full_url(base, s),
                "request": {"method": method, "url": url},
                "response": {"status": status, "etag": respond::etag(s.version_id), "lastModified": epaccs_fhir::date::format_instant(s.last_updated)},
            });
            if !s.deleted {
                entry["resource"] = respond::parse(s);
            }
            entry
        })
        .collect();
    let mut links = vec![("self", self_url)];
    if let Some(n) = next {
        links.push(("next", n));
    }
    bundle("history", None, links, items)
}

fn history_params(query: &str) -> Result<(Option<i64>, usize, Option<i64>), ApiError> {
    let mut since = None;
    let mut count = epaccs_fhir::query::DEFAULT_COUNT;
    let mut cursor = None;
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "_since" => {
                since = Some(
                    epaccs_fhir::date::parse_range(&v)
                        .ok_or_else(|| {
                            ApiError::BadRequest(format!("_since '{v}' is not a FHIR instant"))
                        })?
                        .low,
                )
            }
            "_count" => {
                count = v
                    .parse::<usize>()
                    .map_err(|_| {
                        ApiError::BadRequest(format!("_count '{v}' is not a whole number"))
                    })?
                    .min(epaccs_fhir::query::MAX_COUNT)
            }
            "_cursor" => {
                cursor =
                    Some(v.parse::<i64>().map_err(|_| {
                        ApiError::BadRequest("the paging cursor is not valid".into())
                    })?)
            }
            "_format" | "_pretty" => {}
            other => {
                return Err(ApiError::BadRequest(format!(
                    "'{other}' is not a history parameter (use _since, _count)"
                )));
            }
        }
    }
    Ok((since, count, cursor))
}

fn next_link(base_path: &str, query: &str, cursor: &str) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(query)
        .into_iter()
        .filter(|(k, _)| k != "_cursor")
        .collect();
    pairs.push(("_cursor".into(), cursor.to_string()));
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{base_path}?{q}")
}

pub async fn history_instance(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (ty, id) = path.into_inner();
    history(&state, &caller, &req, ty, Some(id)).await
}

pub async fn history_type(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    history(&state, &caller, &req, path.into_inner(), None).await
}

/// Instance history (`id` given) or type history, gated entry by entry, paged by position.
async fn history(
    state: &AppState,
    caller: &Caller,
    req: &HttpRequest,
    ty: String,
    id: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let interaction = if id.is_some() {
        "history-instance"
    } else {
        "history-type"
    };
    let b = caller
        .audited(state, interaction, Some(&ty), async {
            let kind = kind(&ty)?;
            caller.require(kind.name, Interaction::Read)?;
            let (since, count, cursor) = history_params(req.query_string())?;
            let gate = caller.gate.clone();
            let (t, i) = (kind.name.to_string(), id.clone());
            let (entries, next) = state
                .store
                .with_conn(move |c| {
                    resources::history(c, &gate, &t, i.as_deref(), since, count, cursor)
                })
                .await?;
            let base_path = match &id {
                Some(id) => format!("{}/{ty}/{id}/_history", state.base_url),
                None => format!("{}/{ty}/_history", state.base_url),
            };
            let self_url = if req.query_string().is_empty() {
                base_path.clone()
            } else {
                format!("{base_path}?{}", req.query_string())
            };
            Ok(history_bundle(
                state,
                entries,
                self_url,
                next.map(|n| next_link(&base_path, req.query_string(), &n.to_string())),
            ))
        })
        .await?;
    Ok(respond::json(StatusCode::OK, &b))
}

/// Runs a search for `ty` with the given parameters and builds the searchset Bundle.
pub async fn run_search(
    state: &AppState,
    caller: &Caller,
    req: &HttpRequest,
    ty: &str,
    pairs: Vec<(String, String)>,
) -> Result<Value, ApiError> {
    let kind = kind(ty)?;
    caller.require(kind.name, Interaction::Search)?;
    let strict = prefer(req).strict;
    let q = Query::parse(state.store.params(), kind.name, &pairs, strict)?;
    // The commonest look-up, by NHS number alone, is answered from the read cache.
    if let Some(page) = state
        .store
        .search_by_nhs_number(caller.gate.clone(), kind.name, &q)
        .await?
    {
        return Ok(searchset(state, caller, ty, &pairs, &q, page));
    }
    let gate = caller.gate.clone();
    let t = kind.name.to_string();
    let q2 = q.clone();
    let page = state
        .store
        .with_conn(move |c| search::search(c, &gate, &t, &q2))
        .await?;
    Ok(searchset(state, caller, ty, &pairs, &q, page))
}

/// Whether a search only names records (by id, identifier, or the person they are about). Only
/// then is a role that may break glass told that some of what it named is withheld: after a
/// search on content (a code, a date, a name, a chain) the note would answer whether withheld
/// data has that content (whether a person it may not see has a CPR decision).
fn names_records_only(q: &Query) -> bool {
    use epaccs_fhir::query::Filter;
    q.filters.iter().all(|f| match f {
        Filter::Id(_) => true,
        Filter::Token { param, not, .. } => param == "identifier" && !not,
        Filter::Reference { param, .. } | Filter::RefIdentifier { param, .. } => {
            param == "patient" || param == "subject"
        }
        _ => false,
    })
}

fn searchset(
    state: &AppState,
    caller: &Caller,
    ty: &str,
    pairs: &[(String, String)],
    q: &Query,
    page: search::SearchPage,
) -> Value {
    let base = &state.base_url;
    let to_entry = |s: &Stored, mode: &str| {
        respond::entry(
            full_url(base, s),
            respond::subset(respond::parse(s), q.summary, &q.elements),
            Some(mode),
        )
    };
    let mut entries: Vec<Value> = if q.summary == Summary::Count {
        vec![]
    } else {
        page.matches.iter().map(|s| to_entry(s, "match")).collect()
    };
    if q.summary != Summary::Count {
        entries.extend(page.includes.iter().map(|s| to_entry(s, "include")));
    }
    let mut notes = Vec::new();
    if !q.ignored.is_empty() {
        notes.push(json!({"severity": "warning", "code": "not-supported", "diagnostics": format!("unknown search parameters ignored: {}", q.ignored.join(", "))}));
    }
    if page.withheld > 0 && caller.gate.may_know_withheld() && names_records_only(q) {
        notes.push(json!({"severity": "information", "code": "suppressed",
            "diagnostics": "some matching records are withheld by the sharing rules; in an emergency, repeat the request with purpose of use BTG and a reason"}));
    }
    if !notes.is_empty() {
        entries.push(json!({"resource": {"resourceType": "OperationOutcome", "id": uuid::Uuid::new_v4().to_string(), "issue": notes}, "search": {"mode": "outcome"}}));
    }
    let clean: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "_cursor")
        .cloned()
        .collect();
    let qs: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(clean.iter().cloned())
        .finish();
    let base_path = format!("{base}/{ty}");
    let self_url = match pairs.iter().find(|(k, _)| k == "_cursor") {
        Some((_, c)) => next_link(&base_path, &qs, c),
        None if qs.is_empty() => base_path.clone(),
        None => format!("{base_path}?{qs}"),
    };
    let mut links = vec![("self", self_url)];
    if let Some(c) = &page.next_cursor {
        links.push(("next", next_link(&base_path, &qs, c)));
    }
    if let Some(c) = &page.prev_cursor {
        links.push(("previous", next_link(&base_path, &qs, c)));
    }
    bundle("searchset", page.total, links, entries)
}

pub async fn search_get(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let ty = path.into_inner();
    let pairs = query_pairs(req.query_string());
    let b = caller
        .audited(
            &state,
            "search-type",
            Some(&ty),
            run_search(&state, &caller, &req, &ty, pairs),
        )
        .await?;
    Ok(respond::json(StatusCode::OK, &b))
}

pub async fn search_post(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let ty = path.into_inner();
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !ctype.starts_with("application/x-www-form-urlencoded") && !body.is_empty() {
        return Err(ApiError::UnsupportedMediaType(
            "POST _search takes application/x-www-form-urlencoded".into(),
        ));
    }
    let mut pairs = query_pairs(req.query_string());
    pairs
        .extend(query_pairs(std::str::from_utf8(&body).map_err(|_| {
            ApiError::BadRequest("the form is not UTF-8".into())
        })?));
    let b = caller
        .audited(
            &state,
            "search-type",
            Some(&ty),
            run_search(&state, &caller, &req, &ty, pairs),
        )
        .await?;
    Ok(respond::json(StatusCode::OK, &b))
}

fn names_bundle_patient(kind: &ResourceKind, body: &Value) -> bool {
    kind.patient_elements.iter().any(|e| {
        let refs: Vec<&Value> = match body.get(*e) {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v) => vec![v],
            None => vec![],
        };
        refs.iter().any(|r| {
            r.get("reference")
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with("urn:uuid:"))
        })
    })
}

/// `[type]/$validate` and `[type]/[id]/$validate`: report, never store. It answers what a write
/// would, so it needs a token that may create or update the type, and it is audited.
pub async fn validate_op(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let ty = path.into_inner();
    let outcome = caller
        .audited(&state, "operation", Some(&ty), async {
            let kind = kind(&ty)?;
            caller
                .require(kind.name, Interaction::Create)
                .or_else(|_| caller.require(kind.name, Interaction::Update))?;
            validate_outcome(&state, kind, fhir_body(&body)?)
        })
        .await?;
    Ok(respond::json(StatusCode::OK, &outcome))
}

fn validate_outcome(
    state: &AppState,
    kind: &'static ResourceKind,
    mut v: Value,
) -> Result<Value, ApiError> {
    // Accept a Parameters wrapper with a `resource` parameter.
    if v.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
        v = v
            .get("parameter")
            .and_then(Value::as_array)
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.get("name").and_then(Value::as_str) == Some("resource"))
            })
            .and_then(|p| p.get("resource").cloned())
            .ok_or_else(|| {
                ApiError::BadRequest("Parameters must carry a 'resource' parameter".into())
            })?;
    }
    Ok(match prepare_put(state, kind, v, "POST", None) {
        // A urn:uuid reference names a Patient in the same bundle: fine when validating an entry.
        Ok(put) if put.link == PatientLink::Missing && !names_bundle_patient(kind, &put.body) => {
            ApiError::Unprocessable(vec![validate::Issue::error(
                "required",
                Some(format!(
                    "{}.{}",
                    kind.name,
                    kind.patient_elements.first().copied().unwrap_or("subject")
                )),
                format!("a {} must reference the Patient it is about", kind.name),
            )])
            .outcome()
        }
        Ok(_) => outcome_info(
            IssueSeverity::Information,
            "informational",
            "the resource is valid",
        ),
        Err(e @ (ApiError::Unprocessable(_) | ApiError::BadRequest(_))) => e.outcome(),
        Err(e) => return Err(e),
    })
}

/// The conformance type a request names (`/StructureDefinition/...` -> `StructureDefinition`).
fn conformance_type(req: &HttpRequest) -> String {
    req.path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The conformance resources (StructureDefinition, ValueSet, CodeSystem, SearchParameter) the
/// server loaded from `profiles/`: read by id, or searched by `url`, `name`, `type` or `_id`.
/// Scope-checked (`system/<Type>.read` or `system/*.read`) and audited like any search.
pub async fn conformance_search(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let ty = conformance_type(&req);
    let b = caller
        .audited(&state, "search-type", Some(&ty), async {
            caller.require(&ty, Interaction::Search)?;
            conformance_bundle(&state, &req, &ty)
        })
        .await?;
    Ok(respond::json(StatusCode::OK, &b))
}

fn conformance_bundle(state: &AppState, req: &HttpRequest, ty: &str) -> Result<Value, ApiError> {
    let pairs = query_pairs(req.query_string());
    let mut items: Vec<&Value> = state.profiles.resources(ty).iter().collect();
    for (k, v) in &pairs {
        let field = match k.as_str() {
            "url" | "name" | "type" | "status" | "code" => k.as_str(),
            "_id" => "id",
            "_count" | "_format" | "_pretty" => continue,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "'{other}' is not supported on {ty} (url, name, type, status, code, _id)"
                )))
            }
        };
        items.retain(|r| r.get(field).and_then(Value::as_str) == Some(v.as_str()));
    }
    let entries: Vec<Value> = items
        .iter()
        .map(|r| {
            let url = format!(
                "{}/{ty}/{}",
                state.base_url,
                r["id"].as_str().unwrap_or_default()
            );
            respond::entry(url, (*r).clone(), Some("match"))
        })
        .collect();
    Ok(bundle(
        "searchset",
        Some(entries.len()),
        vec![("self", format!("{}{}", state.base_url, req.uri()))],
        entries,
    ))
}

/// Scope-checked (`system/<Type>.read` or `system/*.read`) and audited like any read.
pub async fn conformance_read(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let ty = conformance_type(&req);
    let id = path.into_inner();
    let r = caller
        .audited(&state, "read", Some(&ty), async {
            caller.require(&ty, Interaction::Read)?;
            state
                .profiles
                .resources(&ty)
                .iter()
                .find(|r| r["id"].as_str() == Some(id.as_str()))
                .ok_or_else(|| ApiError::NotFound(format!("{ty}/{id} not found")))
        })
        .await?;
    Ok(respond::json(StatusCode::OK, r))
}
