//! Test images made in memory: encoders, crafted headers, EXIF segments, corruptions.

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};
use loraforge_domain::DatasetRules;

/// Rules that let tiny test images through the size window and minimum side.
pub fn small_rules() -> DatasetRules {
    DatasetRules {
        min_bytes: 1,
        min_side: 32,
        ..DatasetRules::default()
    }
}

/// Pseudo-random pixels (compress badly, so files are large and hashes unrelated).
pub fn noise(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    RgbImage::from_fn(w, h, |_, _| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        Rgb([s as u8, (s >> 8) as u8, (s >> 16) as u8])
    })
}

/// A smooth picture with large shapes; `variant` picks a different picture.
pub fn picture(w: u32, h: u32, variant: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let fx = x as f32 / w as f32;
        let fy = y as f32 / h as f32;
        let v = match variant % 4 {
            0 => (fx * 6.0).sin() * (fy * 4.0).cos(),
            1 => ((fx - 0.5).hypot(fy - 0.3) * 14.0).cos(),
            2 => (fx * 3.0 + fy * 9.0).sin(),
            _ => ((fx * 11.0).sin() + (fy * 7.0).sin()) / 2.0,
        };
        let g = ((v + 1.0) * 127.0) as u8;
        Rgb([g, g.wrapping_add(40), 255 - g])
    })
}

pub fn png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

pub fn jpeg_bytes(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .unwrap();
    out
}

pub fn webp_bytes(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    WebPEncoder::new_lossless(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    c.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    c
}

/// A PNG that is only a valid signature, IHDR (8-bit RGB, `w`×`h`) and IEND.
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

/// Inserts a chunk right after IHDR (signature 8 + IHDR 25 bytes).
pub fn insert_png_chunk(png: &[u8], chunk: &[u8]) -> Vec<u8> {
    let mut out = png[..33].to_vec();
    out.extend_from_slice(chunk);
    out.extend_from_slice(&png[33..]);
    out
}

/// A little-endian TIFF structure with one IFD entry: Orientation (0x0112, SHORT) = `o`.
pub fn exif_tiff(o: u16) -> Vec<u8> {
    let mut t = b"II*\0".to_vec();
    t.extend_from_slice(&8u32.to_le_bytes()); // IFD0 offset
    t.extend_from_slice(&1u16.to_le_bytes()); // one entry
    t.extend_from_slice(&0x0112u16.to_le_bytes());
    t.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    t.extend_from_slice(&1u32.to_le_bytes()); // count
    t.extend_from_slice(&u32::from(o).to_le_bytes()); // value, left-justified
    t.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    t
}

/// Puts an APP1 Exif segment carrying orientation `o` right after SOI.
pub fn with_jpeg_exif(jpeg: &[u8], o: u16) -> Vec<u8> {
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(exif_tiff(o));
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Overwrites the code-length counts of the first DHT segment so the table is impossible.
pub fn break_first_dht(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let at = out
        .windows(2)
        .position(|w| w == [0xFF, 0xC4])
        .expect("a DHT segment");
    // marker(2) length(2) class/id(1) then 16 counts
    for b in &mut out[at + 5..at + 5 + 16] {
        *b = 0xFF;
    }
    out
}
