//! Shared by the CLI test binaries: the binary run as a user would, free of the developer's
//! own `LORAFORGE_*` settings, and test images.
// Each test binary uses part of this module.
#![allow(dead_code)]

pub mod browser;
pub mod service;

use std::path::Path;
use std::process::Command;

/// `loraforge` in `dir`, with every `LORAFORGE_*` variable of this process removed.
pub fn loraforge(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraforge"));
    c.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("LORAFORGE_") {
            c.env_remove(k);
        }
    }
    c
}

/// A noise PNG of `w`×`h`: unique per seed and incompressible, as training images must be.
pub fn noise_png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        image::Rgb([s as u8, (s >> 8) as u8, (s >> 16) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

/// A log line without its terminal colours (`\x1b[…m`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ … letter
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub use loraforge_fakes::trainer::trainer_python;
