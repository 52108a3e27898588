//! One module per resource, merged into one router by [`crate::api_router`].

pub mod admin;
pub mod admin_alerts;
pub mod admin_archival;
pub mod admin_backends;
pub mod admin_costs;
pub mod auth_local;
pub mod client_webhooks;
pub mod credits;
pub mod dataset_zip;
pub mod datasets;
pub mod events;
pub mod files;
pub mod health;
pub mod lora_models;
pub mod me;
pub mod me_notifications;
pub mod metrics;
pub mod names;
pub mod params;
pub mod quotes;
pub mod references;
pub mod ui;
pub mod webhooks;
pub mod worker;
