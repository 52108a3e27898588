//! `setup-trainer`, `doctor` and `train` as a user runs them: the trainer's environment, the
//! host check, and training against a real `loraforge serve`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use common::{loraforge, noise_png, strip_ansi, trainer_python};

const USER: &str = "6f1c1a7e-2f4b-4c4e-9d0a-1b2c3d4e5f60";

fn run(c: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().unwrap();
    (
        status.code().expect("exited, not killed by a signal"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

/// A folder of stand-in packages with the trainer's import names, so a plain python3 passes the
/// import check without torch installed.
fn stub_packages(dir: &Path) -> PathBuf {
    let root = dir.join("stubs");
    for name in ["torch", "diffusers", "peft", "transformers", "safetensors"] {
        let pkg = root.join(name);
        std::fs::create_dir_all(&pkg).unwrap();
        let mut init = "__version__ = '0.0.0-stub'\n".to_owned();
        if name == "torch" {
            std::fs::create_dir_all(pkg.join("cuda")).unwrap();
            std::fs::write(
                pkg.join("cuda/__init__.py"),
                "def is_available():\n    return False\n",
            )
            .unwrap();
            init.push_str("from . import cuda\nclass version:\n    cuda = None\n");
        }
        std::fs::write(pkg.join("__init__.py"), init).unwrap();
    }
    root
}

fn python3_version() -> String {
    let out = Command::new("python3")
        .arg("--version")
        .output()
        .expect("python3 is needed by these tests");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stamp_of(lock: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(lock);
    h.update(python3_version().as_bytes());
    hex::encode(h.finalize())
}

fn embedded_lock() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../trainer/requirements.lock"))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// setup-trainer

#[test]
fn setup_trainer_does_nothing_when_the_stamp_matches() {
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("data/trainer-venv");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::fs::write(venv.join("bin/python"), "").unwrap();
    std::fs::write(
        venv.join(".loraforge-pins"),
        format!("{}\n", stamp_of(&embedded_lock())),
    )
    .unwrap();
    let (code, out, err) = run(loraforge(dir.path()).args(["--data-dir", "data", "setup-trainer"]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("up to date") && out.contains("nothing to do"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "trainer Python: {}",
            venv.join("bin/python").display()
        )),
        "{out}"
    );
    assert!(
        out.contains("-m loraforge_trainer") && out.contains("PYTHONPATH="),
        "{out}"
    );
    assert!(!dir.path().join("data/trainer-venv.partial").exists());
    // The sources were extracted for the service to use.
    let extracted = std::fs::read_dir(dir.path().join("data/trainer"))
        .unwrap()
        .count();
    assert_eq!(extracted, 1);

    // A stamp for another lock (or Python) is stale: the header says it rebuilds. (Not run to
    // the end here: that is the 3 GB download.)
    let help = run(loraforge(dir.path()).args(["setup-trainer", "--help"])).1;
    assert!(
        help.contains("--force") && help.contains("--python") && help.contains("3 GB"),
        "{help}"
    );
    assert!(
        !help.contains("--requirements"),
        "the test-only flag is hidden"
    );
}

#[test]
fn setup_trainer_builds_a_venv_once_from_a_requirements_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.txt"), "").unwrap();
    let setup = || {
        let mut c = loraforge(dir.path());
        c.args([
            "--data-dir",
            "data",
            "setup-trainer",
            "--requirements",
            "empty.txt",
        ]);
        c
    };
    let (code, out, err) = run(&mut setup());
    assert_eq!(code, 0, "{out}\n{err}");
    let venv = dir.path().join("data/trainer-venv");
    assert!(venv.join("bin/python").is_file(), "{out}\n{err}");
    let stamp = std::fs::read_to_string(venv.join(".loraforge-pins")).unwrap();
    assert_eq!(stamp.trim(), stamp_of(b""));
    assert!(!dir.path().join("data/trainer-venv.partial").exists());
    assert!(
        out.contains("trainer environment ready") && out.contains("trainer Python:"),
        "{out}"
    );
    // The venv's scripts name its final folder, not the .partial one it was built in.
    let pip = std::fs::read_to_string(venv.join("bin/pip")).unwrap();
    assert!(
        !pip.contains(".partial") && pip.contains(&venv.display().to_string()),
        "{pip}"
    );
    let ok = Command::new(venv.join("bin/python"))
        .args(["-c", "import sys; assert sys.prefix != sys.base_prefix"])
        .status()
        .unwrap();
    assert!(ok.success());

    let (code, out, _) = run(&mut setup());
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");

    // doctor uses that venv (the packages are missing: an empty requirements file).
    let (code, out, _) = run(loraforge(dir.path()).args(["--data-dir", "data", "doctor"]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&venv.join("bin/python").display().to_string())
            && out.contains("cannot import torch"),
        "{out}"
    );
}

#[test]
fn setup_trainer_checks_the_configured_interpreter_instead_of_building() {
    let dir = tempfile::tempdir().unwrap();
    let stubs = stub_packages(dir.path());
    let (code, out, err) = run(loraforge(dir.path())
        .args(["--data-dir", "data", "setup-trainer"])
        .env("LORAFORGE_TRAINER_PYTHON", "python3")
        .env("PYTHONPATH", &stubs));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("not building") && out.contains("ok:") && out.contains("torch 0.0.0-stub"),
        "{out}"
    );
    assert!(!dir.path().join("data/trainer-venv").exists());

    let (code, out, _) = run(loraforge(dir.path())
        .args(["--data-dir", "data", "setup-trainer"])
        .env("LORAFORGE_TRAINER_PYTHON", "python3"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL") && out.contains("cannot import torch"),
        "{out}"
    );
}

#[test]
fn setup_trainer_accepts_the_cached_trainer_venv() {
    let python = trainer_python();
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(loraforge(dir.path())
        .args(["--data-dir", "data", "setup-trainer"])
        .env("LORAFORGE_TRAINER_PYTHON", &python));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("ok:") && out.contains("torch"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// doctor

#[test]
fn doctor_is_ready_with_the_cached_trainer_venv() {
    let python = trainer_python();
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(loraforge(dir.path())
        .args(["--data-dir", "data", "doctor"])
        .env("LORAFORGE_TRAINER_PYTHON", &python));
    assert_eq!(code, 0, "{out}\n{err}");
    let trainer = out.lines().find(|l| l.contains("trainer")).unwrap();
    assert!(
        trainer.starts_with("ok")
            && trainer.contains("torch")
            && trainer.contains("loraforge_trainer"),
        "{out}"
    );
}

#[test]
fn doctor_reports_every_check_as_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let stubs = stub_packages(dir.path());
    let doctor = |json: bool| {
        let mut c = loraforge(dir.path());
        c.args(["--data-dir", "data", "doctor"])
            .env("LORAFORGE_TRAINER_PYTHON", "python3")
            .env("PYTHONPATH", &stubs);
        if json {
            c.arg("--json");
        }
        c
    };
    let (code, out, err) = run(&mut doctor(false));
    assert_eq!(code, 0, "{out}\n{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name}: {out}"))
    };
    assert!(
        line("trainer").starts_with("ok") && line("trainer").contains("loraforge_trainer 0.1.0"),
        "{out}"
    );
    assert!(
        line("storage").starts_with("ok") && line("database").starts_with("ok"),
        "{out}"
    );
    // No GPU here (the stub torch has none): a warning, not a failure.
    assert!(
        line("gpu").starts_with("warn") && line("gpu").contains("CPU"),
        "{out}"
    );
    assert!(out.contains("ready:"), "{out}");

    let (code, out, _) = run(&mut doctor(true));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ready"], true);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["trainer", "gpu", "storage", "database"]);
    assert_eq!(v["checks"][0]["status"], "ok");
    assert_eq!(v["checks"][1]["status"], "warn");
    assert_eq!(v["trainer"]["report"]["packages"]["torch"], "0.0.0-stub");
    assert_eq!(v["trainer"]["report"]["cuda"], false);
    // The trainer is imported from the copy loraforge extracted, not from anywhere else.
    let imported = v["trainer"]["report"]["trainer_path"].as_str().unwrap();
    assert!(
        imported.starts_with(&dir.path().join("data/trainer").display().to_string()),
        "{imported}"
    );
}

#[test]
fn doctor_fails_without_a_trainer_and_says_to_run_setup_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(loraforge(dir.path())
        .args(["--data-dir", "data", "doctor"])
        .env("LORAFORGE_TRAINER_PYTHON", "/nonexistent"));
    assert_eq!(code, 1, "{out}\n{err}");
    let trainer = out.lines().find(|l| l.contains("trainer")).unwrap();
    assert!(
        trainer.starts_with("FAIL") && trainer.contains("/nonexistent"),
        "{out}"
    );
    assert!(out.contains("setup-trainer"), "{out}");
    assert!(out.contains("not ready"), "{out}");

    // Nothing configured and no venv: the same advice.
    let (code, out, _) =
        run(loraforge(dir.path()).args(["--data-dir", "data", "doctor", "--json"]));
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ready"], false);
    assert_eq!(v["checks"][0]["status"], "fail");
    assert!(
        v["checks"][0]["fix"]
            .as_str()
            .unwrap()
            .contains("loraforge setup-trainer"),
        "{v}"
    );
    assert_eq!(
        v["checks"][2]["status"], "ok",
        "storage is still checked: {v}"
    );
}

// ---------------------------------------------------------------------------------------------
// train

/// A folder of `n` images that pass the default checks (≥ 512 px, ≥ 100 KB, all different).
fn good_images(dir: &Path, n: u32) -> PathBuf {
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..n {
        let png = noise_png(512, 512, i + 1);
        assert!(png.len() >= 100 * 1024);
        std::fs::write(imgs.join(format!("p{i}.png")), png).unwrap();
    }
    std::fs::write(imgs.join("p0.txt"), "zxq, a photo").unwrap();
    imgs
}

/// `loraforge serve` on a free loopback port, killed on drop.
struct Server {
    child: Child,
    url: String,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Server {
    serve_with(dir, &[])
}

fn serve_with(dir: &Path, env: &[(&str, &str)]) -> Server {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = loraforge(dir)
        .args([
            "--data-dir",
            "data",
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        // These tests are about the client: LoRAs stay where the API puts them. Training through
        // `train --follow` is in tests/training.rs.
        .env("LORAFORGE_ENGINE_ENABLED", "false")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = lines
        .by_ref()
        .take(100)
        .map_while(Result::ok)
        .find(|l| l.contains("loraforge listening"));
    std::thread::spawn(move || for _ in lines {});
    let listening = strip_ansi(&listening.expect("serve did not report that it listens"));
    let addr = listening
        .split("addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("an addr= field")
        .to_owned();
    assert_eq!(addr, format!("127.0.0.1:{port}"), "{listening}");
    let (code, token, err) = run(loraforge(dir).args([
        "--data-dir",
        "data",
        "token",
        "--user",
        USER,
        "--email",
        "me@example.com",
    ]));
    assert_eq!(code, 0, "{err}");
    Server {
        child,
        url: format!("http://{addr}"),
        token: token.trim().to_owned(),
    }
}

fn train(dir: &Path, server: &Server) -> Command {
    let mut c = loraforge(dir);
    c.env("LORAFORGE_SERVER", &server.url)
        .env("LORAFORGE_TOKEN", &server.token)
        .arg("train");
    c
}

fn api(server: &Server, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let r = http
            .request(method, format!("{}{path}", server.url))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>()
                .await
                .unwrap_or(serde_json::Value::Null),
        )
    })
}

fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name}: line in {out}"))
}

#[test]
fn train_uploads_the_images_and_creates_the_lora() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = good_images(dir.path(), 3);
    let server = serve(dir.path());
    let (code, out, err) = run(train(dir.path(), &server).arg(&imgs).args([
        "--name",
        "x",
        "--trigger",
        "zxq",
        "--steps",
        "200",
        "--resolution",
        "512",
    ]));
    assert_eq!(code, 0, "{out}\n{err}");
    let id = field(&out, "id").to_owned();
    assert!(
        matches!(field(&out, "status"), "pending" | "queued"),
        "{out}"
    );
    assert!(out.contains("dataset check passed: 3 images"), "{out}");

    let (status, lora) = api(
        &server,
        reqwest::Method::GET,
        &format!("/api/v1/lora-models/{id}"),
    );
    assert_eq!(status, 200, "{lora}");
    assert_eq!(lora["name"], "x");
    assert_eq!(lora["dataset"]["image_count"], 3);
    assert_eq!(lora["params"]["steps"], 200);
    assert_eq!(lora["params"]["resolution"], 512);
    assert_eq!(lora["params"]["trigger_words"], serde_json::json!(["zxq"]));

    // The server's refusal is shown with its message and code.
    let (code, out, err) = run(train(dir.path(), &server).arg(&imgs).args(["--name", "x"]));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("duplicate_name") && err.contains("HTTP 409"),
        "{err}"
    );

    // A bad token is refused before the upload, with the server's reason.
    let (code, out, err) = run(train(dir.path(), &server)
        .arg(&imgs)
        .args(["--name", "y"])
        .env("LORAFORGE_TOKEN", "not-a-token"));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("HTTP 401")
            && err.contains("loraforge token --user")
            && !out.contains("uploaded"),
        "{out}\n{err}"
    );
}

#[test]
fn train_stops_before_uploading_when_the_monthly_limit_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = good_images(dir.path(), 3);
    let server = serve_with(dir.path(), &[("LORAFORGE_MONTHLY_LIMIT", "1")]);
    let (code, out, err) = run(train(dir.path(), &server)
        .arg(&imgs)
        .args(["--name", "first"]));
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = run(train(dir.path(), &server)
        .arg(&imgs)
        .args(["--name", "second"]));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("used your 1 LoRAs")
            && err.contains("Nothing was uploaded")
            && !out.contains("uploaded:"),
        "{out}\n{err}"
    );
}

#[test]
fn train_refuses_a_bad_dataset_before_uploading() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = good_images(dir.path(), 2);
    std::fs::write(imgs.join("small.png"), noise_png(200, 200, 9)).unwrap();
    // Nothing listens at this address: an upload attempt would fail with "cannot reach".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, out, err) = run(loraforge(dir.path())
        .arg("train")
        .arg(&imgs)
        .args([
            "--name",
            "x",
            "--server",
            &format!("http://127.0.0.1:{port}"),
        ])
        .env("LORAFORGE_TOKEN", "some-token"));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("small.png") && out.contains("FAIL") && out.contains("rejected"),
        "{out}"
    );
    assert!(
        err.contains("nothing was uploaded") && !err.contains("cannot reach"),
        "{err}"
    );
}

#[test]
fn train_without_a_token_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    let (code, out, err) = run(loraforge(dir.path())
        .arg("train")
        .arg(&imgs)
        .args(["--name", "x"]));
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains("LORAFORGE_TOKEN") && err.contains("loraforge token --user"),
        "{err}"
    );
    let help = run(loraforge(dir.path()).args(["train", "--help"])).1;
    for flag in [
        "--name",
        "--trigger",
        "--base-model",
        "--steps",
        "--resolution",
        "--follow",
        "--server",
        "--token",
        "LORAFORGE_SERVER",
    ] {
        assert!(help.contains(flag), "{flag} missing from {help}");
    }
}

#[test]
fn train_follow_ends_with_the_reason_when_the_lora_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = good_images(dir.path(), 3);
    let server = serve(dir.path());
    let mut child = train(dir.path(), &server)
        .arg(&imgs)
        .args(["--name", "followed", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(id) = line.trim().strip_prefix("id:") {
                let _ = tx.send(id.trim().to_owned());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let id = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("train printed the LoRA id");
    // Let it follow for a moment, then cancel through the API.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "train --follow exited before the LoRA ended"
    );
    let (status, body) = api(
        &server,
        reqwest::Method::POST,
        &format!("/api/v1/lora-models/{id}/cancel"),
    );
    assert_eq!(status, 200, "{body}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "train --follow did not stop after the cancel"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("cancelled") && err.contains("cancelled by its creator"),
        "{err}"
    );
    // Without a terminal, progress is printed as lines.
    assert!(out.contains("pending") || out.contains("queued"), "{out}");
}
