//! One suite for the `BlobStore` contract: every story is written once against
//! `Arc<dyn BlobStore>` and run against the local store (a temp dir) and the S3 store (moto_server
//! on 127.0.0.1, see `support`). Run `scripts/test-env.sh` once before; without its venv the S3
//! half fails and says so. Every signed link, GET and PUT, S3 and local, is also put through an
//! independent verifier (botocore's SigV4 presigner; Python's hmac), see `support::verifier`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use loraforge_storage::signing::{Access, UrlSigner};
use loraforge_storage::{SignedQuery, StorageError};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use support::verifier::{self, Method, Reason};
use support::{Backend, Kind};
use url::Url;

/// Writes each story's test once per backend.
macro_rules! conformance {
    ($($story:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $story() {
                    super::$story(&crate::support::local_backend()).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test]
                async fn $story() {
                    super::$story(&crate::support::s3_backend().await).await;
                }
            )*
        }
    };
}

conformance!(
    put_get_head_delete_round_trip,
    overwrite_replaces_the_whole_object,
    overwrite_is_atomic_for_readers,
    missing_objects,
    invalid_keys_are_refused_by_every_method,
    binary_data_survives,
    signed_url_gives_the_exact_bytes,
    signed_upload_url_writes_the_exact_bytes,
    expired_signed_url_is_refused,
    tampered_signed_url_is_refused,
    keys_stay_inside_the_root_or_prefix,
    ping_answers,
    list_finds_the_objects_under_a_folder,
    signed_links_pass_an_independent_verifier,
    head_many_answers_each_key_as_head_does,
);

const TTL: Duration = Duration::from_secs(300);

/// The verifier itself, on a link none of our code made: the presigned GET worked through in
/// the AWS documentation (sigv4-query-string-auth.html, "Example"). It must accept it for its
/// 86400 s and no longer, and refuse it as a PUT.
#[test]
fn the_verifier_accepts_the_aws_documentation_example() {
    let url = Url::parse(
        "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
         &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
         &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
    )
    .expect("url");
    let args = [
        "s3",
        "--access-key=AKIAIOSFODNN7EXAMPLE",
        "--secret-key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "--region=us-east-1",
    ]
    .map(String::from);
    let signed_at = 1_369_353_600; // 2013-05-24T00:00:00Z
    let checks = [
        (&url, Method::Get, at(signed_at)),
        (&url, Method::Get, at(signed_at + 86_399)),
        (&url, Method::Get, at(signed_at + 86_400)),
        (&url, Method::Put, at(signed_at)),
    ];
    let reasons: Vec<Reason> = verifier::run(&args, &checks)
        .into_iter()
        .map(|v| v.reason)
        .collect();
    assert_eq!(
        reasons,
        [
            Reason::Ok,
            Reason::Ok,
            Reason::Expired,
            Reason::BadSignature
        ]
    );
}

/// The local link format pinned by a third implementation: the signature below is
/// `printf 'loraforge-file-put-v1\nloras/abc/model.safetensors\n1800000000' |
/// openssl dgst -sha256 -hmac conformance-signing-key-32-bytes!`. Our signer and the verifier
/// must both agree with it.
#[test]
fn local_upload_signature_matches_openssl() {
    const SIG: &str = "294c3db31611a3e535c283328d6bfdf9fcd9b92426d0407bb77af90296428438";
    let key = "loras/abc/model.safetensors";
    let signer = UrlSigner::new(secrecy::SecretSlice::from(
        support::LOCAL_SIGNING_KEY.to_vec(),
    ))
    .expect("signer");
    assert_eq!(
        signer
            .sign_for(Access::Write, key, 1_800_000_000)
            .expect("sign"),
        SIG
    );
    let url = Url::parse(&format!(
        "{}files/{key}?expires=1800000000&sig={SIG}",
        support::LOCAL_BASE_URL
    ))
    .expect("url");
    let backend = support::local_backend();
    let checks = [
        (&url, Method::Put, at(1_799_999_999)),
        (&url, Method::Get, at(0)),
        (&url, Method::Put, at(1_800_000_000)),
    ];
    let reasons: Vec<Reason> = verifier::verify(&backend.kind, &checks)
        .into_iter()
        .map(|v| v.reason)
        .collect();
    assert_eq!(reasons, [Reason::Ok, Reason::BadSignature, Reason::Expired]);
}

async fn put_get_head_delete_round_trip(b: &Backend) {
    let s = &b.store;
    let key = "datasets/ds1/img_001.png";
    let before = Utc::now() - chrono::Duration::minutes(5);
    s.put(key, Bytes::from_static(b"hello blob"))
        .await
        .expect("put");

    assert_eq!(
        s.get(key).await.expect("get"),
        Bytes::from_static(b"hello blob")
    );
    let meta = s.head(key).await.expect("head").expect("present after put");
    assert_eq!(meta.size, 10);
    let after = Utc::now() + chrono::Duration::minutes(5);
    assert!(
        before <= meta.last_modified && meta.last_modified <= after,
        "{meta:?}"
    );

    s.delete(key).await.expect("delete");
    assert_eq!(s.head(key).await.expect("head after delete"), None);
    let err = s.get(key).await.expect_err("get after delete");
    assert!(err.is_not_found(), "{err:?}");
    s.delete(key).await.expect("deleting again is fine");
}

async fn overwrite_replaces_the_whole_object(b: &Backend) {
    let s = &b.store;
    s.put("k", Bytes::from(vec![b'a'; 1000]))
        .await
        .expect("put long");
    s.put("k", Bytes::from_static(b"short"))
        .await
        .expect("put short");
    assert_eq!(s.get("k").await.expect("get"), Bytes::from_static(b"short"));
    assert_eq!(s.head("k").await.expect("head").expect("present").size, 5);
}

/// Readers racing a writer see one whole version or the other, never a mix or a torn prefix.
async fn overwrite_is_atomic_for_readers(b: &Backend) {
    const LEN: usize = 256 * 1024;
    let s = b.store.clone();
    s.put("race", Bytes::from(vec![b'a'; LEN]))
        .await
        .expect("first put");
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..12 {
                let fill = if i % 2 == 0 { b'b' } else { b'a' };
                s.put("race", Bytes::from(vec![fill; LEN]))
                    .await
                    .expect("overwrite");
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads < 12 {
        let got = s.get("race").await.expect("get during overwrites");
        assert_eq!(got.len(), LEN, "torn read");
        assert!(got.iter().all(|&x| x == got[0]), "mixed read");
        reads += 1;
    }
    writer.await.expect("writer");
}

async fn missing_objects(b: &Backend) {
    let s = &b.store;
    match s.get("never/written").await {
        Err(StorageError::NotFound(key)) => assert_eq!(key, "never/written"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(s.head("never/written").await.expect("head"), None);
    s.delete("never/written")
        .await
        .expect("delete of absent is Ok");

    // A "folder" that only exists because of a longer key is not an object.
    s.put("dir/file", Bytes::from_static(b"x"))
        .await
        .expect("put");
    assert!(matches!(s.get("dir").await, Err(StorageError::NotFound(_))));
    assert_eq!(s.head("dir").await.expect("head of folder"), None);
}

async fn invalid_keys_are_refused_by_every_method(b: &Backend) {
    let s = &b.store;
    let now = Utc::now();
    let query = SignedQuery {
        expires: now.timestamp() + 60,
        sig: "00".repeat(32),
    };
    let long = "x".repeat(513);
    for key in [
        "../x",
        "/abs",
        "a//b",
        "a/./b",
        "with space",
        "",
        "a/",
        "a/..",
        "a#1",
        long.as_str(),
    ] {
        let invalid = |what: &str, r: Result<(), StorageError>| {
            assert!(
                matches!(r, Err(StorageError::InvalidKey(..))),
                "{what}({key:?}) gave {r:?}"
            );
        };
        invalid("put", s.put(key, Bytes::from_static(b"x")).await);
        invalid("get", s.get(key).await.map(drop));
        invalid("head", s.head(key).await.map(drop));
        invalid("delete", s.delete(key).await);
        invalid(
            "signed_get_url",
            s.signed_get_url(key, TTL, now).await.map(drop),
        );
        invalid(
            "open_signed",
            s.open_signed(key, &query, now).await.map(drop),
        );
    }
}

async fn binary_data_survives(b: &Backend) {
    let s = &b.store;
    let every_byte: Vec<u8> = (0..=255u8).collect();
    s.put("bin/every-byte", Bytes::from(every_byte.clone()))
        .await
        .expect("put");
    assert_eq!(
        s.get("bin/every-byte").await.expect("get").as_ref(),
        every_byte.as_slice()
    );

    let big = pseudo_random(5 * 1024 * 1024);
    s.put("bin/big.safetensors", Bytes::from(big.clone()))
        .await
        .expect("put 5 MiB");
    assert_eq!(
        s.head("bin/big.safetensors")
            .await
            .expect("head")
            .expect("present")
            .size,
        big.len() as u64
    );
    let got = s.get("bin/big.safetensors").await.expect("get 5 MiB");
    assert!(
        got.as_ref() == big.as_slice(),
        "5 MiB blob came back different"
    );
}

async fn signed_url_gives_the_exact_bytes(b: &Backend) {
    let s = &b.store;
    let key = "loras/m1/model.safetensors";
    let body = pseudo_random(70_000);
    s.put(key, Bytes::from(body.clone())).await.expect("put");
    let now = Utc::now();
    let url = s.signed_get_url(key, TTL, now).await.expect("signed url");
    match &b.kind {
        Kind::Local { .. } => {
            // What the `/files/{key}` route does: key from the path, token from the query.
            let (served_key, query) = local_route(&url);
            assert_eq!(url.path(), format!("/lf/files/{key}"));
            assert_eq!(served_key, key);
            assert_eq!(query.expires, now.timestamp() + TTL.as_secs() as i64);
            let got = s
                .open_signed(&served_key, &query, now)
                .await
                .expect("open_signed");
            assert_eq!(got.as_ref(), body.as_slice());
        }
        Kind::S3 { .. } => {
            assert!(matches!(
                s.open_signed(
                    key,
                    &SignedQuery {
                        expires: 0,
                        sig: String::new()
                    },
                    now
                )
                .await,
                Err(StorageError::NotServedLocally)
            ));
            let response = reqwest::get(url.clone()).await.expect("GET presigned URL");
            assert_eq!(response.status(), 200, "{url}");
            let got = response.bytes().await.expect("body");
            assert_eq!(got.as_ref(), body.as_slice());
            let verdict = &verifier::verify(&b.kind, &[(&url, Method::Get, Utc::now())])[0];
            assert_eq!(verdict.reason, Reason::Ok, "{verdict:?}");
            // The object itself is private: the same URL without its signature is refused.
            let mut bare = url.clone();
            bare.set_query(None);
            assert_eq!(
                reqwest::get(bare).await.expect("GET unsigned").status(),
                403
            );
        }
    }
}

async fn signed_upload_url_writes_the_exact_bytes(b: &Backend) {
    let s = &b.store;
    let key = "lora-models/u1/m1/model.safetensors";
    let body = pseudo_random(90_000);
    let now = Utc::now();
    let url = s
        .signed_put_url(key, TTL, now)
        .await
        .expect("signed upload url");
    match &b.kind {
        Kind::Local { .. } => {
            // What `PUT /files/{key}` does: key from the path, token from the query.
            let (served_key, query) = local_route(&url);
            assert_eq!(served_key, key);
            s.put_signed(&served_key, &query, Bytes::from(body.clone()), now)
                .await
                .expect("put_signed");
            // An upload link is not a download link, nor the other way round.
            assert!(matches!(
                s.open_signed(&served_key, &query, now).await,
                Err(StorageError::BadSignature)
            ));
            let read = s.signed_get_url(key, TTL, now).await.expect("get url");
            let (_, read_query) = local_route(&read);
            let r = s
                .put_signed(key, &read_query, Bytes::from_static(b"x"), now)
                .await;
            assert!(matches!(r, Err(StorageError::BadSignature)), "{r:?}");
            let later = now + chrono::Duration::seconds(TTL.as_secs() as i64);
            let r = s
                .put_signed(key, &query, Bytes::from_static(b"x"), later)
                .await;
            assert!(matches!(r, Err(StorageError::LinkExpired)), "{r:?}");
            let r = s
                .put_signed(
                    "lora-models/u1/m1/other.bin",
                    &query,
                    Bytes::from_static(b"x"),
                    now,
                )
                .await;
            assert!(matches!(r, Err(StorageError::BadSignature)), "{r:?}");
        }
        Kind::S3 { .. } => {
            let q = SignedQuery {
                expires: 0,
                sig: String::new(),
            };
            let r = s.put_signed(key, &q, Bytes::from_static(b"x"), now).await;
            assert!(matches!(r, Err(StorageError::NotServedLocally)), "{r:?}");
            // moto takes any signature (see support/verifier.rs): botocore checks this one, moto
            // shows the upload lands where a GET finds it.
            let verdict = &verifier::verify(&b.kind, &[(&url, Method::Put, Utc::now())])[0];
            assert_eq!(verdict.reason, Reason::Ok, "{verdict:?}");
            assert_eq!(
                verdict
                    .expires_at
                    .zip(verdict.signed_at)
                    .map(|(e, s)| e - s),
                Some(300),
                "{verdict:?}"
            );
            let response = reqwest::Client::new()
                .put(url.clone())
                .body(body.clone())
                .send()
                .await
                .expect("PUT");
            assert!(
                response.status().is_success(),
                "{} {url}",
                response.status()
            );
            let read = s
                .signed_get_url(key, TTL, Utc::now())
                .await
                .expect("get url");
            let got = reqwest::get(read)
                .await
                .expect("GET presigned URL")
                .bytes()
                .await
                .expect("body");
            assert!(
                got.as_ref() == body.as_slice(),
                "the presigned GET gave other bytes than were PUT"
            );
        }
    }
    assert_eq!(
        s.get(key).await.expect("uploaded").as_ref(),
        body.as_slice()
    );
}

async fn expired_signed_url_is_refused(b: &Backend) {
    let s = &b.store;
    let key = "val/img.png";
    s.put(key, Bytes::from_static(b"png")).await.expect("put");
    match &b.kind {
        Kind::Local { .. } => {
            let issued = at(1_900_000_000);
            let url = s
                .signed_get_url(key, Duration::from_secs(1), issued)
                .await
                .expect("url");
            let (key, query) = local_route(&url);
            let just_before = issued + chrono::Duration::milliseconds(999);
            assert_eq!(
                s.open_signed(&key, &query, just_before)
                    .await
                    .expect("still valid")
                    .as_ref(),
                b"png"
            );
            let at_expiry = issued + chrono::Duration::seconds(1);
            assert!(matches!(
                s.open_signed(&key, &query, at_expiry).await,
                Err(StorageError::LinkExpired)
            ));
            let long_after = issued + chrono::Duration::days(30);
            assert!(matches!(
                s.open_signed(&key, &query, long_after).await,
                Err(StorageError::LinkExpired)
            ));
        }
        Kind::S3 { .. } => {
            // moto_server does not enforce presigned expiry (see support/verifier.rs), so we
            // check that the URL is dated by the wall clock with the right lifetime, and that
            // botocore accepts it inside that window and refuses it from its last instant on.
            let before = Utc::now().timestamp();
            let url = s
                .signed_get_url(key, Duration::from_secs(1), Utc::now())
                .await
                .expect("url");
            let after = Utc::now().timestamp();
            let first = &verifier::verify(&b.kind, &[(&url, Method::Get, Utc::now())])[0];
            let signed_at = first.signed_at.expect("X-Amz-Date");
            assert!(
                before <= signed_at && signed_at <= after,
                "X-Amz-Date {first:?}"
            );
            assert_eq!(first.expires_at, Some(signed_at + 1), "{first:?}");
            let checks = [
                (&url, Method::Get, at(signed_at)),
                (&url, Method::Get, at(signed_at + 1)),
            ];
            let reasons: Vec<Reason> = verifier::verify(&b.kind, &checks)
                .into_iter()
                .map(|v| v.reason)
                .collect();
            assert_eq!(reasons, [Reason::Ok, Reason::Expired]);
        }
    }
}

async fn tampered_signed_url_is_refused(b: &Backend) {
    let s = &b.store;
    s.put("a/one.png", Bytes::from_static(b"one"))
        .await
        .expect("put");
    s.put("a/two.png", Bytes::from_static(b"two"))
        .await
        .expect("put");
    let now = Utc::now();
    let url = s.signed_get_url("a/one.png", TTL, now).await.expect("url");
    match &b.kind {
        Kind::Local { .. } => {
            let (key, query) = local_route(&url);
            let bad = |r: Result<Bytes, StorageError>| matches!(r, Err(StorageError::BadSignature));
            let flipped = SignedQuery {
                sig: flip_hex(&query.sig),
                ..query.clone()
            };
            assert!(
                bad(s.open_signed(&key, &flipped, now).await),
                "flipped signature"
            );
            let truncated = SignedQuery {
                sig: query.sig[..40].to_owned(),
                ..query.clone()
            };
            assert!(
                bad(s.open_signed(&key, &truncated, now).await),
                "truncated signature"
            );
            let extended = SignedQuery {
                expires: query.expires + 86_400,
                ..query.clone()
            };
            assert!(
                bad(s.open_signed(&key, &extended, now).await),
                "longer expiry"
            );
            assert!(
                bad(s.open_signed("a/two.png", &query, now).await),
                "token moved to another key"
            );
            assert_eq!(
                s.open_signed(&key, &query, now)
                    .await
                    .expect("untouched")
                    .as_ref(),
                b"one"
            );
        }
        Kind::S3 { .. } => {
            // moto serves tampered presigned URLs too (see support/verifier.rs); botocore plays S3.
            let sig = url
                .query_pairs()
                .find(|(k, _)| k == "X-Amz-Signature")
                .expect("signature")
                .1
                .into_owned();
            let flipped = with_query(&url, "X-Amz-Signature", &flip_hex(&sig));
            let longer = with_query(&url, "X-Amz-Expires", "604800");
            let mut moved = url.clone();
            moved.set_path(&url.path().replace("one.png", "two.png"));
            let checks = [&url, &flipped, &longer, &moved].map(|u| (u, Method::Get, now));
            let reasons: Vec<Reason> = verifier::verify(&b.kind, &checks)
                .into_iter()
                .map(|v| v.reason)
                .collect();
            assert_eq!(
                reasons,
                [
                    Reason::Ok,
                    Reason::BadSignature,
                    Reason::BadSignature,
                    Reason::BadSignature
                ]
            );
        }
    }
}

async fn keys_stay_inside_the_root_or_prefix(b: &Backend) {
    let s = &b.store;
    s.put("x/y/z.bin", Bytes::from_static(b"deep"))
        .await
        .expect("put");
    s.put("top", Bytes::from_static(b"top")).await.expect("put");
    match &b.kind {
        Kind::Local { root, _dir } => {
            assert_eq!(
                std::fs::read(root.join("x/y/z.bin")).expect("file under root"),
                b"deep"
            );
            let parent: Vec<_> = std::fs::read_dir(_dir.path())
                .expect("parent")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(parent, vec!["blobs"], "nothing written beside the root");
        }
        Kind::S3 { raw, .. } => {
            let prefix = support::S3_PREFIX;
            let got = raw
                .get(&Path::from(format!("{prefix}/x/y/z.bin")))
                .await
                .expect("under prefix");
            assert_eq!(got.bytes().await.expect("bytes").as_ref(), b"deep");
            let mut all = Vec::new();
            let mut listing = raw.list(None);
            while let Some(meta) = futures::StreamExt::next(&mut listing).await {
                all.push(meta.expect("list").location.to_string());
            }
            all.sort();
            assert_eq!(
                all,
                vec![format!("{prefix}/top"), format!("{prefix}/x/y/z.bin")]
            );
            let url = s.signed_get_url("top", TTL, Utc::now()).await.expect("url");
            assert!(url.path().ends_with(&format!("/{prefix}/top")), "{url}");
        }
    }
}

async fn ping_answers(b: &Backend) {
    b.store.ping().await.expect("ping");
}

/// GET and PUT links, checked by code that is not ours (botocore's SigV4 presigner for S3,
/// Python's hmac for the local route): accepted as made, refused as expired from their expiry
/// instant on, and refused as a bad signature once anything signed is changed.
async fn signed_links_pass_an_independent_verifier(b: &Backend) {
    let s = &b.store;
    let key = "loras/v1/model.safetensors";
    let (sig_param, expiry_param) = match &b.kind {
        Kind::Local { .. } => ("sig", "expires"),
        Kind::S3 { .. } => ("X-Amz-Signature", "X-Amz-Expires"),
    };
    for method in [Method::Get, Method::Put] {
        let now = Utc::now();
        let url = match method {
            Method::Get => s.signed_get_url(key, TTL, now).await,
            Method::Put => s.signed_put_url(key, TTL, now).await,
        }
        .expect("signed url");
        let first = &verifier::verify(&b.kind, &[(&url, method, now)])[0];
        assert_eq!(first.reason, Reason::Ok, "{method:?} {url}: {first:?}");
        let expires_at = first.expires_at.expect("expiry");
        // S3 dates the link by the wall clock when it signs, which may be a second after `now`.
        let issued = first.signed_at.unwrap_or(now.timestamp());
        assert!((0..=5).contains(&(issued - now.timestamp())), "{first:?}");
        assert_eq!(expires_at, issued + TTL.as_secs() as i64, "{first:?}");

        let value = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .expect(name)
                .1
                .into_owned()
        };
        let flipped = with_query(&url, sig_param, &flip_hex(&value(sig_param)));
        let mut moved = url.clone();
        moved.set_path(&url.path().replace("model.safetensors", "other.safetensors"));
        assert_ne!(moved, url);
        let longer_value = match &b.kind {
            Kind::Local { .. } => (expires_at + 86_400).to_string(),
            Kind::S3 { .. } => "604800".to_owned(),
        };
        let longer = with_query(&url, expiry_param, &longer_value);
        let mut unsigned = url.clone();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != sig_param)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        unsigned.query_pairs_mut().clear().extend_pairs(kept);

        let cases = [
            (
                "just before expiry",
                &url,
                method,
                at(expires_at - 1),
                Reason::Ok,
            ),
            (
                "at the expiry instant",
                &url,
                method,
                at(expires_at),
                Reason::Expired,
            ),
            (
                "a month later",
                &url,
                method,
                at(expires_at + 30 * 86_400),
                Reason::Expired,
            ),
            (
                "one signature character flipped",
                &flipped,
                method,
                now,
                Reason::BadSignature,
            ),
            (
                "moved to another key",
                &moved,
                method,
                now,
                Reason::BadSignature,
            ),
            (
                "expiry extended",
                &longer,
                method,
                now,
                Reason::BadSignature,
            ),
            (
                "expiry extended, used after the real one",
                &longer,
                method,
                at(expires_at + 10),
                Reason::BadSignature,
            ),
            (
                "used for the other method",
                &url,
                method.other(),
                now,
                Reason::BadSignature,
            ),
            (
                "signature removed",
                &unsigned,
                method,
                now,
                Reason::Malformed,
            ),
        ];
        let checks: Vec<_> = cases.iter().map(|(_, u, m, t, _)| (*u, *m, *t)).collect();
        let verdicts = verifier::verify(&b.kind, &checks);
        for ((what, u, m, _, want), got) in cases.iter().zip(&verdicts) {
            assert_eq!(
                &got.reason, want,
                "{method:?} link {what}: {m:?} {u} gave {:?}: {}",
                got.reason, got.detail
            );
        }
        // Our own route check (what `/files/{key}` runs) must agree with the independent one.
        if let Kind::Local { .. } = &b.kind {
            for (what, u, m, t, want) in cases.iter().filter(|c| c.4 != Reason::Malformed) {
                let (served_key, query) = local_route(u);
                let ours = match m {
                    Method::Get => s.open_signed(&served_key, &query, *t).await.map(drop),
                    Method::Put => {
                        s.put_signed(&served_key, &query, Bytes::from_static(b"up"), *t)
                            .await
                    }
                };
                let same = match want {
                    Reason::Ok => {
                        ours.is_ok() || ours.as_ref().is_err_and(StorageError::is_not_found)
                    }
                    Reason::Expired => matches!(ours, Err(StorageError::LinkExpired)),
                    _ => matches!(ours, Err(StorageError::BadSignature)),
                };
                assert!(
                    same,
                    "{method:?} link {what}: open_signed/put_signed gave {ours:?}, the verifier {want:?}"
                );
            }
        }
    }
}

// Helpers.

/// Splits a local signed URL the way the `/files/{*key}` route will.
fn local_route(url: &Url) -> (String, SignedQuery) {
    let key = url
        .path()
        .strip_prefix("/lf/files/")
        .expect("files route")
        .to_owned();
    let get = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let expires = get("expires")
        .expect("expires")
        .parse()
        .expect("expires is a number");
    let sig = get("sig").expect("sig");
    (key, SignedQuery { expires, sig })
}

fn with_query(url: &Url, name: &str, value: &str) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    let mut out = url.clone();
    out.query_pairs_mut().clear().extend_pairs(pairs);
    out
}

fn flip_hex(sig: &str) -> String {
    let mut chars: Vec<char> = sig.chars().collect();
    chars[0] = if chars[0] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

fn at(unix: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix, 0).expect("valid instant")
}

/// Deterministic bytes (xorshift64*), so a failure reproduces.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

async fn list_finds_the_objects_under_a_folder(b: &Backend) {
    let s = &b.store;
    for (key, body) in [
        ("sweep/x/1.png", &b"one"[..]),
        ("sweep/x/deep/2.png", b"two!"),
        ("sweep/y/3.png", b"3"),
    ] {
        s.put(key, Bytes::copy_from_slice(body)).await.expect("put");
    }
    let before = Utc::now() - chrono::Duration::minutes(5);
    let mut found = s.list("sweep/x/").await.expect("list");
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let keys: Vec<(&str, u64)> = found.iter().map(|(k, m)| (k.as_str(), m.size)).collect();
    assert_eq!(keys, [("sweep/x/1.png", 3), ("sweep/x/deep/2.png", 4)]);
    assert!(found.iter().all(|(_, m)| m.last_modified > before));
    assert!(s.list("sweep/none/").await.expect("list empty").is_empty());
    assert!(matches!(
        s.list("../x/").await,
        Err(StorageError::InvalidKey(..))
    ));
}

/// `head_many` answers one result per key, in order, each what `head` answers for it.
async fn head_many_answers_each_key_as_head_does(b: &Backend) {
    let s = &b.store;
    s.put("many/a.safetensors", Bytes::from_static(b"aaaa"))
        .await
        .expect("put a");
    s.put("many/sub/b", Bytes::from_static(b"bb"))
        .await
        .expect("put b");
    let keys = [
        "many/sub/b",
        "many/missing",
        "many/sub",
        "../escape",
        "many/a.safetensors/below-a-file",
        "many/a.safetensors",
        "many/sub/b",
    ];
    let many = s.head_many(&keys).await;
    assert_eq!(many.len(), keys.len());
    let sizes: Vec<Option<u64>> = many
        .iter()
        .zip(keys)
        .filter(|(_, k)| *k != "../escape")
        .map(|(r, k)| match r {
            Ok(m) => m.as_ref().map(|m| m.size),
            Err(e) => panic!("head_many({k}) failed: {e}"),
        })
        .collect();
    assert_eq!(sizes, vec![Some(2), None, None, None, Some(4), Some(2)]);
    assert!(
        matches!(many[3], Err(StorageError::InvalidKey(..))),
        "{:?}",
        many[3]
    );
    for (k, got) in keys.iter().zip(&many) {
        if let Ok(got) = got {
            assert_eq!(&s.head(k).await.expect("head"), got, "{k}");
        }
    }
    assert!(s.head_many(&[]).await.is_empty());
}
