//! The download cache: one file per URL under the cache folder, named by the blake3 hash of the
//! URL, reused while younger than the TTL by the injected clock. Files are written to a
//! temporary name and renamed into place, so a reader sees a whole entry or none. Failures are
//! logged and treated as a miss: the cache is only an optimisation.
//!
//! Entry layout: `<fetched_at unix millis> <url without query or fragment>\n` then the body
//! bytes. The query is never written: image URLs often carry their credential there
//! (`?token=…`, presigned signatures). The file name hashes the whole URL, so two tokens for one
//! path are still two entries; the stored part only guards against serving another path's bytes.
//!
//! Privacy: folders are created 0700 and entries are 0600 (the temporary file's mode), whatever
//! the process umask.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
    ttl: Duration,
}

impl DiskCache {
    pub fn new(dir: PathBuf, ttl: Duration) -> Self {
        Self { dir, ttl }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What an entry records of `url`: scheme, host and path, never the query or fragment.
    fn recorded(url: &str) -> &str {
        url.find(['?', '#']).map_or(url, |i| &url[..i])
    }

    fn path_of(&self, url: &str) -> PathBuf {
        self.dir
            .join(blake3::hash(url.as_bytes()).to_hex().as_str())
    }

    /// The cached body of `url` if it was stored less than the TTL before `now`.
    pub async fn get(&self, url: &str, now: DateTime<Utc>) -> Option<Vec<u8>> {
        let path = self.path_of(url);
        let raw = match tokio::fs::read(&path).await {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "download cache unreadable; downloading again");
                return None;
            }
        };
        let newline = raw.iter().position(|&b| b == b'\n')?;
        let header = std::str::from_utf8(&raw[..newline]).ok()?;
        let (millis, stored_url) = header.split_once(' ')?;
        let fetched_at = DateTime::<Utc>::from_timestamp_millis(millis.parse().ok()?)?;
        if stored_url != Self::recorded(url) {
            return None;
        }
        let age = now.signed_duration_since(fetched_at).to_std().ok()?; // from the future: stale
        (age < self.ttl).then(|| raw[newline + 1..].to_vec())
    }

    /// Stores `body` for `url` as fetched at `now`. Best effort.
    pub async fn put(&self, url: &str, body: &[u8], now: DateTime<Utc>) {
        let dir = self.dir.clone();
        let path = self.path_of(url);
        let mut entry =
            format!("{} {}\n", now.timestamp_millis(), Self::recorded(url)).into_bytes();
        entry.extend_from_slice(body);
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            create_private_dir(&dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
            tmp.write_all(&entry)?;
            tmp.as_file().sync_data()?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not write the download cache")
            }
            Err(e) => tracing::warn!(error = %e, "download cache writer failed"),
        }
    }
}

/// `dir` and any missing parents, each created 0700 (existing ones are left alone).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_live_for_the_ttl_by_the_given_clock() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path().join("downloads"), Duration::from_secs(3600));
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let url = "https://img.example.com/a.png?token=1";
        assert_eq!(cache.get(url, t0).await, None);
        cache.put(url, b"\x89PNG body\nwith newline", t0).await;
        assert_eq!(
            cache
                .get(url, t0 + chrono::Duration::minutes(59))
                .await
                .as_deref(),
            Some(&b"\x89PNG body\nwith newline"[..])
        );
        assert_eq!(
            cache.get(url, t0 + chrono::Duration::minutes(60)).await,
            None,
            "expired at the TTL"
        );
        assert_eq!(
            cache.get(url, t0 - chrono::Duration::minutes(1)).await,
            None,
            "written in the future: stale"
        );
        assert_eq!(
            cache.get("https://img.example.com/a.png?token=2", t0).await,
            None
        );
        // Only the entry itself is left: the temporary file was renamed into place.
        let files: Vec<_> = std::fs::read_dir(cache.dir()).unwrap().collect();
        assert_eq!(files.len(), 1);
    }

    #[tokio::test]
    async fn no_query_reaches_the_disk_and_entries_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(
            dir.path().join("cache").join("downloads"),
            Duration::from_secs(3600),
        );
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let url = "https://img.example.com/a.png?token=s3cr3t-t0ken&X-Amz-Signature=abc#frag";
        cache.put(url, b"body", t0).await;
        assert_eq!(cache.get(url, t0).await.as_deref(), Some(&b"body"[..]));
        // Another token for the same path is another entry, not this one.
        assert_eq!(
            cache
                .get("https://img.example.com/a.png?token=other", t0)
                .await,
            None
        );
        let entries: Vec<_> = std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(entries.len(), 1);
        let raw = std::fs::read(&entries[0]).unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("https://img.example.com/a.png\n"), "{text}");
        for secret in ["s3cr3t", "token", "Signature", "frag"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&entries[0]), 0o600);
            assert_eq!(mode(cache.dir()), 0o700);
            assert_eq!(mode(&dir.path().join("cache")), 0o700);
        }
    }

    #[tokio::test]
    async fn a_damaged_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path().to_owned(), Duration::from_secs(3600));
        let url = "https://img.example.com/b.png";
        std::fs::write(cache.path_of(url), b"garbage without header").unwrap();
        assert_eq!(cache.get(url, Utc::now()).await, None);
    }
}
