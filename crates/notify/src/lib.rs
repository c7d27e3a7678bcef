#![doc = include_str!("../README.md")]

use epaccs_access::audit::{self, Outcome};
use epaccs_access::{Gate, Rules};
use epaccs_core::{OdsCode, Principal, Purpose, Scopes};
use epaccs_store::outbox::{self, Event, Subscription};
use epaccs_store::{clients, resources, Store, StoreError};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct NotifyOptions {
    /// Attempts per event before the subscription goes to `error`.
    pub max_attempts: i64,
    /// First retry delay; doubles each attempt (with jitter), capped at five minutes.
    pub base_delay: Duration,
    /// HTTP timeout per delivery.
    pub timeout: Duration,
    /// This service's FHIR base URL (record-locator pointers link back to it).
    pub base_url: String,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            max_attempts: 8,
            base_delay: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
            base_url: String::new(),
        }
    }
}

/// The running worker.
pub struct Worker {
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Stops after the current round and gives the delivery lease up.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Starts the delivery worker.
pub fn start(store: Store, rules: Arc<Rules>, opts: NotifyOptions) -> Worker {
    let (shutdown, mut stopping) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(opts.timeout)
            .build()
            .unwrap_or_default();
        let wake = store.commits();
        let me = format!("worker-{}", rand::thread_rng().gen::<u64>());
        let mut lease_until = 0i64;
        while !*stopping.borrow() {
            // Only the lease holder delivers, so two instances never race on one subscription.
            // A crashed holder's lease expires after LEASE.
            let now = epaccs_fhir::date::now_micros();
            if lease_until - now < LEASE.as_micros() as i64 / 3 {
                let (holder, expires) = (me.clone(), now + LEASE.as_micros() as i64);
                match store
                    .write_bookkeeping(move |c| outbox::acquire_lease(c, &holder, now, expires))
                    .await
                {
                    Ok(true) => lease_until = expires,
                    Ok(false) => {
                        lease_until = 0;
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), stopping.changed()).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take the delivery lease");
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), stopping.changed()).await;
                        continue;
                    }
                }
            }
            let busy = match round(&store, &rules, &opts, &http).await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::warn!(error = %e, "notification round failed");
                    false
                }
            };
            if !busy {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = wake.notified() => {}
                    _ = stopping.changed() => {}
                }
            }
        }
        let holder = me.clone();
        if let Err(e) = store
            .write_bookkeeping(move |c| outbox::release_lease(c, &holder))
            .await
        {
            tracing::warn!(error = %e, "could not release the delivery lease");
        }
    });
    Worker { shutdown, task }
}

/// How long a delivery lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(10);

enum Delivery {
    Delivered,
    /// Delivered, disclosing data: the audit record commits with the delivery mark.
    Disclosed(Box<epaccs_access::audit::AuditRecord>),
    Suppressed,
    Failed(String),
}

/// One pass over the due events; returns how many were settled.
async fn round(
    store: &Store,
    rules: &Arc<Rules>,
    opts: &NotifyOptions,
    http: &reqwest::Client,
) -> Result<usize, StoreError> {
    let now = epaccs_fhir::date::now_micros();
    let due = store.with_conn(move |c| outbox::due(c, now, 64)).await?;
    let work = due.into_iter().map(|(sub, events)| {
        let (store, rules, opts, http) = (store.clone(), rules.clone(), opts.clone(), http.clone());
        async move { deliver_in_order(&store, &rules, &opts, &http, sub, events).await }
    });
    let mut settled = 0;
    // Subscriptions are independent: deliver to all of them concurrently.
    for r in futures::future::join_all(work).await {
        settled += r?;
    }
    Ok(settled)
}

async fn deliver_in_order(
    store: &Store,
    rules: &Arc<Rules>,
    opts: &NotifyOptions,
    http: &reqwest::Client,
    sub: Subscription,
    events: Vec<Event>,
) -> Result<usize, StoreError> {
    let mut settled = 0;
    // The subscriber's registration, once per round (a revoked client gets nothing).
    let who = if sub.owner_client == outbox::LOCATOR_CLIENT {
        None
    } else {
        subscriber(store, &sub.owner_client).await?
    };
    for ev in events {
        match deliver(store, rules, http, &sub, &ev, &opts.base_url, who.as_ref()).await? {
            Delivery::Delivered => {
                let seq = ev.seq;
                store
                    .write_bookkeeping(move |c| outbox::mark_delivered(c, seq, "delivered"))
                    .await?;
                settled += 1;
            }
            Delivery::Disclosed(rec) => {
                let seq = ev.seq;
                store
                    .write_bookkeeping(move |c| {
                        epaccs_store::audit::insert(c, &rec)?;
                        outbox::mark_delivered(c, seq, "delivered")
                    })
                    .await?;
                settled += 1;
            }
            Delivery::Suppressed => {
                let seq = ev.seq;
                store
                    .write_bookkeeping(move |c| {
                        outbox::mark_delivered(
                            c,
                            seq,
                            "suppressed: the subscriber may not see this resource",
                        )
                    })
                    .await?;
                settled += 1;
            }
            Delivery::Failed(why) => {
                let attempt = ev.attempts + 1;
                let factor = 2u32.saturating_pow(attempt.clamp(0, 20) as u32);
                let max = Duration::from_secs(300);
                let delay = opts.base_delay.saturating_mul(factor).min(max);
                let jitter = rand::thread_rng().gen_range(0.5..1.0);
                let next =
                    epaccs_fhir::date::now_micros() + (delay.as_micros() as f64 * jitter) as i64;
                let (seq, reason) = (ev.seq, why.clone());
                let attempts = store
                    .write_bookkeeping(move |c| outbox::mark_failed(c, seq, next, &reason))
                    .await?;
                tracing::info!(subscription = %sub.id, attempt = attempts, error = %why, "notification failed");
                if attempts >= opts.max_attempts {
                    let (id, reason) = (
                        sub.id.clone(),
                        format!("delivery failed {attempts} times; last error: {why}"),
                    );
                    store
                        .write(move |c| outbox::set_error(c, &id, &reason))
                        .await?;
                }
                // Later events wait: order per subscription is kept.
                break;
            }
        }
    }
    Ok(settled)
}

/// The subscriber's principal, from its registration now (a revoked client gets nothing).
async fn subscriber(store: &Store, client_id: &str) -> Result<Option<Principal>, StoreError> {
    let id = client_id.to_string();
    let client = store.with_conn(move |c| clients::get(c, &id)).await?;
    Ok(client.filter(|c| !c.revoked).and_then(|c| {
        Some(Principal {
            client_id: c.client_id,
            org: OdsCode::parse(&c.org).ok()?,
            role: c.role.parse().ok()?,
            user_id: None,
            user_name: None,
            user_role: None,
            purpose: Purpose::Treat,
            break_glass_reason: None,
            scopes: Scopes::parse_strict(&c.scopes).ok()?,
        })
    }))
}

async fn deliver(
    store: &Store,
    rules: &Arc<Rules>,
    http: &reqwest::Client,
    sub: &Subscription,
    ev: &Event,
    base: &str,
    who: Option<&Principal>,
) -> Result<Delivery, StoreError> {
    if sub.owner_client == outbox::LOCATOR_CLIENT {
        return locator::deliver(store, rules, http, sub, ev, base).await;
    }
    let Some(principal) = who.cloned() else {
        return Ok(Delivery::Suppressed);
    };
    let headers: Vec<(String, String)> = serde_json::from_str::<Vec<String>>(&sub.headers)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let endpoint = sub.endpoint.trim_end_matches('/').to_string();
    let with_headers = |mut r: reqwest::RequestBuilder| {
        for (k, v) in &headers {
            r = r.header(k.as_str(), v.as_str());
        }
        r.header("X-Epaccs-Event", ev.event.as_str())
            .header("X-Epaccs-Subscription", sub.id.as_str())
    };
    if ev.event == "handshake" {
        return Ok(send(with_headers(http.post(&sub.endpoint))).await);
    }
    // Decide what this subscriber may see, through its own gate.
    let gate = Arc::new(Gate::new(principal.clone(), rules.clone()));
    let g = gate.clone();
    let (ty, id, version, event) = (
        ev.res_type.clone(),
        ev.res_id.clone(),
        ev.version_id,
        ev.event.clone(),
    );
    let content: Option<String> = store
        .with_conn(move |c| {
            if ty == "AuditEvent" {
                let q = epaccs_store::audit::AuditQuery {
                    id: Some(id.clone()),
                    count: 1,
                    ..Default::default()
                };
                return match epaccs_store::audit::search(c, &g, &q) {
                    Ok((rows, _)) => Ok(rows.into_iter().next()),
                    Err(StoreError::Forbidden { .. }) => Ok(None),
                    Err(e) => Err(e),
                };
            }
            // A delete is disclosed only to those who could see the last live version.
            let v = if event == "delete" {
                version - 1
            } else {
                version
            };
            match resources::vread(c, &g, &ty, &id, v) {
                Ok(s) => Ok(Some(s.content)),
                Err(
                    StoreError::NotFound | StoreError::Withheld { .. } | StoreError::Gone { .. },
                ) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await?;
    let Some(content) = content else {
        return Ok(Delivery::Suppressed);
    };
    let result = match (&sub.payload, ev.event.as_str()) {
        (None, _) => send(with_headers(http.post(&sub.endpoint))).await,
        (Some(_), "delete") => {
            send(with_headers(
                http.delete(format!("{endpoint}/{}/{}", ev.res_type, ev.res_id)),
            ))
            .await
        }
        (Some(_), _) => {
            send(with_headers(
                http.put(format!("{endpoint}/{}/{}", ev.res_type, ev.res_id))
                    .header("content-type", "application/fhir+json")
                    .body(content),
            ))
            .await
        }
    };
    if matches!(result, Delivery::Delivered) {
        // A delivery discloses data like a read does: it is on the record.
        let target = format!("{} {}/{}", sub.endpoint, ev.res_type, ev.res_id);
        let rec = audit::record(
            &audit::Request {
                principal: &principal,
                interaction: "notification",
                resource_type: Some(&ev.res_type),
                query: &target,
                outcome: Outcome::Success,
                description: Some(format!("Subscription/{}", sub.id)),
            },
            &gate.log(),
        );
        return Ok(Delivery::Disclosed(Box::new(rec)));
    }
    Ok(result)
}

mod locator;

async fn send(req: reqwest::RequestBuilder) -> Delivery {
    match req.send().await {
        Ok(r) if r.status().is_success() => Delivery::Delivered,
        Ok(r) => Delivery::Failed(format!("the endpoint answered {}", r.status())),
        Err(e) => Delivery::Failed(format!("could not reach the endpoint: {e}")),
    }
}
