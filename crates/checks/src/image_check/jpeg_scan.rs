//! Whether a JPEG's entropy-coded data covers every block its frame header declares. JPEG
//! decoders (zune-jpeg behind `image`, libjpeg) pad a scan that ends early with zero bits and
//! return an image anyway, so a file whose header says 6000×6000 but whose data holds 600×600
//! decodes "successfully" into a mostly grey picture. This walks the Huffman codes of every scan
//! — without decoding coefficients or allocating per pixel — and counts the blocks each scan
//! codes before its data ends.
//!
//! Covered: Huffman-coded sequential scans (SOF0, SOF1) in full; progressive scans (SOF2): DC
//! scans and first AC scans in full, AC refinement scans are skipped (they need every
//! coefficient's history). Other processes (lossless, arithmetic coding) are not walked.

/// Why the walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// A scan's data ended before every block of the frame was coded.
    #[error("its image data ends after {coded} of {declared} blocks")]
    Incomplete { coded: u64, declared: u64 },
    #[error("{0}")]
    Malformed(&'static str),
}

type Result<T, E = ScanError> = std::result::Result<T, E>;

/// One Huffman table in the form of JPEG's F.2.2.3 decoding procedure.
#[derive(Clone)]
struct Table {
    maxcode: [i32; 17],
    mincode: [i32; 17],
    valptr: [usize; 17],
    values: Vec<u8>,
}

impl Table {
    fn new(counts: &[u8], values: &[u8]) -> Self {
        let mut t = Table {
            maxcode: [-1; 17],
            mincode: [0; 17],
            valptr: [0; 17],
            values: values.to_vec(),
        };
        let (mut code, mut k) = (0i32, 0usize);
        for l in 1..=16 {
            let n = usize::from(counts[l - 1]);
            t.valptr[l] = k;
            t.mincode[l] = code;
            code += n as i32;
            k += n;
            t.maxcode[l] = if n > 0 { code - 1 } else { -1 };
            code <<= 1;
        }
        t
    }

    fn decode(&self, r: &mut Bits<'_>) -> Result<u8, Stop> {
        let mut code = 0i32;
        for l in 1..=16 {
            code = (code << 1) | r.bit()? as i32;
            if code <= self.maxcode[l] {
                let i = self.valptr[l] + (code - self.mincode[l]) as usize;
                return self.values.get(i).copied().ok_or(Stop::BadCode);
            }
        }
        Err(Stop::BadCode)
    }
}

/// Why reading a scan's bits stopped.
enum Stop {
    /// A marker (or the end of the file) where more data was needed.
    End,
    BadCode,
}

/// A bit reader over entropy-coded data: `FF 00` is a data byte `FF`; any other `FF xx` ends it.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    byte: u8,
    left: u8,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<u32, Stop> {
        if self.left == 0 {
            let b = *self.data.get(self.pos).ok_or(Stop::End)?;
            if b == 0xFF {
                match self.data.get(self.pos + 1) {
                    Some(0x00) => self.pos += 2,
                    _ => return Err(Stop::End),
                }
            } else {
                self.pos += 1;
            }
            self.byte = b;
            self.left = 8;
        }
        self.left -= 1;
        Ok(u32::from(self.byte >> self.left) & 1)
    }

    fn skip(&mut self, n: u8) -> Result<(), Stop> {
        for _ in 0..n {
            self.bit()?;
        }
        Ok(())
    }

    fn bits(&mut self, n: u8) -> Result<u32, Stop> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }

    /// At a restart interval's end: drop the padding bits and step over the `RSTn` marker.
    fn restart(&mut self) -> bool {
        self.left = 0;
        match (self.data.get(self.pos), self.data.get(self.pos + 1)) {
            (Some(0xFF), Some(0xD0..=0xD7)) => {
                self.pos += 2;
                true
            }
            _ => false,
        }
    }
}

struct Component {
    id: u8,
    h: u64,
    v: u64,
}

struct Frame {
    width: u64,
    height: u64,
    hmax: u64,
    vmax: u64,
    components: Vec<Component>,
    progressive: bool,
}

impl Frame {
    /// Blocks of component `c` in a non-interleaved scan.
    fn blocks(&self, c: &Component) -> (u64, u64) {
        let w = (self.width * c.h).div_ceil(self.hmax);
        let h = (self.height * c.v).div_ceil(self.vmax);
        (w.div_ceil(8), h.div_ceil(8))
    }
}

/// Checks that every scan of a JPEG codes every block of the frame; `Ok` also for JPEG
/// processes this walk does not cover.
pub fn check_jpeg_coverage(b: &[u8]) -> Result<()> {
    let be16 = |at: usize| -> Result<usize> {
        b.get(at..at + 2)
            .map(|s| usize::from(u16::from_be_bytes([s[0], s[1]])))
            .ok_or(ScanError::Malformed("the file ends inside a segment"))
    };
    let mut dc: [Option<Table>; 4] = Default::default();
    let mut ac: [Option<Table>; 4] = Default::default();
    let mut restart_interval = 0u64;
    let mut frame: Option<Frame> = None;
    let mut pos = 2;
    loop {
        // Find the next marker (fill bytes allowed); the structure walk in `sniff` has already
        // refused files with stray bytes, so anything else here ends the walk.
        while b.get(pos) == Some(&0xFF) && b.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if b.get(pos) != Some(&0xFF) {
            return Ok(());
        }
        let Some(&marker) = b.get(pos + 1) else {
            return Ok(());
        };
        pos += 2;
        match marker {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let len = be16(pos)?;
        let seg = b
            .get(pos + 2..pos + len.max(2))
            .ok_or(ScanError::Malformed("the file ends inside a segment"))?;
        match marker {
            0xC4 => read_tables(seg, &mut dc, &mut ac)?,
            0xDD => restart_interval = be16(pos + 2)? as u64,
            0xC0..=0xC2 => frame = Some(read_frame(seg, marker == 0xC2)?),
            // Lossless and arithmetic-coded processes: not walked.
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return Ok(()),
            0xDA => {
                let f = frame
                    .as_ref()
                    .ok_or(ScanError::Malformed("a scan comes before the frame header"))?;
                let end = walk_scan(b, pos + len, seg, f, &dc, &ac, restart_interval)?;
                pos = end;
                continue;
            }
            _ => {}
        }
        pos += len;
    }
}

fn read_tables(
    mut seg: &[u8],
    dc: &mut [Option<Table>; 4],
    ac: &mut [Option<Table>; 4],
) -> Result<()> {
    let bad = ScanError::Malformed("a Huffman table is cut short");
    while let Some((&tc_th, rest)) = seg.split_first() {
        let counts = rest.get(..16).ok_or(bad)?;
        let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
        let values = rest.get(16..16 + n).ok_or(bad)?;
        let slot = usize::from(tc_th & 0x0F).min(3);
        let table = Some(Table::new(counts, values));
        if tc_th >> 4 == 0 {
            dc[slot] = table;
        } else {
            ac[slot] = table;
        }
        seg = &rest[16 + n..];
    }
    Ok(())
}

fn read_frame(seg: &[u8], progressive: bool) -> Result<Frame> {
    let bad = ScanError::Malformed("the frame header is cut short");
    let height = u64::from(u16::from_be_bytes([
        *seg.get(1).ok_or(bad)?,
        *seg.get(2).ok_or(bad)?,
    ]));
    let width = u64::from(u16::from_be_bytes([
        *seg.get(3).ok_or(bad)?,
        *seg.get(4).ok_or(bad)?,
    ]));
    let n = usize::from(*seg.get(5).ok_or(bad)?);
    let mut components = Vec::with_capacity(n);
    for i in 0..n {
        let c = seg.get(6 + 3 * i..9 + 3 * i).ok_or(bad)?;
        let (h, v) = (u64::from(c[1] >> 4), u64::from(c[1] & 0x0F));
        if h == 0 || v == 0 {
            return Err(ScanError::Malformed("a sampling factor is zero"));
        }
        components.push(Component { id: c[0], h, v });
    }
    let hmax = components.iter().map(|c| c.h).max().ok_or(bad)?;
    let vmax = components.iter().map(|c| c.v).max().ok_or(bad)?;
    Ok(Frame {
        width,
        height,
        hmax,
        vmax,
        components,
        progressive,
    })
}

/// Walks one scan whose data starts at `start`; returns where its data ends (at a marker).
fn walk_scan(
    b: &[u8],
    start: usize,
    header: &[u8],
    f: &Frame,
    dc: &[Option<Table>; 4],
    ac: &[Option<Table>; 4],
    restart_interval: u64,
) -> Result<usize> {
    let bad = ScanError::Malformed("a scan header is cut short");
    let ns = usize::from(*header.first().ok_or(bad)?);
    let mut scan: Vec<(&Component, Option<&Table>, Option<&Table>)> = Vec::new();
    for i in 0..ns {
        let s = header.get(1 + 2 * i..3 + 2 * i).ok_or(bad)?;
        let c = f
            .components
            .iter()
            .find(|c| c.id == s[0])
            .ok_or(ScanError::Malformed("a scan names an unknown component"))?;
        let td = dc[usize::from(s[1] >> 4).min(3)].as_ref();
        let ta = ac[usize::from(s[1] & 0x0F).min(3)].as_ref();
        scan.push((c, td, ta));
    }
    let p = 1 + 2 * ns;
    let (ss, se, ah) = (
        *header.get(p).ok_or(bad)?,
        *header.get(p + 1).ok_or(bad)?,
        *header.get(p + 2).ok_or(bad)? >> 4,
    );
    let mut bits = Bits {
        data: b,
        pos: start,
        byte: 0,
        left: 0,
    };
    // AC refinement needs every coefficient's history: step over its data unchecked.
    if f.progressive && ss > 0 && ah > 0 {
        return Ok(skip_entropy_data(b, start));
    }
    let (mcus, blocks_per_mcu): (u64, Vec<(usize, u64)>) = if ns == 1 {
        let (w, h) = f.blocks(scan[0].0);
        (w * h, vec![(0, 1)])
    } else {
        let mx = f.width.div_ceil(8 * f.hmax);
        let my = f.height.div_ceil(8 * f.vmax);
        (
            mx * my,
            scan.iter()
                .enumerate()
                .map(|(i, (c, _, _))| (i, c.h * c.v))
                .collect(),
        )
    };
    let missing = ScanError::Malformed("a scan uses a Huffman table that is not defined");
    let mut eobrun = 0u64;
    for m in 0..mcus {
        if restart_interval > 0 && m > 0 && m % restart_interval == 0 && !bits.restart() {
            return Err(ScanError::Incomplete {
                coded: m,
                declared: mcus,
            });
        }
        for &(i, count) in &blocks_per_mcu {
            let (_, td, ta) = scan[i];
            for _ in 0..count {
                let coded = if !f.progressive {
                    sequential_block(&mut bits, td.ok_or(missing)?, ta.ok_or(missing)?)
                } else if ss == 0 && ah == 0 {
                    dc_first(&mut bits, td.ok_or(missing)?)
                } else if ss == 0 {
                    bits.bit().map(drop)
                } else {
                    ac_first(&mut bits, ta.ok_or(missing)?, ss, se, &mut eobrun)
                };
                match coded {
                    Ok(()) => {}
                    Err(Stop::End) => {
                        return Err(ScanError::Incomplete {
                            coded: m,
                            declared: mcus,
                        });
                    }
                    Err(Stop::BadCode) => {
                        return Err(ScanError::Malformed("the image data holds an invalid code"));
                    }
                }
            }
        }
    }
    Ok(skip_entropy_data(b, bits.pos))
}

fn sequential_block(r: &mut Bits<'_>, dc: &Table, ac: &Table) -> Result<(), Stop> {
    dc_first(r, dc)?;
    let mut k = 1;
    while k < 64 {
        let rs = ac.decode(r)?;
        let (run, size) = (rs >> 4, rs & 0x0F);
        if size == 0 {
            if run != 15 {
                break; // end of block
            }
            k += 16;
        } else {
            k += usize::from(run);
            r.skip(size)?;
            k += 1;
        }
    }
    Ok(())
}

fn dc_first(r: &mut Bits<'_>, dc: &Table) -> Result<(), Stop> {
    let size = dc.decode(r)?;
    r.skip(size)
}

fn ac_first(r: &mut Bits<'_>, ac: &Table, ss: u8, se: u8, eobrun: &mut u64) -> Result<(), Stop> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = u32::from(ss);
    while k <= u32::from(se) {
        let rs = ac.decode(r)?;
        let (run, size) = (rs >> 4, rs & 0x0F);
        if size == 0 {
            if run < 15 {
                *eobrun = (1u64 << run) - 1 + u64::from(r.bits(run)?);
                break;
            }
            k += 16;
        } else {
            k += u32::from(run);
            r.skip(size)?;
            k += 1;
        }
    }
    Ok(())
}

/// The position of the first marker at or after `pos` that is not a stuffed byte, a restart or
/// a fill byte.
fn skip_entropy_data(b: &[u8], mut pos: usize) -> usize {
    while pos + 1 < b.len() {
        if b[pos] == 0xFF && !matches!(b[pos + 1], 0x00 | 0xD0..=0xD7 | 0xFF) {
            return pos;
        }
        pos += 1;
    }
    b.len()
}
