//! Who is calling, from which organisation, in which role, and why.

use crate::{OdsCode, Scopes};
use std::fmt;
use std::str::FromStr;

/// The role of a registered client system (and so of its users) in the sharing rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Gp,
    Community,
    Hospice,
    Ambulance,
    UrgentCare,
    Acute,
    CareHome,
    PrivacyOfficer,
    Admin,
}

impl Role {
    pub const ALL: [Role; 9] = [
        Role::Gp,
        Role::Community,
        Role::Hospice,
        Role::Ambulance,
        Role::UrgentCare,
        Role::Acute,
        Role::CareHome,
        Role::PrivacyOfficer,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gp => "gp",
            Role::Community => "community",
            Role::Hospice => "hospice",
            Role::Ambulance => "ambulance",
            Role::UrgentCare => "urgent-care",
            Role::Acute => "acute",
            Role::CareHome => "care-home",
            Role::PrivacyOfficer => "privacy-officer",
            Role::Admin => "admin",
        }
    }

    /// Roles that look after people directly and so may hold clinical data.
    pub fn is_clinical(self) -> bool {
        !matches!(self, Role::PrivacyOfficer | Role::Admin)
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role {s:?}; expected one of {}",
                    Role::ALL.map(Role::as_str).join(", ")
                )
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Purpose of use, from v3-ActReason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Purpose {
    /// Treatment.
    #[serde(rename = "TREAT")]
    Treat,
    /// Emergency treatment.
    #[serde(rename = "ETREAT")]
    EmergencyTreat,
    /// Break the glass: emergency access overriding the sharing rules, always audited.
    #[serde(rename = "BTG")]
    BreakGlass,
}

impl Purpose {
    pub const SYSTEM: &'static str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

    pub fn code(self) -> &'static str {
        match self {
            Purpose::Treat => "TREAT",
            Purpose::EmergencyTreat => "ETREAT",
            Purpose::BreakGlass => "BTG",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "TREAT" => Some(Purpose::Treat),
            "ETREAT" => Some(Purpose::EmergencyTreat),
            "BTG" => Some(Purpose::BreakGlass),
            _ => None,
        }
    }
}

/// The caller of one request: the client system, its organisation and role, the end user when
/// known (IHE IUA claims), the purpose of use and the granted scopes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Principal {
    pub client_id: String,
    pub org: OdsCode,
    pub role: Role,
    /// SDS user id of the person at the keyboard, when the client says who it is.
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    /// The user's job role as a Coding (`system|code`), when given.
    pub user_role: Option<String>,
    pub purpose: Purpose,
    /// Required with `Purpose::BreakGlass`: why the glass was broken.
    pub break_glass_reason: Option<String>,
    pub scopes: Scopes,
}

impl Principal {
    /// Whether this request breaks the glass (purpose BTG with a reason).
    pub fn breaks_glass(&self) -> bool {
        self.purpose == Purpose::BreakGlass
            && self
                .break_glass_reason
                .as_deref()
                .is_some_and(|r| !r.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("nurse".parse::<Role>().is_err());
    }
}
