//! Runs `tests/fixtures/verify_signed_url.py`, a verifier for our signed links that shares no
//! code with this crate: S3 presigned GETs and PUTs are re-signed by botocore's own presigner
//! (`S3SigV4QueryAuth`, pinned in the test venv), local `/files/{key}` links are recomputed with
//! Python's `hmac`. It plays the part of S3 (or of a second implementation of our route) for
//! what moto cannot show.
//!
//! Why: moto_server 5.2.5 checks neither the signature nor the expiry of a presigned URL.
//! Checked by hand: a GET carrying `X-Amz-Date=20200101T000000Z&X-Amz-Expires=1&
//! X-Amz-Signature=deadbeef` got 200 and the object, while a GET without any signature got 403.
//! So broken signing, a tampered link or an expired one all look fine against moto.

use std::io::Write;
use std::process::{Command, Stdio};

use chrono::{DateTime, Utc};
use url::Url;

use super::{ACCESS_KEY, Kind, LOCAL_BASE_URL, LOCAL_SIGNING_KEY, REGION, SECRET_KEY};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/verify_signed_url.py"
);

/// What the link is for: S3 and our local route sign the method in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }
    pub fn other(self) -> Method {
        match self {
            Method::Get => Method::Put,
            Method::Put => Method::Get,
        }
    }
}

/// The verifier's answer: `ok`, `bad_signature`, `expired` or `malformed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Ok,
    BadSignature,
    Expired,
    Malformed,
}

#[derive(Debug, Clone)]
pub struct Verdict {
    pub reason: Reason,
    /// Why, in words, when refused.
    pub detail: String,
    /// X-Amz-Date in unix seconds (S3 links only), when the link got that far.
    pub signed_at: Option<i64>,
    /// The first instant the link is refused as expired.
    pub expires_at: Option<i64>,
}

/// Checks every `(url, method, now)` against the store behind `kind`, in one Python run.
pub fn verify(kind: &Kind, checks: &[(&Url, Method, DateTime<Utc>)]) -> Vec<Verdict> {
    let args: Vec<String> = match kind {
        Kind::Local { .. } => vec![
            "local".into(),
            format!("--base-url={LOCAL_BASE_URL}"),
            format!("--signing-key-hex={}", hex::encode(LOCAL_SIGNING_KEY)),
        ],
        Kind::S3 { .. } => vec![
            "s3".into(),
            format!("--access-key={ACCESS_KEY}"),
            format!("--secret-key={SECRET_KEY}"),
            format!("--region={REGION}"),
        ],
    };
    run(&args, checks)
}

/// [`verify`] with the verifier's arguments spelled out (mode and credentials).
pub fn run(args: &[String], checks: &[(&Url, Method, DateTime<Utc>)]) -> Vec<Verdict> {
    let python = loraforge_storage::test_support::test_venv().join("bin/python");
    assert!(
        python.is_file(),
        "the signed-URL verifier needs the test venv's Python (with botocore) at {}: run \
         scripts/test-env.sh from the repository root",
        python.display()
    );
    let input: String = checks
        .iter()
        .map(|(url, method, now)| {
            let line = serde_json::json!({"url": url.as_str(), "method": method.name(), "now": now.timestamp()});
            format!("{line}\n")
        })
        .collect();
    let mut child = Command::new(&python)
        .arg(SCRIPT)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write the checks");
    let out = child.wait_with_output().expect("verifier output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // 0: all accepted, 1: some refused; anything else is the verifier itself failing.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "verifier failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<Verdict> = stdout.lines().map(parse).collect();
    assert_eq!(
        verdicts.len(),
        checks.len(),
        "one verdict per check: {stdout}"
    );
    verdicts
}

fn parse(line: &str) -> Verdict {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let reason = match v["reason"].as_str() {
        Some("ok") => Reason::Ok,
        Some("bad_signature") => Reason::BadSignature,
        Some("expired") => Reason::Expired,
        Some("malformed") => Reason::Malformed,
        other => panic!("unknown reason {other:?} in {line}"),
    };
    assert_eq!(v["ok"].as_bool(), Some(reason == Reason::Ok), "{line}");
    Verdict {
        reason,
        detail: v["detail"].as_str().unwrap_or_default().to_owned(),
        signed_at: v["signed_at"].as_i64(),
        expires_at: v["expires_at"].as_i64(),
    }
}
