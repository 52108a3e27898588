//! Black-box tests of the HTTP API: a real server per test, spoken to over loopback.

mod helpers;

mod auth;
mod datasets;
mod events;
mod files;
mod library;
mod limits;
mod lora_models;
mod ops;
