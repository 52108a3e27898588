//! The backend against the fake ai-toolkit where no control plane is needed: what it reads of
//! ended jobs (error with the log's reason, stopped by someone else, vanished), the orphan
//! listing, and the clean-up of job and dataset at the end. The whole lifecycle with a real
//! control plane (launch, progress, delivery, cancel, restart) is `crates/cli/tests/aitoolkit.rs`.

mod common;

use std::time::Duration;

use common::*;
use loraforge_aitoolkit::{AiToolkitBackend, AiToolkitBackendSettings, JobStatus, PROVIDER_FAILED};
use loraforge_domain::LoraId;
use loraforge_engine::{Ending, Instance, Observed, TrainingBackend};
use serde_json::json;

fn backend(url: &str, work: &std::path::Path) -> AiToolkitBackend {
    let mut s = AiToolkitBackendSettings::new(work.to_owned());
    s.observe_every = Duration::from_millis(10);
    AiToolkitBackend::new(client(url, Some("t")), s)
}

fn instance(id: &str, name: &str) -> Instance {
    Instance {
        provider_id: id.to_owned(),
        instance_name: name.to_owned(),
        lora_id: LoraId::new(),
        attempt: 1,
    }
}

fn config() -> serde_json::Value {
    json!({"job": "extension", "config": {"name": "j", "process": [{"train": {"steps": 40}}]}})
}

#[tokio::test]
async fn ended_jobs_are_read_as_outcomes_and_everything_is_deleted_at_the_end() {
    let root = tempfile::tempdir().unwrap();
    let fake = fake(root.path(), Some("t"), None).await;
    let c = client(&fake.url(), Some("t"));
    let b = backend(&fake.url(), &root.path().join("work"));

    // An ai-toolkit error whose log says out of memory.
    fake.fail_next_jobs(
        "CUDA out of memory",
        "torch.OutOfMemoryError: CUDA out of memory\n",
    );
    let oom = c.create_job("loraforge-a-1", "0", &config()).await.unwrap();
    c.create_dataset("loraforge-a-1").await.unwrap();
    c.start_job(&oom.id).await.unwrap();
    c.start_queue("0").await.unwrap();
    assert!(
        wait_for(Duration::from_secs(5), async || c
            .job(&oom.id)
            .await
            .unwrap()
            .unwrap()
            .status
            == JobStatus::Error)
        .await
    );
    // A queued job waiting behind nothing is running; a stopped one was stopped by hand.
    let stopped = c.create_job("loraforge-b-1", "0", &config()).await.unwrap();
    c.stop_job(&stopped.id).await.unwrap();
    let other = c.create_job("someone-else", "0", &config()).await.unwrap();

    let instances = [
        instance(&oom.id, "loraforge-a-1"),
        instance(&stopped.id, "loraforge-b-1"),
        instance("no-such-job", "loraforge-c-1"),
    ];
    let seen = b.observe(&instances).await.unwrap();
    match &seen[0] {
        Observed::Ended {
            outcome,
            reason,
            gone,
        } => {
            assert_eq!(*outcome, "out_of_memory");
            assert_eq!(reason.as_deref(), Some("CUDA out of memory"));
            assert!(!gone);
        }
        o => panic!("{o:?}"),
    }
    assert!(
        matches!(&seen[1], Observed::Ended { outcome, gone: false, .. } if *outcome == PROVIDER_FAILED),
        "{:?}",
        seen[1]
    );
    assert!(
        matches!(
            &seen[2],
            Observed::Ended {
                outcome: "vanished",
                gone: true,
                ..
            }
        ),
        "{:?}",
        seen[2]
    );

    // The orphan sweep lists ours by name.
    let mut listed = b.list_instances("loraforge-").await.unwrap().unwrap();
    listed.sort();
    let mut want = vec![
        (oom.id.clone(), "loraforge-a-1".to_owned()),
        (stopped.id.clone(), "loraforge-b-1".to_owned()),
    ];
    want.sort();
    assert_eq!(listed, want);

    // Terminate deletes the job and its dataset; again, it is already gone.
    for _ in 0..2 {
        let t = b.terminate(&instances[0], Ending::Stop).await.unwrap();
        assert!(t.gone);
    }
    assert!(c.job(&oom.id).await.unwrap().is_none());
    assert!(!fake.datasets().contains(&"loraforge_a_1".to_owned()));
    b.terminate(&instances[1], Ending::Finished).await.unwrap();
    let left: Vec<String> = fake.jobs().into_iter().map(|j| j.id).collect();
    assert_eq!(left, vec![other.id]);
}

#[tokio::test]
async fn an_unreachable_ai_toolkit_is_a_transient_error() {
    let root = tempfile::tempdir().unwrap();
    let b = backend("http://127.0.0.1:1", root.path());
    let e = b
        .observe(&[instance("x", "loraforge-x-1")])
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let e = b.list_instances("loraforge-").await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
}
