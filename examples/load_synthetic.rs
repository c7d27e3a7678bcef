//! Loads synthetic people into a running server, one transaction Bundle per person, as a GP
//! system would. NHS numbers are from the 999 test range.
//!
//! ```sh
//! cargo run --release --example load_synthetic -- --url http://127.0.0.1:8080 \
//!     --client-id demo-gp --key data/demo-gp-key.pem --people 10000
//! ```

use anyhow::{bail, Context};
use epaccs::cli::{fetch_token, TokenArgs};
use epaccs::synthetic;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// One person's record as a transaction: the Patient by urn:uuid, the rest referencing it.
pub fn person_bundle(i: usize, nhs: &str) -> Value {
    let pu = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let mut entries = vec![
        json!({"fullUrl": pu, "resource": synthetic::patient(i, nhs, "A81001"), "request": {"method": "POST", "url": "Patient",
        "ifNoneExist": format!("identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}")}}),
    ];
    for r in synthetic::record(i, "PLACEHOLDER", "HOS01") {
        let text = r.to_string().replace("Patient/PLACEHOLDER", &pu);
        let r: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let ty = r["resourceType"].as_str().unwrap_or_default().to_string();
        entries.push(json!({"resource": r, "request": {"method": "POST", "url": ty}}));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = arg("--url").unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let people: usize = arg("--people")
        .unwrap_or_else(|| "1000".into())
        .parse()
        .context("--people must be a number")?;
    let token = fetch_token(&TokenArgs {
        url: url.clone(),
        client_id: arg("--client-id").context("--client-id is required")?,
        key: arg("--key").context("--key is required")?,
        alg: arg("--alg").unwrap_or_else(|| "ES384".into()),
        scope: "system/*.*".into(),
        user: None,
        purpose: None,
        reason: None,
    })
    .await?;
    let numbers = Arc::new(synthetic::nhs_numbers(people));
    let next = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (numbers, next, http, url, token) = (
                numbers.clone(),
                next.clone(),
                http.clone(),
                url.clone(),
                token.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= numbers.len() {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let resp = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/fhir+json")
                        .body(person_bundle(i, &numbers[i]).to_string())
                        .send()
                        .await?;
                    if !resp.status().is_success() {
                        bail!(
                            "person {i}: {} {}",
                            resp.status(),
                            resp.text().await.unwrap_or_default()
                        );
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "loaded {people} people ({} resources) in {secs:.1} s: {:.0} people/s",
        people * 5,
        people as f64 / secs
    );
    Ok(())
}
