//! Integration tests: the real server on a random port, a fresh database (a temporary SQLite
//! file, or a freshly created PostgreSQL database), real keys, real signed client assertions and
//! real access tokens. Every scenario runs on both backends.

mod helpers;

mod auth;
mod bundles;
mod clinical;
mod emergency;
mod examples;
mod leaks;
mod notify;
mod page;
mod rest;
mod robustness;
mod safety;
mod search;
mod sharing;
