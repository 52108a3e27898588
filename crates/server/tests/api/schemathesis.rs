//! The OpenAPI document against the running server, checked by a schema-driven fuzzer:
//! schemathesis (pinned in the test venv, `scripts/requirements-test.txt`) sends a bounded,
//! seeded set of generated requests to every operation of the served `/openapi.json` and
//! checks three things of every answer: no server error (5xx), a status the document lists
//! for that operation, and a body that matches the schema documented for that status.
//!
//! The worker routes are only reached as far as their 401 (a user token), the `/files` routes
//! as far as their 403/404 (no valid signature): their inner answers have tests of their own.

use std::time::Instant;

use loraforge_storage::test_support::test_venv;

use serde_json::{Value, json};

use crate::helpers::*;

/// Generated cases per operation and phase: enough to hit every documented status of every
/// route, small enough to run in well under two minutes on a busy 2-core box.
const MAX_EXAMPLES: &str = "20";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors_and_no_undocumented_answers() {
    let st = test_venv().join("bin/st");
    assert!(
        st.exists(),
        "{} is missing; run scripts/test-env.sh (it installs the pinned schemathesis)",
        st.display()
    );
    let app = spawn_app().await;
    // An admin, so the review route is tested past its 403; admins use every other route as
    // users do.
    let user = app.user_with(Some("fuzz@example.com".into()), true);
    // Something to find: half of the generated ids are these (a dictionary in the config), so
    // the 200s of the reads and the 409s of the writes are checked, not only 404s. The LoRA is
    // cancelled first: its event stream then ends instead of waiting for changes.
    let dataset = app.dataset(&user).await;
    let lora = app.create_ok(&user, "fuzzed", &dataset).await;
    let cancelled = app
        .post_json(
            &user,
            &format!("/api/v1/lora-models/{lora}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(cancelled.status(), 200);
    let report = tempfile::tempdir().unwrap();
    let config = report.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[dictionaries.ids]\nvalues = [\"{lora}\", \"{dataset}\"]\n\n\
             [parameters]\n\"path.id\" = {{ dictionary = \"ids\", probability = 0.5 }}\n"
        ),
    )
    .unwrap();
    let har_path = report.path().join("run.har");
    let started = Instant::now();
    let out = tokio::process::Command::new(&st)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--url", &app.base])
        .args(["--header", &format!("Authorization: Bearer {}", user.token)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        // Deterministic: the same cases every run (schemathesis ignores a seed in this mode).
        .args(["--max-examples", MAX_EXAMPLES, "--generation-deterministic"])
        .args(["--generation-with-security-parameters", "false"])
        .args(["--workers", "1", "--request-timeout", "10"])
        .args(["--no-color", "--continue-on-failure", "--report", "har"])
        .arg("--report-har-path")
        .arg(&har_path)
        // Its crash cache (`.schemathesis/`) goes to the temp dir, not the source tree.
        .current_dir(report.path())
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
    // It really ran against the server: the recorded exchanges reach past validation and auth.
    let har: Value = serde_json::from_slice(&std::fs::read(&har_path).unwrap()).unwrap();
    let entries = har["log"]["entries"].as_array().unwrap();
    let answered = |method: &str, path: &str, status: u64| {
        entries.iter().any(|e| {
            e["request"]["method"] == method
                && e["request"]["url"]
                    .as_str()
                    .is_some_and(|u| u.split('?').next().unwrap().ends_with(path))
                && e["response"]["status"] == status
        })
    };
    assert!(entries.len() > 500, "{} exchanges", entries.len());
    assert!(
        entries
            .iter()
            .all(|e| e["response"]["status"].as_u64().is_some_and(|s| s < 500)),
        "a 5xx slipped past the check"
    );
    assert!(answered("GET", "/api/v1/lora-models", 200));
    assert!(answered("POST", "/api/v1/lora-models", 400));
    assert!(answered("POST", "/api/v1/lora-models", 404));
    assert!(answered("GET", "/api/v1/me/limits", 200));
    assert!(answered("GET", &format!("/api/v1/lora-models/{lora}"), 200));
    assert!(answered("POST", "/result", 401));
}
