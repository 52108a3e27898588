//! Tokens minted by an independent JWT library (joserfc, `fixtures/mint_jwt.py`) exactly as
//! Supabase Auth mints access tokens: HS256 with the project's secret and Supabase's claims
//! (`https://supabase.com/docs/guides/auth/jwt-fields`). The server decodes with `jsonwebtoken`;
//! agreeing with another implementation is what proves the wire format, not a round trip.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use loraforge_domain::{Clock, UserId};

use crate::helpers::*;

const ROUTE: &str = "/api/v1/me/limits";

/// Tokens for `claims`, signed with `secret` by joserfc.
fn mint(secret: &[u8], claims: &[Value]) -> Vec<String> {
    let python = loraforge_storage::test_support::test_venv().join("bin/python");
    assert!(
        python.is_file(),
        "these tests mint tokens with joserfc from the test venv, and {} is missing: run scripts/test-env.sh",
        python.display()
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mint_jwt.py");
    let request = json!({
        "secret": std::str::from_utf8(secret).unwrap(),
        "tokens": claims.iter().map(|c| json!({
            // Supabase's header: HS256 with a key id.
            "header": {"alg": "HS256", "typ": "JWT", "kid": "Wq5mBVTp6tUNd2Qk"},
            "claims": c,
        })).collect::<Vec<_>>(),
    });
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokens: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(tokens.len(), claims.len());
    tokens
}

/// An access token's claims as Supabase Auth writes them for a signed-in user.
fn supabase_claims(user: UserId, now: i64) -> Value {
    json!({
        "iss": "https://abcdefghijklmnop.supabase.co/auth/v1",
        "sub": user.to_string(),
        "aud": "authenticated",
        "exp": now + 3600,
        "iat": now,
        "email": "mira@example.com",
        "phone": "",
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {"email": "mira@example.com", "email_verified": true, "phone_verified": false, "sub": user.to_string()},
        "role": "authenticated",
        "aal": "aal1",
        "amr": [{"method": "password", "timestamp": now - 10}],
        "session_id": "6d5c2d1c-6a8e-4d7c-9f0e-2b3a4c5d6e7f",
        "is_anonymous": false,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

async fn get(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn supabase_access_tokens_are_accepted_with_aud_as_a_string_or_a_list() {
    let app = spawn_app().await;
    let now = app.clock.now().timestamp();
    let base = supabase_claims(UserId::new(), now);
    let claims = [
        base.clone(),
        with(base.clone(), "aud", json!(["authenticated"])),
        with(base.clone(), "aud", json!(["another-api", "authenticated"])),
        // Within the leeway on both sides of the window.
        with(base.clone(), "nbf", json!(now + 20)),
        with(base.clone(), "exp", json!(now - 20)),
        // An admin, set by the project through app_metadata.
        with(
            base.clone(),
            "app_metadata",
            json!({"provider": "email", "providers": ["email"], "role": "admin"}),
        ),
    ];
    let tokens = mint(SECRET, &claims);
    for (token, c) in tokens.iter().zip(&claims) {
        let resp = get(&app, token, ROUTE).await;
        assert_eq!(resp.status(), 200, "{c}: {}", resp.text().await.unwrap());
    }
    // Admin routes: a plain user is refused, the app_metadata admin reaches the route (404:
    // there is no such LoRA).
    let review = format!("/api/v1/admin/lora-models/{}/review", uuid::Uuid::now_v7());
    let review_as = |t: &str| {
        app.http
            .post(app.url(&review))
            .bearer_auth(t.to_owned())
            .json(&json!({"decision": "approve"}))
            .send()
    };
    assert_eq!(review_as(&tokens[0]).await.unwrap().status(), 403);
    assert_eq!(review_as(&tokens[5]).await.unwrap().status(), 404);
}

#[tokio::test]
async fn other_audiences_and_supabase_keys_without_a_user_are_refused() {
    let app = spawn_app().await;
    let now = app.clock.now().timestamp();
    let base = supabase_claims(UserId::new(), now);
    let mut anon_key = json!({"iss": "supabase", "ref": "abcdefghijklmnop", "role": "anon", "iat": now, "exp": now + 3600});
    let cases = [
        (with(base.clone(), "aud", json!("anon")), "invalid_audience"),
        (with(base.clone(), "aud", json!([])), "invalid_audience"),
        (
            with(
                base.clone(),
                "aud",
                json!(["loraforge-worker", "authenticated"]),
            ),
            "invalid_audience",
        ),
        (with(base.clone(), "aud", json!(7)), "invalid_token"),
        (anon_key.take(), "invalid_token"),
    ];
    let claims: Vec<Value> = cases.iter().map(|(c, _)| c.clone()).collect();
    for (token, (c, code)) in mint(SECRET, &claims).iter().zip(&cases) {
        assert_eq!(
            error_of(get(&app, token, ROUTE).await, 401).await["code"],
            *code,
            "{c}"
        );
    }
    // Signed with another project's secret.
    let other = mint(b"another-projects-secret-another-projects", &[base]);
    assert_eq!(
        error_of(get(&app, &other[0], ROUTE).await, 401).await["code"],
        "invalid_signature"
    );
}

#[tokio::test]
async fn extreme_and_malformed_times_are_401_never_a_panic_or_a_wrap() {
    let app = spawn_app().await;
    let now = app.clock.now().timestamp();
    let base = supabase_claims(UserId::new(), now);
    let huge = json!(1e300);
    let mut cases = Vec::new();
    for claim in ["exp", "iat", "nbf"] {
        for v in [
            json!(i64::MAX),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(-1),
            json!(now as f64 + 0.5),
            huge.clone(),
            json!("1800000000"),
        ] {
            cases.push((with(base.clone(), claim, v), "invalid_token"));
        }
    }
    // In range, but outside the window by more than the leeway.
    cases.push((with(base.clone(), "exp", json!(now - 31)), "token_expired"));
    cases.push((
        with(base.clone(), "nbf", json!(now + 31)),
        "token_not_yet_valid",
    ));
    cases.push((with(base.clone(), "exp", json!(0)), "token_expired"));
    let mut no_exp = base.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    cases.push((no_exp, "invalid_token"));

    let claims: Vec<Value> = cases.iter().map(|(c, _)| c.clone()).collect();
    let tokens = mint(SECRET, &claims);
    for (token, (c, code)) in tokens.iter().zip(&cases) {
        let e = error_of(get(&app, token, ROUTE).await, 401).await;
        assert_eq!(e["code"], *code, "{c}: {e}");
    }
    // The server is still up and still takes a good token after all of them.
    assert_eq!(
        get(&app, &mint(SECRET, &[base])[0], ROUTE).await.status(),
        200
    );
}
