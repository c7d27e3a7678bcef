#![doc = include_str!("../README.md")]

pub mod audit;
pub mod facts;
mod gate;
mod rules;

pub use facts::{ConsentStatus, DenyProvision, PatientFacts};
pub use gate::{Decided, Gate, LogEntry};
pub use rules::{decide, Action, Basis, Decision, Rules, RulesError, Subject};
