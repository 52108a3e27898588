//! A streaming writer of uncompressed ("stored") zip archives, for the dataset zip link
//! (`routes/dataset_zip.rs`). Images are already compressed, so storing them costs nothing, and a
//! stored entry's size is known before its bytes are read: the archive's exact length is known
//! up front (`Content-Length`) and each entry is written as one header followed by its bytes,
//! one entry in memory at a time.
//!
//! Plain zip (PKWARE APPNOTE 6.3.x §4.3): no zip64, so an archive is refused above 4 GiB (a
//! dataset is far smaller), no data descriptors (the CRC is computed before the header goes
//! out), names in ASCII, a fixed timestamp (1980-01-01 00:00) so equal datasets give equal bytes.

use bytes::{BufMut, Bytes, BytesMut};

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIR: u32 = 0x0605_4b50;
const LOCAL_HEADER_LEN: u64 = 30;
const CENTRAL_HEADER_LEN: u64 = 46;
const END_LEN: u64 = 22;
/// 2.0: the version that introduced stored and deflated entries.
const VERSION_NEEDED: u16 = 20;
/// Made by Unix (3), spec version 2.0, so the external attributes carry Unix modes.
const VERSION_MADE_BY: u16 = (3 << 8) | 20;
/// A regular file, rw-r--r--.
const UNIX_FILE_MODE: u32 = 0o100_644;
/// 1980-01-01 in MS-DOS date format (year since 1980 << 9 | month << 5 | day).
const DOS_DATE: u16 = (1 << 5) | 1;
const DOS_TIME: u16 = 0;

/// Why an archive cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ZipError {
    #[error("the archive would be larger than 4 GiB (zip64 is not written)")]
    TooLarge,
    #[error("entry names must be 1–255 printable ASCII characters without `/` or `\\`: {0:?}")]
    BadName(String),
    #[error("an archive holds at most 65535 entries")]
    TooManyEntries,
    #[error("entry {name:?} was announced with {announced} bytes but has {actual}")]
    SizeMismatch {
        name: String,
        announced: u64,
        actual: u64,
    },
}

/// The plan of an archive: its entries' names and sizes, known before any byte is read.
#[derive(Debug, Clone)]
pub struct ZipPlan {
    entries: Vec<(String, u32)>,
    total: u64,
}

impl ZipPlan {
    /// Checks names and sizes; the archive's exact length is then [`ZipPlan::len`].
    pub fn new(entries: Vec<(String, u64)>) -> Result<Self, ZipError> {
        if entries.len() > usize::from(u16::MAX) {
            return Err(ZipError::TooManyEntries);
        }
        let mut total = END_LEN;
        let mut checked = Vec::with_capacity(entries.len());
        for (name, size) in entries {
            let ok = (1..=255).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\');
            if !ok {
                return Err(ZipError::BadName(name));
            }
            let size32 = u32::try_from(size).map_err(|_| ZipError::TooLarge)?;
            let name_len = name.len() as u64;
            total += LOCAL_HEADER_LEN + name_len + size + CENTRAL_HEADER_LEN + name_len;
            checked.push((name, size32));
        }
        // Offsets and the central directory's offset are 32-bit fields.
        if total > u64::from(u32::MAX) {
            return Err(ZipError::TooLarge);
        }
        Ok(Self {
            entries: checked,
            total,
        })
    }

    /// The archive's exact length in bytes.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// A writer that produces the archive piece by piece.
    pub fn writer(self) -> ZipWriter {
        ZipWriter {
            plan: self,
            next: 0,
            offset: 0,
            central: BytesMut::new(),
        }
    }
}

/// Writes the entries of a [`ZipPlan`] in order.
#[derive(Debug)]
pub struct ZipWriter {
    plan: ZipPlan,
    next: usize,
    offset: u32,
    central: BytesMut,
}

impl ZipWriter {
    /// The name of the entry [`ZipWriter::entry`] expects next, `None` once all are written.
    pub fn next_name(&self) -> Option<&str> {
        self.plan.entries.get(self.next).map(|(n, _)| n.as_str())
    }

    /// The next entry's local header and bytes (the two pieces to send, in order). Its bytes
    /// must be exactly the announced size.
    pub fn entry(&mut self, data: Bytes) -> Result<[Bytes; 2], ZipError> {
        let Some((name, size)) = self.plan.entries.get(self.next) else {
            return Err(ZipError::TooManyEntries);
        };
        if data.len() as u64 != u64::from(*size) {
            return Err(ZipError::SizeMismatch {
                name: name.clone(),
                announced: u64::from(*size),
                actual: data.len() as u64,
            });
        }
        let crc = crc32fast::hash(&data);
        let name_len = name.len() as u16;
        let mut local = BytesMut::with_capacity(LOCAL_HEADER_LEN as usize + name.len());
        local.put_u32_le(LOCAL_HEADER);
        local.put_u16_le(VERSION_NEEDED);
        local.put_u16_le(0); // flags
        local.put_u16_le(0); // stored
        local.put_u16_le(DOS_TIME);
        local.put_u16_le(DOS_DATE);
        local.put_u32_le(crc);
        local.put_u32_le(*size);
        local.put_u32_le(*size);
        local.put_u16_le(name_len);
        local.put_u16_le(0); // extra field length
        local.put_slice(name.as_bytes());

        let c = &mut self.central;
        c.put_u32_le(CENTRAL_HEADER);
        c.put_u16_le(VERSION_MADE_BY);
        c.put_u16_le(VERSION_NEEDED);
        c.put_u16_le(0); // flags
        c.put_u16_le(0); // stored
        c.put_u16_le(DOS_TIME);
        c.put_u16_le(DOS_DATE);
        c.put_u32_le(crc);
        c.put_u32_le(*size);
        c.put_u32_le(*size);
        c.put_u16_le(name_len);
        c.put_u16_le(0); // extra field length
        c.put_u16_le(0); // comment length
        c.put_u16_le(0); // disk number start
        c.put_u16_le(0); // internal attributes
        c.put_u32_le(UNIX_FILE_MODE << 16);
        c.put_u32_le(self.offset);
        c.put_slice(name.as_bytes());

        // Within u32: ZipPlan::new bounded the whole archive.
        self.offset += LOCAL_HEADER_LEN as u32 + u32::from(name_len) + *size;
        self.next += 1;
        Ok([local.freeze(), data])
    }

    /// The central directory and its end record, once every entry is written.
    pub fn finish(self) -> Result<Bytes, ZipError> {
        if self.next != self.plan.entries.len() {
            return Err(ZipError::TooManyEntries);
        }
        let count = self.plan.entries.len() as u16;
        let mut out = self.central;
        let central_len = out.len() as u32;
        out.put_u32_le(END_OF_CENTRAL_DIR);
        out.put_u16_le(0); // this disk
        out.put_u16_le(0); // disk with the central directory
        out.put_u16_le(count);
        out.put_u16_le(count);
        out.put_u32_le(central_len);
        out.put_u32_le(self.offset);
        out.put_u16_le(0); // comment length
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let plan = ZipPlan::new(
            entries
                .iter()
                .map(|(n, d)| ((*n).to_owned(), d.len() as u64))
                .collect(),
        )
        .unwrap();
        let len = plan.len();
        let mut w = plan.writer();
        let mut out = Vec::new();
        for (_, d) in entries {
            for piece in w.entry(Bytes::copy_from_slice(d)).unwrap() {
                out.extend_from_slice(&piece);
            }
        }
        out.extend_from_slice(&w.finish().unwrap());
        assert_eq!(out.len() as u64, len, "the announced length is exact");
        out
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// Reads the archive back through its central directory, as unzip tools do.
    fn read_back(zip: &[u8]) -> Vec<(String, Vec<u8>)> {
        let end = zip.len() - END_LEN as usize;
        assert_eq!(u32_at(zip, end), END_OF_CENTRAL_DIR);
        let count = u16_at(zip, end + 10) as usize;
        let mut at = u32_at(zip, end + 16) as usize;
        let mut out = Vec::new();
        for _ in 0..count {
            assert_eq!(u32_at(zip, at), CENTRAL_HEADER);
            let crc = u32_at(zip, at + 16);
            let size = u32_at(zip, at + 24) as usize;
            let name_len = u16_at(zip, at + 28) as usize;
            assert_eq!(u32_at(zip, at + 38) >> 16, UNIX_FILE_MODE);
            let local = u32_at(zip, at + 42) as usize;
            let name = String::from_utf8(zip[at + 46..at + 46 + name_len].to_vec()).unwrap();
            assert_eq!(u32_at(zip, local), LOCAL_HEADER);
            assert_eq!(u32_at(zip, local + 14), crc);
            let data_at = local + 30 + u16_at(zip, local + 26) as usize;
            let data = zip[data_at..data_at + size].to_vec();
            assert_eq!(crc32fast::hash(&data), crc);
            out.push((name, data));
            at += 46 + name_len;
        }
        out
    }

    #[test]
    fn entries_come_back_with_their_bytes_and_crcs() {
        let zip = archive(&[
            ("00.png", b"\x89PNG fake"),
            ("00.txt", b"zxq, a cat"),
            ("01.jpg", b""),
        ]);
        let back = read_back(&zip);
        assert_eq!(
            back,
            vec![
                ("00.png".to_owned(), b"\x89PNG fake".to_vec()),
                ("00.txt".to_owned(), b"zxq, a cat".to_vec()),
                ("01.jpg".to_owned(), Vec::new()),
            ]
        );
    }

    #[test]
    fn an_empty_archive_is_just_the_end_record() {
        let zip = archive(&[]);
        assert_eq!(zip.len(), 22);
        assert!(read_back(&zip).is_empty());
    }

    #[test]
    fn unsafe_names_and_huge_sizes_are_refused() {
        for name in ["", "a/b.png", "..\\x", "../x", "é.png", "a b.png"] {
            let r = ZipPlan::new(vec![(name.to_owned(), 1)]);
            if name == "../x" {
                assert!(matches!(r, Err(ZipError::BadName(_))), "{name}");
            } else {
                assert!(r.is_err(), "{name}");
            }
        }
        assert_eq!(
            ZipPlan::new(vec![("00.png".into(), u64::from(u32::MAX))]).err(),
            Some(ZipError::TooLarge)
        );
        assert_eq!(
            ZipPlan::new(vec![("00.png".into(), 3 << 30), ("01.png".into(), 3 << 30)]).err(),
            Some(ZipError::TooLarge)
        );
    }

    #[test]
    fn bytes_must_match_the_plan() {
        let mut w = ZipPlan::new(vec![("00.png".into(), 3)]).unwrap().writer();
        assert_eq!(
            w.entry(Bytes::from_static(b"ab")).err(),
            Some(ZipError::SizeMismatch {
                name: "00.png".into(),
                announced: 3,
                actual: 2
            })
        );
        let w = ZipPlan::new(vec![("00.png".into(), 3)]).unwrap().writer();
        assert_eq!(w.finish().err(), Some(ZipError::TooManyEntries));
    }
}
