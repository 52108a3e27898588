//! The binary as a user runs it: configuration layering, the generated secret, tokens, serve.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::loraforge;

fn stdout(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn config_value(listing: &str, key: &str) -> String {
    listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .and_then(|l| {
            l.split_once('=')
                .map(|(_, v)| v.split("  #").next().unwrap().trim().to_owned())
        })
        .unwrap_or_else(|| panic!("{key} not in {listing}"))
}

#[test]
fn help_explains_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let help = stdout(loraforge(dir.path()).arg("--help"));
    for cmd in ["serve", "token", "config"] {
        assert!(help.contains(cmd), "{help}");
    }
    let token_help = stdout(loraforge(dir.path()).args(["token", "--help"]));
    assert!(
        token_help.contains("--user")
            && token_help.contains("--ttl")
            && token_help.contains("--data-dir")
    );
}

#[test]
fn settings_layer_defaults_file_env_and_flags_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = stdout(loraforge(dir.path()).arg("config"));
    assert_eq!(config_value(&defaults, "monthly_limit"), "5");
    assert_eq!(config_value(&defaults, "bind"), "127.0.0.1:8080");
    assert!(config_value(&defaults, "database_url").ends_with("data/loraforge.db"));

    std::fs::write(
        dir.path().join("loraforge.toml"),
        "monthly_limit = 7\nmin_steps = 10\nbind = \"127.0.0.1:9000\"\n",
    )
    .unwrap();
    let from_file = stdout(loraforge(dir.path()).arg("config"));
    assert_eq!(config_value(&from_file, "monthly_limit"), "7");
    assert_eq!(config_value(&from_file, "min_steps"), "10");

    let from_env = stdout(
        loraforge(dir.path())
            .arg("config")
            .env("LORAFORGE_MONTHLY_LIMIT", "9")
            .env("LORAFORGE_MIN_RESOLUTION", "64")
            .env(
                "LORAFORGE_CORS_ORIGINS",
                "https://a.example,https://b.example",
            )
            .env("LORAFORGE_DATA_DIR", "/tmp/env-data"),
    );
    assert_eq!(config_value(&from_env, "monthly_limit"), "9");
    assert_eq!(
        config_value(&from_env, "min_steps"),
        "10",
        "file still applies under env"
    );
    assert_eq!(config_value(&from_env, "min_resolution"), "64");
    assert_eq!(
        config_value(&from_env, "cors_origins"),
        "https://a.example,https://b.example"
    );
    assert_eq!(config_value(&from_env, "data_dir"), "/tmp/env-data");
    assert_eq!(
        config_value(&from_env, "allowed_base_models"),
        "stabilityai/stable-diffusion-xl-base-1.0",
        "the default allow-list: SDXL base 1.0"
    );
    let allowed = stdout(loraforge(dir.path()).arg("config").env(
        "LORAFORGE_ALLOWED_BASE_MODELS",
        "org/house-model, /srv/models,",
    ));
    assert_eq!(
        config_value(&allowed, "allowed_base_models"),
        "org/house-model,/srv/models"
    );

    let from_flag = stdout(
        loraforge(dir.path())
            .args(["--data-dir", "/tmp/flag-data", "config"])
            .env("LORAFORGE_DATA_DIR", "/tmp/env-data"),
    );
    assert_eq!(config_value(&from_flag, "data_dir"), "/tmp/flag-data");
    assert_eq!(
        config_value(&from_flag, "database_url"),
        "sqlite:///tmp/flag-data/loraforge.db"
    );
}

#[test]
fn secrets_never_appear_in_the_config_listing() {
    let dir = tempfile::tempdir().unwrap();
    let listing = stdout(
        loraforge(dir.path())
            .arg("config")
            .env("LORAFORGE_JWT_SECRET", "jwt-super-secret-value-123")
            .env("LORAFORGE_S3_SECRET_ACCESS_KEY", "s3-super-secret-value")
            .env(
                "LORAFORGE_DATABASE_URL",
                "postgres://app:db-password-xyz@db.internal/loraforge",
            ),
    );
    for secret in [
        "jwt-super-secret-value-123",
        "s3-super-secret-value",
        "db-password-xyz",
    ] {
        assert!(!listing.contains(secret), "{secret} leaked:\n{listing}");
    }
    assert_eq!(
        config_value(&listing, "database_url"),
        "postgres://app:***@db.internal/loraforge"
    );
}

/// The account secret of api-contracts.md §3's test vector.
const WEBHOOK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

#[test]
fn the_replicate_webhook_secret_is_checked_and_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    let listing = stdout(
        loraforge(dir.path())
            .arg("config")
            .env("LORAFORGE_REPLICATE_WEBHOOK_SECRET", WEBHOOK_SECRET),
    );
    assert!(!listing.contains("C2FVsBQIhrsc"), "leaked:\n{listing}");
    assert_eq!(config_value(&listing, "replicate_webhook_secret"), "<set>");
    let out = loraforge(dir.path())
        .arg("config")
        .env(
            "LORAFORGE_REPLICATE_WEBHOOK_SECRET",
            "whsec_not base64 at all!",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("replicate_webhook_secret"), "{err}");
    assert!(
        !err.contains("not base64 at all"),
        "the secret is not repeated: {err}"
    );
}

#[test]
fn the_replicate_settings_are_checked_and_the_token_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    let listing = stdout(
        loraforge(dir.path())
            .arg("config")
            .env("LORAFORGE_REPLICATE_API_TOKEN", "r8_super_secret_token")
            .env(
                "LORAFORGE_REPLICATE_MODEL",
                "acme/loraforge-trainer:0a1b2c3d",
            )
            .env("LORAFORGE_REPLICATE_DESTINATION", "acme/loras")
            .env("LORAFORGE_REPLICATE_PRICE_PER_SECOND", "0.000975"),
    );
    assert!(
        !listing.contains("r8_super_secret_token"),
        "leaked:\n{listing}"
    );
    assert_eq!(config_value(&listing, "replicate_api_token"), "<set>");
    assert_eq!(
        config_value(&listing, "replicate_model"),
        "acme/loraforge-trainer:0a1b2c3d"
    );
    assert_eq!(
        config_value(&listing, "replicate_api_url"),
        "https://api.replicate.com/v1"
    );
    assert_eq!(config_value(&listing, "replicate_max_runs"), "4");
    for (key, value, expected) in [
        (
            "LORAFORGE_REPLICATE_MODEL",
            "acme/trainer",
            "replicate_model",
        ),
        (
            "LORAFORGE_REPLICATE_DESTINATION",
            "no-slash",
            "replicate_destination",
        ),
        (
            "LORAFORGE_REPLICATE_PRICE_PER_SECOND",
            "cheap",
            "replicate_price_per_second",
        ),
        ("LORAFORGE_REPLICATE_MAX_RUNS", "0", "replicate_max_runs"),
    ] {
        let out = loraforge(dir.path())
            .arg("config")
            .env(key, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}={value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{key}: {err}");
    }
    // The backend itself refuses to start without its token, model and destination.
    let out = loraforge(dir.path())
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("LORAFORGE_BACKENDS", "replicate")
        .env("LORAFORGE_ALLOW_LOOPBACK_CALLBACKS", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LORAFORGE_REPLICATE_API_TOKEN"), "{err}");
}

#[test]
fn a_bad_setting_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = loraforge(dir.path())
        .arg("config")
        .env("LORAFORGE_MONTHLY_LIMIT", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("monthly_limit") || err.contains("invalid value"),
        "{err}"
    );
    let out = loraforge(dir.path())
        .args(["--config", "missing.toml", "config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[cfg(unix)]
#[test]
fn the_generated_jwt_secret_is_private_and_stable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let user = "6f1c1a7e-2f4b-4c4e-9d0a-1b2c3d4e5f60";
    let t1 = stdout(loraforge(dir.path()).args(["--data-dir", "d", "token", "--user", user]));
    let secret = dir.path().join("d/jwt-secret");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&secret).unwrap();
    stdout(loraforge(dir.path()).args(["--data-dir", "d", "token", "--user", user]));
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        before,
        "the secret is generated once"
    );
    assert_eq!(t1.trim().split('.').count(), 3);
    let out = loraforge(dir.path())
        .args(["token", "--user", "bob"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = loraforge(dir.path())
        .args(["token", "--user", user, "--ttl", "soon"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("30m, 1h or 7d"));
}

/// `serve` with nothing set: SQLite and local files in the data dir, and a token from `token`
/// works against it.
#[test]
fn serve_runs_with_only_a_data_dir_and_accepts_its_own_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut command = loraforge(dir.path());
    // A permissive umask, as many hosts have: serve must make its files private regardless.
    #[cfg(unix)]
    // SAFETY: umask is async-signal-safe and touches only the child's file-creation mask.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::umask(0o022);
            Ok(())
        });
    }
    let mut child = command
        .args([
            "--data-dir",
            "data",
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .env("LORAFORGE_REPLICATE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The server logs one line when it listens; wait for it instead of sleeping.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = lines
        .by_ref()
        .take(50)
        .map(|l| l.unwrap())
        .any(|l| l.contains("listening"));
    std::thread::spawn(move || for _ in lines {});
    assert!(listening, "serve did not report that it listens");
    let user = "6f1c1a7e-2f4b-4c4e-9d0a-1b2c3d4e5f60";
    let token = stdout(loraforge(dir.path()).args([
        "--data-dir",
        "data",
        "token",
        "--user",
        user,
        "--email",
        "me@example.com",
    ]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, limits) = rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let r = http
            .get(format!("http://127.0.0.1:{port}/api/v1/me/limits"))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    });
    // The Replicate webhook secret reached the route: a signed delivery is taken.
    let webhook = rt.block_on(async {
        let key = loraforge_server::webhook::WebhookKey::parse(WEBHOOK_SECRET).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let body = br#"{"id":"t1","status":"succeeded"}"#;
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/api/v1/webhooks/replicate"))
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", key.sign("msg_1", now, body))
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(webhook, 200);
    // No trainer environment in this data dir: the engine runs but says it cannot train.
    let ready: serde_json::Value = rt.block_on(async {
        reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(status, 200, "{limits}");
    assert_eq!(ready["engine"]["running"], true, "{ready}");
    assert_eq!(ready["engine"]["can_train"], false, "{ready}");
    assert!(
        ready["engine"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("setup-trainer"),
        "{ready}"
    );
    assert_eq!(limits["limit"], 5);
    assert!(dir.path().join("data/loraforge.db").exists());
    assert!(dir.path().join("data/blobs").is_dir());
    #[cfg(unix)]
    assert_everything_is_private(&dir.path().join("data"));
}

/// Every folder under `root` (and `root`) is 0700 and every file 0600: the database and its
/// WAL files hold e-mails, the secret signs tokens, blobs are users' images.
#[cfg(unix)]
fn assert_everything_is_private(root: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut seen = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    for expected in ["data", "loraforge.db", "jwt-secret", "blobs"] {
        assert!(
            seen.iter().any(|s| s == expected),
            "{expected} not in {seen:?}"
        );
    }
}

#[test]
fn credits_are_off_by_default_and_only_on_or_off() {
    let dir = tempfile::tempdir().unwrap();
    let listing = stdout(loraforge(dir.path()).arg("config"));
    assert_eq!(config_value(&listing, "credits"), "off");
    let listing = stdout(
        loraforge(dir.path())
            .arg("config")
            .env("LORAFORGE_CREDITS", "on"),
    );
    assert_eq!(config_value(&listing, "credits"), "on");
    let out = loraforge(dir.path())
        .arg("config")
        .env("LORAFORGE_CREDITS", "maybe")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("credits must be on or off"), "{err}");
}

#[test]
fn moderation_settings_are_listed_layered_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = stdout(loraforge(dir.path()).arg("config"));
    assert_eq!(config_value(&defaults, "reports_per_minute"), "10");
    assert_eq!(config_value(&defaults, "report_alert_threshold"), "3");
    assert!(
        defaults.contains("# LORAFORGE_REPORTS_PER_MINUTE"),
        "{defaults}"
    );
    assert!(
        defaults.contains("# LORAFORGE_REPORT_ALERT_THRESHOLD"),
        "{defaults}"
    );

    std::fs::write(
        dir.path().join("loraforge.toml"),
        "reports_per_minute = 2\nreport_alert_threshold = 5\n",
    )
    .unwrap();
    let from_file = stdout(loraforge(dir.path()).arg("config"));
    assert_eq!(config_value(&from_file, "reports_per_minute"), "2");
    assert_eq!(config_value(&from_file, "report_alert_threshold"), "5");
    // 0 turns each off (as `ModerationSettings` documents), and the environment wins.
    let from_env = stdout(
        loraforge(dir.path())
            .arg("config")
            .env("LORAFORGE_REPORTS_PER_MINUTE", "0")
            .env("LORAFORGE_REPORT_ALERT_THRESHOLD", "0"),
    );
    assert_eq!(config_value(&from_env, "reports_per_minute"), "0");
    assert_eq!(config_value(&from_env, "report_alert_threshold"), "0");

    for (var, value) in [
        ("LORAFORGE_REPORTS_PER_MINUTE", "lots"),
        ("LORAFORGE_REPORT_ALERT_THRESHOLD", "-1"),
    ] {
        let out = loraforge(dir.path())
            .arg("config")
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        let key = var.trim_start_matches("LORAFORGE_").to_lowercase();
        assert!(err.contains(&key), "{var}={value}: {err}");
    }
}
