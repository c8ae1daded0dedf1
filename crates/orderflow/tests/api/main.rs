//! API tests: the app built in-process on port 0 with a fresh SQLite database
//! per test, driven through a typed HTTP client. Consumer groups are stepped
//! by the test (`TestApp::drain`), never waited for with sleeps.

mod helpers;
#[path = "../support/mod.rs"]
mod support;

mod auth;
mod cancel;
mod cart;
mod catalog;
mod flow;
mod fraud;
mod http;
mod inline;
mod live;
mod orders;
mod rebuild;
mod retention;
mod security;
mod web;
