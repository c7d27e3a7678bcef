//! Load benchmark: prints requests/s and p50/p99 latency at concurrency 32 for the ceiling (a
//! minimal actix server returning fixed JSON) and for the service's reads, NHS-number search,
//! emergency summary and creates, with consent checks and durable audit on.
//!
//! `cargo bench --bench load`; `EPACCS_BENCH_PATIENTS` (default 10000), `EPACCS_BENCH_SECONDS`
//! (default 5 per scenario), `EPACCS_BENCH_DATABASE_URL` (default: a fresh SQLite file),
//! `EPACCS_BENCH_ONLY` (comma-separated words: run only the scenarios whose names contain one).

use actix_web::{web, App, HttpResponse, HttpServer};

// The same allocator as the service binary (`src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use epaccs::{synthetic, Settings};
use epaccs_auth::keys::{self, ClientAlg};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 32;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `EPACCS_BENCH_ONLY=read,summary` runs only the scenarios whose names contain one of the
/// words (the ceiling always runs).
fn wanted(name: &str) -> bool {
    match std::env::var("EPACCS_BENCH_ONLY") {
        Ok(only) if !only.trim().is_empty() && !name.starts_with("ceiling") => {
            only.split(',').any(|w| name.contains(w.trim()))
        }
        _ => true,
    }
}

/// CPU seconds this process (server and load generator together) has used, from
/// /proc/self/stat; None where that is not available.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// One GET as `token`: true for 200, or for 403 (a refusal by the sharing rules is a correct
/// answer: every tenth synthetic person has withdrawn consent).
async fn get_answered(c: reqwest::Client, url: String, token: String) -> bool {
    c.get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == 200 || r.status().as_u16() == 403)
}

/// Creates an AKPS (Australia-modified Karnofsky performance status) Observation for `patient`
/// as `token`: true for 201.
async fn create_observation(c: &reqwest::Client, base: &str, token: &str, patient: &str) -> bool {
    let body = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": epaccs_core::codes::AKPS}]},
        "subject": {"reference": format!("Patient/{patient}")}, "valueInteger": 40,
        "effectiveDateTime": "2026-11-01T10:00:00Z"})
    .to_string();
    c.post(format!("{base}/Observation"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == 201)
}

struct Stats {
    name: String,
    /// CPU microseconds per request, server and load generator together.
    cpu_us: Option<f64>,
    requests: usize,
    errors: usize,
    secs: f64,
    p50: f64,
    p99: f64,
}

impl Stats {
    fn print(&self, ceiling: Option<f64>) {
        if !wanted(&self.name) {
            return;
        }
        let rps = self.requests as f64 / self.secs;
        let pct = ceiling
            .map(|c| format!("{:5.1}%", 100.0 * rps / c))
            .unwrap_or_else(|| "      ".into());
        let cpu = self
            .cpu_us
            .map(|c| format!("  cpu {c:>5.0} us/req"))
            .unwrap_or_default();
        println!(
            "{:<34} {:>9.0} req/s {pct}  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}{cpu}",
            self.name, rps, self.p50, self.p99, self.errors
        );
    }
}

/// Runs `make(i)` requests from CONCURRENCY tasks for `secs` seconds.
async fn drive<F, Fut>(name: &str, secs: u64, make: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    drive_at(name, secs, CONCURRENCY, make).await
}

/// Like `drive`, with `concurrency` tasks.
async fn drive_at<F, Fut>(name: &str, secs: u64, concurrency: usize, make: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    if !wanted(name) {
        return Stats {
            name: name.to_string(),
            cpu_us: None,
            requests: 0,
            errors: 0,
            secs: 1.0,
            p50: 0.0,
            p99: 0.0,
        };
    }
    let make = Arc::new(make);
    let cpu_before = cpu_seconds();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let make = make.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0;
                let mut i = t;
                while Instant::now() < deadline {
                    let s = Instant::now();
                    if !make(i).await {
                        errors += 1;
                    }
                    lat.push(s.elapsed().as_secs_f64() * 1000.0);
                    i += concurrency;
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("task");
        all.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_us = cpu_before
        .zip(cpu_seconds())
        .map(|(b, a)| (a - b) * 1e6 / all.len().max(1) as f64);
    all.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Stats {
        name: name.to_string(),
        cpu_us,
        requests: all.len(),
        errors,
        secs,
        p50: q(0.50),
        p99: q(0.99),
    }
}

async fn token(
    http: &reqwest::Client,
    base: &str,
    pem: &str,
    kid: &str,
    client: &str,
    scope: &str,
) -> String {
    let url = format!("{base}/auth/token");
    let a = keys::sign_assertion(pem, ClientAlg::Es384, kid, client, &url, None).expect("sign");
    let r: Value = http
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", a.as_str()),
            ("scope", scope),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    r["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

fn main() {
    // The service's warnings and errors (e.g. a failing audit copy) show up in the output.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EPACCS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let patients = env_num("EPACCS_BENCH_PATIENTS", 10_000) as usize;
    let secs = env_num("EPACCS_BENCH_SECONDS", 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let db_url = std::env::var("EPACCS_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));

    // The ceiling: a minimal actix server returning fixed JSON, on the same machine and client.
    let fixed = json!({"resourceType": "Patient", "id": "fixed", "name": [{"family": "Ceiling"}]})
        .to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let ceiling_url = format!(
        "http://{}/Patient/fixed",
        listener.local_addr().expect("addr")
    );
    let ceiling = HttpServer::new(move || {
        let body = fixed.clone();
        App::new().route(
            "/Patient/fixed",
            web::get().to(move || {
                let b = body.clone();
                async move {
                    HttpResponse::Ok()
                        .content_type("application/fhir+json")
                        .body(b)
                }
            }),
        )
    })
    .workers(2)
    .disable_signals()
    .listen(listener)
    .expect("listen")
    .run();
    tokio::spawn(ceiling);

    let database_url = epaccs_store::DatabaseUrl::parse(&db_url).expect("database url");
    // As the service: the default journal unless EPACCS_AUDIT_JOURNAL says "off" or names one.
    let audit_journal = match std::env::var("EPACCS_AUDIT_JOURNAL").ok().as_deref() {
        None => Settings::default_audit_journal(&database_url),
        Some("off") => None,
        Some(dir) => Some(std::path::PathBuf::from(dir)),
    };
    println!(
        "audit journal: {}",
        audit_journal.as_ref().map_or(
            if database_url.is_sqlite() {
                "off (records inserted by the group commit)".to_string()
            } else {
                format!(
                    "off (records committed by {} audit committer(s))",
                    env_num("EPACCS_AUDIT_COMMITTERS", 1)
                )
            },
            |d| d.display().to_string()
        )
    );
    let settings = Settings {
        audit_journal,
        audit_committers: env_num("EPACCS_AUDIT_COMMITTERS", 1) as usize,
        database_url,
        listen: "127.0.0.1:0".parse().expect("addr"),
        base_url: None,
        workers: 2,
        pool_size: 16,
        read_cache_mb: env_num("EPACCS_READ_CACHE_MB", 256),
        rules: epaccs_access::Rules::default(),
        limits: epaccs_api::Limits::default(),
        notify: epaccs_notify::NotifyOptions::default(),
        nrl_url: None,
    };
    let running = epaccs::start(settings).await.expect("start");
    let base = running.base_url.clone();
    let pem = keys::generate_client_key(ClientAlg::Es384).expect("key");
    let jwk = keys::public_jwk(&pem, ClientAlg::Es384).expect("jwk");
    let kid = jwk["kid"].as_str().expect("kid").to_string();
    let db = epaccs::cli::DbArgs {
        database_url: db_url.clone(),
    };
    let jwks = json!({"keys": [jwk]}).to_string();
    epaccs::cli::register(
        &db,
        "bench-gp",
        "A81001",
        "gp",
        "system/*.*",
        Some(jwks.clone()),
        None,
    )
    .expect("register");
    epaccs::cli::register(
        &db,
        "bench-crew",
        "RX801",
        "ambulance",
        "system/*.read",
        Some(jwks),
        None,
    )
    .expect("register");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let gp = token(&http, &base, &pem, &kid, "bench-gp", "system/*.*").await;
    let crew = token(&http, &base, &pem, &kid, "bench-crew", "system/*.read").await;

    // The same read without its audit record: a bench-only server over the same store, token
    // service and sharing rules (the service itself has no way to turn audit off). Only to
    // measure what the durable audit record costs a read.
    let unaudited_url = {
        let tokens = Arc::new(
            epaccs_auth::TokenService::new(running.store.clone(), &base)
                .await
                .expect("token service"),
        );
        let (store, rules) = (
            running.store.clone(),
            Arc::new(epaccs_access::Rules::default()),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = HttpServer::new(move || {
            let (tokens, store, rules) = (tokens.clone(), store.clone(), rules.clone());
            App::new().route(
                "/Patient/{id}",
                web::get().to(move |req: actix_web::HttpRequest, id: web::Path<String>| {
                    let (tokens, store, rules) = (tokens.clone(), store.clone(), rules.clone());
                    async move {
                        let bearer = req
                            .headers()
                            .get("authorization")
                            .and_then(|h| h.to_str().ok())
                            .and_then(|h| h.strip_prefix("Bearer "))
                            .unwrap_or_default()
                            .to_string();
                        let Ok(principal) = tokens.verify(&bearer).await else {
                            return HttpResponse::Unauthorized().finish();
                        };
                        let gate = Arc::new(epaccs_access::Gate::new(principal, rules));
                        match store.read(gate, "Patient", &id).await {
                            Ok(s) => HttpResponse::Ok()
                                .insert_header(("etag", format!("W/\"{}\"", s.version_id)))
                                .content_type("application/fhir+json")
                                .body(s.content),
                            Err(_) => HttpResponse::Forbidden().finish(),
                        }
                    }
                }),
            )
        })
        .workers(2)
        .disable_signals()
        .listen(listener)
        .expect("listen")
        .run();
        tokio::spawn(server);
        url
    };

    println!("epaccs load benchmark: {} backend, {patients} synthetic people, concurrency {CONCURRENCY}, {secs} s per scenario", running.store.backend());
    // Load: Patient then the rest of the record, 32 people at a time.
    let numbers = Arc::new(synthetic::nhs_numbers(patients));
    let started = Instant::now();
    let ids = Arc::new(tokio::sync::Mutex::new(vec![String::new(); patients]));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let loaders: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (http, base, gp, numbers, ids, next) = (
                http.clone(),
                base.clone(),
                gp.clone(),
                numbers.clone(),
                ids.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= numbers.len() {
                        break;
                    }
                    let p: Value = http
                        .post(format!("{base}/Patient"))
                        .bearer_auth(&gp)
                        .header("content-type", "application/fhir+json")
                        .body(synthetic::patient(i, &numbers[i], "A81001").to_string())
                        .send()
                        .await
                        .expect("post")
                        .json()
                        .await
                        .expect("json");
                    let id = p["id"].as_str().expect("patient id").to_string();
                    for r in synthetic::record(i, &id, "HOS01") {
                        let ty = r["resourceType"].as_str().expect("type").to_string();
                        let resp = http
                            .post(format!("{base}/{ty}"))
                            .bearer_auth(&gp)
                            .header("content-type", "application/fhir+json")
                            .body(r.to_string())
                            .send()
                            .await
                            .expect("post");
                        assert_eq!(resp.status().as_u16(), 201);
                    }
                    ids.lock().await[i] = id;
                }
            })
        })
        .collect();
    for l in loaders {
        l.await.expect("loader");
    }
    let load_secs = started.elapsed().as_secs_f64();
    println!(
        "loaded {} resources in {load_secs:.1} s ({:.0} creates/s through the API)",
        patients * 5,
        (patients * 5) as f64 / load_secs
    );
    let ids = Arc::new(ids.lock().await.clone());

    let c = http.clone();
    let ceiling_stats = drive("ceiling: minimal actix fixed JSON", secs, move |_| {
        let (c, u) = (c.clone(), ceiling_url.clone());
        async move {
            c.get(&u)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    ceiling_stats.print(None);
    let top = ceiling_stats.requests as f64 / ceiling_stats.secs;

    // Reads by an ambulance crew: consent checked per request, AuditEvent durable before reply.
    // Every tenth person has withdrawn consent, so about 10% of reads are refusals (403).
    let (c, b, t, ids2) = (http.clone(), base.clone(), crew.clone(), ids.clone());
    drive("read Patient/{id} (crew, audited)", secs, move |i| {
        get_answered(
            c.clone(),
            format!("{b}/Patient/{}", ids2[i % ids2.len()]),
            t.clone(),
        )
    })
    .await
    .print(Some(top));

    // The same read while four GP systems write continuously: each write batch empties the read
    // cache, and without the audit journal a read's audit record waits in the same group commit
    // as the writes.
    if wanted("mixed") {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (c, b, t, ids3) = (http.clone(), base.clone(), gp.clone(), ids.clone());
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while Instant::now() < deadline {
                        let patient = &ids3[(w * 7919 + n) % ids3.len()];
                        n += usize::from(create_observation(&c, &b, &t, patient).await);
                    }
                    n
                })
            })
            .collect();
        let (c, b, t, ids2) = (http.clone(), base.clone(), crew.clone(), ids.clone());
        drive(
            "read Patient/{id} (crew, audited) while 4 GPs write (mixed)",
            secs,
            move |i| {
                get_answered(
                    c.clone(),
                    format!("{b}/Patient/{}", ids2[i % ids2.len()]),
                    t.clone(),
                )
            },
        )
        .await
        .print(Some(top));
        let mut written = 0;
        for w in writers {
            written += w.await.expect("writer task");
        }
        println!(
            "  (meanwhile {:.0} creates/s)",
            written as f64 / secs as f64
        );
    }

    let (c, b, t, ids2) = (http.clone(), unaudited_url, crew.clone(), ids.clone());
    drive(
        "read Patient/{id} without audit (bench-only server)",
        secs,
        move |i| {
            get_answered(
                c.clone(),
                format!("{b}/Patient/{}", ids2[i % ids2.len()]),
                t.clone(),
            )
        },
    )
    .await
    .print(Some(top));

    let (c, b, t, n) = (http.clone(), base.clone(), crew.clone(), numbers.clone());
    drive("search Patient?identifier=NHS", secs, move |i| {
        let u = format!(
            "{b}/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            n[(i * 7919) % n.len()]
        );
        let (c, t) = (c.clone(), t.clone());
        async move {
            c.get(&u)
                .bearer_auth(&t)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
    .print(Some(top));

    let (c, b, t, n) = (http.clone(), base.clone(), crew.clone(), numbers.clone());
    drive("Patient/$emergency-summary (NHS)", secs, move |i| {
        let u = format!(
            "{b}/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            n[(i * 104_729) % n.len()]
        );
        get_answered(c.clone(), u, t.clone())
    })
    .await
    .print(Some(top));

    // One crew at a time: the latency a single look-up sees on an otherwise idle service.
    let (c, b, t, n) = (http.clone(), base.clone(), crew.clone(), numbers.clone());
    drive_at("$emergency-summary, one crew (c=1)", secs, 1, move |i| {
        let u = format!(
            "{b}/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            n[(i * 7_919 + 13) % n.len()]
        );
        get_answered(c.clone(), u, t.clone())
    })
    .await
    .print(Some(top));

    // Eight crews at once: a busy night for one region's ambulance service.
    let (c, b, t, n) = (http.clone(), base.clone(), crew.clone(), numbers.clone());
    drive_at("$emergency-summary, eight crews (c=8)", secs, 8, move |i| {
        let u = format!(
            "{b}/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
            n[(i * 7_907 + 29) % n.len()]
        );
        get_answered(c.clone(), u, t.clone())
    })
    .await
    .print(Some(top));

    let (c, b, t, n) = (http.clone(), base.clone(), gp.clone(), ids.clone());
    drive("Patient/{id}/$everything (GP)", secs, move |i| {
        let u = format!("{b}/Patient/{}/$everything", n[(i * 31) % n.len()]);
        let (c, t) = (c.clone(), t.clone());
        async move {
            c.get(&u)
                .bearer_auth(&t)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
    .print(Some(top));

    let (c, b, t, ids3) = (http.clone(), base.clone(), gp.clone(), ids.clone());
    drive("create Observation (GP, fsync'd)", secs, move |i| {
        let (c, b, t, patient) = (
            c.clone(),
            b.clone(),
            t.clone(),
            ids3[i % ids3.len()].clone(),
        );
        async move { create_observation(&c, &b, &t, &patient).await }
    })
    .await
    .print(Some(top));
    if wanted("notifications") {
        notifications(&http, &base, &gp, &ids, secs).await;
    }
    running.stop().await;
}

/// Subscribes a loopback receiver, then creates observations as fast as 32 writers can and
/// measures the delay from commit (the 201) to delivery, and the rate the worker sustains.
async fn notifications(
    http: &reqwest::Client,
    base: &str,
    gp: &str,
    ids: &Arc<Vec<String>>,
    secs: u64,
) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let a = arrivals.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}/fhir", listener.local_addr().expect("addr"));
    let receiver = HttpServer::new(move || {
        let a = a.clone();
        App::new().default_service(web::to(move |req: actix_web::HttpRequest| {
            let a = a.clone();
            async move {
                if let Some(id) = req.path().rsplit('/').next() {
                    a.lock()
                        .expect("lock")
                        .insert(id.to_string(), Instant::now());
                }
                HttpResponse::Ok().finish()
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listen")
    .run();
    tokio::spawn(receiver);
    let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "benchmark", "criteria": "Observation?code=http://snomed.info/sct|871021000000106",
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}});
    let r = http
        .post(format!("{base}/Subscription"))
        .bearer_auth(gp)
        .header("content-type", "application/fhir+json")
        .body(sub.to_string())
        .send()
        .await
        .expect("subscribe");
    assert_eq!(r.status().as_u16(), 201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let (c, b, t, ids2, cm) = (
        http.clone(),
        base.to_string(),
        gp.to_string(),
        ids.clone(),
        committed.clone(),
    );
    let started = Instant::now();
    let writes = drive("create Observation (subscribed)", secs.min(3), move |i| {
        let body = json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "871021000000106"}]},
            "subject": {"reference": format!("Patient/{}", ids2[i % ids2.len()])}, "effectiveDateTime": "2026-11-01T10:00:00Z"}).to_string();
        let (c, u, t, cm) = (c.clone(), format!("{b}/Observation"), t.clone(), cm.clone());
        async move {
            let Ok(r) = c.post(&u).bearer_auth(&t).header("content-type", "application/fhir+json").body(body).send().await else { return false };
            let done = Instant::now();
            let ok = r.status().as_u16() == 201;
            if let Ok(v) = r.json::<Value>().await {
                if let Some(id) = v["id"].as_str() {
                    cm.lock().expect("lock").insert(id.to_string(), done);
                }
            }
            ok
        }
    })
    .await;
    writes.print(None);
    let expected = committed.lock().expect("lock").len();
    let deadline = Instant::now() + Duration::from_secs(120);
    while arrivals.lock().expect("lock").len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrived = arrivals.lock().expect("lock").clone();
    let committed = committed.lock().expect("lock").clone();
    let mut delays: Vec<f64> = committed
        .iter()
        .filter_map(|(id, t)| {
            arrived
                .get(id)
                .map(|a| a.saturating_duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    delays.sort_by(|x, y| x.total_cmp(y));
    let last = arrived.values().max().copied().unwrap_or(started);
    let q = |p: f64| {
        delays
            .get(((delays.len() as f64 * p) as usize).min(delays.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{:<34} {:>9.0} events/s         commit->delivery p50 {:>7.2} ms  p99 {:>7.2} ms  delivered {}/{}",
        "notifications (rest-hook, payload)",
        arrived.len() as f64 / last.duration_since(started).as_secs_f64(),
        q(0.50),
        q(0.99),
        delays.len(),
        expected
    );
}
