//! Format detection by magic bytes and image dimensions read straight from the header, with no
//! decoder and no allocation — so a decompression bomb is refused before anything sizes a
//! buffer from its claims. File names and extensions are never consulted.

use loraforge_domain::ImageFormat;

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// The image format the content starts with, if it is one we can check.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(PNG_SIGNATURE) {
        Some(ImageFormat::Png)
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::Webp)
    } else {
        None
    }
}

/// What some content that is not a supported image appears to be, for the user's message
/// ("its content is …").
pub fn describe_content(bytes: &[u8]) -> &'static str {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if bytes.is_empty() {
        "empty"
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        "a GIF image"
    } else if starts(b"BM") && bytes.len() >= 14 {
        "a BMP image"
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        "a TIFF image"
    } else if starts(b"%PDF") {
        "a PDF document"
    } else if starts(b"PK\x03\x04") {
        "a ZIP archive"
    } else if starts(b"RIFF") && bytes.len() >= 12 && &bytes[8..12] == b"WEBP" {
        "a WebP image"
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        match &bytes[8..12] {
            b"heic" | b"heix" | b"mif1" | b"msf1" | b"hevc" => "a HEIC image",
            b"avif" | b"avis" => "an AVIF image",
            _ => "a video or other media file",
        }
    } else if looks_like_text(bytes) {
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).to_ascii_lowercase();
        let head = head.trim_start();
        if head.starts_with("<svg") || (head.starts_with("<?xml") && head.contains("<svg")) {
            "an SVG drawing"
        } else if head.starts_with("<!doctype html") || head.starts_with("<html") {
            "an HTML page"
        } else {
            "plain text"
        }
    } else {
        "unrecognised binary data"
    }
}

fn looks_like_text(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(1024)];
    // A multi-byte UTF-8 sequence cut at the window's end is still text.
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    };
    valid
        && head
            .iter()
            .all(|&b| b >= 0x20 || matches!(b, b'\t' | b'\n' | b'\r' | 0x0C))
}

/// Why the header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the file ends inside its header")]
    Truncated,
    #[error("the file ends before its image data is complete")]
    EndsEarly,
    #[error("{0}")]
    Malformed(&'static str),
}

/// Stored width and height (before any EXIF orientation) from the header of `format`.
pub fn header_dimensions(format: ImageFormat, bytes: &[u8]) -> Result<(u32, u32), HeaderError> {
    let (w, h) = match format {
        ImageFormat::Png => png_dimensions(bytes)?,
        ImageFormat::Jpeg => jpeg_dimensions(bytes)?,
        ImageFormat::Webp => webp_dimensions(bytes)?,
    };
    if w == 0 || h == 0 {
        return Err(HeaderError::Malformed(
            "the header gives a width or height of zero",
        ));
    }
    Ok((w, h))
}

fn be_u16(b: &[u8], at: usize) -> Result<u16, HeaderError> {
    let s = b.get(at..at + 2).ok_or(HeaderError::Truncated)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

fn be_u32(b: &[u8], at: usize) -> Result<u32, HeaderError> {
    let s = b.get(at..at + 4).ok_or(HeaderError::Truncated)?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn le_u32(b: &[u8], at: usize) -> Result<u32, HeaderError> {
    let s = b.get(at..at + 4).ok_or(HeaderError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le_u24(b: &[u8], at: usize) -> Result<u32, HeaderError> {
    let s = b.get(at..at + 3).ok_or(HeaderError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], 0]))
}

/// PNG: the signature is followed by the IHDR chunk, whose data starts with width, height.
fn png_dimensions(b: &[u8]) -> Result<(u32, u32), HeaderError> {
    if b.get(12..16).ok_or(HeaderError::Truncated)? != b"IHDR" {
        return Err(HeaderError::Malformed("the first chunk is not IHDR"));
    }
    Ok((be_u32(b, 16)?, be_u32(b, 20)?))
}

/// JPEG: walk the marker segments from SOI up to the first start-of-frame (SOFn) segment.
fn jpeg_dimensions(b: &[u8]) -> Result<(u32, u32), HeaderError> {
    let mut pos = 2; // after SOI
    loop {
        if *b.get(pos).ok_or(HeaderError::Truncated)? != 0xFF {
            return Err(HeaderError::Malformed(
                "expected a marker before the frame header",
            ));
        }
        // Any number of 0xFF fill bytes may precede a marker code.
        while *b.get(pos).ok_or(HeaderError::Truncated)? == 0xFF {
            pos += 1;
        }
        let marker = b[pos];
        pos += 1;
        match marker {
            0x01 | 0xD0..=0xD8 => continue, // standalone markers carry no length
            0xD9 | 0xDA => {
                return Err(HeaderError::Malformed(
                    "no frame header before the image data",
                ));
            }
            _ => {}
        }
        let len = usize::from(be_u16(b, pos)?);
        if len < 2 {
            return Err(HeaderError::Malformed("a segment length is below 2"));
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            // length(2) precision(1) height(2) width(2)
            let height = be_u16(b, pos + 3)?;
            let width = be_u16(b, pos + 5)?;
            return Ok((u32::from(width), u32::from(height)));
        }
        pos += len;
    }
}

/// WebP: RIFF container; the first chunk is VP8 (lossy), VP8L (lossless) or VP8X (extended).
fn webp_dimensions(b: &[u8]) -> Result<(u32, u32), HeaderError> {
    let fourcc = b.get(12..16).ok_or(HeaderError::Truncated)?;
    let data = 20;
    match fourcc {
        b"VP8 " => {
            if b.get(data + 3..data + 6).ok_or(HeaderError::Truncated)? != [0x9D, 0x01, 0x2A] {
                return Err(HeaderError::Malformed("the VP8 start code is missing"));
            }
            let w = u32::from(u16::from_le_bytes([
                *b.get(data + 6).ok_or(HeaderError::Truncated)?,
                *b.get(data + 7).ok_or(HeaderError::Truncated)?,
            ]));
            let h = u32::from(u16::from_le_bytes([
                *b.get(data + 8).ok_or(HeaderError::Truncated)?,
                *b.get(data + 9).ok_or(HeaderError::Truncated)?,
            ]));
            Ok((w & 0x3FFF, h & 0x3FFF))
        }
        b"VP8L" => {
            if *b.get(data).ok_or(HeaderError::Truncated)? != 0x2F {
                return Err(HeaderError::Malformed("the VP8L signature is missing"));
            }
            let bits = le_u32(b, data + 1)?;
            Ok(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
        }
        b"VP8X" => Ok((le_u24(b, data + 4)? + 1, le_u24(b, data + 7)? + 1)),
        _ => Err(HeaderError::Malformed("unknown WebP chunk")),
    }
}

/// JPEG: walks every segment and scan to the end-of-image marker. zune-jpeg (behind `image`)
/// fills a cut-off scan with grey instead of failing, so without this a truncated upload
/// would pass as intact. Bytes after EOI (camera trailers, motion photos) are allowed.
pub fn check_jpeg_complete(b: &[u8]) -> Result<(), HeaderError> {
    let mut pos = 2; // after SOI
    loop {
        if *b.get(pos).ok_or(HeaderError::EndsEarly)? != 0xFF {
            return Err(HeaderError::Malformed("stray bytes between segments"));
        }
        while *b.get(pos).ok_or(HeaderError::EndsEarly)? == 0xFF {
            pos += 1;
        }
        let marker = b[pos];
        pos += 1;
        match marker {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let len = usize::from(be_u16(b, pos).map_err(|_| HeaderError::EndsEarly)?);
        if len < 2 {
            return Err(HeaderError::Malformed("a segment length is below 2"));
        }
        pos += len;
        if pos > b.len() {
            return Err(HeaderError::EndsEarly);
        }
        if marker == 0xDA {
            // Entropy-coded data runs to the next 0xFF that starts a real marker: not a
            // stuffed 0xFF00, not a restart marker RSTn, not a fill byte.
            loop {
                let skip = b[pos..]
                    .iter()
                    .position(|&x| x == 0xFF)
                    .ok_or(HeaderError::EndsEarly)?;
                pos += skip;
                match *b.get(pos + 1).ok_or(HeaderError::EndsEarly)? {
                    0x00 | 0xD0..=0xD7 => pos += 2,
                    0xFF => pos += 1,
                    _ => break,
                }
            }
        }
    }
}

/// PNG: the decoder stops once it has the pixels, so a file cut inside its final IEND chunk
/// would pass; require that chunk (anything after it is tolerated).
pub fn check_png_complete(b: &[u8]) -> Result<(), HeaderError> {
    const IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
    if b.windows(IEND.len()).rev().any(|w| w == IEND) {
        Ok(())
    } else {
        Err(HeaderError::EndsEarly)
    }
}

/// Bytes a full decode of this image holds at its peak, estimated from the header alone (so it
/// is known before anything is allocated): the decoded pixels in the layout the decoder emits,
/// plus a progressive JPEG's coefficient buffers and a lossy WebP's YUV frame. Errs on the high
/// side; `(w, h)` are the header's dimensions.
pub fn decoded_bytes(format: ImageFormat, bytes: &[u8], (w, h): (u32, u32)) -> u64 {
    let pixels = u64::from(w) * u64::from(h);
    match format {
        ImageFormat::Png => {
            // IHDR: width(4) height(4) bit depth(1) colour type(1). Palette and tRNS expand to
            // RGB(A); 16-bit samples stay 16-bit.
            let depth = bytes.get(24).copied().unwrap_or(16);
            let channels: u64 = match bytes.get(25).copied().unwrap_or(6) {
                0 | 4 => 2, // grey (tRNS may add alpha), grey + alpha
                _ => 4,     // RGB (tRNS may add alpha), palette, RGBA
            };
            let sample = if depth == 16 { 2 } else { 1 };
            pixels.saturating_mul(channels * sample)
        }
        ImageFormat::Jpeg => {
            let (components, progressive) = jpeg_frame_kind(bytes).unwrap_or((4, true));
            let out = if components == 1 { 1 } else { 3 };
            // Progressive decoders keep every component's coefficients (i16) for the whole image.
            let coefficients = if progressive { 2 * components } else { 0 };
            pixels.saturating_mul(out + coefficients)
        }
        ImageFormat::Webp => {
            // RGBA out, and for lossy data the YUV 4:2:0 frame (1.5 bytes per pixel) beside it.
            pixels.saturating_mul(4 + 2)
        }
    }
}

/// The frame header's component count and whether it is progressive (SOF2, SOF6, SOF10, SOF14).
fn jpeg_frame_kind(b: &[u8]) -> Option<(u64, bool)> {
    let mut pos = 2;
    loop {
        if *b.get(pos)? != 0xFF {
            return None;
        }
        while *b.get(pos)? == 0xFF {
            pos += 1;
        }
        let marker = *b.get(pos)?;
        pos += 1;
        match marker {
            0x01 | 0xD0..=0xD8 => continue,
            0xD9 | 0xDA => return None,
            _ => {}
        }
        let len = usize::from(be_u16(b, pos).ok()?);
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            // length(2) precision(1) height(2) width(2) components(1)
            let components = u64::from(*b.get(pos + 7)?).max(1);
            return Some((components, matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE)));
        }
        pos += len.max(2);
    }
}
