//! Datasets: the images a LoRA is trained on, and the rules they must meet (PRD 2, Dataset
//! Validation). The checks themselves live in `loraforge-checks`; the numbers live here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{DatasetId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Webp => "webp",
        }
    }
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Webp => "webp",
        }
    }
    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "jpeg" => Some(Self::Jpeg),
            "png" => Some(Self::Png),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }
}

/// What a training dataset must satisfy. Defaults are PRD 2's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRules {
    pub min_images: usize,
    pub max_images: usize,
    /// Per-image file size window, bytes (inclusive).
    pub min_bytes: u64,
    pub max_bytes: u64,
    /// Both sides must be at least this many pixels.
    pub min_side: u32,
    /// Refused before decoding when width × height exceeds this (decompression bombs).
    pub max_pixels: u64,
    pub allow_webp: bool,
}

impl Default for DatasetRules {
    fn default() -> Self {
        Self {
            min_images: 3,
            max_images: 20,
            min_bytes: 100 * 1024,
            max_bytes: 10 * 1024 * 1024,
            min_side: 512,
            max_pixels: 40_000_000,
            allow_webp: false,
        }
    }
}

/// One stored image of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetImage {
    /// Position in the upload, from 0.
    pub index: u32,
    /// The name the user gave the file.
    pub file_name: String,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    /// blake3 of the file bytes, hex; equal hashes are exact duplicates.
    pub content_hash: String,
    /// Storage key of the image.
    pub storage_key: String,
    /// Caption text, if one was uploaded.
    pub caption: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    pub id: DatasetId,
    pub user_id: UserId,
    pub images: Vec<DatasetImage>,
    pub created_at: DateTime<Utc>,
}

impl Dataset {
    /// Bytes its images store (what the daily byte quota counts).
    pub fn total_bytes(&self) -> u64 {
        self.images.iter().map(|i| i.bytes).sum()
    }
}
