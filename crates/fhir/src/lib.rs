#![doc = include_str!("../README.md")]

pub mod date;
pub mod profile;
pub mod query;
pub mod registry;
pub mod search;
pub mod validate;

pub use registry::{PatientLink, ResourceKind};
pub use validate::{Issue, IssueSeverity, ValidationError};

/// The FHIR version spoken on the wire.
pub const FHIR_VERSION: &str = "4.0.1";
/// The JSON media type of FHIR.
pub const FHIR_JSON: &str = "application/fhir+json";
