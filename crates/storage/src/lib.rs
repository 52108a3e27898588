//! Blob storage: training images, trained LoRA files and validation images. Local disk (the
//! embedded default) and any S3-compatible service sit behind [`BlobStore`], both built on the
//! `object_store` crate. Everything is private: a reader gets a signed, expiring URL. S3 signs
//! its own (presigned URLs); on local disk the service itself serves `/files/{key}` and checks an
//! HMAC-signed token with [`BlobStore::open_signed`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use url::Url;

pub mod key;
pub mod local;
pub mod s3;
pub mod signing;
#[cfg(feature = "test-support")]
pub mod test_support;

pub use key::validate_key;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no object at {0}")]
    NotFound(String),
    #[error("invalid storage key {0:?}: {1}")]
    InvalidKey(String, &'static str),
    #[error("the link has expired; ask for a new download URL")]
    LinkExpired,
    #[error("the link's signature is not valid")]
    BadSignature,
    #[error("this storage backend does not serve files itself; use the presigned URL")]
    NotServedLocally,
    #[error("storage configuration: {0}")]
    Config(String),
    #[error("storage backend error: {0}")]
    Backend(#[from] object_store::Error),
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound(_))
            || matches!(
                self,
                StorageError::Backend(object_store::Error::NotFound { .. })
            )
    }
    /// Network and server-side hiccups worth retrying.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Backend(e) if !matches!(e,
            object_store::Error::NotFound { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }))
    }
}

/// Size and time of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

/// The query of a locally signed URL: `/files/{key}?expires={unix seconds}&sig={hex}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedQuery {
    pub expires: i64,
    pub sig: String,
}

/// Keys are `/`-separated relative paths of safe characters: `[A-Za-z0-9._-]` segments, no
/// empty, `.` or `..` segment. Every method refuses other keys with `InvalidKey`.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug + 'static {
    /// Writes the whole object atomically (readers see the old object or the new, never half).
    async fn put(&self, key: &str, bytes: Bytes) -> Result<()>;
    async fn get(&self, key: &str) -> Result<Bytes>;
    /// None when absent.
    async fn head(&self, key: &str) -> Result<Option<BlobMeta>>;
    /// [`Self::head`] of each key, in order, all at once (an invalid key is its own
    /// `InvalidKey`). Concurrent heads unless the store does better: the local store looks at
    /// every file in one blocking call.
    async fn head_many(&self, keys: &[&str]) -> Vec<Result<Option<BlobMeta>>> {
        futures::future::join_all(keys.iter().map(|k| self.head(k))).await
    }
    /// Deleting an absent object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// A URL anyone can GET until `now + ttl`, and not after.
    async fn signed_get_url(&self, key: &str, ttl: Duration, now: DateTime<Utc>) -> Result<Url>;
    /// For stores the service serves itself (local disk): checks a `/files/{key}` token and
    /// returns the object. `LinkExpired` / `BadSignature` on a bad token, `NotServedLocally` on
    /// stores with their own URLs.
    async fn open_signed(
        &self,
        key: &str,
        query: &SignedQuery,
        now: DateTime<Utc>,
    ) -> Result<Bytes>;
    /// A URL anyone can `PUT` the object's bytes to (raw body) until `now + ttl`: how a worker on
    /// another host uploads what it trained without storage credentials.
    async fn signed_put_url(&self, key: &str, ttl: Duration, now: DateTime<Utc>) -> Result<Url>;
    /// For stores the service serves itself: checks a `/files/{key}` upload token and writes the
    /// object (atomically, like `put`). `NotServedLocally` on stores with their own URLs.
    async fn put_signed(
        &self,
        key: &str,
        query: &SignedQuery,
        bytes: Bytes,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Storage is reachable and writable enough to answer, for `/readyz`.
    async fn ping(&self) -> Result<()>;
    /// Every object whose key starts with `prefix` (a folder: `a/b/`), with its size and time,
    /// in no particular order. For sweeps; not for request paths.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, BlobMeta)>>;
}

/// Where blobs live, parsed from `LORAFORGE_STORAGE_URL` and its companion settings.
#[derive(Debug, Clone)]
pub enum StorageSettings {
    /// `file:///abs/path`: files under this folder, served by this service at
    /// `{public_base_url}/files/{key}`.
    Local {
        root: std::path::PathBuf,
        public_base_url: Url,
        signing_key: Arc<secrecy::SecretSlice<u8>>,
    },
    /// `s3://bucket/prefix` with an optional custom endpoint (MinIO, R2, moto, …).
    S3(s3::S3Settings),
}

/// Builds the store the settings name.
pub fn open(settings: &StorageSettings) -> Result<Arc<dyn BlobStore>> {
    match settings {
        StorageSettings::Local {
            root,
            public_base_url,
            signing_key,
        } => Ok(Arc::new(local::LocalStore::new(
            root,
            public_base_url.clone(),
            signing_key.clone(),
        )?)),
        StorageSettings::S3(s) => Ok(Arc::new(s3::S3Store::new(s)?)),
    }
}
