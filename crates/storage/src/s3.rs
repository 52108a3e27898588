//! Blobs in an S3 bucket (AWS or any S3-compatible service: MinIO, R2, moto, …) through
//! `object_store`'s `AmazonS3`. Readers get SigV4 presigned URLs straight to the bucket; this
//! service never serves these blobs itself.
//!
//! Nothing here reads the environment: the caller passes every setting. Credentials stay in
//! `secrecy` types until the moment they are handed to the client, and no `Debug` shows them.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{ObjectStoreExt, PutPayload};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::local::{delete_quietly, get_bytes, head_meta};
use crate::{BlobMeta, BlobStore, Result, SignedQuery, StorageError, validate_key};

/// Longest presigned URL lifetime SigV4 allows (7 days).
pub const MAX_SIGNED_URL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long `ping` waits for the bucket before calling it unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to reach the bucket.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Folder inside the bucket every key goes under (`tenant-a/blobs`), without slashes at
    /// either end; same character rules as keys.
    pub prefix: Option<String>,
    /// Custom endpoint (`http://127.0.0.1:9000`) for S3-compatible services; `None` for AWS.
    /// With `path_style: false` a custom endpoint must already include the bucket
    /// (`https://bucket.host`), as `object_store` uses it as is.
    pub endpoint: Option<Url>,
    pub region: String,
    /// Static credentials; both or neither. With neither, `object_store` asks the instance
    /// metadata service (EC2/ECS roles).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
    /// Allow a plain-HTTP endpoint (local MinIO or moto); refused otherwise.
    pub allow_http: bool,
    /// `https://host/bucket/key` rather than `https://bucket.host/key`; most self-hosted
    /// services want this.
    pub path_style: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |present: bool| if present { "[REDACTED]" } else { "None" };
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("region", &self.region)
            .field("access_key_id", &set(self.access_key_id.is_some()))
            .field("secret_access_key", &set(self.secret_access_key.is_some()))
            .field("allow_http", &self.allow_http)
            .field("path_style", &self.path_style)
            .finish()
    }
}

impl S3Settings {
    /// Parses `s3://bucket` or `s3://bucket/some/prefix`. Everything else starts at its
    /// default: region `us-east-1`, AWS endpoint, no static credentials, HTTPS only,
    /// virtual-hosted style.
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |why: &str| StorageError::Config(format!("storage URL {url:?}: {why}"));
        let parsed = Url::parse(url).map_err(|e| bad(&format!("not a URL ({e})")))?;
        if parsed.scheme() != "s3" {
            return Err(bad("expected s3://bucket[/prefix]"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad(
                "credentials do not belong in the URL; set the access key settings",
            ));
        }
        if parsed.port().is_some() || parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad(
                "only s3://bucket[/prefix] is understood (no port, query or fragment)",
            ));
        }
        // `Url` quietly resolves `.`/`..` and decodes nothing; neither belongs in a bucket or prefix.
        if url.split('/').any(|seg| seg == "." || seg == "..") || url.contains('%') {
            return Err(bad("bad prefix: no '.' or '..' segments or %-escapes"));
        }
        let bucket = parsed.host_str().unwrap_or_default();
        if bucket.is_empty() {
            return Err(bad("the bucket name is missing"));
        }
        if !bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(bad("the bucket name has characters S3 does not allow"));
        }
        let prefix = parsed.path().trim_matches('/');
        let prefix = if prefix.is_empty() {
            None
        } else {
            validate_key(prefix).map_err(|e| bad(&format!("bad prefix: {e}")))?;
            Some(prefix.to_owned())
        };
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix,
            endpoint: None,
            region: "us-east-1".to_owned(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            path_style: false,
        })
    }
}

/// One bucket (and prefix) of an S3-compatible service.
pub struct S3Store {
    client: AmazonS3,
    bucket: String,
    prefix: Option<String>,
}

impl std::fmt::Debug for S3Store {
    // `AmazonS3`'s own Debug is not ours to vouch for, so it is left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl S3Store {
    /// Builds the client; makes no request (see [`BlobStore::ping`]).
    pub fn new(settings: &S3Settings) -> Result<Self> {
        if settings.bucket.is_empty() {
            return Err(StorageError::Config("S3 bucket name is empty".into()));
        }
        let prefix = match settings.prefix.as_deref().map(|p| p.trim_matches('/')) {
            None | Some("") => None,
            Some(p) => {
                validate_key(p).map_err(|e| StorageError::Config(format!("bad S3 prefix: {e}")))?;
                Some(p.to_owned())
            }
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_allow_http(settings.allow_http)
            .with_virtual_hosted_style_request(!settings.path_style);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint.as_str().trim_end_matches('/'));
        }
        match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(id), Some(secret)) => {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret.expose_secret());
            }
            (None, None) => {}
            _ => {
                return Err(StorageError::Config(
                    "S3 access key id and secret access key must be set together".into(),
                ));
            }
        }
        let client = builder
            .build()
            .map_err(|e| StorageError::Config(format!("S3 client: {e}")))?;
        Ok(Self {
            client,
            bucket: settings.bucket.clone(),
            prefix,
        })
    }

    /// The object path for a key: `{prefix}/{key}`.
    fn path(&self, key: &str) -> Result<Path> {
        validate_key(key)?;
        let full = match &self.prefix {
            Some(prefix) => format!("{prefix}/{key}"),
            None => key.to_owned(),
        };
        Path::parse(full)
            .map_err(|_| StorageError::InvalidKey(key.to_owned(), "not a valid object path"))
    }
}

#[async_trait]
impl BlobStore for S3Store {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(key)?;
        self.client
            .put(&path, PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        get_bytes(&self.client, &path, key).await
    }

    async fn head(&self, key: &str) -> Result<Option<BlobMeta>> {
        let path = self.path(key)?;
        head_meta(&self.client, &path).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        delete_quietly(&self.client, &path).await
    }

    /// A SigV4 presigned GET valid for `ttl` (at most 7 days). The signature is dated by the
    /// wall clock, not `now`: S3 checks it against its own clock, so an injected clock would
    /// only make the link wrong.
    async fn signed_get_url(&self, key: &str, ttl: Duration, _now: DateTime<Utc>) -> Result<Url> {
        let path = self.path(key)?;
        check_presign_ttl(ttl)?;
        Ok(self.client.signed_url(Method::GET, &path, ttl).await?)
    }

    async fn open_signed(
        &self,
        key: &str,
        _query: &SignedQuery,
        _now: DateTime<Utc>,
    ) -> Result<Bytes> {
        validate_key(key)?;
        Err(StorageError::NotServedLocally)
    }

    /// A SigV4 presigned PUT, dated by the wall clock like [`Self::signed_get_url`].
    async fn signed_put_url(&self, key: &str, ttl: Duration, _now: DateTime<Utc>) -> Result<Url> {
        let path = self.path(key)?;
        check_presign_ttl(ttl)?;
        Ok(self.client.signed_url(Method::PUT, &path, ttl).await?)
    }

    async fn put_signed(
        &self,
        key: &str,
        _query: &SignedQuery,
        _bytes: Bytes,
        _now: DateTime<Utc>,
    ) -> Result<()> {
        validate_key(key)?;
        Err(StorageError::NotServedLocally)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, BlobMeta)>> {
        let folder = self.path(prefix.trim_end_matches('/'))?;
        let strip = self.prefix.as_ref().map(|p| format!("{p}/"));
        crate::local::list_under(&self.client, &folder, strip.as_deref()).await
    }

    /// Lists at most one key under the prefix: fails when the bucket is missing, the
    /// credentials are refused or the endpoint does not answer within 10 s.
    async fn ping(&self) -> Result<()> {
        let opts = PaginatedListOptions {
            max_keys: Some(1),
            ..Default::default()
        };
        let prefix = self.prefix.as_ref().map(|p| format!("{p}/"));
        let list = self.client.list_paginated(prefix.as_deref(), opts);
        match tokio::time::timeout(PING_TIMEOUT, list).await {
            Ok(result) => result.map(|_| ()).map_err(StorageError::Backend),
            Err(_) => Err(StorageError::Backend(object_store::Error::Generic {
                store: "S3",
                source: format!("no answer from the bucket within {PING_TIMEOUT:?}").into(),
            })),
        }
    }
}

/// SigV4 presigned URLs live between 1 s and 7 days.
fn check_presign_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() || ttl > MAX_SIGNED_URL_TTL {
        return Err(StorageError::Config(format!(
            "presigned URL lifetime must be between 1 s and 7 days, not {ttl:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(url: &str) -> String {
        match S3Settings::from_url(url) {
            Err(StorageError::Config(msg)) => msg,
            other => panic!("{url}: expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn from_url_reads_bucket_and_prefix() {
        let s = S3Settings::from_url("s3://my-bucket").expect("parse");
        assert_eq!((s.bucket.as_str(), s.prefix), ("my-bucket", None));
        assert_eq!(
            S3Settings::from_url("s3://my-bucket/")
                .expect("parse")
                .prefix,
            None
        );
        let s = S3Settings::from_url("s3://my.bucket/tenant-a/blobs/").expect("parse");
        assert_eq!(s.bucket, "my.bucket");
        assert_eq!(s.prefix.as_deref(), Some("tenant-a/blobs"));
        assert_eq!(s.region, "us-east-1");
        assert!(!s.allow_http && !s.path_style && s.endpoint.is_none());
        assert!(s.access_key_id.is_none() && s.secret_access_key.is_none());
    }

    #[test]
    fn from_url_refuses_other_shapes() {
        assert!(config_error("file:///tmp/x").contains("expected s3://"));
        assert!(config_error("https://bucket.s3.amazonaws.com").contains("expected s3://"));
        assert!(config_error("s3:///prefix").contains("bucket name is missing"));
        assert!(config_error("s3://").contains("bucket name is missing"));
        assert!(config_error("not a url").contains("not a URL"));
        assert!(config_error("s3://key:secret@bucket/p").contains("credentials"));
        assert!(config_error("s3://bucket:9000/p").contains("no port"));
        assert!(config_error("s3://bucket/p?x=1").contains("no port"));
        assert!(config_error("s3://bucket/a/../b").contains("bad prefix"));
        assert!(config_error("s3://bucket/./b").contains("bad prefix"));
        assert!(config_error("s3://bucket/a//b").contains("bad prefix"));
        assert!(config_error("s3://bucket/with%20space").contains("bad prefix"));
    }

    fn settings() -> S3Settings {
        S3Settings {
            endpoint: Some(Url::parse("http://127.0.0.1:9").expect("url")),
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some(SecretString::from("wJalrXUtnFEMI/K7MDENG")),
            allow_http: true,
            path_style: true,
            ..S3Settings::from_url("s3://bucket/pre").expect("parse")
        }
    }

    #[test]
    fn debug_never_shows_credentials() {
        let s = settings();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("AKIDEXAMPLE") && !shown.contains("wJalr"),
            "{shown}"
        );
        let store = S3Store::new(&s).expect("store");
        let shown = format!("{store:?}");
        assert!(
            !shown.contains("AKIDEXAMPLE") && !shown.contains("wJalr"),
            "{shown}"
        );
    }

    #[test]
    fn half_a_credential_is_refused() {
        let s = S3Settings {
            secret_access_key: None,
            ..settings()
        };
        assert!(matches!(S3Store::new(&s), Err(StorageError::Config(_))));
        let s = S3Settings {
            access_key_id: None,
            ..settings()
        };
        assert!(matches!(S3Store::new(&s), Err(StorageError::Config(_))));
    }

    #[tokio::test]
    async fn presigned_urls_sit_under_the_prefix_and_local_serving_is_refused() {
        let store = S3Store::new(&settings()).expect("store");
        let url = store
            .signed_get_url("a/b.png", Duration::from_secs(60), Utc::now())
            .await
            .expect("url");
        assert_eq!(url.path(), "/bucket/pre/a/b.png");
        assert!(
            url.query_pairs()
                .any(|(k, v)| k == "X-Amz-Expires" && v == "60"),
            "{url}"
        );
        for ttl in [Duration::ZERO, MAX_SIGNED_URL_TTL + Duration::from_secs(1)] {
            let r = store.signed_get_url("a", ttl, Utc::now()).await;
            assert!(matches!(r, Err(StorageError::Config(_))));
        }
        let q = SignedQuery {
            expires: 0,
            sig: String::new(),
        };
        assert!(matches!(
            store.open_signed("a", &q, Utc::now()).await,
            Err(StorageError::NotServedLocally)
        ));
        assert!(matches!(
            store.get("../x").await,
            Err(StorageError::InvalidKey(..))
        ));
    }
}
