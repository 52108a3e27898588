//! The worker against a fake control plane on 127.0.0.1 and a fake trainer script: whole
//! attempts, each asserting what the control plane, the trainer, stdout and the job folder saw.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Stages in the order posted, repeats collapsed.
fn stages(progress: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in progress {
        if let Some(s) = p.get("stage").and_then(Value::as_str)
            && out.last().map(String::as_str) != Some(s)
        {
            out.push(s.to_owned());
        }
    }
    out
}

fn step_posts(progress: &[Value]) -> Vec<u64> {
    progress
        .iter()
        .filter_map(|p| p.get("step").and_then(Value::as_u64))
        .collect()
}

#[tokio::test]
async fn happy_path_trains_relays_uploads_reports_and_cleans_up() {
    let plane = Plane::start().await;
    plane.set_job(1, images(), 10.0, 150);
    let Scratch {
        dir: _dir,
        out,
        fake,
    } = Scratch::new();
    let trainer = fake_trainer(
        &fake,
        &[("FAKE_STEPS", "30"), ("FAKE_STEP_SECONDS", "0.02")],
    );

    let (code, stdout) = run(config(&plane, &out, trainer)).await;

    assert_eq!(code, 0, "stdout: {stdout}");
    assert_eq!(stdout, "", "nothing on stdout after a success");

    // The trainer ran once, with the documented command line, the spec and the images.
    let runs = trainer_runs(&fake);
    let (spec, images_dir, train) = (
        out.join("trainer-spec.json"),
        out.join("images"),
        out.join("train"),
    );
    assert_eq!(
        runs,
        [format!(
            "run train --spec {} --images {} --out {} --resume",
            spec.display(),
            images_dir.display(),
            train.display()
        )]
    );
    let seen_spec: Value =
        serde_json::from_slice(&std::fs::read(fake.join("spec.json")).unwrap()).unwrap();
    assert_eq!(seen_spec, trainer_spec());
    for img in images() {
        assert_eq!(
            std::fs::read(fake.join("images").join(img.file_name)).unwrap(),
            img.bytes,
            "{}",
            img.file_name
        );
        let stem = img.file_name.split('.').next().unwrap();
        assert_eq!(
            std::fs::read_to_string(fake.join("images").join(format!("{stem}.txt"))).unwrap(),
            img.caption
        );
    }
    let env = std::fs::read_to_string(fake.join("env")).unwrap();
    assert!(
        env.contains("FAKE_STEPS=30"),
        "the configured environment reaches the trainer"
    );
    assert!(
        !env.contains(TOKEN),
        "the token is not handed to the trainer"
    );

    // Progress: every stage, in order; steps coalesced (at most one per 150 ms), newest last.
    let progress = plane.progress();
    assert!(progress.iter().all(|p| p["attempt"] == 1), "{progress:?}");
    assert_eq!(
        stages(&progress),
        ["loading_model", "training", "saving", "validating", "done"]
    );
    let steps = step_posts(&progress);
    assert!(
        !steps.is_empty() && steps.len() < 15,
        "30 steps in ≥ 600 ms are coalesced: {steps:?}"
    );
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    assert_eq!(
        steps.last(),
        Some(&30),
        "the newest step wins and is not lost: {steps:?}"
    );
    let a_step = progress.iter().find(|p| p.get("step").is_some()).unwrap();
    assert_eq!(a_step["total"], 30);
    assert_eq!(a_step["stage"], "training");
    assert_eq!(a_step["loss"], 0.1);
    assert!(a_step["eta_s"].is_number());

    // Uploads arrived byte-identical, each with a Content-Length and not chunked.
    assert_eq!(plane.file(MODEL_KEY).unwrap(), seq(1));
    assert_eq!(plane.file(KOHYA_KEY).unwrap(), seq(2));
    for i in 0..3 {
        assert_eq!(plane.file(&validation_key(i)).unwrap(), validation_png(i));
    }
    let puts = plane.state.puts_seen.lock().unwrap().clone();
    assert_eq!(puts.len(), 5);
    for put in &puts {
        let len = plane.file(&put.key).unwrap().len().to_string();
        assert_eq!(put.content_length.as_deref(), Some(len.as_str()), "{put:?}");
        assert_eq!(put.transfer_encoding, None, "{put:?}");
    }

    // The result.
    let results = plane.results();
    assert_eq!(results.len(), 1);
    let r = &results[0];
    let trainer_seconds = r["trainer_seconds"].as_f64().unwrap();
    assert!(
        trainer_seconds > 0.5 && trainer_seconds < 60.0,
        "{trainer_seconds}"
    );
    assert_eq!(
        r,
        &json!({
            "attempt": 1,
            "train_seconds": 4.1,
            "trainer_seconds": trainer_seconds,
            "model": {"bytes": seq(1).len(), "sha256": sha256(&seq(1))},
            "kohya": {"bytes": seq(2).len(), "sha256": sha256(&seq(2))},
            "validation": {"images": 3, "scores": [0.91, 0.88, 0.42]},
            "resumed_from": 0,
        })
    );
    assert!(plane.failures().is_empty(), "a success reports no failure");

    assert!(
        !out.exists(),
        "the job folder is removed after an accepted result"
    );
    assert_eq!(
        plane.state.refused.load(Ordering::SeqCst),
        0,
        "every request carried the token or signature"
    );
}

#[tokio::test]
async fn a_failed_upload_keeps_the_files_and_the_next_attempt_uploads_them_without_training() {
    let plane = Plane::start().await;
    let Scratch {
        dir: _dir,
        out,
        fake,
    } = Scratch::new();
    plane.state.fail_puts.store(4, Ordering::SeqCst);

    let (code, stdout) = run(config(
        &plane,
        &out,
        fake_trainer(&fake, &[("FAKE_NO_SCORES", "1")]),
    ))
    .await;

    assert_eq!(code, 11, "stdout: {stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let line = last_line(&stdout);
    assert_eq!(line["event"], "error");
    assert_eq!(line["code"], "upload_failed");
    assert_eq!(line["exit_code"], 11);
    let reason = line["reason"].as_str().unwrap();
    assert!(
        reason.contains("model.safetensors") && reason.contains("503"),
        "{reason}"
    );
    assert!(!reason.contains(SIG), "{reason}");
    assert_eq!(
        plane.state.puts.load(Ordering::SeqCst),
        4,
        "1 try + 3 retries"
    );
    assert!(plane.results().is_empty());
    assert!(out.join("result.json").is_file());
    assert!(out.join("train/model.safetensors").is_file());
    assert!(out.join("train/model.kohya.safetensors").is_file());
    assert!(
        !out.join("images").exists(),
        "images/ is removed whatever happened"
    );

    // The engine's next attempt: uploads work now.
    plane.set_job(2, images(), 10.0, 100);
    let (code, stdout) = run(config(&plane, &out, fake_trainer(&fake, &[]))).await;

    assert_eq!(code, 0, "stdout: {stdout}");
    assert_eq!(
        trainer_runs(&fake).len(),
        1,
        "the trainer was not run again"
    );
    assert_eq!(plane.file(MODEL_KEY).unwrap(), seq(1));
    assert_eq!(plane.file(KOHYA_KEY).unwrap(), seq(2));
    assert_eq!(plane.file(&validation_key(2)).unwrap(), validation_png(2));
    let results = plane.results();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["attempt"], 2);
    assert_eq!(results[0]["train_seconds"], 4.1);
    assert!(results[0]["trainer_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(results[0]["model"]["sha256"], sha256(&seq(1)));
    assert_eq!(
        results[0]["validation"],
        json!({"images": 3, "scores": null})
    );
    assert!(!out.exists());
}

#[tokio::test]
async fn a_diverging_trainer_passes_its_exit_code_and_error_line_through() {
    let plane = Plane::start().await;
    let Scratch {
        dir: _dir,
        out,
        fake,
    } = Scratch::new();
    let mut cfg = config(&plane, &out, fake_trainer(&fake, &[]));
    cfg.debug_fail_at_step = Some(3);

    let (code, stdout) = run(cfg).await;

    assert_eq!(code, 3);
    assert_eq!(
        stdout,
        "{\"event\":\"error\",\"code\":\"non_finite_loss\",\"reason\":\"non-finite loss at step 3\",\"exit_code\":3,\"step\":3}\n",
        "the trainer's own line, verbatim, and nothing else"
    );
    let seen_spec: Value =
        serde_json::from_slice(&std::fs::read(fake.join("spec.json")).unwrap()).unwrap();
    assert_eq!(seen_spec["debug_fail_at_step"], 3);
    assert_eq!(seen_spec["rank"], 8);
    assert_eq!(plane.state.puts.load(Ordering::SeqCst), 0);
    assert!(plane.results().is_empty());
    // The control plane hears it over the protocol, not from the exit status.
    assert_eq!(
        plane.failures(),
        [
            json!({"attempt": 1, "code": "non_finite_loss", "reason": "non-finite loss at step 3", "retryable": false})
        ]
    );
    assert!(
        !out.exists(),
        "a failure a retry cannot mend removes the job folder"
    );
}

#[tokio::test]
async fn job_not_active_on_progress_stops_the_trainer() {
    let plane = Plane::start().await;
    plane.set_job(1, images(), 10.0, 20);
    *plane.state.progress_409_after.lock().unwrap() = Some(3);
    let Scratch {
        dir: _dir,
        out,
        fake,
    } = Scratch::new();
    let trainer = fake_trainer(
        &fake,
        &[("FAKE_STEPS", "3000"), ("FAKE_STEP_SECONDS", "0.01")],
    );

    let started = std::time::Instant::now();
    let (code, stdout) = run(config(&plane, &out, trainer)).await;

    assert_eq!(code, 12, "stdout: {stdout}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped long before the 3000 steps"
    );
    let line = last_line(&stdout);
    assert_eq!(
        (line["code"].as_str(), line["exit_code"].as_i64()),
        (Some("job_not_active"), Some(12))
    );
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("the job was cancelled"),
        "{line}"
    );
    assert!(
        fake.join("stopped").exists(),
        "the trainer got SIGTERM and checkpointed"
    );
    assert!(!alive(read_pid(&fake)), "no trainer process is left");
    assert!(
        out.join("trainer-spec.json").exists(),
        "the job folder is kept after exit 12"
    );
    assert!(!out.join("images").exists());
    assert_eq!(plane.state.puts.load(Ordering::SeqCst), 0);
    assert!(plane.results().is_empty());
}

/// A control plane that answers no progress report until the trainer has finished neither
/// holds the trainer up (its 200 KB of progress lines, three pipe buffers' worth, are read while
/// the first report waits) nor loses a stage (each is posted, in order). Causal, not timed: a
/// worker that stopped reading while posting would leave the trainer blocked on a full pipe, and
/// the reports would wait for it in vain.
#[tokio::test]
async fn a_slow_control_plane_neither_holds_up_the_trainer_nor_loses_stages() {
    let plane = Plane::start().await;
    plane.set_job(1, images(), 10.0, 100);
    let Scratch {
        dir: _dir,
        out,
        fake,
    } = Scratch::new();
    *plane.state.progress_gate.lock().unwrap() = Some(fake.join("finished"));
    let trainer = fake_trainer(&fake, &[("FAKE_STEPS", "2000")]);

    let (code, stdout) = run(config(&plane, &out, trainer)).await;

    assert_eq!(code, 0, "stdout: {stdout}");
    assert_eq!(
        plane.state.gate_timeouts.load(Ordering::SeqCst),
        0,
        "a progress report waited {GATE_LIMIT:?} for the trainer to finish: posting held it up"
    );
    let progress = plane.progress();
    assert_eq!(
        stages(&progress),
        ["loading_model", "training", "saving", "validating", "done"]
    );
    let steps = step_posts(&progress);
    assert!(steps.len() <= 3, "{steps:?}");
    assert_eq!(steps.last(), Some(&2000));
}

#[tokio::test]
async fn a_trainer_killed_by_a_signal_exits_10() {
    let plane = Plane::start().await;
    let Scratch {
        dir: _dir,
        out,
        fake,
    } = Scratch::new();

    let (code, stdout) = run(config(
        &plane,
        &out,
        fake_trainer(&fake, &[("FAKE_KILL_SELF", "1")]),
    ))
    .await;

    assert_eq!(code, 10, "{stdout}");
    let line = last_line(&stdout);
    assert_eq!(
        (line["code"].as_str(), line["exit_code"].as_i64()),
        (Some("trainer_killed"), Some(10))
    );
    assert!(
        line["reason"].as_str().unwrap().contains("signal 9"),
        "{line}"
    );
    assert!(
        out.join("trainer-spec.json").exists(),
        "kept for the next attempt"
    );
    assert!(plane.results().is_empty());
}

#[tokio::test]
async fn a_stop_request_stops_the_trainer_and_keeps_the_folder() {
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
    let state = plane.state.clone();
    let stop = async move {
        while !state
            .progress
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.get("step").is_some())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };

    let mut stdout = Vec::new();
    let code = loraforge_worker::run_with(config(&plane, &out, trainer), &mut stdout, stop).await;

    let stdout = String::from_utf8(stdout).unwrap();
    assert_eq!(code, 10, "stdout: {stdout}");
    let line = last_line(&stdout);
    assert_eq!(
        (line["code"].as_str(), line["exit_code"].as_i64()),
        (Some("stopped"), Some(10))
    );
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("checkpointed at step"),
        "{line}"
    );
    let failures = plane.failures();
    assert_eq!(
        (failures.len(), failures[0]["code"].as_str()),
        (1, Some("stopped")),
        "{failures:?}"
    );
    assert!(fake.join("stopped").exists());
    assert!(!alive(read_pid(&fake)));
    assert!(out.join("trainer-spec.json").exists());
    assert!(!out.join("images").exists());
}

#[tokio::test]
async fn an_unsafe_image_name_is_refused_before_anything_is_written() {
    let plane = Plane::start().await;
    let Scratch { dir, out, fake } = Scratch::new();
    let mut imgs = images();
    imgs[1].file_name = "../../escaped.png";
    plane.set_job(1, imgs, 10.0, 100);

    let (code, stdout) = run(config(&plane, &out, fake_trainer(&fake, &[]))).await;

    assert_eq!(code, 2, "stdout: {stdout}");
    let line = last_line(&stdout);
    assert_eq!(line["code"], "bad_job");
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("\"../../escaped.png\""),
        "{line}"
    );
    assert!(trainer_runs(&fake).is_empty(), "the trainer was not run");
    assert!(!dir.path().join("escaped.png").exists() && !out.join("images/00.png").exists());
    assert!(!out.exists());
}

#[tokio::test]
async fn heartbeats_keep_coming_while_the_trainer_is_silent() {
    let plane = Plane::start().await;
    plane.set_job(1, images(), 0.2, 100);
    let Scratch {
        dir: _dir,
        out,
        fake,
    } = Scratch::new();
    let trainer = fake_trainer(
        &fake,
        &[("FAKE_SILENT_SECONDS", "1.2"), ("FAKE_STEPS", "2")],
    );

    let (code, stdout) = run(config(&plane, &out, trainer)).await;

    assert_eq!(code, 0, "stdout: {stdout}");
    let progress = plane.progress();
    let heartbeats = progress
        .iter()
        .filter(|p| **p == json!({"attempt": 1}))
        .count();
    assert!(
        heartbeats >= 3,
        "1.2 s of silence at a 0.2 s heartbeat: {progress:?}"
    );
}

/// A control plane gone for good (the service died and never came back) stops the worker once
/// it has not answered for 60 heartbeats (at least 3 s): the trainer is stopped with SIGTERM (it
/// checkpoints) and the attempt ends `stopped`, instead of training on for nobody.
#[tokio::test]
async fn a_control_plane_gone_for_good_stops_the_worker() {
    let plane = Plane::start().await;
    // 60 heartbeats of 0.02 s is 1.2 s: the 3 s floor applies.
    plane.set_job(1, images(), 0.02, 100);
    let Scratch {
        dir: _dir,
        out,
        fake,
    } = Scratch::new();
    let trainer = fake_trainer(
        &fake,
        &[("FAKE_STEPS", "100000"), ("FAKE_STEP_SECONDS", "0.01")],
    );
    let worker = tokio::spawn(run(config(&plane, &out, trainer)));
    plane
        .wait_until("the trainer under way", |s| {
            s.progress.lock().unwrap().len() >= 3
        })
        .await;
    plane.go_away();
    let (code, stdout) = tokio::time::timeout(Duration::from_secs(300), worker)
        .await
        .expect("the worker stops on its own long before its 1,000 s of steps")
        .unwrap();

    assert_eq!(code, 10, "stdout: {stdout}");
    let line = last_line(&stdout);
    assert_eq!(
        (line["code"].as_str(), line["exit_code"].as_i64()),
        (Some("stopped"), Some(10))
    );
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("the control plane did not answer for 3s"),
        "{line}"
    );
    assert!(
        fake.join("stopped").exists(),
        "the trainer got SIGTERM and checkpointed"
    );
    assert!(!alive(read_pid(&fake)), "no trainer process is left");
}

#[tokio::test]
async fn fetching_the_job_retries_then_maps_refusals_to_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake");
    std::fs::create_dir_all(&fake).unwrap();

    // Two 503s are retried through.
    let plane = Plane::start().await;
    plane.state.fail_gets.store(2, Ordering::SeqCst);
    let (code, stdout) = run(config(
        &plane,
        &dir.path().join("a"),
        fake_trainer(&fake, &[]),
    ))
    .await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(plane.state.job_gets.load(Ordering::SeqCst), 3);

    // Five are not: 1 try + 3 retries, then exit 13.
    let plane = Plane::start().await;
    plane.state.fail_gets.store(5, Ordering::SeqCst);
    let (code, stdout) = run(config(
        &plane,
        &dir.path().join("b"),
        fake_trainer(&fake, &[]),
    ))
    .await;
    assert_eq!(code, 13);
    assert_eq!(plane.state.job_gets.load(Ordering::SeqCst), 4);
    assert_eq!(last_line(&stdout)["code"], "control_plane_unreachable");

    for (failure, want_code, want_name) in [
        (
            Failure::new(409, "job_not_active", "the job was cancelled"),
            12,
            "job_not_active",
        ),
        (
            Failure::new(401, "unauthorized", "token expired"),
            13,
            "job_refused",
        ),
        (
            Failure::new(403, "forbidden", "wrong job"),
            13,
            "job_refused",
        ),
        (
            Failure::new(404, "not_found", "no such job"),
            13,
            "job_refused",
        ),
    ] {
        let plane = Plane::start().await;
        *plane.state.job_failure.lock().unwrap() = Some(failure.clone());
        let out = dir.path().join(format!("c{}", failure.status));
        let (code, stdout) = run(config(&plane, &out, fake_trainer(&fake, &[]))).await;
        assert_eq!(code, want_code, "{failure:?}: {stdout}");
        let line = last_line(&stdout);
        assert_eq!(
            (line["code"].as_str(), line["exit_code"].as_i64()),
            (Some(want_name), Some(want_code.into()))
        );
        assert!(
            line["reason"].as_str().unwrap().contains(failure.message),
            "{line}"
        );
        assert_eq!(
            plane.state.job_gets.load(Ordering::SeqCst),
            1,
            "{failure:?} is not retried"
        );
    }
    assert!(
        trainer_runs(&fake).len() == 1,
        "only the first case trained"
    );

    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let plane = Plane::start().await;
    let mut cfg = config(&plane, &dir.path().join("d"), fake_trainer(&fake, &[]));
    cfg.server = server.parse().unwrap();
    let (code, stdout) = run(cfg).await;
    assert_eq!(code, 13);
    let line = last_line(&stdout);
    assert_eq!(line["code"], "control_plane_unreachable");
    assert!(line["reason"].as_str().unwrap().contains(&server), "{line}");
}

#[tokio::test]
async fn result_answers_map_to_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake");
    std::fs::create_dir_all(&fake).unwrap();

    let plane = Plane::start().await;
    *plane.state.result_failure.lock().unwrap() = Some(Failure::new(
        422,
        "upload_missing",
        "the stored model has 12 bytes, not 108894",
    ));
    let out = dir.path().join("a");
    let (code, stdout) = run(config(&plane, &out, fake_trainer(&fake, &[]))).await;
    assert_eq!(code, 1);
    let line = last_line(&stdout);
    assert_eq!(line["code"], "upload_missing");
    assert_eq!(line["reason"], "the stored model has 12 bytes, not 108894");
    assert_eq!(plane.results().len(), 1, "422 is not retried");
    assert!(!out.exists());

    let plane = Plane::start().await;
    *plane.state.result_failure.lock().unwrap() =
        Some(Failure::new(409, "job_not_active", "the job was cancelled"));
    let out = dir.path().join("b");
    let (code, stdout) = run(config(&plane, &out, fake_trainer(&fake, &[]))).await;
    assert_eq!(code, 12);
    assert_eq!(last_line(&stdout)["code"], "job_not_active");
    assert!(out.join("result.json").exists());

    let plane = Plane::start().await;
    *plane.state.result_failure.lock().unwrap() =
        Some(Failure::new(503, "unavailable", "try again"));
    let out = dir.path().join("c");
    let (code, stdout) = run(config(&plane, &out, fake_trainer(&fake, &[]))).await;
    assert_eq!(code, 11);
    assert_eq!(last_line(&stdout)["code"], "result_failed");
    assert_eq!(plane.results().len(), 4, "1 try + 3 retries");
    assert!(out.join("result.json").exists() && out.join("train/model.safetensors").exists());
}

#[tokio::test]
async fn a_download_of_the_wrong_size_fails_the_attempt() {
    let plane = Plane::start().await;
    plane.edit_job(|job| job["images"][0]["bytes"] = json!(5));
    let Scratch {
        dir: _dir,
        out,
        fake,
    } = Scratch::new();

    let (code, stdout) = run(config(&plane, &out, fake_trainer(&fake, &[]))).await;

    assert_eq!(code, 13, "{stdout}");
    let line = last_line(&stdout);
    assert_eq!(line["code"], "image_download_failed");
    let reason = line["reason"].as_str().unwrap();
    assert!(
        reason.contains("00.png") && reason.contains("announced 5 bytes"),
        "{reason}"
    );
    assert!(!reason.contains(SIG), "{reason}");
    assert!(trainer_runs(&fake).is_empty());
    assert!(out.exists() && !out.join("images").exists());
}

#[tokio::test]
async fn a_trainer_that_cannot_start_is_reported() {
    let plane = Plane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("job");
    let trainer = loraforge_worker::TrainerCommand {
        program: dir.path().join("no-such-python"),
        args: vec!["-m".into(), "loraforge_trainer".into()],
        env: vec![],
    };

    let (code, stdout) = run(config(&plane, &out, trainer)).await;

    assert_eq!(code, 1);
    let line = last_line(&stdout);
    assert_eq!(line["code"], "trainer_unavailable");
    assert!(
        line["reason"].as_str().unwrap().contains("no-such-python"),
        "{line}"
    );
}

#[tokio::test]
async fn a_trainer_silent_for_too_long_is_stopped_and_the_attempt_retried() {
    let plane = Plane::start().await;
    plane.set_job(1, images(), 10.0, 20);
    let Scratch {
        dir: _dir,
        out,
        fake,
    } = Scratch::new();
    // Hangs (no output) far longer than the worker's patience.
    let trainer = fake_trainer(&fake, &[("FAKE_SILENT_SECONDS", "300")]);
    let mut cfg = config(&plane, &out, trainer);
    cfg.trainer_silence = Duration::from_millis(500);

    let started = std::time::Instant::now();
    let (code, stdout) = run(cfg).await;

    assert_eq!(code, 10, "stdout: {stdout}");
    let line = last_line(&stdout);
    assert_eq!(line["code"], "trainer_silent", "{line}");
    assert!(
        line["reason"].as_str().unwrap().contains("taken for hung"),
        "{line}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(!alive(read_pid(&fake)), "the hung trainer is gone");
    assert!(
        fake.join("stopped").exists(),
        "it was asked to stop (SIGTERM) first"
    );
}

/// Checkpoints leave the host as they are written, and a later attempt (on another host: a fresh
/// folder) downloads the stored one and resumes from it.
#[tokio::test]
async fn checkpoints_are_uploaded_and_a_later_attempt_resumes_from_the_stored_one() {
    const CKPT: &str = "training-checkpoints/u1/0193a1b2-lora/attempt-1.pt";
    let plane = Plane::start().await;
    plane.set_job(1, images(), 10.0, 20);
    let upload = plane.link(CKPT);
    plane.edit_job(|job| {
        job["checkpoint"] = json!({"upload": {"key": CKPT, "url": upload}, "resume": null})
    });
    let Scratch {
        dir: _dir,
        out,
        fake,
    } = Scratch::new();
    let (code, stdout) = run(config(
        &plane,
        &out,
        fake_trainer(&fake, &[("FAKE_STEPS", "6")]),
    ))
    .await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        plane.file(CKPT).as_deref(),
        Some(b"fake checkpoint of step 6".as_slice())
    );
    assert_eq!(
        plane.checkpoints(),
        [json!({"attempt": 1, "step": 6, "bytes": 25})]
    );
    assert!(
        !fake.join("resumed_from").exists(),
        "a first attempt has nothing to resume"
    );

    // Attempt 2, elsewhere: the stored checkpoint is where `--resume` finds it.
    let plane2 = Plane::start().await;
    plane2.set_job(2, images(), 10.0, 20);
    plane2
        .state
        .files
        .lock()
        .unwrap()
        .insert(CKPT.into(), b"fake checkpoint of step 6".to_vec());
    let (resume, upload2) = (
        plane2.link(CKPT),
        plane2.link("training-checkpoints/u1/0193a1b2-lora/attempt-2.pt"),
    );
    plane2.edit_job(|job| {
        job["checkpoint"] = json!({"upload": {"key": "k2", "url": upload2}, "resume": {"url": resume, "step": 6, "bytes": 25}})
    });
    let Scratch {
        dir: _dir2,
        out: out2,
        fake: fake2,
    } = Scratch::new();
    let (code, stdout) = run(config(
        &plane2,
        &out2,
        fake_trainer(&fake2, &[("FAKE_STEPS", "6")]),
    ))
    .await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        std::fs::read_to_string(fake2.join("resumed_from"))
            .unwrap()
            .trim(),
        "step-00000006.pt"
    );
    assert_eq!(
        std::fs::read_to_string(fake2.join("resumed_content")).unwrap(),
        "fake checkpoint of step 6"
    );

    // A checkpoint that cannot be downloaded fails the attempt with its own code (retried).
    let plane3 = Plane::start().await;
    plane3.set_job(3, images(), 10.0, 20);
    let missing = plane3.link("training-checkpoints/u1/0193a1b2-lora/gone.pt");
    plane3.edit_job(|job| job["checkpoint"] = json!({"upload": {"key": "k3", "url": missing.clone()}, "resume": {"url": missing, "step": 4, "bytes": 10}}));
    let Scratch {
        dir: _dir3,
        out: out3,
        fake: fake3,
    } = Scratch::new();
    let mut cfg = config(&plane3, &out3, fake_trainer(&fake3, &[]));
    cfg.retry_delay = Duration::from_millis(10);
    let (code, stdout) = run(cfg).await;
    assert_eq!(code, 13, "{stdout}");
    assert_eq!(last_line(&stdout)["code"], "checkpoint_download_failed");
    assert_eq!(plane3.failures()[0]["code"], "checkpoint_download_failed");
}
