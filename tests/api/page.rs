//! The emergency summary as a page, read the way a crew's device reads it: headless Chromium
//! (Debian's `chromium`, driven through `chromedriver` with fantoccini), the bearer token sent
//! through the DevTools protocol, axe-core injected into every page. Screenshots (and a PDF of
//! each summary as printed on A4) are saved under `<cargo target dir>/screenshots/`.

use crate::both_backends;
use crate::helpers::*;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

both_backends!(
    page_states_each_cpr_decision,
    page_shows_conflict_and_deceased_banners,
    page_answers_that_are_not_a_record,
    page_is_the_same_answer_as_the_bundle
);

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Where the screenshots go: `<target dir>/screenshots` (the test binary is
/// `<target dir>/debug/deps/api-<hash>`).
fn screenshots() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe
        .ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

fn axe_source() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser/node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `npm ci` in tests/browser (.ci/run does)",
            path.display()
        )
    })
}

/// A DevTools command through chromedriver (`goog/cdp/execute`).
#[derive(Debug)]
struct Cdp(&'static str, Value);

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"cmd": self.0, "params": self.1}).to_string()),
        )
    }
}

struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
    tag: String,
}

impl Drop for Browser {
    /// A test that failed never closed its session: its Chromium (found by this browser's own
    /// profile folder, by process id) is ended with its chromedriver, never left behind.
    fn drop(&mut self) {
        if self.client.is_some() {
            let mark = format!("--user-data-dir={}", self._profile.path().display());
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline)
                    .split('\0')
                    .any(|a| a == mark)
                {
                    let _ = Command::new("kill").arg(pid.to_string()).status();
                }
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start(b: Backend, scenario: &str) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{CHROMEDRIVER}: {e} (apt-get install chromium chromium-driver)")
            });
        let profile = tempfile::tempdir().expect("profile dir");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars",
                format!("--user-data-dir={}", profile.path().display())]}),
        );
        let mut browser = Browser {
            driver,
            client: None,
            _profile: profile,
            tag: format!(
                "{}-{scenario}",
                if b == Backend::Sqlite {
                    "sqlite"
                } else {
                    "postgres"
                }
            ),
        };
        let url = format!("http://127.0.0.1:{port}");
        let mut last = String::new();
        for _ in 0..100 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => {
                    browser.client = Some(c);
                    return browser;
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start a session: {last}");
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("session")
    }

    async fn cdp(&self, cmd: &'static str, params: Value) -> Value {
        self.c()
            .issue_cmd(Cdp(cmd, params))
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    /// Every request the page makes carries this bearer token, as a crew's web view does.
    async fn token(&self, api: &Api) {
        let token = api.token.as_deref().expect("token");
        self.cdp("Network.enable", json!({})).await;
        self.cdp(
            "Network.setExtraHTTPHeaders",
            json!({"headers": {"Authorization": format!("Bearer {token}")}}),
        )
        .await;
    }

    async fn screen(&self, width: u32, height: u32, mobile: bool) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.c()
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    async fn shot(&self, name: &str) {
        let png = self.c().screenshot().await.expect("screenshot");
        let path = screenshots().join(format!("{}-{name}.png", self.tag));
        std::fs::write(&path, png).expect("write screenshot");
    }

    /// axe-core over the whole page (WCAG A/AA and best practice): no violations. Evaluated
    /// through WebDriver, which the page's CSP does not govern (the page itself runs no script).
    async fn axe(&self, name: &str) {
        self.js(&format!("{}\nreturn typeof axe;", axe_source()))
            .await;
        let found = self
            .c()
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {resultTypes: ['violations']})
                    .then(r => done(JSON.stringify(r.violations.map(v => ({id: v.id, help: v.help,
                        nodes: v.nodes.map(n => n.html)})))))
                    .catch(e => done('axe failed: ' + e));",
                vec![],
            )
            .await
            .expect("axe.run");
        let found = found.as_str().unwrap_or("").to_string();
        assert_eq!(found, "[]", "axe-core violations on {name}");
    }

    /// Opens a page at 768x1024 (tablet): returns its visible text; axe-core runs; screenshots
    /// at tablet and phone size (375x667).
    async fn open(&self, base: &str, path: &str, name: &str) -> String {
        self.screen(768, 1024, false).await;
        self.c()
            .goto(&format!("{base}{path}"))
            .await
            .expect("navigate");
        let lang = self.js("return document.documentElement.lang").await;
        if lang != "en-GB" {
            let source = self.c().source().await.unwrap_or_default();
            panic!("{path}: not the page: {source}");
        }
        let text = self.js("return document.body.innerText").await;
        let text = text.as_str().expect("text").to_string();
        self.axe(name).await;
        self.shot(&format!("{name}-tablet")).await;
        self.screen(375, 667, true).await;
        self.shot(&format!("{name}-phone")).await;
        self.screen(768, 1024, false).await;
        text
    }

    /// The CPR line is inside the first screen of a 768x1024 tablet, without scrolling, in
    /// large text.
    async fn cpr_on_first_screen(&self) {
        self.cpr_line(true).await
    }

    /// The CPR line is inside the first screen; in large text only when it is to be acted on.
    async fn cpr_line(&self, large: bool) {
        self.screen(768, 1024, false).await;
        let r = self
            .js("window.scrollTo(0, 0); const r = document.getElementById('cpr-line').getBoundingClientRect();
                 return [r.top, r.bottom, window.innerHeight, getComputedStyle(document.getElementById('cpr-line')).fontSize];")
            .await;
        let bottom = r[1].as_f64().expect("bottom");
        assert_eq!(r[2], 1024, "viewport {r}");
        assert!(
            r[0].as_f64().expect("top") >= 0.0 && bottom <= 1024.0,
            "the CPR line is outside the first screen: {r}"
        );
        let size: f64 = r[3]
            .as_str()
            .and_then(|s| s.trim_end_matches("px").parse().ok())
            .expect("font size");
        assert_eq!(size >= 22.0, large, "the CPR line's size: {size}px");
    }

    /// Printed on A4: one or two pages, with the time it was produced.
    async fn print(&self, name: &str) {
        let pdf = self
            .cdp(
                "Page.printToPDF",
                json!({"paperWidth": 8.27, "paperHeight": 11.69, "preferCSSPageSize": true}),
            )
            .await;
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(pdf["data"].as_str().expect("pdf data"))
            .expect("pdf base64");
        let path = screenshots().join(format!("{}-{name}.pdf", self.tag));
        std::fs::write(&path, &bytes).expect("write pdf");
        let text = String::from_utf8_lossy(&bytes);
        let pages = text.matches("/Type /Page").count() - text.matches("/Type /Pages").count();
        assert!((1..=2).contains(&pages), "{name} prints on {pages} pages");
        let media = self
            .js("return matchMedia('print').matches || document.querySelector('footer').innerText")
            .await;
        assert!(
            media.as_str().unwrap_or("").contains("Produced at"),
            "{media}"
        );
    }

    async fn finish(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

fn path_for(n: u32) -> String {
    format!(
        "/Patient/$emergency-summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{}",
        nhs(n)
    )
}

fn spaced(n: &str) -> String {
    format!("{} {} {}", &n[..3], &n[3..6], &n[6..])
}

fn cpr_decision(pid: &str, code: &str, when: &str, by: &str) -> Value {
    let mut o = observation(pid, code);
    o["effectiveDateTime"] = json!(when);
    o["performer"] = json!([{"display": by}]);
    o
}

async fn with_consent(app: &TestApp, n: u32, family: &str) -> (Api, String) {
    let gp = app.client("gp-system", "A81001", "gp").await;
    let mut p = patient(&nhs(n), family, "A81001");
    p["generalPractitioner"][0]["display"] = json!("Riverside Practice");
    p["address"] = json!([{"line": ["1 Park Row"], "city": "Leeds", "postalCode": "LS1 4AP"}]);
    let pid = gp.create_id(&p).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    (gp, pid)
}

fn has(text: &str, expected: &[&str]) {
    for e in expected {
        assert!(text.contains(e), "{e:?} not on the page:\n{text}");
    }
}

fn lacks(text: &str, unexpected: &[&str]) {
    for e in unexpected {
        assert!(!text.contains(e), "{e:?} on the page:\n{text}");
    }
}

/// Hazard "ambiguous CPR status": a DNACPR, a for-CPR decision and no decision, each stated in
/// words in large text inside the first screen of a tablet, with who decided, when and the
/// review date; an overdue review is a banner; numbers are labelled `tel:` links.
async fn page_states_each_cpr_decision(b: Backend) {
    let app = TestApp::spawn(b).await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let browser = Browser::start(b, "decisions").await;
    browser.token(&crew).await;

    // Not for CPR, with a review date that has passed, a daughter and the 24-hour team.
    let (gp, pid) = with_consent(&app, 1, "Smith").await;
    let mut dnacpr = cpr_decision(
        &pid,
        "450476008",
        "2026-03-02",
        "Dr A Smith (GP, Riverside Practice)",
    );
    dnacpr["extension"] = json!([{"url": "https://fhir.epaccs.nhs.example/StructureDefinition/planned-review-date", "valueDate": "2026-06-02"}]);
    gp.create(&dnacpr).await;
    gp.create(&json!({"resourceType": "RelatedPerson", "active": true,
        "patient": {"reference": format!("Patient/{pid}")},
        "relationship": [{"text": "Daughter"}], "name": [{"given": ["Jane"], "family": "Smith"}],
        "telecom": [{"system": "phone", "value": "07700 900123", "use": "mobile"}]}))
        .await;
    gp.create(&json!({"resourceType": "CareTeam", "status": "active",
        "subject": {"reference": format!("Patient/{pid}")}, "name": "Riverside 24-hour palliative care team",
        "participant": [{"role": [{"text": "Key worker"}], "member": {"display": "Sam Nurse"}}],
        "telecom": [{"system": "phone", "value": "0113 496 0000"}]}))
        .await;
    let text = browser.open(&app.base, &path_for(1), "dnacpr").await;
    has(
        &text,
        &[
            "Alex Smith",
            &spaced(&nhs(1)),
            "6 May 1941 (aged 85)",
            "1 Park Row, Leeds, LS1 4AP",
            "Riverside Practice",
            "NOT FOR CARDIOPULMONARY RESUSCITATION (NOT FOR CPR): decided 2 Mar 2026 by Dr A Smith (GP, Riverside Practice); review by 2 Jun 2026",
            "REVIEW OVERDUE: CPR decision: the planned review date 2 Jun 2026 has passed.",
            "Call Jane Smith (Daughter): 07700 900123 (mobile)",
            "Call Riverside 24-hour palliative care team: 0113 496 0000",
            "Last updated",
            "Produced at",
        ],
    );
    lacks(
        &text,
        &["FOR ATTEMPTED", "CONFLICT", "DECEASED", "BREAK-GLASS"],
    );
    // The order a crew needs: identity, banner, CPR, then the rest.
    let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s} missing"));
    assert!(at("NHS number") < at("REVIEW OVERDUE"));
    assert!(at("REVIEW OVERDUE") < at("NOT FOR CARDIOPULMONARY"));
    assert!(at("NOT FOR CARDIOPULMONARY") < at("ReSPECT recommendations"));
    assert!(at("Lasting power of attorney") < at("Key worker"));
    let tel = browser
        .js("return Array.from(document.querySelectorAll('a[href^=\"tel:\"]')).map(a => a.getAttribute('href') + ' ' + a.innerText)")
        .await;
    assert_eq!(
        tel,
        json!([
            "tel:07700900123 Call Jane Smith (Daughter): 07700 900123 (mobile)",
            "tel:01134960000 Call Riverside 24-hour palliative care team: 0113 496 0000"
        ])
    );
    browser.cpr_on_first_screen().await;
    browser.print("dnacpr-print").await;

    // For attempted CPR.
    let (gp, pid) = with_consent(&app, 2, "Jones").await;
    gp.create(&cpr_decision(&pid, "450475007", "2026-03-02", "Dr A Smith"))
        .await;
    let text = browser.open(&app.base, &path_for(2), "for-cpr").await;
    has(
        &text,
        &[
            "Alex Jones",
            "FOR ATTEMPTED CPR (cardiopulmonary resuscitation): decided 2 Mar 2026 by Dr A Smith",
        ],
    );
    lacks(&text, &["NOT FOR", "REVIEW OVERDUE"]);
    browser.cpr_on_first_screen().await;

    // No decision.
    with_consent(&app, 3, "Brown").await;
    let text = browser.open(&app.base, &path_for(3), "no-decision").await;
    has(
        &text,
        &[
            "Alex Brown",
            "No CPR decision recorded: follow usual resuscitation guidance",
        ],
    );
    lacks(&text, &["NOT FOR", "FOR ATTEMPTED"]);
    browser.cpr_on_first_screen().await;
    browser.finish().await;
}

/// Hazards "conflicting CPR decisions" and "deceased person's record still active": the page
/// says CONFLICT in a banner and lists both decisions; a deceased person's page says DECEASED
/// with the date and presents nothing as current.
async fn page_shows_conflict_and_deceased_banners(b: Backend) {
    let app = TestApp::spawn(b).await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let browser = Browser::start(b, "banners").await;
    browser.token(&crew).await;

    let (gp, pid) = with_consent(&app, 1, "Conflict").await;
    gp.create(&json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": format!("Patient/{pid}")},
        "participant": [{"member": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "HOS01"}}}]})).await;
    let hospice = app.client("hospice", "HOS01", "hospice").await;
    gp.create(&cpr_decision(
        &pid,
        "450476008",
        "2026-03-02",
        "Dr A Smith (GP, Riverside Practice)",
    ))
    .await;
    hospice
        .create(&cpr_decision(
            &pid,
            "450475007",
            "2026-04-01",
            "Dr B Jones (Consultant, St Example Hospice)",
        ))
        .await;
    let text = browser.open(&app.base, &path_for(1), "conflict").await;
    has(
        &text,
        &[
            "CONFLICT: the record holds decisions that disagree",
            "CONFLICT: the current CPR decisions disagree",
            "NOT FOR CARDIOPULMONARY RESUSCITATION (NOT FOR CPR): decided 2 Mar 2026 by Dr A Smith (GP, Riverside Practice)",
            "FOR ATTEMPTED CPR (cardiopulmonary resuscitation): decided 1 Apr 2026 by Dr B Jones (Consultant, St Example Hospice)",
        ],
    );
    browser.cpr_on_first_screen().await;
    browser.print("conflict-print").await;

    let gp = app.client("gp-system", "A81001", "gp").await;
    let mut p = patient(&nhs(2), "Died", "A81001");
    // 23:30 UTC on 14 July is 00:30 BST on 15 July.
    p["deceasedDateTime"] = json!("2026-07-14T23:30:00Z");
    let pid = gp.create_id(&p).await;
    gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
    gp.create(&cpr_decision(&pid, "450476008", "2026-03-02", "Dr A Smith"))
        .await;
    let text = browser.open(&app.base, &path_for(2), "deceased").await;
    has(
        &text,
        &[
            "DECEASED: This person has died (15 Jul 2026). Nothing in this summary is a current recommendation for care.",
            "6 May 1941 (died aged 85)",
            "Recorded before death, not for action",
        ],
    );
    lacks(&text, &["14 Jul 2026"]);
    let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s} missing"));
    assert!(at("DECEASED") < at("NOT FOR CARDIOPULMONARY"));
    // Recorded before death: shown, but not as an instruction in large text.
    browser.cpr_line(false).await;
    browser.finish().await;
}

/// Hazards "wrong patient", "existence of a withheld record revealed" and the refusal's words:
/// several matches ask for more details and show nothing clinical; nobody found; a refusal in
/// the OperationOutcome's words, a break-glass role told how; break-glass shows its banner.
async fn page_answers_that_are_not_a_record(b: Backend) {
    let app = TestApp::spawn(b).await;
    let browser = Browser::start(b, "answers").await;
    let gp = app.client("gp-system", "A81001", "gp").await;
    let html = [("accept", "text/html")];

    // Several matches.
    for (n, code) in [(1, "450476008"), (2, "450475007")] {
        let pid = gp.create_id(&patient(&nhs(n), "Twin", "A81001")).await;
        gp.create(&consent(&pid, GIVEN, "2026-01-01")).await;
        gp.create(&observation(&pid, code)).await;
    }
    let crew = app.client("nhs111", "NHS11", "urgent-care").await;
    browser.token(&crew).await;
    let q =
        "/Patient/$emergency-summary?family=twin&birthdate=1941-05-06&address-postalcode=ls1%204ap";
    let json = crew.get(q).await;
    assert_eq!(json.status, 422);
    let page = crew.send(reqwest::Method::GET, q, None, &html).await;
    assert_eq!(page.status, 422, "{}", page.text);
    let text = browser.open(&app.base, q, "several-matches").await;
    has(
        &text,
        &[
            "More than one person matches",
            &json.outcome(),
            "No clinical information is shown",
        ],
    );
    lacks(
        &text,
        &[
            "CPR decision",
            "RESUSCITATION",
            &spaced(&nhs(1)),
            &spaced(&nhs(2)),
            "Twin",
        ],
    );

    // Nobody found.
    let json = crew.get(&path_for(9)).await;
    assert_eq!(json.status, 404);
    let page = crew
        .send(reqwest::Method::GET, &path_for(9), None, &html)
        .await;
    assert_eq!(page.status, 404);
    let text = browser.open(&app.base, &path_for(9), "not-found").await;
    has(&text, &["No record found", &json.outcome()]);

    // Refused: no consent in force. The ambulance role may break the glass and is told how.
    let pid = gp.create_id(&patient(&nhs(3), "Private", "A81001")).await;
    gp.create(&observation(&pid, "450476008")).await;
    let ambulance = app.client("ambulance", "RX801", "ambulance").await;
    let json = ambulance.get(&path_for(3)).await;
    assert_eq!(json.status, 403);
    let page = ambulance
        .send(reqwest::Method::GET, &path_for(3), None, &html)
        .await;
    assert_eq!(page.status, 403);
    browser.token(&ambulance).await;
    let text = browser.open(&app.base, &path_for(3), "refused").await;
    has(
        &text,
        &[
            "Access refused",
            &json.outcome(),
            "How to get emergency access (break-glass)",
            "purpose of use BTG",
        ],
    );
    lacks(&text, &["RESUSCITATION", "Private"]);
    // A role that may not break the glass learns nothing, not even that a record exists.
    let home = app.client("care-home", "CH001", "care-home").await;
    let page = home
        .send(reqwest::Method::GET, &path_for(3), None, &html)
        .await;
    assert_eq!(page.status, 404);
    assert!(page.text.contains("No record found"));
    assert!(!page.text.contains("emergency access") && !page.text.contains("Private"));

    // Break-glass: the record, with its banner.
    let btg = app
        .client_with(
            "ambulance",
            json!({"purpose_of_use": {"code": "BTG"}, "break_glass_reason": "cardiac arrest, no family present"}),
        )
        .await;
    browser.token(&btg).await;
    let text = browser.open(&app.base, &path_for(3), "break-glass").await;
    has(
        &text,
        &[
            "BREAK-GLASS: you asked for emergency access",
            "Reason given: cardiac arrest, no family present",
            "NOT FOR CARDIOPULMONARY RESUSCITATION",
        ],
    );
    browser.cpr_on_first_screen().await;
    browser.finish().await;
}

/// The page and the Bundle are one answer: chosen by `Accept` or `_format` only, every other
/// client keeps the Bundle, the same audit record, and the page's headers (strict CSP, no-store,
/// no script).
async fn page_is_the_same_answer_as_the_bundle(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (gp, pid) = with_consent(&app, 1, "Same").await;
    gp.create(&cpr_decision(&pid, "450476008", "2026-03-02", "Dr A Smith"))
        .await;
    let crew = app.client("ambulance", "RX801", "ambulance").await;
    let po = app.client("privacy", "PO001", "privacy-officer").await;
    let audits = || async {
        po.get(&format!("/AuditEvent?patient={pid}"))
            .await
            .entries(None)
            .iter()
            .filter(|e| e.to_string().contains("$emergency-summary"))
            .count()
    };
    let path = path_for(1);
    for accept in [
        Some("application/fhir+json"),
        Some("*/*"),
        None,
        Some("application/json, text/html;q=0.5"),
    ] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let r = crew.send(reqwest::Method::GET, &path, None, &headers).await;
        assert_eq!(r.status, 200, "{accept:?}");
        assert_eq!(r.body["resourceType"], "Bundle", "{accept:?}");
        assert_eq!(r.body["type"], "document", "{accept:?}");
    }
    let before = audits().await;
    for (p, headers) in [
        (path.clone(), vec![("accept", "text/html")]),
        (format!("{path}&_format=html"), vec![]),
        (
            path.clone(),
            vec![(
                "accept",
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            )],
        ),
    ] {
        let r = crew.send(reqwest::Method::GET, &p, None, &headers).await;
        assert_eq!(r.status, 200, "{p}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
        let csp = r.header("content-security-policy").expect("CSP");
        assert!(
            csp.starts_with("default-src 'none'; style-src 'sha256-") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert!(r.text.starts_with("<!DOCTYPE html><html lang=\"en-GB\">"));
        assert!(!r.text.contains("<script"));
        assert!(!r.text.contains("http://") && !r.text.contains("https://"));
        assert!(r.text.contains("NOT FOR CARDIOPULMONARY RESUSCITATION"));
    }
    // One audit record per look-up, page or Bundle alike.
    assert_eq!(audits().await, before + 3);
    // Errors keep their status codes as pages.
    let r = crew
        .send(
            reqwest::Method::GET,
            "/Patient/$emergency-summary?family=x",
            None,
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text.contains("The look-up could not be read"),
        "{}",
        r.text
    );
    // `_format=json` wins over an Accept that asks for HTML.
    let r = crew
        .send(
            reqwest::Method::GET,
            &format!("{path}&_format=json"),
            None,
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(r.body["resourceType"], "Bundle");
}
