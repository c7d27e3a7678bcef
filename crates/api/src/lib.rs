#![doc = include_str!("../README.md")]

mod audit;
mod bundle;
mod capability;
mod emergency;
pub mod error;
pub mod extract;
pub mod respond;
mod rest;
mod smart;
pub mod state;
mod wire;

pub use error::ApiError;
pub use state::{AppState, Limits};

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{guard, web, App, HttpRequest, HttpResponse};
use std::net::TcpListener;

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no such endpoint: {} {}",
        req.method(),
        req.path()
    )))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!(
        "{} is not supported on {}",
        req.method(),
        req.path()
    )))
}

/// Writes to the audit trail are refused, after the caller is identified: no token is a 401, as
/// everywhere else, and a refused attempt by a known caller is itself audited.
async fn audit_write(
    state: web::Data<AppState>,
    caller: extract::Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let interaction = match *req.method() {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "operation",
    };
    caller
        .audited(&state, interaction, Some("AuditEvent"), audit::immutable())
        .await
}

/// Longest request target (path and query) the service reads: 8 KiB, as common servers do.
/// Beyond it, 414. (actix-http itself refuses targets over 64 KiB and heads over 128 KiB before
/// the application sees them; `wire` gives those refusals their OperationOutcome.)
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest header block (names and values) the service reads; beyond it, 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Checks made before routing: the request target's and headers' size, and NUL characters,
/// which no FHIR value may hold and PostgreSQL text cannot store (a 400 here, never a 500 from
/// the database). Values decoded later (search parameters, JSON bodies) are checked where they
/// are parsed (`epaccs_fhir::query`, `epaccs_fhir::validate`).
fn precheck(req: &ServiceRequest) -> Option<ApiError> {
    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
    if target.len() > MAX_URI_BYTES {
        return Some(ApiError::UriTooLong(format!(
            "the request URL is longer than {MAX_URI_BYTES} bytes; use POST [type]/_search for long searches"
        )));
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(ApiError::HeadersTooLarge(format!(
            "the request headers are larger than {MAX_HEADER_BYTES} bytes"
        )));
    }
    if target.contains("%00") {
        return Some(ApiError::BadRequest(
            "the request URL contains a NUL character (%00), which is never valid".into(),
        ));
    }
    if let Some((name, _)) = req
        .headers()
        .iter()
        .find(|(_, v)| v.as_bytes().contains(&0))
    {
        return Some(ApiError::BadRequest(format!(
            "header {name} contains a NUL character, which is never valid"
        )));
    }
    None
}

async fn validate_instance(
    state: web::Data<AppState>,
    caller: extract::Caller,
    path: web::Path<(String, String)>,
    body: extract::Body,
) -> Result<HttpResponse, ApiError> {
    let (ty, _id) = path.into_inner();
    rest::validate_op(state, caller, web::Path::from(ty), body).await
}

/// Types with routes of their own: the audit trail and the conformance resources.
const SPECIAL_TYPES: &[&str] = &[
    "AuditEvent",
    "StructureDefinition",
    "ValueSet",
    "CodeSystem",
    "SearchParameter",
];

/// `/{type}` or `/{type}/{id}` (`segments` = 1 or 2) naming an ordinary resource type and an
/// ordinary id: not an operation (`$...`), history or search (`_...`) or a special type.
fn ordinary_path(path: &str, segments: usize) -> bool {
    let mut parts = path.trim_start_matches('/').split('/');
    let ty = parts.next().unwrap_or("");
    if !ty.starts_with(|c: char| c.is_ascii_uppercase()) || SPECIAL_TYPES.contains(&ty) {
        return false;
    }
    match (segments, parts.next(), parts.next()) {
        (1, None, _) => true,
        (2, Some(id), None) => !id.is_empty() && !id.starts_with(['$', '_']),
        _ => false,
    }
}

fn method_guarded(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // The hot interactions (read, search, create, update) first: the router tries patterns in
    // order, so every other pattern would otherwise be matched against each of them. The guards
    // let operation, history and special-type paths fall through to their own routes below.
    cfg.service(
        method_guarded("/{type}/{id}")
            .guard(guard::fn_guard(|ctx| {
                ordinary_path(ctx.head().uri.path(), 2)
            }))
            .route(web::get().to(rest::read))
            .route(web::put().to(rest::update))
            .route(web::patch().to(rest::patch))
            .route(web::delete().to(rest::delete)),
    )
    .service(
        method_guarded("/{type}")
            .guard(guard::fn_guard(|ctx| {
                ordinary_path(ctx.head().uri.path(), 1)
            }))
            .route(web::get().to(rest::search_get))
            .route(web::post().to(rest::create))
            .route(web::put().to(rest::conditional_update)),
    )
    .service(method_guarded("/metadata").route(web::get().to(capability::metadata)))
    .service(
        method_guarded("/.well-known/smart-configuration")
            .route(web::get().to(smart::configuration)),
    )
    .service(method_guarded("/.well-known/jwks.json").route(web::get().to(smart::jwks)))
    .service(method_guarded("/auth/token").route(web::post().to(smart::token)))
    .service(method_guarded("/Patient/$emergency-summary").route(web::get().to(emergency::summary)))
    .service(
        method_guarded("/Patient/{id}/$everything").route(web::get().to(emergency::everything)),
    )
    .service(
        web::resource("/AuditEvent")
            .route(web::get().to(audit::search))
            .default_service(web::to(audit_write)),
    )
    .service(
        web::resource("/AuditEvent/{id}")
            .route(web::get().to(audit::read))
            .default_service(web::to(audit_write)),
    )
    .service(method_guarded("/StructureDefinition").route(web::get().to(rest::conformance_search)))
    .service(
        method_guarded("/StructureDefinition/{id}").route(web::get().to(rest::conformance_read)),
    )
    .service(method_guarded("/ValueSet").route(web::get().to(rest::conformance_search)))
    .service(method_guarded("/ValueSet/{id}").route(web::get().to(rest::conformance_read)))
    .service(method_guarded("/CodeSystem").route(web::get().to(rest::conformance_search)))
    .service(method_guarded("/CodeSystem/{id}").route(web::get().to(rest::conformance_read)))
    .service(method_guarded("/SearchParameter").route(web::get().to(rest::conformance_search)))
    .service(method_guarded("/SearchParameter/{id}").route(web::get().to(rest::conformance_read)))
    .service(method_guarded("/{type}/$validate").route(web::post().to(rest::validate_op)))
    .service(method_guarded("/{type}/{id}/$validate").route(web::post().to(validate_instance)))
    .service(method_guarded("/{type}/_search").route(web::post().to(rest::search_post)))
    .service(method_guarded("/{type}/_history").route(web::get().to(rest::history_type)))
    .service(method_guarded("/{type}/{id}/_history").route(web::get().to(rest::history_instance)))
    .service(method_guarded("/{type}/{id}/_history/{vid}").route(web::get().to(rest::vread)))
    .service(
        web::resource("/")
            .route(web::post().to(bundle::process))
            .default_service(web::to(method_not_allowed)),
    )
    .default_service(web::to(not_found));
}

/// Rewrites any error response that is not already FHIR or OAuth JSON, or one of the service's
/// own pages (the emergency summary's answers as HTML), into an OperationOutcome, so clients
/// never see a plain-text framework error.
fn outcome_for_foreign_errors<B>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let ctype = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if ctype.starts_with("application/fhir+json")
        || ctype.starts_with("application/json")
        || ctype.starts_with("text/html")
    {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let err = match status.as_u16() {
        400 => ApiError::BadRequest("the request could not be read".into()),
        404 => ApiError::NotFound("not found".into()),
        405 => ApiError::MethodNotAllowed("method not allowed".into()),
        413 => ApiError::PayloadTooLarge("the body is too large".into()),
        415 => ApiError::UnsupportedMediaType("unsupported media type".into()),
        503 => ApiError::Unavailable("service unavailable".into()),
        s if s >= 500 => ApiError::Internal(format!("framework error {s}")),
        _ => ApiError::BadRequest(
            status
                .canonical_reason()
                .unwrap_or("bad request")
                .to_string(),
        ),
    };
    let (req, _) = res.into_parts();
    let mut response: HttpResponse<BoxBody> = actix_web::ResponseError::error_response(&err);
    *response.status_mut() = status;
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_into_right_body(),
    ))
}

/// Builds the app factory's App (for the server and in-process use).
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = ServiceResponse<EitherBody<BoxBody>>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
        .wrap_fn(|req, srv| match precheck(&req) {
            Some(refused) => futures::future::Either::Left(futures::future::ready(Ok(
                req.error_response(refused)
            ))),
            None => futures::future::Either::Right(srv.call(req)),
        })
        .wrap(ErrorHandlers::new().default_handler(outcome_for_foreign_errors))
        .configure(configure)
}

/// The HTTP server over a bound listener; await it (or spawn it) to serve until stopped.
///
/// Built as `HttpServer` builds it (same timeouts and graceful shutdown), with each connection
/// wrapped in [`wire::OutcomeIo`] so that even the refusals actix-http writes itself are
/// OperationOutcomes.
pub fn server(
    state: AppState,
    listener: TcpListener,
    workers: usize,
) -> std::io::Result<actix_web::dev::Server> {
    use actix_service::{IntoServiceFactory, ServiceFactoryExt};
    let state = web::Data::new(state);
    let addr = listener.local_addr()?;
    let builder = actix_server::Server::build();
    let shutdown = builder.graceful_shutdown_signal();
    Ok(builder
        .workers(workers)
        .backlog(2048)
        .disable_signals()
        .listen("epaccs", listener, move || {
            let state = state.clone();
            let shutdown = shutdown.clone();
            let app = app(state).into_factory().map_err(|e| e.error_response());
            let http = actix_http::HttpService::build()
                .graceful_shutdown_signal(move || {
                    let signal = shutdown.clone();
                    async move { signal.notified().await }
                })
                .keep_alive(actix_http::KeepAlive::default())
                .client_request_timeout(std::time::Duration::from_secs(5))
                .client_disconnect_timeout(std::time::Duration::from_secs(1))
                .h1_allow_half_closed(true)
                .local_addr(addr)
                .finish(actix_service::map_config(app, |_| {
                    actix_web::dev::AppConfig::default()
                }));
            actix_service::fn_service(|io: tokio::net::TcpStream| {
                let peer = io.peer_addr().ok();
                futures::future::ready(Ok::<_, actix_http::error::DispatchError>((
                    wire::OutcomeIo::new(io),
                    actix_http::Protocol::Http1,
                    peer,
                )))
            })
            .and_then(http)
        })?
        .run())
}
