//! Images given as URLs: downloaded through the server's [`Fetcher`] (allow-list, SSRF checks,
//! retries, size cap, cache) into [`IntakeImage`]s for the one dataset path.

use futures::StreamExt;
use url::Url;

use loraforge_checks::InputImage;
use loraforge_fetch::{FetchError, Fetcher};

use crate::error::{ApiError, ApiResult};
use crate::intake::IntakeImage;
use crate::state::AppState;

/// Downloads at once per request; more would let one request hog the host's bandwidth.
const PARALLEL_DOWNLOADS: usize = 4;

/// One image to download.
#[derive(Debug, Clone)]
pub struct UrlImage {
    pub url: String,
    pub caption: Option<String>,
}

/// Some URLs could not be downloaded: every URL in request order, with its error if it failed.
#[derive(Debug)]
pub struct DownloadFailures {
    pub outcomes: Vec<(String, Option<FetchError>)>,
}

/// The server's fetcher, or why URLs cannot be taken (403 when no host is allowed).
pub fn fetcher(state: &AppState) -> ApiResult<&Fetcher> {
    if !state.settings().url_intake.is_enabled() {
        return Err(FetchError::Disabled.into());
    }
    state.fetcher().ok_or_else(|| {
        ApiError::internal(
            "URL intake has no HTTP client",
            &"the client failed to build at start-up",
        )
    })
}

/// Downloads every URL (a few at a time, in order) under the image size limit.
pub async fn download_all(
    state: &AppState,
    fetcher: &Fetcher,
    images: Vec<UrlImage>,
) -> Result<Vec<IntakeImage>, DownloadFailures> {
    let max_bytes = state.settings().dataset_rules.max_bytes;
    let results: Vec<(UrlImage, Result<Vec<u8>, FetchError>)> = futures::stream::iter(images)
        .map(|img| async move {
            let got = fetcher.fetch(&img.url, max_bytes).await.map(|d| d.bytes);
            (img, got)
        })
        .buffered(PARALLEL_DOWNLOADS)
        .collect()
        .await;
    if results.iter().all(|(_, r)| r.is_ok()) {
        return Ok(results
            .into_iter()
            .filter_map(|(img, r)| {
                let bytes = r.ok()?;
                Some(IntakeImage {
                    input: InputImage::new(display_name(&img.url), bytes),
                    caption: img.caption,
                })
            })
            .collect());
    }
    Err(DownloadFailures {
        outcomes: results
            .into_iter()
            .map(|(img, r)| (img.url, r.err()))
            .collect(),
    })
}

/// The name an image from a URL is checked and stored under: the URL without its query or
/// fragment (signed URLs carry tokens there), at most 1000 characters.
pub fn display_name(url: &str) -> String {
    let shown = match Url::parse(url.trim()) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => url.trim().to_owned(),
    };
    shown
        .chars()
        .filter(|c| !c.is_control())
        .take(1000)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_drop_tokens() {
        assert_eq!(
            display_name("https://x.supabase.co/storage/v1/object/sign/a/b.png?token=abc#f"),
            "https://x.supabase.co/storage/v1/object/sign/a/b.png"
        );
        assert_eq!(display_name(" not a url "), "not a url");
    }
}
