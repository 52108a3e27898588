//! Black-box tests of the HTTP API: a real server per test, spoken to over loopback.

mod helpers;
mod image_server;

mod admin_backends;
mod admin_costs;
mod alerts;
mod auth;
mod client_webhooks;
mod credits;
mod dataset_zip;
mod datasets;
mod error_shapes;
mod events;
mod files;
mod generation;
mod hostile;
mod library;
mod limits;
mod lora_models;
mod monitors;
mod names;
mod ops;
mod references;
mod reports;
mod retention;
mod samples;
mod schemathesis;
mod supabase_tokens;
mod text_input;
mod url_intake;
mod web_ui;
mod webhooks;
mod worker;
