//! The production entry point, `run`, stopped by a real SIGTERM to this process. Its own test
//! binary: the signal reaches the whole process, and once the worker listens for SIGTERM the
//! process keeps that handler.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn sigterm_to_the_worker_stops_the_trainer_and_exits_10() {
    let plane = Plane::start().await;
    plane.set_job(1, images(), 10.0, 20);
    let Scratch {
        dir: _dir,
        out,
        fake,
    } = Scratch::new();
    let trainer = fake_trainer(
        &fake,
        &[("FAKE_STEPS", "3000"), ("FAKE_STEP_SECONDS", "0.01")],
    );

    let worker = tokio::spawn(loraforge_worker::run(config(&plane, &out, trainer)));
    // Training has started (so the worker's handlers are installed): signal this process.
    plane
        .wait_until("a step", |s| {
            s.progress
                .lock()
                .unwrap()
                .iter()
                .any(|p| p.get("step").is_some())
        })
        .await;
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
    let code = tokio::time::timeout(Duration::from_secs(20), worker)
        .await
        .expect("the worker stops")
        .unwrap();

    assert_eq!(code, 10);
    assert!(
        fake.join("stopped").exists(),
        "the trainer got SIGTERM and checkpointed"
    );
    assert!(!alive(read_pid(&fake)), "no trainer process is left");
    assert!(
        out.join("trainer-spec.json").exists(),
        "the job folder is kept after exit 10"
    );
    assert!(!out.join("images").exists());
    assert!(plane.results().is_empty());
}
