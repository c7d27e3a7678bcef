//! The `epaccs` service: settings, start-up and the CLI's building blocks. See README.md.

use anyhow::{bail, Context};
use epaccs_access::Rules;
use epaccs_api::{AppState, Limits};
use epaccs_auth::TokenService;
use epaccs_fhir::search::SearchParams;
use epaccs_store::{DatabaseUrl, Store, StoreOptions};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

pub mod cli;
pub mod synthetic;

/// Every setting of the service. Each comes from a flag or its `EPACCS_*` environment variable;
/// a malformed value stops start-up with a message naming it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: DatabaseUrl,
    pub listen: SocketAddr,
    /// Absolute base URL used in Location headers and links; by default `http://<listen>`.
    pub base_url: Option<String>,
    pub workers: usize,
    pub pool_size: u32,
    /// MiB of current resources kept in memory for reads (0 = off).
    pub read_cache_mb: u64,
    /// Directory of the audit journal (None: reads' audit records go straight to the database).
    pub audit_journal: Option<std::path::PathBuf>,
    /// PostgreSQL without a journal: connections committing reads' audit records.
    pub audit_committers: usize,
    pub rules: Rules,
    pub limits: Limits,
    pub notify: epaccs_notify::NotifyOptions,
    /// Base URL of a National Record Locator-style FHIR endpoint for pointers; off when None.
    pub nrl_url: Option<String>,
}

impl Settings {
    pub fn parse_base_url(raw: &str) -> anyhow::Result<String> {
        let u = url::Url::parse(raw)
            .with_context(|| format!("EPACCS_BASE_URL {raw:?} is not an absolute URL"))?;
        if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
            bail!("EPACCS_BASE_URL {raw:?} must be an http(s) URL with a host");
        }
        if u.query().is_some() || u.fragment().is_some() {
            bail!("EPACCS_BASE_URL {raw:?} must not have a query or fragment");
        }
        Ok(raw.trim_end_matches('/').to_string())
    }

    /// Where the audit journal lives unless configured: beside a SQLite database file (on the
    /// same disk, so it is as durable as the database); none for PostgreSQL, whose service
    /// instances may have no disk of their own that outlives them.
    pub fn default_audit_journal(url: &DatabaseUrl) -> Option<std::path::PathBuf> {
        match url {
            DatabaseUrl::Sqlite(path) => {
                let mut name = path.file_name()?.to_os_string();
                name.push(".audit-journal");
                Some(path.with_file_name(name))
            }
            DatabaseUrl::Postgres(_) => None,
        }
    }

    pub fn load_rules(path: Option<&str>) -> anyhow::Result<Rules> {
        match path {
            None => Ok(Rules::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read EPACCS_SHARING_RULES file {p}"))?;
                Rules::from_json(&text)
                    .with_context(|| format!("EPACCS_SHARING_RULES file {p} is not valid"))
            }
        }
    }
}

/// With the journal off, records a crash left in the default journal would not be copied: say so.
fn warn_of_uncopied_journal(url: &DatabaseUrl) {
    let Some(dir) = Settings::default_audit_journal(url) else {
        return;
    };
    if epaccs_store::audit_journal_has_segments(&dir) {
        tracing::warn!(
            journal = %dir.display(),
            "the audit journal is off but its directory holds segments that may not have been \
             copied into the audit trail; start once with the journal on to copy them"
        );
    }
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub base_url: String,
    pub store: Store,
    pub handle: actix_web::dev::ServerHandle,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
    pub worker: epaccs_notify::Worker,
}

impl Running {
    /// Stops accepting requests and waits for in-flight ones to finish.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.server.await;
        self.worker.stop().await;
    }
}

/// Opens the database (running migrations), loads keys, binds and starts serving.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let params = Arc::new(
        SearchParams::shipped().context("the shipped search parameter definitions are invalid")?,
    );
    let profiles = Arc::new(
        epaccs_fhir::profile::Profiles::shipped().context("the shipped profiles are invalid")?,
    );
    let url = settings.database_url.clone();
    if settings.audit_journal.is_none() {
        warn_of_uncopied_journal(&url);
    }
    let opts = StoreOptions {
        pool_size: settings.pool_size,
        cache_bytes: settings.read_cache_mb << 20,
        audit_journal: settings.audit_journal.clone(),
        audit_committers: settings.audit_committers,
        ..Default::default()
    };
    let store = tokio::task::spawn_blocking(move || Store::open(&url, params, opts))
        .await?
        .map_err(|e| anyhow::anyhow!("cannot open the database: {e}"))?;
    let listener = TcpListener::bind(settings.listen)
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let base_url = settings
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let tokens = TokenService::new(store.clone(), &base_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot load the signing key: {e}"))?;
    let state = AppState {
        store: store.clone(),
        profiles,
        tokens: Arc::new(tokens),
        rules: Arc::new(settings.rules.clone()),
        base_url: base_url.clone(),
        limits: settings.limits.clone(),
    };
    let nrl = settings.nrl_url.clone();
    store
        .write(move |c| epaccs_store::outbox::configure_locator(c, nrl.as_deref()))
        .await
        .map_err(|e| anyhow::anyhow!("cannot configure the record locator feed: {e}"))?;
    let mut notify = settings.notify.clone();
    notify.base_url = base_url.clone();
    let worker = epaccs_notify::start(store.clone(), Arc::new(settings.rules.clone()), notify);
    let server = epaccs_api::server(state, listener, settings.workers)?;
    let handle = server.handle();
    let server = tokio::spawn(server);
    Ok(Running {
        addr,
        base_url,
        store,
        handle,
        server,
        worker,
    })
}
