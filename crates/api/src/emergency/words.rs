//! Words for people: dates in Europe/London ("2 Mar 2026"), names, codes by their displays,
//! telephone numbers, and XHTML narrative that is always well formed.

use super::view::{Codes, NameV, Telecom};
use chrono::{NaiveDate, TimeZone, Utc};
use chrono_tz::Europe::London;
use epaccs_fhir::date;

/// A FHIR date, dateTime or instant as a person reads it: "2 Mar 2026". A date is shown as
/// written; a time is first taken to Europe/London (BST or GMT, as it was then), so that
/// 23:30 UTC on 30 June is 1 Jul. A year or a month alone stays as precise as it was given.
/// A value that cannot be read is shown as written rather than dropped.
pub fn day(s: &str) -> String {
    let s = s.trim();
    let formatted = match s.len() {
        4 => s.parse::<i32>().ok().map(|y| y.to_string()),
        7 => NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d")
            .ok()
            .map(|d| d.format("%b %Y").to_string()),
        10 => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .map(|d| d.format("%-d %b %Y").to_string()),
        _ => date::parse_range(s)
            .and_then(|r| Utc.timestamp_micros(r.low).single())
            .map(|t| t.with_timezone(&London).format("%-d %b %Y").to_string()),
    };
    formatted.unwrap_or_else(|| s.to_string())
}

/// Display words for the codes the summary states, when the data carries no display.
fn known(code: &str) -> Option<&'static str> {
    Some(match code {
        "110481000000108" => "home",
        "108401000000102" => "hospice",
        "109401000000108" => "hospital",
        "89751000000108" => "community hospital",
        "89761000000106" => "nursing home",
        "512071000000106" => "residential home",
        "819211000000102" => "usual place of residence",
        "517111000000103" => "unable to express preference",
        "517131000000106" => "discussion not appropriate",
        "766391000000108" => "declined discussion",
        "517161000000101" => "undecided",
        "511401000000102" => "last days of life",
        "955231000000109" => "last weeks of life",
        "968211000000101" => "last months of life",
        "767503006" => "about a year",
        "1413121000000106" => "more than a year",
        "1403151000000103" => "On palliative care register",
        "736373009" => "End of life care plan",
        "736366004" => "Advance care plan",
        "376201000000102" => "Palliative care anticipatory medication box",
        "871021000000106" => "Anticipatory medication prescribed",
        // FHIR data-absent-reason
        "asked-declined" => "asked but declined",
        "asked-unknown" => "asked but not known",
        "not-asked" => "not asked",
        "unknown" => "unknown",
        "temp-unknown" => "not yet known",
        "not-applicable" => "not applicable",
        "masked" => "withheld",
        "not-performed" => "not done",
        // v3-RoleCode, personal relationships
        "DAU" => "daughter",
        "SON" => "son",
        "CHILD" => "child",
        "WIFE" => "wife",
        "HUSB" => "husband",
        "SPS" => "spouse",
        "DOMPART" => "partner",
        "SIGOTHR" => "significant other",
        "MTH" => "mother",
        "FTH" => "father",
        "SIS" => "sister",
        "BRO" => "brother",
        "SIB" => "sibling",
        "GRNDCHILD" => "grandchild",
        "NIECE" => "niece",
        "NEPHEW" => "nephew",
        "FRND" => "friend",
        "NBOR" => "neighbour",
        "NOK" => "next of kin",
        "FAMMEMB" => "family member",
        _ => return None,
    })
}

/// A CodeableConcept in words: its text, else the first display, else the summary's own words
/// for a code it knows, else the first code as written.
pub fn concept(c: &Codes) -> Option<String> {
    if let Some(t) = c.text.as_deref().filter(|t| !t.trim().is_empty()) {
        return Some(t.trim().to_string());
    }
    if let Some(d) = c
        .coding
        .iter()
        .find_map(|x| x.display.as_deref().filter(|d| !d.trim().is_empty()))
    {
        return Some(d.trim().to_string());
    }
    if let Some(k) = c.codes().find_map(known) {
        return Some(k.to_string());
    }
    c.codes().next().map(str::to_string)
}

/// A HumanName: its text, else prefix, given and family names.
pub fn name(n: &NameV) -> Option<String> {
    if let Some(t) = n.text.as_deref().filter(|t| !t.trim().is_empty()) {
        return Some(t.trim().to_string());
    }
    let parts: Vec<&str> = n
        .prefix
        .iter()
        .chain(n.given.iter())
        .map(|s| s.as_ref())
        .chain(n.family.as_deref())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// The telephone numbers among contact points, with their use: "07700 900123 (mobile)".
pub fn phones(telecom: &[Telecom]) -> Vec<String> {
    telecom
        .iter()
        .filter(|t| matches!(t.system.as_deref(), None | Some("phone") | Some("sms")))
        .filter_map(|t| {
            let v = t.value.as_deref()?.trim();
            (!v.is_empty()).then(|| match t.use_.as_deref() {
                Some(u @ ("mobile" | "home" | "work")) => format!("{v} ({u})"),
                _ => v.to_string(),
            })
        })
        .collect()
}

/// An NHS number in the 3-3-4 groups people read it in.
pub fn nhs_number(n: &str) -> String {
    if n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()) {
        format!("{} {} {}", &n[..3], &n[3..6], &n[6..])
    } else {
        n.to_string()
    }
}

/// An identifier as a label people know ("GMC 7654321", "ODS A81001"), else system|value.
pub fn identifier(system: Option<&str>, value: &str) -> String {
    let label = match system.unwrap_or("") {
        "https://fhir.nhs.uk/Id/ods-organization-code" => "ODS",
        "https://fhir.nhs.uk/Id/sds-user-id" => "SDS",
        "https://fhir.nhs.uk/Id/nhs-number" => "NHS number",
        s if s.starts_with("https://fhir.hl7.org.uk/Id/") => {
            return format!(
                "{} {value}",
                s.trim_start_matches("https://fhir.hl7.org.uk/Id/")
                    .split('-')
                    .next()
                    .unwrap_or("")
                    .to_uppercase()
            )
        }
        "" => return value.to_string(),
        other => return format!("{other}|{value}"),
    };
    format!("{label} {value}")
}

/// The text of an XHTML narrative: tags dropped, the five XML entities and numeric character
/// references read, white space collapsed.
pub fn strip_xhtml(div: &str) -> String {
    let mut text = String::with_capacity(div.len());
    let mut in_tag = false;
    for c in div.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' if in_tag => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(end) = after.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &after[1..];
            continue;
        };
        let entity = &after[1..end];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some(' '),
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &after[end + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text made safe inside XHTML: markup characters escaped, and characters XML forbids
/// (control characters other than tab, newline and carriage return) left out.
pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
}

/// A narrative div of paragraphs.
pub fn div(paragraphs: &[String]) -> String {
    let mut out = String::with_capacity(64 + paragraphs.iter().map(|p| p.len() + 8).sum::<usize>());
    out.push_str("<div xmlns=\"http://www.w3.org/1999/xhtml\">");
    for p in paragraphs.iter().filter(|p| !p.is_empty()) {
        out.push_str("<p>");
        escape(p, &mut out);
        out.push_str("</p>");
    }
    out.push_str("</div>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_read_in_london_time() {
        for (given, shown) in [
            ("2026-03-02", "2 Mar 2026"),
            ("2026-03", "Mar 2026"),
            ("2026", "2026"),
            // Summer: BST (UTC+1). 23:30 UTC on 30 June is 00:30 on 1 July in London.
            ("2026-06-30T23:30:00Z", "1 Jul 2026"),
            ("2026-06-30T22:59:59Z", "30 Jun 2026"),
            // Winter: GMT. 23:30 UTC is still the same day.
            ("2026-12-30T23:30:00Z", "30 Dec 2026"),
            ("2026-07-01T00:30:00+01:00", "1 Jul 2026"),
            // The clocks go forward at 01:00 UTC on 29 Mar 2026.
            ("2026-03-28T23:30:00Z", "28 Mar 2026"),
            ("2026-03-29T23:30:00Z", "30 Mar 2026"),
            ("not a date", "not a date"),
        ] {
            assert_eq!(day(given), shown, "{given}");
        }
    }

    #[test]
    fn narrative_is_escaped_and_well_formed() {
        let d = div(&["A & B <script>\"x\"\u{0007}".to_string()]);
        assert_eq!(
            d,
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>A &amp; B &lt;script&gt;&quot;x&quot;</p></div>"
        );
        assert_eq!(
            strip_xhtml("<div xmlns=\"x\"><p>Focus on comfort;</p><p>CPR attempts &lt;NOT&gt; recommended &amp; more&#33; &bogus</p></div>"),
            "Focus on comfort; CPR attempts <NOT> recommended & more! &bogus"
        );
    }

    #[test]
    fn identifiers_and_numbers_read_as_people_say_them() {
        assert_eq!(nhs_number("9990000018"), "999 000 0018");
        assert_eq!(
            identifier(Some("https://fhir.hl7.org.uk/Id/gmc-number"), "7654321"),
            "GMC 7654321"
        );
        assert_eq!(
            identifier(
                Some("https://fhir.nhs.uk/Id/ods-organization-code"),
                "A81001"
            ),
            "ODS A81001"
        );
    }
}
