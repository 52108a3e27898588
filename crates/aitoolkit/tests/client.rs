//! The ai-toolkit client against the contract fake (`loraforge_fakes::aitoolkit`).

mod common;

use std::time::Duration;

use common::*;
use loraforge_aitoolkit::{AiToolkitError, JobStatus};
use serde_json::json;

fn config() -> serde_json::Value {
    json!({"job": "extension", "config": {"name": "j", "process": [{"train": {"steps": 40}}]}})
}

#[tokio::test]
async fn auth_is_checked_on_api_routes_but_not_on_files() {
    let root = tempfile::tempdir().unwrap();
    let fake = fake(root.path(), Some("sekrit"), None).await;
    let anonymous = client(&fake.url(), None);
    assert!(matches!(
        anonymous.toolkit_settings().await,
        Err(AiToolkitError::Unauthorized)
    ));
    let wrong = client(&fake.url(), Some("nope"));
    assert!(matches!(
        wrong.check_auth().await,
        Err(AiToolkitError::Unauthorized)
    ));
    let ok = client(&fake.url(), Some("sekrit"));
    ok.check_auth().await.unwrap();
    let settings = ok.toolkit_settings().await.unwrap();
    assert!(settings.datasets_folder.ends_with("datasets"));

    // /api/files/* is exempt: the anonymous client downloads.
    let name = ok.create_dataset("Auth Set").await.unwrap();
    assert_eq!(name, "auth_set");
    let stored = ok
        .upload(&name, vec![("a b.txt".into(), b"zxq, a photo".to_vec())])
        .await
        .unwrap();
    assert_eq!(stored, vec!["a_b.txt".to_owned()]);
    let path = format!("{}/auth_set/a_b.txt", settings.datasets_folder);
    let dest = root.path().join("got.txt");
    assert_eq!(anonymous.download(&path, &dest, 1000).await.unwrap(), 12);
    assert_eq!(std::fs::read(&dest).unwrap(), b"zxq, a photo");
    // The size cap holds and leaves nothing behind.
    assert!(matches!(
        anonymous.download(&path, &dest, 5).await,
        Err(AiToolkitError::TooLarge { limit: 5 })
    ));
    assert!(!dest.exists());
    // Outside the roots: refused.
    assert!(matches!(
        anonymous.download("/etc/hostname", &dest, 1000).await,
        Err(AiToolkitError::Refused { status: 403, .. }) | Err(AiToolkitError::NotFound(_))
    ));
    ok.delete_dataset(&name).await.unwrap();
    assert!(ok.list_datasets().await.unwrap().is_empty());
    assert!(ok.delete_dataset(&name).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn start_answers_the_old_row_and_a_stopped_queue_holds_the_job() {
    let root = tempfile::tempdir().unwrap();
    let fake = fake(root.path(), None, None).await;
    let c = client(&fake.url(), None);
    let job = c.create_job("lora-1", "0", &config()).await.unwrap();
    assert_eq!(job.status, JobStatus::Stopped);
    assert_eq!(job.total(), Some(40));

    let before = c.start_job(&job.id).await.unwrap();
    assert_eq!(
        before.status,
        JobStatus::Stopped,
        "start answers the row as it was"
    );
    let now = c.job(&job.id).await.unwrap().unwrap();
    assert_eq!(now.status, JobStatus::Queued);

    // The queue is not running: the job waits.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        c.job(&job.id).await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    assert!(!fake.queue_running("0"));

    let queue = c.start_queue("0").await.unwrap();
    assert!(queue.is_running);
    assert_eq!(c.queues().await.unwrap(), vec![queue]);
    // This fake has no trainer: the job runs and ends in error with the reason in info.
    let ended = wait_for(Duration::from_secs(5), async || {
        c.job(&job.id).await.unwrap().unwrap().status == JobStatus::Error
    })
    .await;
    assert!(ended);
    let row = c.job(&job.id).await.unwrap().unwrap();
    assert!(row.info.unwrap().contains("no trainer"));
    assert!(c.log(&job.id, 0).await.unwrap().log.contains("no trainer"));
}

#[tokio::test]
async fn a_duplicate_name_is_a_conflict_and_jobs_are_found_by_name() {
    let root = tempfile::tempdir().unwrap();
    let fake = fake(root.path(), None, None).await;
    let c = client(&fake.url(), None);
    let job = c.create_job("lora-2", "0", &config()).await.unwrap();
    let again = c.create_job("lora-2", "0", &config()).await.unwrap_err();
    assert!(again.is_conflict(), "{again}");
    assert!(again.to_string().contains("Job name already exists"));
    assert_eq!(c.job_by_name("lora-2").await.unwrap().unwrap().id, job.id);
    assert!(c.job("no-such-id").await.unwrap().is_none());
    c.delete_job(&job.id).await.unwrap();
    assert!(c.jobs().await.unwrap().is_empty());
    assert!(c.start_job(&job.id).await.unwrap_err().is_not_found());
    assert_eq!(fake.jobs().len(), 0);
}

#[tokio::test]
async fn outputs_are_listed_by_files_and_log_offsets_give_new_text() {
    let root = tempfile::tempdir().unwrap();
    let fake = fake(root.path(), None, None).await;
    let c = client(&fake.url(), None);
    let job = c.create_job("lora-3", "0", &config()).await.unwrap();
    let folder = root.path().join("output/lora-3");
    std::fs::create_dir_all(folder.join("samples")).unwrap();
    std::fs::write(folder.join("lora-3_000000250.safetensors"), vec![1u8; 10]).unwrap();
    std::fs::write(folder.join("lora-3.safetensors"), vec![2u8; 20]).unwrap();
    std::fs::write(folder.join("notes.md"), b"x").unwrap();
    std::fs::write(folder.join("log.txt"), b"first\n").unwrap();
    let files = c.files(&job.id).await.unwrap();
    let names: Vec<(&str, u64)> = files.iter().map(|f| (f.file_name(), f.size)).collect();
    assert_eq!(
        names,
        vec![
            ("lora-3.safetensors", 20),
            ("lora-3_000000250.safetensors", 10)
        ]
    );
    let log = c.log(&job.id, 0).await.unwrap();
    assert_eq!(log.log, "first\n");
    std::fs::write(folder.join("log.txt"), b"first\nsecond\n").unwrap();
    let more = c.log(&job.id, log.offset).await.unwrap();
    assert_eq!(more.log, "second\n");
}

#[tokio::test]
async fn server_errors_are_retried_and_client_errors_are_not() {
    let root = tempfile::tempdir().unwrap();
    let fake = fake(root.path(), None, None).await;
    let c = client(&fake.url(), None);
    fake.inject_status(2, 502);
    assert!(
        c.list_datasets().await.unwrap().is_empty(),
        "two 502s, then an answer"
    );
    fake.inject_status(10, 503);
    let e = c.list_datasets().await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    fake.inject_status(0, 200);
    fake.inject_status(1, 400);
    let before = fake.calls().len();
    assert!(matches!(
        c.list_datasets().await,
        Err(AiToolkitError::Refused { status: 400, .. })
    ));
    assert_eq!(fake.calls().len(), before + 1, "a 400 is not repeated");
    let gone = client("http://127.0.0.1:1", None)
        .list_datasets()
        .await
        .unwrap_err();
    assert!(gone.is_retryable(), "{gone}");
}
