//! Hostile clients (issue 9 items 2 and 3): uploads bounded up front and while streaming, and
//! connections that stall are closed or kept out, while honest requests still work.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const BOUNDARY: &str = "hostileboundary";

/// The start of a multipart part named `images`.
fn part_head(file_name: &str) -> String {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
}

fn upload_head(app: &TestApp, user: &User, content_length: u64) -> String {
    let host = app.base.trim_start_matches("http://");
    format!(
        "POST /api/v1/datasets HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {content_length}\r\n\r\n",
        user.token
    )
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or `limit` passes: a failure).
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut out))
        .await
        .expect("the server should have closed the connection")
        .ok();
    out
}

/// Reads one response's status and JSON body from a raw connection (the server may keep
/// reading nothing more from us).
async fn read_response(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> (u16, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut chunk))
            .await
            .expect("a response")
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len || n == 0 {
                let status = head[9..12].parse().unwrap();
                return (status, serde_json::from_str(&body[..len]).unwrap());
            }
        }
        assert!(n > 0, "the connection closed before a response");
    }
}

#[tokio::test]
async fn a_request_of_many_tiny_parts_is_refused_at_the_part_cap() {
    let app = spawn_app().await;
    let u = app.user();
    let mut body = String::new();
    for i in 0..10_000 {
        body.push_str(&part_head(&format!("{i}.png")));
        body.push_str("x\r\n");
    }
    body.push_str(&format!("--{BOUNDARY}--\r\n"));
    let resp = app
        .http
        .post(app.url("/api/v1/datasets"))
        .bearer_auth(&u.token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let text_len = resp.content_length().unwrap_or(0);
    let err = error_of(resp, 413).await;
    assert_eq!(err["code"], "too_many_parts");
    assert_eq!(err["max_parts"], 41);
    assert!(text_len < 1024, "error body of {text_len} bytes");
}

#[tokio::test]
async fn a_refused_dataset_names_ten_problems_and_counts_the_rest() {
    let app = spawn_app().await;
    let u = app.user();
    // 41 parts (the cap), each a tiny text file: too small and not an image, and too many.
    let files = (0..41)
        .map(|i| (format!("{i}.png"), format!("not an image {i}").into_bytes()))
        .collect();
    let resp = app.upload(&u, files).await;
    let err = error_of(resp, 422).await;
    assert_eq!(err["code"], "invalid_dataset");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.ends_with("; and 73 more"), "{msg}");
    assert!(msg.len() < 2000, "{} bytes: {msg}", msg.len());
    assert_eq!(err["images"].as_array().unwrap().len(), 41);
}

#[tokio::test]
async fn a_huge_part_is_refused_at_the_image_limit_without_waiting_for_the_rest() {
    let app = spawn_app_with(Engine::Sqlite, |s| s.dataset_rules.max_bytes = 1024 * 1024).await;
    let u = app.user();
    let (mut reader, mut writer) = connect(&app).await.into_split();
    // Declares 20 MB (within the body limit of 20 images), sends 2 MB of one part, then waits:
    // the answer must come without the rest. (The server may stop reading, so write aside.)
    let head = upload_head(&app, &u, 20 * 1024 * 1024);
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(part_head("huge.png").as_bytes()).await?;
        writer.write_all(&vec![0u8; 2 * 1024 * 1024]).await?;
        std::future::pending::<()>().await;
        Ok::<_, std::io::Error>(writer)
    });
    let (status, body) = read_response(&mut reader).await;
    sending.abort();
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "image_too_large");
    assert_eq!(body["error"]["file_name"], "huge.png");
    assert_eq!(body["error"]["limit_bytes"], 1024 * 1024);
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_any_body() {
    let app = spawn_app().await;
    let u = app.user();
    let mut stream = connect(&app).await;
    stream
        .write_all(upload_head(&app, &u, 250_000_000).as_bytes())
        .await
        .unwrap();
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert_eq!(
        body["error"]["limit_bytes"].as_u64().unwrap() as usize,
        app.settings.max_upload_bytes()
    );
}

#[tokio::test]
async fn an_image_larger_than_the_decode_budget_is_refused_and_a_smaller_one_passes() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.decode_budget_bytes = 600 * 600 * 4 - 1;
    })
    .await;
    let u = app.user();
    let files = vec![
        ("big.png".to_owned(), noise_png(600, 600, 1)),
        ("a.png".to_owned(), noise_png(512, 512, 2)),
        ("b.png".to_owned(), noise_png(512, 512, 3)),
    ];
    let err = error_of(app.upload(&u, files).await, 422).await;
    let codes: Vec<&str> = err["images"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["errors"].as_array().unwrap())
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["too_large_to_decode"]);
    // The same budget takes the smaller images (it is given back after every decode).
    app.dataset(&u).await;
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.http.header_timeout = Duration::from_secs(1);
        s.http.idle_timeout = Duration::from_secs(600);
    })
    .await;
    let mut stream = connect(&app).await;
    let started = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_until_closed(&mut stream, Duration::from_secs(60)).await;
    assert!(started.elapsed() >= Duration::from_millis(950));
    // Honest requests are still served.
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_silent_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.http.header_timeout = Duration::from_secs(600);
        s.http.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let started = Instant::now();
    read_until_closed(&mut stream, Duration::from_secs(60)).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_408() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.http.body_timeout = Duration::from_secs(1);
    })
    .await;
    let u = app.user();
    let host = app.base.trim_start_matches("http://");
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /api/v1/datasets/from-urls HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"urls\": [",
        u.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "body_timeout");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_the_hostile_ones_go() {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.http.max_connections = 2;
        s.http.header_timeout = Duration::from_secs(600);
        s.http.idle_timeout = Duration::from_secs(600);
    })
    .await;
    let mut hostile = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&app).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        hostile.push(s);
    }
    // Both hostile connections are in the backlog before the probe, so the server took them.
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    assert!(
        probe.get(app.url("/healthz")).send().await.is_err(),
        "a third connection was served beyond the cap of 2"
    );
    drop(hostile);
    let resp = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}
