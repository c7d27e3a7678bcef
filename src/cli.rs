//! Command-line interface.

use crate::Settings;
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use epaccs_api::state::EndpointPolicy;
use epaccs_api::Limits;
use epaccs_auth::keys::{self, ClientAlg};
use epaccs_core::{OdsCode, Role, Scopes};
use epaccs_store::{clients, DatabaseUrl};
use std::net::SocketAddr;

#[derive(Parser, Debug)]
#[command(
    name = "epaccs",
    version,
    about = "Shared end-of-life care record (EPaCCS) over FHIR R4"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the FHIR server.
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(DbArgs),
    /// Manage registered client systems.
    #[command(subcommand)]
    Client(ClientCommand),
}

#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// sqlite://PATH or postgres://USER@HOST:PORT/DB
    #[arg(
        long,
        env = "EPACCS_DATABASE_URL",
        default_value = "sqlite://data/epaccs.db"
    )]
    pub database_url: String,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Address to listen on.
    #[arg(long, env = "EPACCS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Absolute base URL used in Location headers and links (default http://<listen>).
    #[arg(long, env = "EPACCS_BASE_URL")]
    pub base_url: Option<String>,
    /// HTTP worker threads (default: number of cores).
    #[arg(long, env = "EPACCS_WORKERS")]
    pub workers: Option<String>,
    /// Database connections in the read pool.
    #[arg(long, env = "EPACCS_POOL_SIZE", default_value = "16")]
    pub pool_size: String,
    /// MiB of current resources kept in memory for reads (0 turns the cache off).
    #[arg(long, env = "EPACCS_READ_CACHE_MB", default_value = "256")]
    pub read_cache_mb: String,
    /// Directory of the audit journal: reads' audit records are fsync'd there before the
    /// response and copied into the audit tables behind it. "off" writes them straight to the
    /// database. Default: beside a SQLite database file; off for PostgreSQL.
    #[arg(long, env = "EPACCS_AUDIT_JOURNAL")]
    pub audit_journal: Option<String>,
    /// PostgreSQL without an audit journal: how many connections commit reads' audit records
    /// side by side (more helps when each commit's flush is slow, e.g. network storage).
    #[arg(long, env = "EPACCS_AUDIT_COMMITTERS", default_value = "1")]
    pub audit_committers: String,
    /// JSON file with the sharing rules (default rules if unset).
    #[arg(long, env = "EPACCS_SHARING_RULES")]
    pub sharing_rules: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, env = "EPACCS_MAX_BODY_BYTES", default_value = "4194304")]
    pub max_body_bytes: String,
    /// Delivery attempts per notification before a Subscription goes to error.
    #[arg(long, env = "EPACCS_NOTIFY_MAX_ATTEMPTS", default_value = "8")]
    pub notify_max_attempts: String,
    /// First notification retry delay in milliseconds (doubles per attempt, with jitter).
    #[arg(long, env = "EPACCS_NOTIFY_RETRY_MS", default_value = "500")]
    pub notify_retry_ms: String,
    /// Hosts Subscription endpoints may name, comma-separated: host names, IP addresses,
    /// `*.domain`, and `loopback` (this machine, http allowed). Outside loopback only https.
    #[arg(long, env = "EPACCS_SUBSCRIPTION_HOSTS", default_value = "loopback")]
    pub subscription_hosts: String,
    /// Base URL of a National Record Locator-style FHIR endpoint to publish pointers to (off if unset).
    #[arg(long, env = "EPACCS_NRL_URL")]
    pub nrl_url: Option<String>,
    /// Register a demo client (key written under ./data/) so the service can be tried at once.
    #[arg(long)]
    pub demo: bool,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Register (or re-register) a client system.
    Register(RegisterArgs),
    /// List registered clients.
    List(DbArgs),
    /// Revoke a client: its tokens stop working within seconds.
    Revoke {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        client_id: String,
    },
    /// Generate a client key pair: writes the private key (PEM) and prints the public JWK Set.
    Keygen {
        #[arg(long, default_value = "ES384")]
        alg: String,
        #[arg(long)]
        out: String,
    },
    /// Get an access token: signs a client assertion with a local key and calls the token endpoint.
    Token(TokenArgs),
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[arg(long)]
    pub client_id: String,
    /// ODS code of the client's organisation.
    #[arg(long)]
    pub org: String,
    /// gp, community, hospice, ambulance, urgent-care, acute, care-home, privacy-officer, admin
    #[arg(long)]
    pub role: String,
    /// Space-separated system scopes the client may be granted.
    #[arg(long)]
    pub scopes: String,
    #[arg(
        long,
        conflicts_with = "jwks_url",
        required_unless_present = "jwks_url"
    )]
    pub jwks_file: Option<String>,
    #[arg(long)]
    pub jwks_url: Option<String>,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// FHIR base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long)]
    pub client_id: String,
    /// Private key file (PEM) written by `client keygen`.
    #[arg(long)]
    pub key: String,
    #[arg(long, default_value = "ES384")]
    pub alg: String,
    #[arg(long, default_value = "system/*.read")]
    pub scope: String,
    /// SDS user id of the person using the client.
    #[arg(long)]
    pub user: Option<String>,
    /// TREAT, ETREAT or BTG.
    #[arg(long)]
    pub purpose: Option<String>,
    /// Break-glass reason (with --purpose BTG).
    #[arg(long)]
    pub reason: Option<String>,
}

fn parse_num<T: std::str::FromStr>(name: &str, raw: &str) -> anyhow::Result<T> {
    raw.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{name} {raw:?} is not a valid number"))
}

impl ServeArgs {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let database_url =
            DatabaseUrl::parse(&self.db.database_url).context("EPACCS_DATABASE_URL")?;
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            anyhow::anyhow!(
                "EPACCS_LISTEN {:?} is not an address like 127.0.0.1:8080",
                self.listen
            )
        })?;
        let base_url = self
            .base_url
            .as_deref()
            .map(Settings::parse_base_url)
            .transpose()?;
        let workers = match &self.workers {
            Some(w) => parse_num::<usize>("EPACCS_WORKERS", w)?,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        };
        if workers == 0 {
            bail!("EPACCS_WORKERS must be at least 1");
        }
        let pool_size = parse_num::<u32>("EPACCS_POOL_SIZE", &self.pool_size)?;
        if pool_size == 0 {
            bail!("EPACCS_POOL_SIZE must be at least 1");
        }
        let audit_committers =
            parse_num::<usize>("EPACCS_AUDIT_COMMITTERS", &self.audit_committers)?;
        if !(1..=64).contains(&audit_committers) {
            bail!("EPACCS_AUDIT_COMMITTERS must be from 1 to 64");
        }
        let read_cache_mb = parse_num::<u64>("EPACCS_READ_CACHE_MB", &self.read_cache_mb)?;
        if read_cache_mb > 1 << 20 {
            bail!("EPACCS_READ_CACHE_MB must be at most 1048576");
        }
        let max_body_bytes = parse_num::<usize>("EPACCS_MAX_BODY_BYTES", &self.max_body_bytes)?;
        let rules = Settings::load_rules(self.sharing_rules.as_deref())?;
        let max_attempts =
            parse_num::<i64>("EPACCS_NOTIFY_MAX_ATTEMPTS", &self.notify_max_attempts)?;
        if max_attempts < 1 {
            bail!("EPACCS_NOTIFY_MAX_ATTEMPTS must be at least 1");
        }
        let retry_ms = parse_num::<u64>("EPACCS_NOTIFY_RETRY_MS", &self.notify_retry_ms)?;
        let notify = epaccs_notify::NotifyOptions {
            max_attempts,
            base_delay: std::time::Duration::from_millis(retry_ms),
            ..Default::default()
        };
        let audit_journal = match self.audit_journal.as_deref() {
            None => Settings::default_audit_journal(&database_url),
            Some("off") => None,
            Some("") => bail!("EPACCS_AUDIT_JOURNAL must be a directory or \"off\""),
            Some(dir) => Some(std::path::PathBuf::from(dir)),
        };
        Ok(Settings {
            audit_journal,
            audit_committers,
            database_url,
            listen,
            base_url,
            workers,
            pool_size,
            read_cache_mb,
            rules,
            limits: Limits {
                max_body_bytes,
                subscription_endpoints: EndpointPolicy::parse(&self.subscription_hosts)
                    .map_err(|e| anyhow::anyhow!("EPACCS_SUBSCRIPTION_HOSTS: {e}"))?,
                ..Limits::default()
            },
            notify,
            nrl_url: self
                .nrl_url
                .as_deref()
                .map(Settings::parse_base_url)
                .transpose()
                .map_err(|e| anyhow::anyhow!("EPACCS_NRL_URL: {e}"))?,
        })
    }
}

fn connect(db: &DbArgs) -> anyhow::Result<epaccs_store::DbConn> {
    let url = DatabaseUrl::parse(&db.database_url).context("EPACCS_DATABASE_URL")?;
    url.migrate().map_err(|e| anyhow::anyhow!("{e}"))?;
    url.connect(true).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Registers a client directly in the database.
pub fn register(
    db: &DbArgs,
    client_id: &str,
    org: &str,
    role: &str,
    scopes: &str,
    jwks: Option<String>,
    jwks_url: Option<String>,
) -> anyhow::Result<()> {
    let org = OdsCode::parse(org)?;
    let role: Role = role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    Scopes::parse_strict(scopes)?;
    if let Some(j) = &jwks {
        let v: serde_json::Value = serde_json::from_str(j).context("the JWKS file is not JSON")?;
        if !v.get("keys").is_some_and(|k| k.is_array()) {
            bail!("the JWKS file must be a JWK Set: {{\"keys\": [...]}}");
        }
    }
    if let Some(u) = &jwks_url {
        url::Url::parse(u).context("--jwks-url is not a URL")?;
    }
    let mut conn = connect(db)?;
    let c = clients::Client {
        client_id: client_id.to_string(),
        org: org.to_string(),
        role: role.to_string(),
        scopes: scopes.to_string(),
        jwks,
        jwks_url,
        revoked: false,
        created: epaccs_fhir::date::now_micros(),
    };
    clients::register(&mut conn, &c).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let settings = args.settings()?;
            if args.demo {
                demo_client(&args.db, &settings)?;
            }
            let running = crate::start(settings).await?;
            tracing::info!(addr = %running.addr, base = %running.base_url, backend = running.store.backend(), "epaccs serving");
            println!(
                "epaccs serving FHIR R4 at {} ({})",
                running.base_url,
                running.store.backend()
            );
            running.server.await??;
            Ok(())
        }
        Command::Migrate(db) => {
            let url = DatabaseUrl::parse(&db.database_url).context("EPACCS_DATABASE_URL")?;
            let applied = url.migrate().map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{} migration(s) applied", applied.len());
            Ok(())
        }
        Command::Client(ClientCommand::Register(a)) => {
            let jwks = a
                .jwks_file
                .as_deref()
                .map(std::fs::read_to_string)
                .transpose()
                .context("cannot read --jwks-file")?;
            register(
                &a.db,
                &a.client_id,
                &a.org,
                &a.role,
                &a.scopes,
                jwks,
                a.jwks_url.clone(),
            )?;
            println!("registered client {}", a.client_id);
            Ok(())
        }
        Command::Client(ClientCommand::List(db)) => {
            let mut conn = connect(&db)?;
            for c in clients::list(&mut conn).map_err(|e| anyhow::anyhow!("{e}"))? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    c.client_id,
                    c.org,
                    c.role,
                    if c.revoked { "revoked" } else { "active" },
                    c.scopes
                );
            }
            Ok(())
        }
        Command::Client(ClientCommand::Revoke { db, client_id }) => {
            let mut conn = connect(&db)?;
            if !clients::revoke(&mut conn, &client_id).map_err(|e| anyhow::anyhow!("{e}"))? {
                bail!("no client {client_id}");
            }
            println!("revoked {client_id}");
            Ok(())
        }
        Command::Client(ClientCommand::Keygen { alg, out }) => {
            let alg = ClientAlg::parse(&alg)?;
            let pem = keys::generate_client_key(alg)?;
            std::fs::write(&out, &pem).with_context(|| format!("cannot write {out}"))?;
            let jwk = keys::public_jwk(&pem, alg)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"keys": [jwk]}))?
            );
            Ok(())
        }
        Command::Client(ClientCommand::Token(a)) => {
            let token = fetch_token(&a).await?;
            println!("{token}");
            Ok(())
        }
    }
}

/// Signs an assertion and exchanges it for an access token.
pub async fn fetch_token(a: &TokenArgs) -> anyhow::Result<String> {
    let alg = ClientAlg::parse(&a.alg)?;
    let pem = std::fs::read_to_string(&a.key).with_context(|| format!("cannot read {}", a.key))?;
    let kid = keys::public_jwk(&pem, alg)?["kid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let token_url = format!("{}/auth/token", a.url.trim_end_matches('/'));
    let mut iua = serde_json::Map::new();
    if let Some(u) = &a.user {
        iua.insert("subject_id".into(), serde_json::json!(u));
    }
    if let Some(p) = &a.purpose {
        iua.insert("purpose_of_use".into(), serde_json::json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p}));
    }
    if let Some(r) = &a.reason {
        iua.insert("break_glass_reason".into(), serde_json::json!(r));
    }
    let extra = (!iua.is_empty()).then(|| serde_json::json!({"extensions": {"ihe_iua": iua}}));
    let assertion =
        keys::sign_assertion(&pem, alg, &kid, &a.client_id, &token_url, extra.as_ref())?;
    let resp = reqwest::Client::new()
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
            ("scope", a.scope.as_str()),
        ])
        .send()
        .await
        .context("cannot reach the token endpoint")?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .context("the token endpoint did not answer JSON")?;
    if !status.is_success() {
        bail!("token refused ({status}): {body}");
    }
    Ok(body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// `serve --demo`: a GP client with a local key, so a newcomer can get a token at once.
fn demo_client(db: &DbArgs, settings: &Settings) -> anyhow::Result<()> {
    let key_path = "data/demo-gp-key.pem";
    std::fs::create_dir_all("data")?;
    let pem = match std::fs::read_to_string(key_path) {
        Ok(p) => p,
        Err(_) => {
            let p = keys::generate_client_key(ClientAlg::Es384)?;
            std::fs::write(key_path, &p)?;
            p
        }
    };
    let jwk = keys::public_jwk(&pem, ClientAlg::Es384)?;
    register(
        db,
        "demo-gp",
        "A81001",
        "gp",
        "system/*.*",
        Some(serde_json::json!({"keys": [jwk]}).to_string()),
        None,
    )?;
    let base = settings
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", settings.listen));
    println!("demo client 'demo-gp' (GP practice A81001) registered; key at {key_path}");
    println!("get a token:  cargo run --release -- client token --url {base} --client-id demo-gp --key {key_path} --scope 'system/*.*'");
    Ok(())
}
