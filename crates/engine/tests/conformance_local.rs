//! The `TrainingBackend` conformance suite on the local backend: real processes of this host (a
//! shell that sleeps until it is stopped). The local backend cannot list its instances
//! (`list_instances` is `None`), so the suite skips what needs a listing.

use std::time::Duration;

use loraforge_engine::backends::{LocalBackend, LocalBackendSettings};
use loraforge_engine::conformance::Subject;

#[tokio::test]
async fn the_local_backend_keeps_the_training_backend_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = LocalBackendSettings::new("/bin/sh", dir.path());
    settings.args_template = vec!["-c".into(), "exec sleep 300".into()];
    settings.max_concurrent = 4;
    settings.kill_grace = Duration::from_secs(1);
    settings.finish_grace = Duration::from_millis(100);
    let b = LocalBackend::new(settings);
    Subject::new(&b, "conf-local-").run_all().await;
}
