//! Blobs in a folder on local disk, through `object_store`'s `LocalFileSystem`; this service
//! serves them itself at `{public_base_url}/files/{key}` behind HMAC-signed, expiring links.
//!
//! Atomicity: `LocalFileSystem::put` writes to a staging file next to the target
//! (`{path}#{n}`, opened with `create_new`) and `rename`s it into place, so a reader sees the old
//! file or the new one, never a partial one; a failed write removes the staging file. We also
//! turn on its fsync option, so a successful `put` is on disk (file and directory entry) like an
//! acknowledged S3 PUT. Keys cannot contain `#`, so no key can name a staging file.
//!
//! Privacy: on Unix the root folder is created with mode 0700, which keeps every file and
//! sub-folder below it out of other users' reach whatever their own modes. `LocalFileSystem`
//! creates files and sub-folders with the process umask; this library does not change it, but the
//! `loraforge` binary sets umask 077 at start, so they are 0600/0700 there. A root that already
//! exists is left as the operator made it, with a warning if other users can enter it.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use secrecy::SecretSlice;
use url::Url;

use crate::signing::{Access, UrlSigner};
use crate::{BlobMeta, BlobStore, Result, SignedQuery, StorageError, validate_key};

/// Files under one folder. Cheap to share behind an `Arc`.
pub struct LocalStore {
    fs: LocalFileSystem,
    root: PathBuf,
    /// `root` made absolute (as `fs` holds it): a key's file is `files/{key}`, since a valid
    /// key is plain path segments with nothing to escape.
    files: PathBuf,
    public_base_url: Url,
    signer: UrlSigner,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("root", &self.root)
            .field("public_base_url", &self.public_base_url.as_str())
            .field("signer", &self.signer)
            .finish()
    }
}

impl LocalStore {
    /// Opens (creating it, mode 0700, if missing) the folder `root`. Download links point at
    /// `{public_base_url}/files/{key}`; `public_base_url` may carry a path prefix
    /// (`https://host/loraforge`). `signing_key` should be 32 or more random bytes.
    pub fn new(
        root: impl AsRef<FsPath>,
        public_base_url: Url,
        signing_key: impl Into<Arc<SecretSlice<u8>>>,
    ) -> Result<Self> {
        let root = root.as_ref();
        check_base_url(&public_base_url)?;
        let signer = UrlSigner::new(signing_key)?;
        ensure_private_dir(root)?;
        let fs = LocalFileSystem::new_with_prefix(root)?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        let files = std::fs::canonicalize(root)
            .map_err(|e| StorageError::Config(format!("storage folder {}: {e}", root.display())))?;
        Ok(Self {
            fs,
            files,
            root: root.to_path_buf(),
            public_base_url,
            signer,
        })
    }

    fn path(key: &str) -> Result<Path> {
        validate_key(key)?;
        Path::parse(key)
            .map_err(|_| StorageError::InvalidKey(key.to_owned(), "not a valid object path"))
    }

    /// `{public_base_url}/files/{key}?expires=…&sig=…` granting `access` until `now + ttl`.
    fn signed_url(
        &self,
        access: Access,
        key: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Url> {
        validate_key(key)?;
        let expires = expiry(now, ttl)?;
        let sig = self.signer.sign_for(access, key, expires)?;
        let mut url = self.file_url(key)?;
        url.query_pairs_mut()
            .clear()
            .append_pair("expires", &expires.to_string())
            .append_pair("sig", &sig);
        Ok(url)
    }

    /// `{public_base_url}/files/{key}` without the query.
    fn file_url(&self, key: &str) -> Result<Url> {
        let mut url = self.public_base_url.clone();
        url.path_segments_mut()
            .map_err(|()| StorageError::Config("public base URL cannot take a path".into()))?
            .pop_if_empty()
            .push("files")
            .extend(key.split('/'));
        Ok(url)
    }
}

#[async_trait]
impl BlobStore for LocalStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = Self::path(key)?;
        self.fs.put(&path, PutPayload::from_bytes(bytes)).await?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = Self::path(key)?;
        get_bytes(&self.fs, &path, key).await
    }

    async fn head(&self, key: &str) -> Result<Option<BlobMeta>> {
        self.head_many(&[key])
            .await
            .pop()
            .unwrap_or_else(|| Err(StorageError::Config("head_many answered nothing".into())))
    }

    /// One blocking call that stats every file (no open, no thread hop per key).
    async fn head_many(&self, keys: &[&str]) -> Vec<Result<Option<BlobMeta>>> {
        let paths: Vec<Result<PathBuf>> = keys
            .iter()
            .map(|k| validate_key(k).map(|()| self.files.join(k)))
            .collect();
        let n = paths.len();
        tokio::task::spawn_blocking(move || {
            paths
                .into_iter()
                .map(|p| p.and_then(|p| stat(&p)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| {
            (0..n)
                .map(|_| Err(StorageError::Config(format!("looking at the files: {e}"))))
                .collect()
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = Self::path(key)?;
        delete_quietly(&self.fs, &path).await
    }

    async fn signed_get_url(&self, key: &str, ttl: Duration, now: DateTime<Utc>) -> Result<Url> {
        self.signed_url(Access::Read, key, ttl, now)
    }

    async fn open_signed(
        &self,
        key: &str,
        query: &SignedQuery,
        now: DateTime<Utc>,
    ) -> Result<Bytes> {
        let path = Self::path(key)?;
        self.signer.verify(key, query, now)?;
        get_bytes(&self.fs, &path, key).await
    }

    async fn signed_put_url(&self, key: &str, ttl: Duration, now: DateTime<Utc>) -> Result<Url> {
        self.signed_url(Access::Write, key, ttl, now)
    }

    async fn put_signed(
        &self,
        key: &str,
        query: &SignedQuery,
        bytes: Bytes,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let path = Self::path(key)?;
        self.signer.verify_for(Access::Write, key, query, now)?;
        self.fs.put(&path, PutPayload::from_bytes(bytes)).await?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, BlobMeta)>> {
        let folder = prefix.trim_end_matches('/');
        validate_key(folder)?;
        list_under(&self.fs, &Path::from(folder), None).await
    }

    async fn ping(&self) -> Result<()> {
        match tokio::fs::metadata(&self.root).await {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(StorageError::Config(format!(
                "{} is not a folder",
                self.root.display()
            ))),
            Err(source) => Err(StorageError::Backend(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(source),
            })),
        }
    }
}

/// `now + ttl` in whole seconds, rounded down so the link never outlives `now + ttl`.
fn expiry(now: DateTime<Utc>, ttl: Duration) -> Result<i64> {
    chrono::Duration::from_std(ttl)
        .ok()
        .and_then(|ttl| now.checked_add_signed(ttl))
        .map(|t| t.timestamp())
        .ok_or_else(|| StorageError::Config(format!("link lifetime {ttl:?} is out of range")))
}

fn check_base_url(url: &Url) -> Result<()> {
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(StorageError::Config(format!(
            "public base URL {url} must be an http(s) URL"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(StorageError::Config(format!(
            "public base URL {url} must not have a query or fragment"
        )));
    }
    Ok(())
}

/// Creates `root` (and missing parents) owner-only, or checks an existing one is a folder.
fn ensure_private_dir(root: &FsPath) -> Result<()> {
    let config = |what: String| StorageError::Config(what);
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {
            warn_if_shared(root, &meta);
            Ok(())
        }
        Ok(_) => Err(config(format!(
            "storage root {} exists and is not a folder",
            root.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(root).map_err(|e| {
                config(format!(
                    "cannot create storage root {}: {e}",
                    root.display()
                ))
            })
        }
        Err(e) => Err(config(format!(
            "cannot read storage root {}: {e}",
            root.display()
        ))),
    }
}

#[cfg(unix)]
fn warn_if_shared(root: &FsPath, meta: &std::fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            root = %root.display(),
            mode = format_args!("{mode:o}"),
            "storage root is accessible to other users; `chmod 700` it to keep blobs private"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_root: &FsPath, _meta: &std::fs::Metadata) {}

// Shared by both stores: the `object_store` calls with our error mapping.

pub(crate) async fn get_bytes(
    store: &dyn object_store::ObjectStore,
    path: &Path,
    key: &str,
) -> Result<Bytes> {
    let result = match store.get(path).await {
        Ok(result) => result,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(StorageError::NotFound(key.to_owned()));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(result.bytes().await?)
}

/// A file's size and time; `None` when there is no file there (nothing, or a folder).
fn stat(path: &FsPath) -> Result<Option<BlobMeta>> {
    use std::io::ErrorKind;
    let io = |source: std::io::Error| {
        StorageError::Backend(object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(source),
        })
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(BlobMeta {
            size: m.len(),
            last_modified: m.modified().map(DateTime::<Utc>::from).map_err(io)?,
        })),
        Ok(_) => Ok(None),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => Ok(None),
        Err(e) => Err(io(e)),
    }
}

pub(crate) async fn head_meta(
    store: &dyn object_store::ObjectStore,
    path: &Path,
) -> Result<Option<BlobMeta>> {
    match store.head(path).await {
        Ok(meta) => Ok(Some(BlobMeta {
            size: meta.size,
            last_modified: meta.last_modified,
        })),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Objects under `folder`, keys without `strip` (the store's own prefix, with its `/`).
pub(crate) async fn list_under(
    store: &dyn object_store::ObjectStore,
    folder: &Path,
    strip: Option<&str>,
) -> Result<Vec<(String, BlobMeta)>> {
    use futures::TryStreamExt;
    let metas: Vec<object_store::ObjectMeta> = store.list(Some(folder)).try_collect().await?;
    Ok(metas
        .into_iter()
        .filter_map(|m| {
            let full = m.location.to_string();
            let key = match strip {
                Some(p) => full.strip_prefix(p)?.to_owned(),
                None => full,
            };
            Some((
                key,
                BlobMeta {
                    size: m.size,
                    last_modified: m.last_modified,
                },
            ))
        })
        .collect())
}

pub(crate) async fn delete_quietly(
    store: &dyn object_store::ObjectStore,
    path: &Path,
) -> Result<()> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(root: &FsPath, base: &str) -> LocalStore {
        let base = Url::parse(base).expect("url");
        LocalStore::new(root, base, SecretSlice::from(vec![3u8; 32])).expect("store")
    }

    #[tokio::test]
    async fn links_join_the_base_path_whatever_its_trailing_slash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        for base in ["https://x.test/lf", "https://x.test/lf/"] {
            let url = store(dir.path(), base)
                .signed_get_url("a/b.png", Duration::from_secs(60), now)
                .await
                .expect("url");
            assert!(
                url.as_str()
                    .starts_with("https://x.test/lf/files/a/b.png?expires=1700000060&sig="),
                "{url}"
            );
        }
        let url = store(dir.path(), "http://127.0.0.1:8080")
            .signed_get_url("k", Duration::from_secs(1), now)
            .await
            .expect("url");
        assert!(
            url.as_str()
                .starts_with("http://127.0.0.1:8080/files/k?expires=1700000001&sig="),
            "{url}"
        );
    }

    #[test]
    fn bad_base_urls_are_config_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        for base in [
            "ftp://x.test/",
            "https://x.test/?a=1",
            "https://x.test/#f",
            "mailto:a@b.c",
        ] {
            let base = Url::parse(base).expect("url");
            let r = LocalStore::new(dir.path(), base.clone(), SecretSlice::from(vec![3u8; 32]));
            assert!(matches!(r, Err(StorageError::Config(_))), "{base}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_new_root_is_owner_only_and_debug_hides_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("new/blobs");
        let s = store(&root, "https://x.test");
        let mode = std::fs::metadata(&root).expect("root").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let shown = format!("{s:?}");
        assert!(
            shown.contains("[REDACTED]") && !shown.contains("3, 3"),
            "{shown}"
        );
    }

    #[test]
    fn a_file_as_root_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let r = LocalStore::new(
            &file,
            Url::parse("https://x.test").expect("url"),
            SecretSlice::from(vec![3u8; 32]),
        );
        assert!(matches!(r, Err(StorageError::Config(_))));
    }

    #[tokio::test]
    async fn no_staging_files_are_left_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), "https://x.test");
        s.put("d/k", Bytes::from_static(b"one")).await.expect("put");
        s.put("d/k", Bytes::from_static(b"two")).await.expect("put");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("d"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec!["k"]);
        // Deleting the last object removes the emptied folder but never the root.
        s.delete("d/k").await.expect("delete");
        assert!(!dir.path().join("d").exists());
        assert!(dir.path().exists());
        s.ping().await.expect("ping");
    }
}
