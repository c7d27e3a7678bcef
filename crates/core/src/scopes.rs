//! SMART on FHIR system scopes, v1 (`system/Patient.read`) and v2 (`system/Patient.rs`).

use std::collections::BTreeMap;

/// The kinds of FHIR interaction a scope can allow, by SMART v2 letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    const ALL: [Interaction; 5] = [
        Interaction::Create,
        Interaction::Read,
        Interaction::Update,
        Interaction::Delete,
        Interaction::Search,
    ];

    fn letter(self) -> char {
        match self {
            Interaction::Create => 'c',
            Interaction::Read => 'r',
            Interaction::Update => 'u',
            Interaction::Delete => 'd',
            Interaction::Search => 's',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {0:?}: expected system/<Type|*>.<read|write|*|cruds>")]
pub struct ScopeError(pub String);

/// A parsed set of `system/` scopes. Other scopes (openid, launch, user/...) are not granted to
/// backend services and are dropped by [`Scopes::parse_lenient`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scopes {
    /// resource type (or `*`) -> allowed interaction letters
    grants: BTreeMap<String, String>,
    /// The scope strings as granted, for the token response.
    granted: Vec<String>,
}

impl Scopes {
    /// Parses one scope string into (type, letters).
    fn parse_one(s: &str) -> Result<(String, String), ScopeError> {
        let err = || ScopeError(s.to_string());
        let rest = s.strip_prefix("system/").ok_or_else(err)?;
        let (ty, perm) = rest.split_once('.').ok_or_else(err)?;
        let valid_type = ty == "*"
            || (ty.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && ty.chars().all(|c| c.is_ascii_alphanumeric()));
        if !valid_type {
            return Err(err());
        }
        // v2 permissions may carry a query (`?category=...`); such narrowed scopes are not
        // supported, so they are refused rather than widened.
        let letters = match perm {
            "read" => "rs".to_string(),
            "write" => "cud".to_string(),
            "*" => "cruds".to_string(),
            p if !p.is_empty() && p.chars().all(|c| "cruds".contains(c)) && is_in_order(p) => {
                p.to_string()
            }
            _ => return Err(err()),
        };
        Ok((ty.to_string(), letters))
    }

    /// Parses a space-separated scope string, refusing anything it does not understand.
    pub fn parse_strict(s: &str) -> Result<Self, ScopeError> {
        let mut out = Scopes::default();
        for part in s.split_whitespace() {
            let (ty, letters) = Self::parse_one(part)?;
            out.add(ty, &letters, part);
        }
        Ok(out)
    }

    fn add(&mut self, ty: String, letters: &str, raw: &str) {
        let entry = self.grants.entry(ty).or_default();
        for c in letters.chars() {
            if !entry.contains(c) {
                entry.push(c);
            }
        }
        if !self.granted.iter().any(|g| g == raw) {
            self.granted.push(raw.to_string());
        }
    }

    pub fn allows(&self, resource_type: &str, what: Interaction) -> bool {
        let letter = what.letter();
        [resource_type, "*"]
            .iter()
            .any(|t| self.grants.get(*t).is_some_and(|l| l.contains(letter)))
    }

    /// The scopes of `requested` that `self` (the client's registered scopes) covers entirely:
    /// the granted scope may be narrower than asked, never wider.
    pub fn narrow(&self, requested: &Scopes) -> Scopes {
        let mut out = Scopes::default();
        for raw in &requested.granted {
            if let Ok((ty, letters)) = Self::parse_one(raw) {
                let covered = letters.chars().all(|c| {
                    Interaction::ALL
                        .iter()
                        .find(|i| i.letter() == c)
                        .is_some_and(|i| self.allows(&ty, *i))
                });
                if covered {
                    out.add(ty, &letters, raw);
                }
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// The space-separated scope string.
    pub fn to_scope_string(&self) -> String {
        self.granted.join(" ")
    }
}

fn is_in_order(p: &str) -> bool {
    let order = "cruds";
    let idx: Vec<usize> = p.chars().filter_map(|c| order.find(c)).collect();
    idx.windows(2).all(|w| w[0] < w[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interaction::*;

    #[test]
    fn scope_table() {
        let rows: &[(&str, &str, Interaction, bool)] = &[
            ("system/Patient.read", "Patient", Read, true),
            ("system/Patient.read", "Patient", Search, true),
            ("system/Patient.read", "Patient", Create, false),
            ("system/Patient.write", "Patient", Update, true),
            ("system/Patient.write", "Patient", Read, false),
            ("system/*.read", "Observation", Read, true),
            ("system/*.*", "Consent", Delete, true),
            ("system/Patient.rs", "Patient", Search, true),
            ("system/Patient.rs", "Patient", Update, false),
            ("system/Patient.cruds", "Patient", Delete, true),
            ("system/Observation.cruds", "Patient", Read, false),
        ];
        for (scope, ty, what, expected) in rows {
            let s = Scopes::parse_strict(scope).expect(scope);
            assert_eq!(s.allows(ty, *what), *expected, "{scope} {ty} {what:?}");
        }
    }

    #[test]
    fn bad_scopes_are_refused() {
        for bad in [
            "patient/Patient.read",
            "system/Patient",
            "system/Patient.sr",
            "system/patient.read",
            "system/Patient.x",
        ] {
            assert!(Scopes::parse_strict(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn narrowing_never_widens() {
        let registered =
            Scopes::parse_strict("system/Patient.rs system/Observation.read").expect("ok");
        let asked =
            Scopes::parse_strict("system/Patient.cruds system/Patient.read system/Observation.rs")
                .expect("ok");
        let got = registered.narrow(&asked);
        assert_eq!(
            got.to_scope_string(),
            "system/Patient.read system/Observation.rs"
        );
        assert!(!got.allows("Patient", Create));
    }
}
