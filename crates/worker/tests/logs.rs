//! The worker's logs, at every level of every crate, name neither the token nor a signed link.
//! Its own test binary: the subscriber is this thread's default, and tracing caches per call site
//! whether anyone listens, which tests on other threads without a subscriber would disturb.

mod common;

use std::sync::atomic::Ordering;

use common::*;

/// A run with a retried job fetch and retried uploads. A current-thread runtime keeps every task
/// on this thread's subscriber.
#[tokio::test]
async fn logs_carry_no_token_and_no_signature() {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let plane = Plane::start().await;
    plane.state.fail_puts.store(2, Ordering::SeqCst);
    plane.state.fail_gets.store(1, Ordering::SeqCst);
    let Scratch {
        dir: _dir,
        out,
        fake,
    } = Scratch::new();
    let (code, stdout) = run(config(&plane, &out, fake_trainer(&fake, &[]))).await;
    assert_eq!(code, 0, "{stdout}");

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("uploading model.safetensors failed; retrying"),
        "{logs}"
    );
    assert!(logs.contains(MODEL_KEY), "uploads are named by key");
    assert!(!logs.contains(TOKEN), "the token leaked into the logs");
    assert!(!logs.contains(SIG), "a signed link leaked into the logs");
}
