#![doc = include_str!("../README.md")]

pub mod keys;
mod token;

pub use token::{AuthError, OAuthError, TokenResponse, TokenService, ACCESS_TOKEN_LIFETIME};
