//! An ambulance crew's look-up: the emergency summary for a person, printed for a tablet: the
//! CPR decision in words (DECEASED or CONFLICT first when they apply), the numbers to call, then
//! each section.
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

/// A narrative's paragraphs, as text.
fn paragraphs(div: &str) -> Vec<String> {
    div.split("</p>")
        .map(|p| {
            text(p)
                .replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
        })
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
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
    let entries = body["entry"].as_array().cloned().unwrap_or_default();
    let composition = &body["entry"][0]["resource"];
    let sections: Vec<&Value> = composition["section"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let code = |s: &Value| {
        s["code"]["coding"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    // The top line says who, the CPR decision, and DECEASED or CONFLICT first when they apply.
    println!(
        "{}",
        text(composition["text"]["div"].as_str().unwrap_or(""))
    );
    for s in &sections {
        if code(s) == "deceased" || code(s) == "cpr-decision" {
            println!("\n== {}", s["title"].as_str().unwrap_or(""));
            for p in paragraphs(s["text"]["div"].as_str().unwrap_or("")) {
                println!("   {p}");
            }
        }
    }
    // The numbers to call, with who they reach.
    println!("\n== Numbers to call");
    let mut any = false;
    for e in &entries {
        let r = &e["resource"];
        if !matches!(
            r["resourceType"].as_str(),
            Some("RelatedPerson" | "CareTeam")
        ) {
            continue;
        }
        let who = r["name"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                let n = &r["name"][0];
                let given: Vec<&str> = n["given"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                n["family"]
                    .as_str()
                    .map(|f| format!("{} {f}", given.join(" ")).trim().to_string())
            })
            .unwrap_or_else(|| "Contact".into());
        let role = r["relationship"][0]["text"]
            .as_str()
            .or(r["relationship"][0]["coding"][0]["display"].as_str())
            .map(|x| format!(" ({x})"))
            .unwrap_or_default();
        for t in r["telecom"].as_array().into_iter().flatten() {
            if matches!(t["system"].as_str(), None | Some("phone") | Some("sms")) {
                if let Some(v) = t["value"].as_str() {
                    any = true;
                    println!("   {who}{role}: {v}");
                }
            }
        }
    }
    if !any {
        println!("   none recorded");
    }
    // Everything else the summary states, section by section, in words.
    for s in &sections {
        if code(s) != "deceased" && code(s) != "cpr-decision" {
            println!("\n== {}", s["title"].as_str().unwrap_or(""));
            for p in paragraphs(s["text"]["div"].as_str().unwrap_or("")) {
                println!("   {p}");
            }
        }
    }
    println!("\nThe same answer as a page (for a web view): add Accept: text/html.");
    Ok(())
}
