//! The OpenAPI document against the running server, checked by a schema-driven fuzzer:
//! schemathesis (pinned in the test venv, `scripts/requirements-test.txt`) sends a bounded,
//! seeded set of generated requests to every operation of the served `/openapi.json` and
//! checks three things of every answer: no server error (5xx), a status the document lists
//! for that operation, and a body that matches the schema documented for that status.

use std::time::Instant;

use loraforge_storage::test_support::test_venv;

use crate::helpers::*;

/// Generated cases per operation and phase: enough to hit every documented status of every
/// route, small enough to run in well under two minutes on a busy 2-core box.
const MAX_EXAMPLES: &str = "20";
const SEED: &str = "20261129";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors_and_no_undocumented_answers() {
    let st = test_venv().join("bin/st");
    assert!(
        st.exists(),
        "{} is missing; run scripts/test-env.sh (it installs the pinned schemathesis)",
        st.display()
    );
    let app = spawn_app().await;
    let user = app.user();
    // Something to find: the user's own dataset and LoRA exist (the fuzzer's ids are random,
    // so most reads are 404s; these make the library list non-empty).
    let dataset = app.dataset(&user).await;
    app.create_ok(&user, "fuzzed", &dataset).await;
    let report = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = tokio::process::Command::new(&st)
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--url", &app.base])
        .args(["--header", &format!("Authorization: Bearer {}", user.token)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        .arg("--generation-deterministic")
        .args(["--generation-with-security-parameters", "false"])
        .args(["--generation-database", "none"])
        .args(["--workers", "1", "--request-timeout", "10"])
        .args(["--no-color", "--continue-on-failure"])
        .args(["--report-dir"])
        .arg(report.path())
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "schemathesis took {:.1} s:\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "schemathesis found failures ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // It really ran against the server: every operation was tested.
    assert!(stdout.contains("passed"), "{stdout}");
}
