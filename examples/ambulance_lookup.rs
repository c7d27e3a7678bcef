//! An ambulance crew's look-up: the emergency summary for a person, printed for a tablet.
//!
//! ```sh
//! cargo run --release --example ambulance_lookup -- --url http://127.0.0.1:8080 \
//!     --client-id crew-tablet --key crew-key.pem --nhs 9990000026
//! # or, without an NHS number:
//!     ... --family Ashworth --birthdate 1938-04-12 --postcode "LS6 2QB"
//! ```

use anyhow::{bail, Context};
use epaccs::cli::{fetch_token, TokenArgs};
use serde_json::Value;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn text(div: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in div.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = arg("--url").unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let token = fetch_token(&TokenArgs {
        url: url.clone(),
        client_id: arg("--client-id").context("--client-id is required")?,
        key: arg("--key").context("--key is required")?,
        alg: arg("--alg").unwrap_or_else(|| "ES384".into()),
        scope: "system/*.read".into(),
        user: arg("--user"),
        purpose: arg("--purpose").or(Some("ETREAT".into())),
        reason: arg("--reason"),
    })
    .await?;
    let query = match (
        arg("--nhs"),
        arg("--family"),
        arg("--birthdate"),
        arg("--postcode"),
    ) {
        (Some(n), _, _, _) => vec![(
            "identifier".to_string(),
            format!("https://fhir.nhs.uk/Id/nhs-number|{n}"),
        )],
        (None, Some(f), Some(b), Some(p)) => vec![
            ("family".into(), f),
            ("birthdate".into(), b),
            ("address-postalcode".into(), p),
        ],
        _ => bail!("give --nhs, or --family, --birthdate and --postcode"),
    };
    let resp = reqwest::Client::new()
        .get(format!("{url}/Patient/$emergency-summary"))
        .query(&query)
        .bearer_auth(token)
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if !status.is_success() {
        bail!(
            "{status}: {}",
            body["issue"][0]["diagnostics"]
                .as_str()
                .unwrap_or("refused")
        );
    }
    let patient = &body["entry"][1]["resource"];
    println!(
        "{} {}  born {}  NHS {}",
        patient["name"][0]["given"][0].as_str().unwrap_or(""),
        patient["name"][0]["family"].as_str().unwrap_or(""),
        patient["birthDate"].as_str().unwrap_or("?"),
        patient["identifier"][0]["value"].as_str().unwrap_or("?")
    );
    for s in body["entry"][0]["resource"]["section"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "\n== {}\n   {}",
            s["title"].as_str().unwrap_or(""),
            text(s["text"]["div"].as_str().unwrap_or(""))
        );
    }
    Ok(())
}
