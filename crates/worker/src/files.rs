//! Files in and out: the job's images downloaded through their signed URLs, outputs uploaded to
//! theirs, hashes, and atomic writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use reqwest::header::CONTENT_LENGTH;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::api::{CallError, Failed, retrying, success};
use crate::job::ImageRef;

/// Images downloaded at once.
const DOWNLOAD_CONCURRENCY: usize = 4;

/// Whether `name` is a file name the protocol allows for an image: two or more digits, then
/// `.png`, `.jpg`, `.jpeg` or `.webp` (`^[0-9]{2,}\.(png|jpg|jpeg|webp)$`).
pub(crate) fn is_safe_image_name(name: &str) -> bool {
    let Some((stem, ext)) = name.split_once('.') else {
        return false;
    };
    stem.len() >= 2
        && stem.bytes().all(|b| b.is_ascii_digit())
        && matches!(ext, "png" | "jpg" | "jpeg" | "webp")
}

/// The caption file next to an image: same stem, `.txt`.
pub(crate) fn caption_name(image_name: &str) -> String {
    let stem = image_name
        .split_once('.')
        .map_or(image_name, |(stem, _)| stem);
    format!("{stem}.txt")
}

/// An image checked against the protocol, ready to download.
pub(crate) struct ImageJob {
    pub file_name: String,
    pub url: Url,
    pub bytes: u64,
    pub caption: Option<String>,
}

/// Checks the job's image list: safe, distinct file names (their stems too, since captions
/// share them) and URLs that parse. The error is a sentence for the job's failure reason.
pub(crate) fn check_images(images: Vec<ImageRef>) -> Result<Vec<ImageJob>, String> {
    let mut stems = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(images.len());
    for img in images {
        if !is_safe_image_name(&img.file_name) {
            return Err(format!(
                "the job names an image {:?}, which is not a safe file name (two or more digits, then .png, .jpg, \
                 .jpeg or .webp); the control plane sent an invalid job",
                img.file_name
            ));
        }
        if !stems.insert(caption_name(&img.file_name)) {
            return Err(format!(
                "the job names the image {:?} twice (or two images with the same stem); the control plane sent an \
                 invalid job",
                img.file_name
            ));
        }
        let url = Url::parse(&img.url).map_err(|e| {
            format!(
                "the job's download link for image {} is not a URL ({e}); the control plane sent an invalid job",
                img.file_name
            )
        })?;
        out.push(ImageJob {
            file_name: img.file_name,
            url,
            bytes: img.bytes,
            caption: img.caption,
        });
    }
    Ok(out)
}

/// Why the images could not be made ready.
#[derive(Debug)]
pub(crate) enum DownloadError {
    /// A download failed for good (after its retries).
    Http { file_name: String, failed: Failed },
    /// Writing here failed.
    Local(String),
}

/// Downloads every image into `dir` (which must exist), each checked to have exactly its
/// announced size, and writes its caption next to it.
pub(crate) async fn download_images(
    http: &reqwest::Client,
    images: &[ImageJob],
    dir: &Path,
    retry_delay: Duration,
) -> Result<(), DownloadError> {
    // A Vec of futures rather than a closure making them: a future made inside a closure gets
    // higher-ranked lifetimes the compiler cannot prove `Send`.
    let downloads: Vec<_> = images
        .iter()
        .map(|img| download_image(http, img, dir, retry_delay))
        .collect();
    futures::stream::iter(downloads)
        .buffer_unordered(DOWNLOAD_CONCURRENCY)
        .try_collect()
        .await
}

/// One image with its retries, then its caption.
async fn download_image(
    http: &reqwest::Client,
    img: &ImageJob,
    dir: &Path,
    retry_delay: Duration,
) -> Result<(), DownloadError> {
    let path = dir.join(&img.file_name);
    retrying(
        &format!("downloading image {}", img.file_name),
        retry_delay,
        || download(http, &img.url, img.bytes, &path),
    )
    .await
    .map_err(|failed| DownloadError::Http {
        file_name: img.file_name.clone(),
        failed,
    })?;
    if let Some(caption) = &img.caption {
        let txt = dir.join(caption_name(&img.file_name));
        tokio::fs::write(&txt, caption.as_bytes())
            .await
            .map_err(|e| DownloadError::Local(format!("cannot write {}: {e}", txt.display())))?;
    }
    tracing::debug!(image = %img.file_name, bytes = img.bytes, "image downloaded");
    Ok(())
}

/// One try: streams the body into `<path>.part` (never more than the announced `bytes`), then
/// renames it into place.
pub(crate) async fn download(
    http: &reqwest::Client,
    url: &Url,
    bytes: u64,
    path: &Path,
) -> Result<(), CallError> {
    let part = PathBuf::from(format!("{}.part", path.display()));
    let local =
        |e: std::io::Error| CallError::Invalid(format!("cannot write {}: {e}", part.display()));
    let resp = http
        .get(url.clone())
        .send()
        .await
        .map_err(CallError::transport)?;
    let mut resp = success(resp).await?;
    let mut file = tokio::fs::File::create(&part).await.map_err(local)?;
    let mut got: u64 = 0;
    while let Some(chunk) = resp.chunk().await.map_err(CallError::transport)? {
        got += chunk.len() as u64;
        if got > bytes {
            drop(file);
            let _ = tokio::fs::remove_file(&part).await;
            return Err(CallError::Invalid(format!(
                "more than the announced {bytes} bytes"
            )));
        }
        file.write_all(&chunk).await.map_err(local)?;
    }
    file.flush().await.map_err(local)?;
    drop(file);
    if got != bytes {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(CallError::Invalid(format!(
            "{got} bytes instead of the announced {bytes}"
        )));
    }
    tokio::fs::rename(&part, path).await.map_err(local)
}

/// One try of an upload: `PUT` with the file's raw bytes as the body (streamed, with its
/// `Content-Length`, as presigned S3 URLs require); any 2xx is success.
pub(crate) async fn put_file(
    http: &reqwest::Client,
    url: &Url,
    path: &Path,
) -> Result<(), CallError> {
    let local =
        |e: std::io::Error| CallError::Invalid(format!("cannot read {}: {e}", path.display()));
    let file = tokio::fs::File::open(path).await.map_err(local)?;
    let len = file.metadata().await.map_err(local)?.len();
    let resp = http
        .put(url.clone())
        .header(CONTENT_LENGTH, len)
        .body(reqwest::Body::from(file))
        .send()
        .await
        .map_err(CallError::transport)?;
    success(resp).await.map(drop)
}

/// Size and hex SHA-256 of a file.
pub(crate) async fn size_and_sha256(path: &Path) -> std::io::Result<(u64, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        Ok((total, hex::encode(hasher.finalize())))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Writes `bytes` to `path` through a synced temporary file in the same folder and a rename, so
/// `path` is either absent or whole.
pub(crate) async fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut file = tokio::fs::File::create(&tmp).await?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&tmp, path).await
}

/// Removes a folder tree; one that is not there is fine.
pub(crate) async fn remove_tree(path: &Path) {
    match tokio::fs::remove_dir_all(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_follow_the_protocol() {
        for ok in ["00.png", "01.jpg", "12.jpeg", "123.webp", "0000000042.png"] {
            assert!(is_safe_image_name(ok), "{ok}");
        }
        for bad in [
            "0.png",
            "../00.png",
            "00.PNG",
            "00.gif",
            "00.png.txt",
            "a0.png",
            "00",
            ".png",
            "",
            "/00.png",
            "00/.png",
            "٠٠.png",
            "00.png\0",
            "00. png",
        ] {
            assert!(!is_safe_image_name(bad), "{bad:?}");
        }
        assert_eq!(caption_name("07.jpeg"), "07.txt");
    }

    fn image(name: &str) -> ImageRef {
        ImageRef {
            file_name: name.into(),
            url: "http://h/files/x?sig=1".into(),
            bytes: 1,
            caption: None,
        }
    }

    #[test]
    fn an_image_list_with_bad_or_repeated_names_is_refused() {
        assert_eq!(
            check_images(vec![image("00.png"), image("01.jpg")])
                .unwrap()
                .len(),
            2
        );
        let e = check_images(vec![image("00.png"), image("../../etc/passwd")])
            .err()
            .unwrap();
        assert!(
            e.contains("\"../../etc/passwd\"") && e.contains("not a safe file name"),
            "{e}"
        );
        let e = check_images(vec![image("00.png"), image("00.jpg")])
            .err()
            .unwrap();
        assert!(e.contains("twice"), "{e}");
        let mut bad_url = image("00.png");
        bad_url.url = "not a url".into();
        assert!(
            check_images(vec![bad_url])
                .err()
                .unwrap()
                .contains("not a URL")
        );
    }

    #[tokio::test]
    async fn atomic_writes_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("result.json");
        write_atomic(&path, b"abc").await.unwrap();
        write_atomic(&path, b"abc").await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert!(!dir.path().join("result.json.tmp").exists());
        let (bytes, sha) = size_and_sha256(&path).await.unwrap();
        assert_eq!(bytes, 3);
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        remove_tree(&dir.path().join("missing")).await;
    }
}
