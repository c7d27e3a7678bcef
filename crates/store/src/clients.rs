//! The client registry, seen client-assertion `jti`s, and the server's signing key.

use crate::db::{execute, load, Bind, DbConn, Sql};
use crate::StoreError;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel::QueryableByName;

/// A registered client system.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Client {
    #[diesel(sql_type = Text)]
    pub client_id: String,
    #[diesel(sql_type = Text)]
    pub org: String,
    #[diesel(sql_type = Text)]
    pub role: String,
    /// Space-separated registered scopes.
    #[diesel(sql_type = Text)]
    pub scopes: String,
    /// An inline JWK Set (JSON).
    #[diesel(sql_type = Nullable<Text>)]
    pub jwks: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub jwks_url: Option<String>,
    #[diesel(sql_type = Bool)]
    pub revoked: bool,
    #[diesel(sql_type = BigInt)]
    pub created: i64,
}

const CLIENT_COLUMNS: &str = "client_id, org, role, scopes, jwks, jwks_url, revoked, created";

/// Registers a client, or replaces the registration of the same id (re-keying un-revokes).
///
/// Tokens carry the registration's `created` time and are refused once the client is registered
/// again: a token never keeps a role, organisation or scopes the client no longer has. A
/// registration that changes none of those (a new key, say) keeps its time, so the tokens
/// already issued, which grant exactly what the new registration grants, stay valid until they
/// expire; to end them, revoke the client.
pub fn register(conn: &mut DbConn, c: &Client) -> Result<(), StoreError> {
    let mut c = c.clone();
    if let Some(old) = get(conn, &c.client_id)? {
        let same_authority = old.org == c.org
            && old.role == c.role
            && old.scopes == c.scopes
            && !old.revoked
            && !c.revoked;
        if same_authority {
            c.created = old.created;
        }
    }
    let c = &c;
    let mut del = Sql::new("DELETE FROM client WHERE client_id = ");
    del.text(c.client_id.clone());
    execute(conn, &del)?;
    let mut sql = Sql::new(&format!("INSERT INTO client ({CLIENT_COLUMNS}) VALUES ("));
    sql.text(c.client_id.clone())
        .push(", ")
        .text(c.org.clone())
        .push(", ")
        .text(c.role.clone())
        .push(", ")
        .text(c.scopes.clone());
    sql.push(", ")
        .bind(Bind::OptText(c.jwks.clone()))
        .push(", ")
        .bind(Bind::OptText(c.jwks_url.clone()));
    sql.push(", ")
        .bind(Bind::Bool(c.revoked))
        .push(", ")
        .int(c.created)
        .push(")");
    execute(conn, &sql)?;
    Ok(())
}

pub fn get(conn: &mut DbConn, client_id: &str) -> Result<Option<Client>, StoreError> {
    let mut sql = Sql::new(&format!(
        "SELECT {CLIENT_COLUMNS} FROM client WHERE client_id = "
    ));
    sql.text(client_id);
    Ok(load::<Client>(conn, &sql)?.pop())
}

pub fn list(conn: &mut DbConn) -> Result<Vec<Client>, StoreError> {
    Ok(load(
        conn,
        &Sql::new(&format!(
            "SELECT {CLIENT_COLUMNS} FROM client ORDER BY client_id"
        )),
    )?)
}

/// Revokes a client; its tokens stop working on the next request. Returns whether it existed.
pub fn revoke(conn: &mut DbConn, client_id: &str) -> Result<bool, StoreError> {
    let mut sql = Sql::new("UPDATE client SET revoked = TRUE WHERE client_id = ");
    sql.text(client_id);
    Ok(execute(conn, &sql)? == 1)
}

/// Records a client-assertion `jti`; false if this client used it before (a replay).
pub fn remember_jti(
    conn: &mut DbConn,
    client_id: &str,
    jti: &str,
    expires: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let mut purge = Sql::new("DELETE FROM client_jti WHERE expires < ");
    purge.int(now);
    execute(conn, &purge)?;
    let mut sql = Sql::new("INSERT INTO client_jti (client_id, jti, expires) VALUES (");
    sql.text(client_id)
        .push(", ")
        .text(jti)
        .push(", ")
        .int(expires)
        .push(") ON CONFLICT (client_id, jti) DO NOTHING");
    Ok(execute(conn, &sql)? == 1)
}

#[derive(QueryableByName)]
pub struct ServerKey {
    #[diesel(sql_type = Text)]
    pub kid: String,
    #[diesel(sql_type = Text)]
    pub private_pem: String,
}

/// The server's token-signing key, created once by `make` and shared by every instance.
pub fn server_key(
    conn: &mut DbConn,
    make: impl FnOnce() -> Result<(String, String), String>,
) -> Result<ServerKey, StoreError> {
    let existing: Vec<ServerKey> = load(
        conn,
        &Sql::new("SELECT kid, private_pem FROM server_key ORDER BY created DESC LIMIT 1"),
    )?;
    if let Some(k) = existing.into_iter().next() {
        return Ok(k);
    }
    let (kid, pem) = make().map_err(StoreError::Internal)?;
    let mut sql = Sql::new("INSERT INTO server_key (kid, private_pem, created) VALUES (");
    sql.text(kid.clone())
        .push(", ")
        .text(pem.clone())
        .push(", ")
        .int(epaccs_fhir::date::now_micros())
        .push(") ON CONFLICT (kid) DO NOTHING");
    execute(conn, &sql)?;
    let again: Vec<ServerKey> = load(
        conn,
        &Sql::new("SELECT kid, private_pem FROM server_key ORDER BY created DESC LIMIT 1"),
    )?;
    again
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Internal("could not store the signing key".into()))
}
