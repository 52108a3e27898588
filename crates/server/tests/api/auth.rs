use std::time::Duration;

use base64::Engine;
use secrecy::SecretSlice;

use loraforge_domain::UserId;
use loraforge_server::JwtKeys;

use crate::helpers::*;

const ROUTE: &str = "/api/v1/me/limits";

#[tokio::test]
async fn a_valid_token_is_accepted() {
    let app = spawn_app().await;
    let u = app.user();
    assert_eq!(app.get(&u, ROUTE).await.status(), 200);
}

#[tokio::test]
async fn a_missing_token_is_401_missing_token() {
    let app = spawn_app().await;
    let resp = app.http.get(app.url(ROUTE)).send().await.unwrap();
    let e = error_of(resp, 401).await;
    assert_eq!(e["code"], "missing_token");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
}

#[tokio::test]
async fn malformed_wrongly_signed_expired_and_unsigned_tokens_are_401() {
    let app = spawn_app().await;
    let now = loraforge_domain::Clock::now(app.clock.as_ref());
    let other = JwtKeys::new(&SecretSlice::from(b"some-other-secret-entirely".to_vec()));
    let wrong_sig = other
        .issue(UserId::new(), None, false, Duration::from_secs(3600), now)
        .unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let unsigned = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(
            r#"{{"sub":"{}","exp":{}}}"#,
            UserId::new(),
            now.timestamp() + 3600
        ))
    );
    let short = app
        .jwt
        .issue(UserId::new(), None, false, Duration::from_secs(60), now)
        .unwrap();

    for (header, code) in [
        ("Bearer not.a.jwt".to_owned(), "invalid_token"),
        ("Basic dXNlcjpwYXNz".to_owned(), "invalid_token"),
        (format!("Bearer {wrong_sig}"), "invalid_signature"),
        (format!("Bearer {unsigned}"), "invalid_token"),
    ] {
        let resp = app
            .http
            .get(app.url(ROUTE))
            .header("authorization", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(resp, 401).await["code"], code, "{header}");
    }

    // Valid now, expired once the clock passes exp (plus leeway).
    let resp = app
        .http
        .get(app.url(ROUTE))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    app.clock.advance(chrono::Duration::minutes(5));
    let resp = app
        .http
        .get(app.url(ROUTE))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp, 401).await["code"], "token_expired");
}

#[tokio::test]
async fn every_api_route_requires_a_token() {
    let app = spawn_app().await;
    let id = uuid::Uuid::now_v7();
    for (method, path) in [
        ("GET", "/api/v1/lora-models".to_owned()),
        ("POST", "/api/v1/lora-models".to_owned()),
        ("GET", format!("/api/v1/lora-models/{id}")),
        ("PATCH", format!("/api/v1/lora-models/{id}")),
        ("GET", format!("/api/v1/lora-models/{id}/status")),
        ("GET", format!("/api/v1/lora-models/{id}/events")),
        ("POST", format!("/api/v1/lora-models/{id}/cancel")),
        ("POST", "/api/v1/datasets".to_owned()),
        ("GET", format!("/api/v1/datasets/{id}")),
        ("GET", "/api/v1/me/limits".to_owned()),
    ] {
        let resp = app
            .http
            .request(method.parse().unwrap(), app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path}");
    }
}
