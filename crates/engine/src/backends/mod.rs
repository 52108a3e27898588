//! Implementations of [`crate::TrainingBackend`]. Only the composition root picks one.

pub mod local;

pub use local::{LocalBackend, LocalBackendSettings};
