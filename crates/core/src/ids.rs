//! Identifier newtypes. A value of these types has been checked; code past the boundary never
//! re-validates.

use std::fmt;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an NHS number has exactly 10 digits; got {0:?}")]
    NhsLength(String),
    #[error("NHS number {0} fails the Modulus 11 check")]
    NhsCheckDigit(String),
    #[error("an ODS code is 3 to 12 letters and digits; got {0:?}")]
    Ods(String),
}

/// A ten-digit NHS number whose last digit is a valid Modulus 11 check digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NhsNumber(String);

impl NhsNumber {
    /// The FHIR identifier system of NHS numbers.
    pub const SYSTEM: &'static str = "https://fhir.nhs.uk/Id/nhs-number";

    /// Parses an NHS number; spaces (as printed on letters: `999 123 4560`) are allowed.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let digits: String = raw.chars().filter(|c| *c != ' ').collect();
        if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::NhsLength(raw.to_string()));
        }
        let d: Vec<u32> = digits.bytes().map(|b| u32::from(b - b'0')).collect();
        let sum: u32 = d[..9]
            .iter()
            .zip((2..=10).rev())
            .map(|(digit, weight)| digit * weight)
            .sum();
        let check = match 11 - (sum % 11) {
            11 => 0,
            10 => return Err(IdError::NhsCheckDigit(digits)),
            c => c,
        };
        if check != d[9] {
            return Err(IdError::NhsCheckDigit(digits));
        }
        Ok(Self(digits))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Appends the Modulus 11 check digit to nine digits, if one exists. For synthetic test data.
    pub fn with_check_digit(nine: &str) -> Option<Self> {
        (0..10)
            .map(|c| format!("{nine}{c}"))
            .find_map(|s| Self::parse(&s).ok())
    }
}

impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Organisation Data Service code (e.g. a GP practice `A81001`), stored upper case.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct OdsCode(String);

impl OdsCode {
    pub const SYSTEM: &'static str = "https://fhir.nhs.uk/Id/ods-organization-code";

    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let t = raw.trim();
        if (3..=12).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Self(t.to_ascii_uppercase()))
        } else {
            Err(IdError::Ods(raw.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OdsCode {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<OdsCode> for String {
    fn from(o: OdsCode) -> String {
        o.0
    }
}

impl fmt::Display for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers() {
        let cases = [
            ("9434765919", true),
            ("943 476 5919", true),
            ("9434765918", false), // wrong check digit
            ("943476591", false),  // nine digits
            ("94347659199", false),
            ("943476591a", false),
            ("9990000018", true),
            ("9990000026", true),
            ("", false),
        ];
        for (raw, ok) in cases {
            assert_eq!(NhsNumber::parse(raw).is_ok(), ok, "{raw}");
        }
    }

    #[test]
    fn check_digit_ten_is_never_valid() {
        // 999123456: weighted sum 320, 11 - (320 % 11) = 10, so no completion exists.
        assert!(NhsNumber::with_check_digit("999123456").is_none());
        for d in 0..10 {
            assert!(NhsNumber::parse(&format!("999123456{d}")).is_err());
        }
        let n = NhsNumber::with_check_digit("999000001").expect("has a check digit");
        assert_eq!(n.as_str(), "9990000018");
    }

    #[test]
    fn ods_codes() {
        assert_eq!(
            OdsCode::parse("a81001").map(|o| o.to_string()),
            Ok("A81001".into())
        );
        assert!(OdsCode::parse("A8").is_err());
        assert!(OdsCode::parse("A81 001").is_err());
    }
}
