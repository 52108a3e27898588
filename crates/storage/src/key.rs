//! Storage keys: the one rule both stores (and the `/files/{key}` route) apply before touching
//! a path, so a key can never name something outside the store's root or prefix.

use crate::{Result, StorageError};

/// Longest key accepted, in bytes. S3 allows 1,024 for the whole key including our prefix.
pub const MAX_KEY_LEN: usize = 512;

/// Checks a key: `/`-separated segments of `[A-Za-z0-9._-]`, no empty, `.` or `..` segment (so
/// no leading, trailing or doubled `/`), at most [`MAX_KEY_LEN`] bytes.
///
/// The character set also keeps keys clear of `#`, which `LocalFileSystem` uses for its staging
/// files (`{path}#{n}`), and of anything a URL path would need to escape.
pub fn validate_key(key: &str) -> Result<()> {
    let reject = |why: &'static str| Err(StorageError::InvalidKey(shorten(key), why));
    if key.is_empty() {
        return reject("empty key");
    }
    if key.len() > MAX_KEY_LEN {
        return reject("longer than 512 bytes");
    }
    if key.starts_with('/') {
        return reject("must be relative (no leading '/')");
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return reject("empty path segment ('//' or trailing '/')");
        }
        if segment == "." || segment == ".." {
            return reject("'.' and '..' segments are not allowed");
        }
        if !segment.bytes().all(is_key_byte) {
            return reject("only A-Z, a-z, 0-9, '.', '_', '-' and '/' are allowed");
        }
    }
    Ok(())
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Error messages carry the key, but not an unbounded one.
fn shorten(key: &str) -> String {
    const SHOWN: usize = 80;
    if key.len() <= SHOWN {
        return key.to_owned();
    }
    let mut end = SHOWN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(key: &str) -> &'static str {
        match validate_key(key) {
            Err(StorageError::InvalidKey(_, why)) => why,
            other => panic!("{key:?}: expected InvalidKey, got {other:?}"),
        }
    }

    #[test]
    fn accepts_safe_relative_keys() {
        for key in [
            "a",
            "datasets/0190f2b4-7c1e/img_001.png",
            "loras/my.lora-v2_final.safetensors",
            "...a",
            "a..b/.hidden/x-",
            &"x".repeat(MAX_KEY_LEN),
        ] {
            assert!(validate_key(key).is_ok(), "{key:?} should be valid");
        }
    }

    #[test]
    fn rejects_traversal_and_odd_shapes() {
        assert_eq!(reason(""), "empty key");
        assert_eq!(reason("/abs"), "must be relative (no leading '/')");
        assert_eq!(reason("a//b"), "empty path segment ('//' or trailing '/')");
        assert_eq!(reason("a/"), "empty path segment ('//' or trailing '/')");
        for key in ["..", ".", "../x", "a/../b", "a/./b", "a/.."] {
            assert_eq!(
                reason(key),
                "'.' and '..' segments are not allowed",
                "{key:?}"
            );
        }
    }

    #[test]
    fn rejects_unsafe_characters() {
        for key in [
            "with space",
            "a\\b",
            "a#1",
            "a%2e",
            "a?b",
            "é",
            "a\nb",
            "a\0b",
            "a:b",
            "~x",
        ] {
            assert_eq!(
                reason(key),
                "only A-Z, a-z, 0-9, '.', '_', '-' and '/' are allowed",
                "{key:?}"
            );
        }
    }

    #[test]
    fn rejects_long_keys_and_keeps_the_message_short() {
        let long = "x".repeat(MAX_KEY_LEN + 1);
        match validate_key(&long) {
            Err(StorageError::InvalidKey(shown, "longer than 512 bytes")) => {
                assert!(shown.len() < 100, "{shown}")
            }
            other => panic!("{other:?}"),
        }
    }
}
