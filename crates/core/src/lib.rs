#![doc = include_str!("../README.md")]

pub mod codes;
mod ids;
mod principal;
mod scopes;

pub use ids::{IdError, NhsNumber, OdsCode};
pub use principal::{Principal, Purpose, Role};
pub use scopes::{Interaction, ScopeError, Scopes};
