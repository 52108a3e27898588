use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn signed_links_serve_the_exact_bytes_until_they_expire() {
    let app = spawn_app().await;
    let u = app.user();
    let img = noise_png(512, 512, 42);
    let files = vec![
        ("a.png".to_owned(), img.clone()),
        ("b.png".to_owned(), noise_png(512, 512, 43)),
        ("c.png".to_owned(), noise_png(512, 512, 44)),
    ];
    let ds: Value = app.upload(&u, files).await.json().await.unwrap();
    let id = ds["dataset_id"].as_str().unwrap();
    let got: Value = app
        .get(&u, &format!("/api/v1/datasets/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let link = got["images"][0]["url"].as_str().unwrap().to_owned();
    assert!(link.starts_with(&app.base), "{link}");

    // No token needed: the link is the capability.
    let resp = app.http.get(&link).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), img.as_slice());

    // Tampering with the key, the expiry or the signature is refused.
    let tampered_key = link.replacen(".png?", ".jpg?", 1);
    assert_ne!(tampered_key, link);
    let e = error_of(app.http.get(&tampered_key).send().await.unwrap(), 403).await;
    assert_eq!(e["code"], "invalid_signature");
    let url = url::Url::parse(&link).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    let later = link.replace(
        &format!("expires={}", q["expires"]),
        &format!("expires={}", q["expires"].parse::<i64>().unwrap() + 3600),
    );
    assert_eq!(
        error_of(app.http.get(&later).send().await.unwrap(), 403).await["code"],
        "invalid_signature"
    );
    let mut sig = q["sig"].clone();
    let flipped = if sig.ends_with('0') { '1' } else { '0' };
    sig.pop();
    sig.push(flipped);
    let bad_sig = link.replace(&q["sig"], &sig);
    assert_eq!(
        error_of(app.http.get(&bad_sig).send().await.unwrap(), 403).await["code"],
        "invalid_signature"
    );
    let unsigned = link.split('?').next().unwrap();
    assert_eq!(
        error_of(app.http.get(unsigned).send().await.unwrap(), 403).await["code"],
        "invalid_signature"
    );

    // After the default hour, the link is dead.
    app.clock.advance(chrono::Duration::minutes(61));
    assert_eq!(
        error_of(app.http.get(&link).send().await.unwrap(), 403).await["code"],
        "link_expired"
    );
}
