//! The dataset zip link of the worker job (`routes/dataset_zip.rs`): what Replicate downloads
//! for `cog/train.py`. The zip is read back by Python's `zipfile` (an independent reader, CRCs
//! checked) and compared with the job's own image links and captions.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;
use crate::worker::{job, training_job};

/// Names, sha256 and (for captions) text of every entry, as Python's zipfile reads them.
fn read_zip(bytes: &[u8]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dataset.zip");
    std::fs::write(&path, bytes).unwrap();
    let script = r#"
import hashlib, json, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
assert z.testzip() is None, "a CRC does not match"
out = []
for i in z.infolist():
    data = z.read(i)
    out.append({"name": i.filename, "sha256": hashlib.sha256(data).hexdigest(), "size": i.file_size,
                "mode": oct(i.external_attr >> 16), "text": data.decode() if i.filename.endswith(".txt") else None})
print(json.dumps(out))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn the_zip_holds_exactly_the_jobs_images_and_captions() {
    let app = spawn_app().await;
    let user = app.user();
    let (id, token) = training_job(&app, &user, "zipped").await;
    let job = job(&app, &id, &token).await;
    let link = job["dataset_zip"]
        .as_str()
        .expect("the job has a dataset_zip link");
    assert!(link.starts_with(&app.url(&format!("/api/v1/worker/jobs/{id}/dataset.zip?sig="))));

    // No bearer token: the signature is the credential.
    let resp = app.http.get(link).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/zip");
    let declared: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len(), declared, "the announced length is exact");

    let mut expected = Vec::new();
    for img in job["images"].as_array().unwrap() {
        let name = img["file_name"].as_str().unwrap();
        let data = app
            .http
            .get(img["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(data.len() as u64, img["bytes"].as_u64().unwrap());
        expected.push(
            json!({"name": name, "sha256": sha256_hex(&data), "size": data.len(),
            "mode": "0o100644", "text": null}),
        );
        let caption = img["caption"].as_str().unwrap();
        assert!(caption.contains("zxq"), "captions hold the trigger word");
        let stem = name.split('.').next().unwrap();
        expected.push(
            json!({"name": format!("{stem}.txt"), "sha256": sha256_hex(caption.as_bytes()),
            "size": caption.len(), "mode": "0o100644", "text": caption}),
        );
    }
    assert_eq!(expected.len(), 6, "3 images and their captions");
    assert_eq!(read_zip(&bytes), Value::Array(expected));
}

#[tokio::test]
async fn a_link_opens_only_its_own_job_while_the_attempt_holds_it() {
    let app = spawn_app().await;
    let user = app.user();
    let (id, token) = training_job(&app, &user, "guarded").await;
    let link = job(&app, &id, &token).await["dataset_zip"]
        .as_str()
        .unwrap()
        .to_owned();
    let (base, sig) = link.split_once("?sig=").unwrap();
    let get = |url: String| {
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap() }
    };

    // No signature, a changed one, someone else's token in its place.
    for url in [
        base.to_owned(),
        format!("{base}?sig="),
        format!("{base}?sig={}x", &sig[..sig.len() - 1]),
        format!("{base}?sig={token}"),
        format!("{base}?sig={}", user.token),
    ] {
        let e = error_of(get(url).await, 403).await;
        assert_eq!(e["code"], "invalid_signature", "{e}");
    }
    // The same signature on another job's path.
    let (other, _) = training_job(&app, &user, "other").await;
    let e = error_of(
        get(app.url(&format!(
            "/api/v1/worker/jobs/{other}/dataset.zip?sig={sig}"
        )))
        .await,
        403,
    )
    .await;
    assert_eq!(e["code"], "invalid_signature");

    // The job moves on (cancelled): the link no longer opens.
    let cancelled = app
        .post_json(
            &user,
            &format!("/api/v1/lora-models/{id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(cancelled.status(), 200);
    let e = error_of(get(link.clone()).await, 409).await;
    assert_eq!(e["code"], "job_not_active");

    // And it expires with the attempt's token (an hour in `training_job`).
    app.clock.advance(chrono::Duration::hours(1));
    let e = error_of(get(link).await, 403).await;
    assert_eq!(e["code"], "link_expired");
}
