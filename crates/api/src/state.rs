//! Shared application state.

use epaccs_access::Rules;
use epaccs_auth::TokenService;
use epaccs_store::Store;
use std::sync::Arc;

/// Limits enforced on requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Most entries in one batch or transaction bundle.
    pub max_bundle_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            max_bundle_entries: 1000,
        }
    }
}

pub struct AppState {
    pub store: Store,
    pub profiles: Arc<epaccs_fhir::profile::Profiles>,
    pub tokens: Arc<TokenService>,
    pub rules: Arc<Rules>,
    /// Absolute base URL of the FHIR endpoint, without a trailing slash.
    pub base_url: String,
    pub limits: Limits,
}
