//! Test backends for the conformance suite: a local store in a temp dir, and an S3 store on a
//! real S3-speaking server on loopback ([`S3Server`], shared with other crates' tests). Each S3
//! test gets a fresh bucket.

pub mod verifier;

use std::path::PathBuf;
use std::sync::Arc;

use loraforge_storage::BlobStore;
use loraforge_storage::local::LocalStore;
use loraforge_storage::s3::{S3Settings, S3Store};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use secrecy::{SecretSlice, SecretString};
use url::Url;

pub use loraforge_storage::test_support::{ACCESS_KEY, REGION, S3Server, SECRET_KEY};

/// Where the local store's links point, and the key it signs them with.
pub const LOCAL_BASE_URL: &str = "http://127.0.0.1:9/lf/";
pub const LOCAL_SIGNING_KEY: &[u8] = b"conformance-signing-key-32-bytes!";

/// Every S3 test store works under this prefix, so every story also checks prefixing.
pub const S3_PREFIX: &str = "tenant-a/blobs";

/// A store under test plus what the stories need to look behind it.
pub struct Backend {
    pub store: Arc<dyn BlobStore>,
    pub kind: Kind,
}

pub enum Kind {
    Local {
        /// The store's root folder.
        root: PathBuf,
        /// Its parent, which nothing but `root` should appear in.
        _dir: tempfile::TempDir,
    },
    S3 {
        /// The same bucket without our prefix, to see where objects really land.
        raw: Arc<dyn ObjectStore>,
        _server: Arc<S3Server>,
    },
}

pub fn local_backend() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("blobs");
    let base = Url::parse(LOCAL_BASE_URL).expect("url");
    let key = SecretSlice::from(LOCAL_SIGNING_KEY.to_vec());
    let store = LocalStore::new(&root, base, key).expect("local store");
    Backend {
        store: Arc::new(store),
        kind: Kind::Local { root, _dir: dir },
    }
}

pub async fn s3_backend() -> Backend {
    let server = S3Server::shared();
    let bucket = server.create_bucket();
    let settings = S3Settings {
        endpoint: Some(server.endpoint.clone()),
        region: REGION.into(),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SecretString::from(SECRET_KEY)),
        allow_http: true,
        path_style: true,
        ..S3Settings::from_url(&format!("s3://{bucket}/{S3_PREFIX}")).expect("settings")
    };
    let store = S3Store::new(&settings).expect("s3 store");
    let raw = AmazonS3Builder::new()
        .with_endpoint(server.endpoint.as_str().trim_end_matches('/'))
        .with_bucket_name(&bucket)
        .with_region(REGION)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .expect("raw s3 client");
    Backend {
        store: Arc::new(store),
        kind: Kind::S3 {
            raw: Arc::new(raw),
            _server: server,
        },
    }
}
