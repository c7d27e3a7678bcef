//! The emergency summary as an HTML page, for a crew's device or ePCR web view at the door.
//!
//! The page is rendered from the summary's document Bundle, after the same look-up, sharing
//! decision and audit record as the JSON: there is no second data path. The section narratives
//! say the content in words; the page lays them out in the order a crew needs (identity, the
//! banners, the CPR decision in large text, then the rest), adds the telephone numbers as
//! labelled `tel:` links and each section's last update. Answers that are not a record (several
//! matches, nobody found, refused, unavailable) are pages too, with the JSON's status code and
//! the OperationOutcome's words.
//!
//! One layout (`layout`), templates with maud (escaped by default), one stylesheet sent in the
//! page and allowed by its hash in a strict Content-Security-Policy: no script, no external
//! asset, `Cache-Control: no-store`.

use super::{words, CONFLICT_URL, REVIEW_OVERDUE_URL};
use crate::error::ApiError;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use base64::Engine;
use chrono::{Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Europe::London;
use epaccs_core::{NhsNumber, Principal, Purpose};
use epaccs_fhir::date;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// The page's one stylesheet.
pub const STYLE: &str = include_str!("page.css");

/// The policy every page is sent with: nothing may load or run; the one style element is
/// allowed by its hash.
static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; img-src 'none'; script-src 'none'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
    )
});

/// The Content-Security-Policy of the pages.
pub fn csp() -> &'static str {
    &CSP
}

/// Whether the caller asked for the page: `_format=html` (or `text/html`), or an `Accept`
/// header that prefers `text/html` to FHIR JSON. `*/*`, no header and every FHIR client get the
/// Bundle. A header without "html" in it is answered at once (the JSON clients' path).
pub fn wants_html(req: &HttpRequest, pairs: &[(String, String)]) -> bool {
    if let Some((_, f)) = pairs.iter().find(|(k, _)| k == "_format") {
        return matches!(f.trim(), "html" | "text/html");
    }
    let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    if !accept.contains("html") {
        return false;
    }
    let (mut html, mut fhir) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let ty = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q=").map(|v| v.trim().parse::<f32>()))
            .and_then(Result::ok)
            .unwrap_or(1.0);
        match ty.as_str() {
            "text/html" | "application/xhtml+xml" => html = html.max(q),
            "application/fhir+json"
            | "application/json"
            | "application/fhir+xml"
            | "application/xml"
            | "json" => fhir = fhir.max(q),
            _ => {}
        }
    }
    html > 0.0 && html > fhir
}

/// Who is reading, as far as the page needs to know.
pub struct Reader {
    /// The caller asked with purpose of use BTG (break-glass), with a reason.
    pub break_glass: Option<String>,
    /// The caller's role may break the glass.
    pub may_break_glass: bool,
}

impl Reader {
    pub fn of(p: &Principal, may_break_glass: bool) -> Reader {
        Reader {
            break_glass: (p.purpose == Purpose::BreakGlass)
                .then(|| p.break_glass_reason.clone().unwrap_or_default()),
            may_break_glass,
        }
    }
}

/// The answer as a page: the summary, or the page of the error with the JSON's status.
pub fn answer(result: Result<String, ApiError>, reader: &Reader) -> HttpResponse {
    match result.and_then(|doc| summary(&doc, reader)) {
        Ok(body) => respond(StatusCode::OK, body),
        Err(e) => {
            let mut r = respond(e.status_code(), problem(&e, reader));
            if matches!(e, ApiError::Unavailable(_)) {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            }
            if let ApiError::Internal(m) = &e {
                tracing::error!(error = %m, "internal error (summary page)");
            }
            r
        }
    }
}

fn respond(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, csp()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::VARY, "Accept"))
        .body(body)
}

/// The one layout: masthead, main, and a footer with the time the page was produced (printed
/// with it).
fn layout(title: &str, produced: &str, main: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en-GB" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex, nofollow";
                title { (title) " – EPaCCS emergency summary" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header class="masthead" {
                    p { "EPaCCS emergency summary: shared end-of-life care record" }
                }
                main id="main" { (main) }
                footer {
                    p { "Produced at " (produced) " (UK time). Printed copies are out of date as soon as anything changes: look the person up again." }
                    p { "Check with the person, their family or carers, and for paper ReSPECT or DNACPR forms in the home." }
                }
            }
        }
    }
    .into_string()
}

// ---------------------------------------------------------------------------------------------
// Reading the Bundle.

fn s(v: &Value) -> Option<&str> {
    v.as_str().map(str::trim).filter(|t| !t.is_empty())
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// "14:05 on 4 Dec 2026" in Europe/London, for an instant.
fn time_and_day(instant: &str) -> String {
    date::parse_range(instant)
        .and_then(|r| Utc.timestamp_micros(r.low).single())
        .map(|t| {
            t.with_timezone(&London)
                .format("%H:%M on %-d %b %Y")
                .to_string()
        })
        .unwrap_or_else(|| instant.to_string())
}

fn today() -> NaiveDate {
    Utc::now().with_timezone(&London).date_naive()
}

/// Whole years from `born` to `on`.
fn age(born: NaiveDate, on: NaiveDate) -> i32 {
    let mut a = on.year() - born.year();
    if (on.month(), on.day()) < (born.month(), born.day()) {
        a -= 1;
    }
    a
}

/// A HumanName as people read it.
fn name(v: &Value) -> Option<String> {
    let names = arr(v);
    let n = names
        .iter()
        .find(|n| n["use"] == "official")
        .or(names.first())?;
    if let Some(t) = s(&n["text"]) {
        return Some(t.to_string());
    }
    let parts: Vec<&str> = arr(&n["prefix"])
        .iter()
        .chain(arr(&n["given"]))
        .filter_map(s)
        .chain(s(&n["family"]))
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// A CodeableConcept in the summary's own words (text, display, or the words for a code it
/// knows).
fn concept(c: &Value) -> Option<String> {
    if c.is_null() {
        return None;
    }
    let json = c.to_string();
    let codes: super::view::Codes = serde_json::from_str(&json).ok()?;
    words::concept(&codes)
}

fn address(p: &Value) -> Option<String> {
    let a = arr(&p["address"]).first()?;
    if let Some(t) = s(&a["text"]) {
        return Some(t.to_string());
    }
    let parts: Vec<&str> = arr(&a["line"])
        .iter()
        .filter_map(s)
        .chain(s(&a["city"]))
        .chain(s(&a["postalCode"]))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn reference_words(r: &Value) -> Option<String> {
    s(&r["display"]).map(str::to_string).or_else(|| {
        let i = &r["identifier"];
        s(&i["value"]).map(|v| words::identifier(s(&i["system"]), v))
    })
}

/// The paragraphs of a narrative div, as text.
fn paragraphs(div: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = div;
    while let Some(start) = rest.find("<p>") {
        let after = &rest[start + 3..];
        let end = after.find("</p>").unwrap_or(after.len());
        let t = words::strip_xhtml(&after[..end]);
        if !t.is_empty() {
            out.push(t);
        }
        rest = &after[end..];
    }
    if out.is_empty() {
        let t = words::strip_xhtml(div);
        if !t.is_empty() {
            out.push(t);
        }
    }
    out
}

/// A paragraph whose first words are a heading in capitals ("CONFLICT: ...", "NOT FOR
/// CARDIOPULMONARY RESUSCITATION (NOT FOR CPR): decided ..."): the heading in bold.
fn paragraph(text: &str) -> Markup {
    match heading(text) {
        Some(i) => html! { p { strong { (&text[..i]) ":" } " " (&text[i + 2..]) } },
        None => html! { p { (text) } },
    }
}

/// Where a paragraph's heading in capitals ends (words in brackets may be lower case).
fn heading(text: &str) -> Option<usize> {
    let i = text.find(": ")?;
    let mut depth = 0u32;
    let mut letters = false;
    for c in text[..i].chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            c if c.is_lowercase() && depth == 0 => return None,
            c if c.is_alphabetic() => letters = true,
            _ => {}
        }
    }
    letters.then_some(i)
}

struct Call {
    label: String,
    number: String,
    href: String,
}

/// The telephone numbers a resource holds, with who they reach.
fn calls(r: &Value, out: &mut Vec<Call>) {
    let who = name(&r["name"])
        .or_else(|| s(&r["name"]).map(str::to_string))
        .or_else(|| reference_words(&r["member"]));
    let role = arr(&r["relationship"])
        .iter()
        .chain(arr(&r["code"]))
        .find_map(concept)
        .or_else(|| arr(&r["category"]).iter().find_map(concept));
    let label = match (who, role) {
        (Some(w), Some(r)) => format!("{w} ({r})"),
        (Some(w), None) => w,
        (None, Some(r)) => r,
        (None, None) => "Contact".to_string(),
    };
    for t in arr(&r["telecom"]) {
        if !matches!(s(&t["system"]), None | Some("phone") | Some("sms")) {
            continue;
        }
        let Some(v) = s(&t["value"]) else { continue };
        let digits: String = v
            .chars()
            .enumerate()
            .filter(|(i, c)| c.is_ascii_digit() || (*i == 0 && *c == '+'))
            .map(|(_, c)| c)
            .collect();
        if digits.len() < 3 {
            continue;
        }
        let number = match s(&t["use"]) {
            Some(u @ ("mobile" | "home" | "work")) => format!("{v} ({u})"),
            _ => v.to_string(),
        };
        if out
            .iter()
            .any(|c| c.href.ends_with(&digits) && c.label == label)
        {
            continue;
        }
        out.push(Call {
            label: label.clone(),
            number,
            href: format!("tel:{digits}"),
        });
    }
    for c in arr(&r["contained"]) {
        calls(c, out);
    }
    for p in arr(&r["participant"]) {
        if p["member"]["reference"]
            .as_str()
            .is_some_and(|x| x.starts_with('#'))
        {
            continue;
        }
        if p.get("telecom").is_some() {
            calls(p, out);
        }
    }
}

/// A section of the record as the page shows it.
struct Record<'a> {
    id: String,
    title: &'a str,
    paras: Vec<String>,
    numbers: Vec<Call>,
    updated: Option<String>,
}

fn section_code(sec: &Value) -> &str {
    arr(&sec["code"]["coding"])
        .first()
        .and_then(|c| c["code"].as_str())
        .unwrap_or("")
}

fn has_ext<'v>(v: &'v Value, url: &str) -> impl Iterator<Item = &'v Value> + 'v {
    let url = url.to_string();
    arr(&v["extension"])
        .iter()
        .filter(move |e| e["url"].as_str() == Some(url.as_str()))
}

/// The order of the record's sections on the page, after the CPR decision.
const ORDER: &[&str] = &[
    "respect-recommendations",
    "advance-decisions",
    "lpa-and-contacts",
    "key-worker-and-contacts",
    "anticipatory-medicines",
    "preferred-place",
    "care-plans",
    "conditions-and-status",
];

/// The summary page from the document Bundle.
pub fn summary(doc: &str, reader: &Reader) -> Result<String, ApiError> {
    let bundle: Value =
        serde_json::from_str(doc).map_err(|e| ApiError::Internal(format!("summary page: {e}")))?;
    let entries = arr(&bundle["entry"]);
    let composition = &entries
        .first()
        .ok_or_else(|| ApiError::Internal("summary page: empty document".into()))?["resource"];
    let patient = entries
        .get(1)
        .map(|e| &e["resource"])
        .unwrap_or(&Value::Null);
    let by_url = |u: &str| -> Option<&Value> {
        entries
            .iter()
            .find(|e| e["fullUrl"].as_str() == Some(u))
            .map(|e| &e["resource"])
    };
    let produced = s(&bundle["timestamp"])
        .map(time_and_day)
        .unwrap_or_default();

    // Identity.
    let person = name(&patient["name"]).unwrap_or_else(|| "Name not recorded".to_string());
    let nhs = arr(&patient["identifier"])
        .iter()
        .find(|i| i["system"].as_str() == Some(NhsNumber::SYSTEM))
        .and_then(|i| s(&i["value"]))
        .map(words::nhs_number)
        .unwrap_or_else(|| "not recorded".to_string());
    let died_on = s(&patient["deceasedDateTime"])
        .and_then(date::parse_range)
        .and_then(|r| Utc.timestamp_micros(r.low).single())
        .map(|t| t.with_timezone(&London).date_naive());
    let born = s(&patient["birthDate"]).map(|b| {
        let day = words::day(b);
        match NaiveDate::parse_from_str(b, "%Y-%m-%d") {
            Ok(d) => match died_on {
                Some(end) => format!("{day} (died aged {})", age(d, end)),
                None => format!("{day} (aged {})", age(d, today())),
            },
            Err(_) => day,
        }
    });
    let gp = arr(&patient["generalPractitioner"])
        .iter()
        .find_map(reference_words);

    // Sections.
    let sections = arr(&composition["section"]);
    let by_code = |code: &str| sections.iter().find(|s| section_code(s) == code);
    let deceased = by_code("deceased");
    let cpr = by_code("cpr-decision");
    let mut rest: Vec<&Value> = ORDER.iter().filter_map(|c| by_code(c)).collect();
    rest.extend(sections.iter().filter(|s| {
        let c = section_code(s);
        c != "deceased" && c != "cpr-decision" && !ORDER.contains(&c)
    }));

    let conflicts: Vec<String> = has_ext(composition, CONFLICT_URL)
        .filter_map(|e| {
            arr(&e["extension"])
                .iter()
                .find(|p| p["url"] == "type")
                .and_then(|p| s(&p["valueCoding"]["display"]))
                .map(str::to_string)
        })
        .collect();
    let overdue: Vec<(String, String)> = sections
        .iter()
        .filter_map(|sec| {
            has_ext(sec, REVIEW_OVERDUE_URL).next().map(|e| {
                (
                    s(&sec["title"]).unwrap_or("A section").to_string(),
                    s(&e["valueDate"]).map(words::day).unwrap_or_default(),
                )
            })
        })
        .collect();
    let text_of = |sec: &Value| paragraphs(sec["text"]["div"].as_str().unwrap_or(""));
    let resources_of = |sec: &Value| -> Vec<&Value> {
        arr(&sec["entry"])
            .iter()
            .filter_map(|e| e["reference"].as_str().and_then(by_url))
            .collect()
    };
    // A section's last update: the newest of its entries (an empty section says so itself).
    let updated = |sec: &Value| -> Option<String> {
        resources_of(sec)
            .iter()
            .filter_map(|r| s(&r["meta"]["lastUpdated"]))
            .max_by_key(|u| date::parse_range(u).map(|r| r.low))
            .map(|u| format!("Last updated {}", time_and_day(u)))
    };

    let cpr_paras = cpr.map(text_of).unwrap_or_default();
    let cpr_class = if deceased.is_some() {
        "cpr"
    } else if !conflicts.is_empty() {
        "cpr cpr-conflict"
    } else if cpr_paras.iter().any(|p| p.starts_with("NOT FOR")) {
        "cpr cpr-not"
    } else if cpr_paras.iter().any(|p| p.starts_with("FOR ATTEMPTED")) {
        "cpr cpr-for"
    } else {
        "cpr"
    };
    // The decision's own line is the first that is not the "recorded before death" preface.
    let decision_at = cpr_paras
        .iter()
        .position(|p| !p.starts_with("This person has died"))
        .unwrap_or(0);

    let records: Vec<Record> = rest
        .iter()
        .enumerate()
        .map(|(i, sec)| {
            let mut numbers = Vec::new();
            for r in resources_of(sec) {
                calls(r, &mut numbers);
            }
            Record {
                id: format!("s{i}"),
                title: s(&sec["title"]).unwrap_or("Section"),
                paras: text_of(sec),
                numbers,
                updated: updated(sec),
            }
        })
        .collect();
    let main = html! {
        section class="identity" aria-labelledby="person" {
            h1 id="person" { (person) }
            dl {
                dt { "NHS number" } dd { (nhs) }
                dt { "Date of birth" } dd { (born.as_deref().unwrap_or("not recorded")) }
                dt { "Address" } dd { (address(patient).as_deref().unwrap_or("not recorded")) }
                dt { "GP practice" } dd { (gp.as_deref().unwrap_or("not recorded")) }
            }
        }
        @if let Some(d) = deceased {
            div class="banner banner-deceased" role="region" aria-label="Deceased" {
                @for p in text_of(d) {
                    p { strong { "DECEASED: " } (p) }
                }
            }
        }
        @if !conflicts.is_empty() {
            div class="banner banner-conflict" role="region" aria-label="Conflict" {
                p { strong { "CONFLICT: " } "the record holds decisions that disagree. Nothing has been resolved for you: each is listed below with who decided and when." }
                @for c in &conflicts { p { (c) "." } }
            }
        }
        @if let Some(reason) = &reader.break_glass {
            div class="banner banner-break-glass" role="region" aria-label="Break-glass" {
                p { strong { "BREAK-GLASS: " } "you asked for emergency access. This look-up is recorded with your name, organisation and reason, and is reviewed by a privacy officer." }
                @if !reason.is_empty() { p { "Reason given: " (reason) } }
            }
        }
        @if !overdue.is_empty() {
            div class="banner banner-overdue" role="region" aria-label="Review overdue" {
                @for (title, d) in &overdue {
                    p { strong { "REVIEW OVERDUE: " } (title) ": the planned review date " (d) " has passed." }
                }
            }
        }
        section class=(cpr_class) aria-labelledby="cpr-h" {
            h2 id="cpr-h" { "CPR decision" }
            @if cpr_paras.is_empty() {
                p class="cpr-line" { "No CPR decision recorded: follow usual resuscitation guidance" }
            }
            @for (i, p) in cpr_paras.iter().enumerate() {
                @if i == decision_at {
                    // After death the decision is history, not an instruction: not in large text.
                    p class=(if deceased.is_some() { "cpr-line cpr-past" } else { "cpr-line" }) id="cpr-line" {
                        // The decision in large capitals; who, when and the review after it.
                        @if let Some(at) = heading(p) {
                            strong class="cpr-decision" { (&p[..at]) ":" } " "
                            span class="cpr-detail" { (&p[at + 2..]) }
                        } @else {
                            (p)
                        }
                    }
                } @else {
                    (paragraph(p))
                }
            }
            @if let Some(when) = cpr.and_then(updated) { p class="updated" { (when) } }
        }
        @for r in &records {
            section class="record" aria-labelledby=(r.id) {
                h2 id=(r.id) { (r.title) }
                @for p in &r.paras { (paragraph(p)) }
                @if !r.numbers.is_empty() {
                    ul class="calls" {
                        @for c in &r.numbers {
                            li { a href=(c.href) { "Call " (c.label) ": " (c.number) } }
                        }
                    }
                }
                @if let Some(when) = &r.updated { p class="updated" { (when) } }
            }
        }
    };
    Ok(layout(&person, &produced, main))
}

/// The page of an answer that is not a record, with the OperationOutcome's words.
pub fn problem(e: &ApiError, reader: &Reader) -> String {
    let outcome = e.outcome();
    let said: Vec<String> = arr(&outcome["issue"])
        .iter()
        .filter_map(|i| s(&i["diagnostics"]).map(str::to_string))
        .collect();
    let code = arr(&outcome["issue"])
        .first()
        .and_then(|i| i["code"].as_str())
        .unwrap_or("");
    let usual = "Until you can read the record, follow usual clinical guidance, including resuscitation guidance, and look for paper ReSPECT or DNACPR forms in the home.";
    let (title, advice): (&str, Vec<&str>) = match e {
        ApiError::Unprocessable(_) if code == "multiple-matches" => (
            "More than one person matches",
            vec![
                "No clinical information is shown until one person is identified.",
                "Ask again with the person's NHS number, or with their family name, full date of birth and postcode exactly as recorded.",
            ],
        ),
        ApiError::NotFound(_) => (
            "No record found",
            vec![
                "No shared end-of-life care record was found for these details. Check the details, or ask again with the NHS number.",
                usual,
            ],
        ),
        ApiError::Withheld(_) | ApiError::Forbidden(_) | ApiError::InsufficientScope(_) => {
            ("Access refused", vec![usual])
        }
        ApiError::Unavailable(_) => (
            "Service unavailable",
            vec!["The record cannot be read just now. Try again in a few seconds.", usual],
        ),
        ApiError::BadRequest(_) | ApiError::Invalid(_) => (
            "The look-up could not be read",
            vec!["Give the NHS number, or all of family name, date of birth (YYYY-MM-DD) and postcode."],
        ),
        _ => ("Something went wrong", vec![usual]),
    };
    let break_glass = matches!(e, ApiError::Withheld(_)) && reader.may_break_glass;
    let produced = time_and_day(&date::format_instant(date::now_micros()));
    let main = html! {
        section class="answer" aria-labelledby="answer-h" {
            h1 id="answer-h" { (title) }
            @for w in &said { p { strong { (w) } } }
            @if break_glass {
                h2 { "How to get emergency access (break-glass)" }
                p { "If the person needs care now and cannot consent, your device or ePCR can ask again with purpose of use BTG (break-glass) and your reason. The record is then shown with a BREAK-GLASS banner." }
                p { "Every emergency access is recorded with your name, organisation and reason, and is reviewed by a privacy officer." }
            }
            @for a in &advice { p { (a) } }
        }
    };
    layout(title, &produced, main)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn asks(accept: Option<&str>, format: Option<&str>) -> bool {
        let mut r = TestRequest::default();
        if let Some(a) = accept {
            r = r.insert_header((header::ACCEPT, a));
        }
        let pairs: Vec<(String, String)> = format
            .map(|f| vec![("_format".to_string(), f.to_string())])
            .unwrap_or_default();
        wants_html(&r.to_http_request(), &pairs)
    }

    #[test]
    fn only_a_preference_for_html_gets_the_page() {
        assert!(asks(Some("text/html"), None));
        assert!(asks(
            Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            None
        ));
        assert!(asks(None, Some("html")));
        assert!(asks(Some("application/fhir+json"), Some("text/html")));
        assert!(!asks(Some("application/fhir+json"), None));
        assert!(!asks(Some("*/*"), None));
        assert!(!asks(None, None));
        assert!(!asks(Some("text/html"), Some("json")));
        assert!(!asks(Some("application/fhir+json, text/html;q=0.5"), None));
        assert!(!asks(Some("text/html;q=0"), None));
    }

    #[test]
    fn the_policy_allows_the_style_by_its_hash_only() {
        let p = csp();
        assert!(p.starts_with("default-src 'none'; style-src 'sha256-"));
        assert!(!p.contains("unsafe"));
        assert!(!STYLE.contains("</"));
    }

    #[test]
    fn ages_count_whole_years() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date");
        assert_eq!(age(d("1941-05-06"), d("2026-05-05")), 84);
        assert_eq!(age(d("1941-05-06"), d("2026-05-06")), 85);
    }

    #[test]
    fn capital_headings_are_bold_and_words_are_escaped() {
        let m = paragraph("CONFLICT: two <forms>").into_string();
        assert_eq!(m, "<p><strong>CONFLICT:</strong> two &lt;forms&gt;</p>");
        let m = paragraph("Ann: a note").into_string();
        assert_eq!(m, "<p>Ann: a note</p>");
    }

    #[test]
    fn an_unavailable_answer_says_what_to_do() {
        let r = answer(
            Err(ApiError::Unavailable(
                "the database is not answering".into(),
            )),
            &Reader {
                break_glass: None,
                may_break_glass: true,
            },
        );
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().contains_key(header::RETRY_AFTER));
        assert_eq!(
            r.headers().get(header::CACHE_CONTROL).map(|h| h.as_bytes()),
            Some(&b"no-store"[..])
        );
        let page = problem(
            &ApiError::Unavailable("the database is not answering".into()),
            &Reader {
                break_glass: None,
                may_break_glass: true,
            },
        );
        assert!(page.contains("<h1 id=\"answer-h\">Service unavailable</h1>"));
        assert!(page.contains("the database is not answering"));
        assert!(page.contains("follow usual clinical guidance, including resuscitation guidance"));
    }
}
