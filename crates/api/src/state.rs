//! Shared application state.

use epaccs_access::Rules;
use epaccs_auth::TokenService;
use epaccs_store::Store;
use std::sync::Arc;

/// Limits enforced on requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body, in bytes; also the largest resource a JSON Patch may
    /// produce.
    pub max_body_bytes: usize,
    /// Most entries in one batch or transaction bundle.
    pub max_bundle_entries: usize,
    /// Most operations in one JSON Patch document.
    pub max_patch_operations: usize,
    /// Which Subscription endpoints the server may be asked to contact.
    pub subscription_endpoints: EndpointPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            max_bundle_entries: 1000,
            max_patch_operations: 100,
            subscription_endpoints: EndpointPolicy::default(),
        }
    }
}

/// The allow-list of Subscription endpoint hosts (`EPACCS_SUBSCRIPTION_HOSTS`): the server
/// contacts only hosts its operator named, so a client cannot point it at an internal address.
/// Outside loopback only https is accepted. The default, `loopback`, allows only this machine
/// (tests, the demo); production configuration names its subscribers' hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Loopback endpoints (`localhost`, 127.0.0.0/8, `::1`), over http or https.
    pub loopback: bool,
    /// Host names or IP literals, exactly, or `*.suffix` for any host under `suffix`; https only.
    pub hosts: Vec<String>,
}

impl Default for EndpointPolicy {
    fn default() -> Self {
        EndpointPolicy {
            loopback: true,
            hosts: Vec::new(),
        }
    }
}

impl EndpointPolicy {
    /// Parses a comma-separated list: `loopback`, host names, IP literals, `*.suffix`.
    pub fn parse(raw: &str) -> Result<EndpointPolicy, String> {
        let mut p = EndpointPolicy {
            loopback: false,
            hosts: Vec::new(),
        };
        for entry in raw.split(',').map(str::trim) {
            let host = entry.to_ascii_lowercase();
            let name = host.strip_prefix("*.").unwrap_or(&host);
            if host == "loopback" {
                p.loopback = true;
            } else if !name.is_empty()
                && name.contains(|c: char| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
                && url::Host::parse(name).is_ok()
            {
                p.hosts.push(host);
            } else {
                return Err(format!(
                    "{entry:?} is not a host name, an IP address, *.domain or loopback"
                ));
            }
        }
        Ok(p)
    }

    /// Whether the server may deliver to `endpoint`; the error names the rule it breaks.
    pub fn check(&self, endpoint: &str) -> Result<(), String> {
        let url = url::Url::parse(endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| format!("'{endpoint}' is not an http(s) URL"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the endpoint URL must not carry credentials".into());
        }
        let host = url
            .host()
            .ok_or_else(|| format!("'{endpoint}' has no host"))?;
        let loopback = match &host {
            url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
        };
        if loopback {
            return if self.loopback {
                Ok(())
            } else {
                Err(format!(
                    "loopback endpoints are not allowed by this server (host {host}); \
                     EPACCS_SUBSCRIPTION_HOSTS does not include loopback"
                ))
            };
        }
        if url.scheme() != "https" {
            return Err(format!(
                "endpoints outside loopback must use https, not {}",
                url.scheme()
            ));
        }
        let name = host.to_string().to_ascii_lowercase();
        let listed = self.hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(suffix) => name
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.')),
            None => *h == name,
        });
        if listed {
            Ok(())
        } else {
            Err(format!(
                "host {name} is not in this server's allow-list of subscription endpoint hosts \
                 (EPACCS_SUBSCRIPTION_HOSTS); ask the service operator to add it"
            ))
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

#[cfg(test)]
mod tests {
    use super::EndpointPolicy;

    #[test]
    fn endpoint_policy_table() {
        let default = EndpointPolicy::default();
        let prod = EndpointPolicy::parse("hospice.example.org, *.gp.example").expect("parse");
        let rows: &[(&EndpointPolicy, &str, bool)] = &[
            (&default, "http://127.0.0.1:9000/hook", true),
            (&default, "http://localhost/hook", true),
            (&default, "http://[::1]:8080/x", true),
            (&default, "https://hospice.example.org/hook", false),
            (&default, "ftp://127.0.0.1/x", false),
            (&default, "http://user:pw@127.0.0.1/x", false),
            (&prod, "https://hospice.example.org/hook", true),
            (&prod, "http://hospice.example.org/hook", false),
            (&prod, "https://a.gp.example/hook", true),
            (&prod, "https://gp.example/hook", false),
            (&prod, "https://evilgp.example/hook", false),
            (&prod, "https://169.254.169.254/latest", false),
            (&prod, "http://127.0.0.1/hook", false),
        ];
        for (policy, url, ok) in rows {
            assert_eq!(policy.check(url).is_ok(), *ok, "{url} under {policy:?}");
        }
        assert!(EndpointPolicy::parse("").is_err());
        assert!(EndpointPolicy::parse("*").is_err());
        assert!(EndpointPolicy::parse("a b").is_err());
        assert!(
            EndpointPolicy::parse("loopback,10.0.0.5")
                .expect("ip")
                .loopback
        );
    }
}
