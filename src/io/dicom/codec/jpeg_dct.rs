//! Sequential DCT JPEG with Huffman coding (ITU-T T.81 baseline, SOF0, and extended, SOF1),
//! 8- and 12-bit samples.
//!
//! DICOM's "JPEG Extended (Process 2 & 4)" transfer syntax (1.2.840.10008.1.2.4.51) carries the
//! 12-bit CT slices of many older archives, and the `jpeg-decoder` crate behind dicom-rs has no
//! 12-bit support, so this module decodes such codestreams itself.
//!
//! Supported: 1 to 4 components, 8- and 16-bit quantisation tables, up to four DC and four AC
//! Huffman tables (redefinable between scans), interleaved scans and one-component scans
//! (several scans per frame), restart intervals, byte stuffing, fill bytes before markers,
//! APPn and COM segments. All components must have the same sampling factors (any of 1..=4,
//! which only changes the MCU layout): subsampled chroma would need an upsampling filter,
//! and this decoder exists for greyscale CT, while 8-bit colour is left to dicom-rs.
//!
//! Refused with an error naming the marker: progressive (SOF2), lossless (SOF3, which has its
//! own decoder), hierarchical (SOF5–7, DHP, EXP), arithmetic coding (SOF9–15, DAC), DNL,
//! JPEG-LS (SOF55). Precisions other than 8 and 12 are refused too: GDCM writes 16-bit DCT
//! codestreams for 1.2.840.10008.1.2.4.51, which T.81 does not define and which libjpeg-turbo,
//! DCMTK and Richter's libjpeg refuse as well.
//!
//! The inverse DCT is IJG libjpeg's integer "islow" algorithm (jidctint.c: the
//! Loeffler–Ligtenberg–Moschytz factorisation in 13-bit fixed point, with 2 extra bits kept
//! between the passes for 8-bit data and 1 for 12-bit), down to its wrap-then-clamp range
//! limiting. T.81 only bounds the IDCT's error (A.3.3), so decoders legitimately differ by
//! ±1 or 2; matching libjpeg-turbo and IJG libjpeg 6b (inside GDCM and DCMTK) exactly is what
//! makes our HU values reproducible against those tools.
//!
//! Damage is an error where libjpeg only warns and fills in grey: a scan that ends before
//! its last MCU (truncated, or cut by a marker), a wrong restart marker, an invalid Huffman
//! code, a component that never gets a scan. Only a missing EOI after complete scans is
//! accepted. Hostile input can neither panic nor loop: sizes are checked against [`Limits`]
//! before the one allocation that depends on them, every marker segment advances the input,
//! and every MCU must be backed by real entropy-coded bits.

use super::{CodecError, Frame, Limits};

/// Decode one sequential DCT JPEG codestream (SOI … EOI), 8- or 12-bit.
pub(crate) fn decode(data: &[u8], limits: &Limits) -> Result<Frame, CodecError> {
    if !data.starts_with(&[0xFF, SOI]) {
        return Err(CodecError::new(
            "not a JPEG codestream: no SOI marker at the start",
        ));
    }
    let mut decoder = Decoder {
        data,
        pos: 2,
        max_samples: limits.max_samples,
        quant: [None; 4],
        dc_tables: [None, None, None, None],
        ac_tables: [None, None, None, None],
        restart_interval: 0,
        frame: None,
        samples: Vec::new(),
    };
    decoder.run()
}

const SOF0: u8 = 0xC0;
const SOF1: u8 = 0xC1;
const DHT: u8 = 0xC4;
const RST0: u8 = 0xD0;
const RST7: u8 = 0xD7;
const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const DQT: u8 = 0xDB;
const DNL: u8 = 0xDC;
const DRI: u8 = 0xDD;
const COM: u8 = 0xFE;

/// Zig-zag scan position → row-major position in the 8×8 block (T.81 Figure A.6).
const ZIGZAG: [u8; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// The frame header (SOF) as far as decoding needs it.
struct FrameHeader {
    precision: u8,
    width: usize,
    height: usize,
    /// Sampling factors, the same for every component.
    h: usize,
    v: usize,
    components: Vec<FrameComponent>,
}

struct FrameComponent {
    id: u8,
    quant_table: u8,
    decoded: bool,
}

struct Decoder<'a> {
    data: &'a [u8],
    /// Offset of the next byte to read.
    pos: usize,
    max_samples: usize,
    /// Quantisation tables in row-major order.
    quant: [Option<[u16; 64]>; 4],
    dc_tables: [Option<Box<HuffTable>>; 4],
    ac_tables: [Option<Box<HuffTable>>; 4],
    /// MCUs per restart interval; 0 when there are no restart markers.
    restart_interval: usize,
    frame: Option<FrameHeader>,
    samples: Vec<u16>,
}

impl<'a> Decoder<'a> {
    fn run(&mut self) -> Result<Frame, CodecError> {
        loop {
            let Some((marker, next)) = next_marker(self.data, self.pos) else {
                // Complete scans without an EOI are accepted; `finish` refuses the rest.
                return self.finish("the codestream ends");
            };
            self.pos = next;
            match marker {
                SOF0 | SOF1 => self.read_sof(marker)?,
                DHT => self.read_dht()?,
                DQT => self.read_dqt()?,
                DRI => self.read_dri()?,
                SOS => self.read_sos_and_scan()?,
                EOI => return self.finish("EOI"),
                // Segments without meaning here: application data, comments, and the JPGn
                // extensions T.81 reserves (Table B.1), except JPEG-LS's SOF55 and LSE.
                0xE0..=0xEF | COM | 0xF0..=0xF6 | 0xF9..=0xFD => {
                    self.segment(marker)?;
                }
                // Stray restart markers and TEM have no parameters; libjpeg ignores them too.
                RST0..=RST7 | 0x01 => {}
                _ => return Err(unsupported(marker)),
            }
        }
    }

    /// The decoded frame, once every component has had its scan.
    fn finish(&mut self, end: &str) -> Result<Frame, CodecError> {
        let Some(frame) = &self.frame else {
            return Err(CodecError::new(format!(
                "JPEG has no frame header: {end} before any SOF marker"
            )));
        };
        if let Some(c) = frame.components.iter().find(|c| !c.decoded) {
            return Err(CodecError::new(format!(
                "truncated JPEG: {end} before the scan of component {}",
                c.id
            )));
        }
        Ok(Frame {
            width: frame.width as u32,
            height: frame.height as u32,
            components: frame.components.len() as u8,
            precision: frame.precision,
            samples: std::mem::take(&mut self.samples),
        })
    }

    /// The body of the marker segment at `pos` (after its 2-byte length), which it then skips.
    fn segment(&mut self, marker: u8) -> Result<&'a [u8], CodecError> {
        let truncated = || {
            CodecError::new(format!(
                "truncated JPEG: the {} segment runs past the end of the data",
                marker_name(marker)
            ))
        };
        let len = match self.data.get(self.pos..self.pos + 2) {
            Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
            _ => return Err(truncated()),
        };
        if len < 2 {
            return Err(CodecError::new(format!(
                "JPEG {} segment has an invalid length {len}",
                marker_name(marker)
            )));
        }
        let body = self
            .data
            .get(self.pos + 2..self.pos + len)
            .ok_or_else(truncated)?;
        self.pos += len;
        Ok(body)
    }

    /// Frame header, T.81 B.2.2.
    fn read_sof(&mut self, marker: u8) -> Result<(), CodecError> {
        if self.frame.is_some() {
            return Err(CodecError::new(format!(
                "JPEG has more than one frame header ({})",
                marker_name(marker)
            )));
        }
        let max_samples = self.max_samples;
        let name = marker_name(marker);
        let body = self.segment(marker)?;
        let bad = |what: String| CodecError::new(format!("JPEG {name}: {what}"));
        if body.len() < 6 {
            return Err(bad(format!("segment too short ({} bytes)", body.len())));
        }
        let precision = body[0];
        let height = usize::from(u16::from_be_bytes([body[1], body[2]]));
        let width = usize::from(u16::from_be_bytes([body[3], body[4]]));
        let count = usize::from(body[5]);
        if precision != 8 && precision != 12 {
            return Err(bad(format!(
                "sample precision {precision} (DCT processes have 8 or 12)"
            )));
        }
        if height == 0 {
            return Err(bad(
                "frame height 0, to be given by a DNL marker, which is not supported".into(),
            ));
        }
        if width == 0 {
            return Err(bad("frame width 0".into()));
        }
        if !(1..=4).contains(&count) {
            return Err(bad(format!("{count} components (1 to 4 are supported)")));
        }
        if body.len() != 6 + 3 * count {
            return Err(bad(format!(
                "segment length {} does not fit {count} components",
                body.len() + 2
            )));
        }
        let mut components: Vec<FrameComponent> = Vec::with_capacity(count);
        let mut factors = None;
        for c in body[6..].chunks_exact(3) {
            let (id, h, v, quant_table) = (c[0], c[1] >> 4, c[1] & 15, c[2]);
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
                return Err(bad(format!("component {id} has sampling factors {h}×{v}")));
            }
            if quant_table > 3 {
                return Err(bad(format!(
                    "component {id} uses quantisation table {quant_table}"
                )));
            }
            if components.iter().any(|other| other.id == id) {
                return Err(bad(format!("component id {id} appears twice")));
            }
            match factors {
                None => factors = Some((h, v)),
                Some((h0, v0)) if (h0, v0) != (h, v) => {
                    return Err(bad(format!(
                        "chroma subsampling is not supported (component {} is sampled {h0}×{v0}, \
                         component {id} {h}×{v})",
                        components[0].id
                    )))
                }
                Some(_) => {}
            }
            components.push(FrameComponent {
                id,
                quant_table,
                decoded: false,
            });
        }
        let total = width
            .checked_mul(height)
            .and_then(|n| n.checked_mul(count))
            .filter(|&n| n <= max_samples)
            .ok_or_else(|| {
                bad(format!(
                    "{width}×{height} pixels × {count} components exceed the limit of \
                     {max_samples} samples"
                ))
            })?;
        let (h, v) = factors.unwrap_or((1, 1));
        self.samples = vec![0; total];
        self.frame = Some(FrameHeader {
            precision,
            width,
            height,
            h: usize::from(h),
            v: usize::from(v),
            components,
        });
        Ok(())
    }

    /// Huffman tables, T.81 B.2.4.2.
    fn read_dht(&mut self) -> Result<(), CodecError> {
        let mut body = self.segment(DHT)?;
        while let Some((&class_id, rest)) = body.split_first() {
            let (class, id) = (class_id >> 4, usize::from(class_id & 15));
            if class > 1 || id > 3 {
                return Err(CodecError::new(format!(
                    "JPEG DHT: invalid table class {class} / destination {id}"
                )));
            }
            let (Some(counts), Some(rest)) = (rest.get(..16), rest.get(16..)) else {
                return Err(CodecError::new(
                    "JPEG DHT: segment too short for its code counts",
                ));
            };
            let total: usize = counts.iter().map(|&n| usize::from(n)).sum();
            if total > 256 || total > rest.len() {
                return Err(CodecError::new(format!(
                    "JPEG DHT: table with {total} codes does not fit (at most 256, {} bytes left)",
                    rest.len()
                )));
            }
            let (values, rest) = rest.split_at(total);
            let table = HuffTable::new(counts, values).map_err(|why| {
                let kind = if class == 0 { "DC" } else { "AC" };
                CodecError::new(format!("JPEG DHT: {kind} table {id}: {why}"))
            })?;
            let slot = if class == 0 {
                &mut self.dc_tables[id]
            } else {
                &mut self.ac_tables[id]
            };
            *slot = Some(Box::new(table));
            body = rest;
        }
        Ok(())
    }

    /// Quantisation tables, T.81 B.2.4.1; 16-bit entries are allowed for any precision, as
    /// libjpeg allows them.
    fn read_dqt(&mut self) -> Result<(), CodecError> {
        let mut body = self.segment(DQT)?;
        while let Some((&pq_tq, rest)) = body.split_first() {
            let (wide, id) = (pq_tq >> 4, usize::from(pq_tq & 15));
            if wide > 1 || id > 3 {
                return Err(CodecError::new(format!(
                    "JPEG DQT: invalid element precision {wide} / destination {id}"
                )));
            }
            let size = if wide == 1 { 128 } else { 64 };
            let (Some(entries), Some(rest)) = (rest.get(..size), rest.get(size..)) else {
                return Err(CodecError::new("JPEG DQT: segment too short for its table"));
            };
            let mut table = [0u16; 64];
            for (k, &pos) in ZIGZAG.iter().enumerate() {
                table[usize::from(pos)] = if wide == 1 {
                    u16::from_be_bytes([entries[2 * k], entries[2 * k + 1]])
                } else {
                    u16::from(entries[k])
                };
            }
            self.quant[id] = Some(table);
            body = rest;
        }
        Ok(())
    }

    /// Restart interval, T.81 B.2.4.4.
    fn read_dri(&mut self) -> Result<(), CodecError> {
        match *self.segment(DRI)? {
            [hi, lo] => {
                self.restart_interval = usize::from(u16::from_be_bytes([hi, lo]));
                Ok(())
            }
            ref other => Err(CodecError::new(format!(
                "JPEG DRI: segment length {} (should be 4)",
                other.len() + 2
            ))),
        }
    }

    /// Scan header (T.81 B.2.3), then the scan's entropy-coded data.
    fn read_sos_and_scan(&mut self) -> Result<(), CodecError> {
        let body = self.segment(SOS)?;
        let Some(frame) = &self.frame else {
            return Err(CodecError::new("JPEG SOS before any frame header (SOF)"));
        };
        let count = usize::from(*body.first().unwrap_or(&0));
        if !(1..=frame.components.len()).contains(&count) || body.len() != 4 + 2 * count {
            return Err(CodecError::new(format!(
                "JPEG SOS: invalid header ({count} components in {} bytes, frame has {})",
                body.len() + 2,
                frame.components.len()
            )));
        }
        // Ss, Se, Ah, Al (the last 3 bytes) have fixed values in sequential mode; like
        // libjpeg, ignore them rather than refuse a stream over them.
        let mut scan: Vec<ScanComponent> = Vec::with_capacity(count);
        for c in body[1..1 + 2 * count].chunks_exact(2) {
            let (id, dc_id, ac_id) = (c[0], usize::from(c[1] >> 4), usize::from(c[1] & 15));
            let index = frame
                .components
                .iter()
                .position(|fc| fc.id == id)
                .ok_or_else(|| {
                    CodecError::new(format!("JPEG SOS: component {id} is not in the frame"))
                })?;
            let component = &frame.components[index];
            if component.decoded || scan.iter().any(|s| s.index == index) {
                return Err(CodecError::new(format!(
                    "JPEG SOS: component {id} appears in more than one scan"
                )));
            }
            let quant_table = component.quant_table;
            let Some(quant) = &self.quant[usize::from(quant_table)] else {
                return Err(CodecError::new(format!(
                    "JPEG SOS: component {id} needs quantisation table {quant_table}, which no \
                     DQT defined"
                )));
            };
            let dc = self.dc_tables.get(dc_id).and_then(|t| t.as_deref());
            let ac = self.ac_tables.get(ac_id).and_then(|t| t.as_deref());
            let (Some(dc), Some(ac)) = (dc, ac) else {
                return Err(CodecError::new(format!(
                    "JPEG SOS: component {id} needs Huffman tables DC {dc_id} and AC {ac_id}, \
                     which no DHT defined"
                )));
            };
            // A DC difference has at most 15 magnitude bits (T.81 F.1.2.1, 12-bit data);
            // libjpeg refuses larger DC symbols too.
            if dc.max_symbol > 15 {
                return Err(CodecError::new(format!(
                    "JPEG SOS: DC Huffman table {dc_id} has a symbol above 15"
                )));
            }
            scan.push(ScanComponent {
                index,
                dc,
                ac,
                quant,
            });
        }
        let blocks_per_mcu = frame.h * frame.v * count;
        if count > 1 && blocks_per_mcu > 10 {
            return Err(CodecError::new(format!(
                "JPEG SOS: {blocks_per_mcu} blocks per MCU (T.81 B.2.3 allows at most 10)"
            )));
        }
        let end = decode_scan(
            self.data,
            self.pos,
            frame,
            &scan,
            self.restart_interval,
            &mut self.samples,
        )?;
        self.pos = end;
        if let Some(frame) = &mut self.frame {
            for s in &scan {
                frame.components[s.index].decoded = true;
            }
        }
        Ok(())
    }
}

/// One component of a scan, with the tables it uses.
struct ScanComponent<'t> {
    /// Position in the frame header, which is also the sample's position in a pixel.
    index: usize,
    dc: &'t HuffTable,
    ac: &'t HuffTable,
    quant: &'t [u16; 64],
}

/// Decodes the entropy-coded data of one scan, starting at `start`, into `samples`; returns
/// where the data ends (at the next marker, or the end of the input).
fn decode_scan(
    data: &[u8],
    start: usize,
    frame: &FrameHeader,
    scan: &[ScanComponent],
    restart_interval: usize,
    samples: &mut [u16],
) -> Result<usize, CodecError> {
    // A one-component scan is coded block by block whatever the sampling factors; an
    // interleaved scan in MCUs of h×v blocks of each component (T.81 A.2).
    let (mcu_w, mcu_h) = if scan.len() == 1 {
        (1, 1)
    } else {
        (frame.h, frame.v)
    };
    let mcus_x = frame.width.div_ceil(8 * mcu_w);
    let mcus_y = frame.height.div_ceil(8 * mcu_h);
    let total = mcus_x * mcus_y;
    let idct = Idct::new(frame.precision);
    let out = Output {
        width: frame.width,
        height: frame.height,
        components: frame.components.len(),
    };
    let mut reader = BitReader::new(data, start);
    let mut pred = [0i32; 4];
    let mut coefs = [0i16; 64];
    let mut pixels = [0u16; 64];
    let mut next_rst = 0u8;
    for mcu in 0..total {
        if restart_interval > 0 && mcu > 0 && mcu % restart_interval == 0 {
            reader.restart(next_rst)?;
            next_rst = (next_rst + 1) % 8;
            pred = [0; 4];
        }
        let (mx, my) = (mcu % mcus_x, mcu / mcus_x);
        for (sc, pred) in scan.iter().zip(&mut pred) {
            for by in my * mcu_h..(my + 1) * mcu_h {
                for bx in mx * mcu_w..(mx + 1) * mcu_w {
                    reader.decode_block(sc.dc, sc.ac, pred, &mut coefs)?;
                    idct.run(&coefs, sc.quant, &mut pixels);
                    out.put_block(samples, sc.index, bx, by, &pixels);
                }
            }
        }
        if reader.overran() {
            return Err(match next_marker(data, reader.pos) {
                Some((marker, _)) => CodecError::new(format!(
                    "truncated JPEG scan: {} before MCU {} of {total} was complete",
                    marker_name(marker),
                    mcu + 1
                )),
                None => CodecError::new(format!(
                    "truncated JPEG scan: the data ends in MCU {} of {total}",
                    mcu + 1
                )),
            });
        }
    }
    Ok(reader.pos)
}

/// Where decoded blocks go: the frame's pixel-interleaved samples.
struct Output {
    width: usize,
    height: usize,
    components: usize,
}

impl Output {
    /// Stores the part of block (`bx`, `by`) of `component` that lies inside the image; the
    /// rest is padding that completes the last MCUs (T.81 A.2.4).
    fn put_block(
        &self,
        samples: &mut [u16],
        component: usize,
        bx: usize,
        by: usize,
        pixels: &[u16; 64],
    ) {
        let (x0, y0) = (bx * 8, by * 8);
        if x0 >= self.width || y0 >= self.height {
            return;
        }
        let cols = (self.width - x0).min(8);
        let rows = (self.height - y0).min(8);
        for (dy, row) in pixels.chunks_exact(8).take(rows).enumerate() {
            let first = ((y0 + dy) * self.width + x0) * self.components + component;
            let dst = samples.iter_mut().skip(first).step_by(self.components);
            for (d, &s) in dst.zip(&row[..cols]) {
                *d = s;
            }
        }
    }
}

/// The next marker at or after `pos`: its code and the offset just past it. Fill bytes
/// (0xFF, T.81 B.1.1.2) are skipped, and so is anything else that is not a marker, as
/// libjpeg does (with a warning) for garbage between segments.
fn next_marker(data: &[u8], mut pos: usize) -> Option<(u8, usize)> {
    while let (Some(&byte), Some(&code)) = (data.get(pos), data.get(pos + 1)) {
        match (byte, code) {
            (0xFF, 0xFF) => pos += 1,
            (0xFF, 0x00) => pos += 2,
            (0xFF, code) => return Some((code, pos + 2)),
            _ => pos += 1,
        }
    }
    None
}

fn marker_name(code: u8) -> String {
    let name = match code {
        DHT => "DHT".to_string(),
        0xC8 => "JPG".to_string(),
        0xCC => "DAC".to_string(),
        0xC0..=0xCF => format!("SOF{}", code - 0xC0),
        RST0..=RST7 => format!("RST{}", code - RST0),
        SOI => "SOI".to_string(),
        EOI => "EOI".to_string(),
        SOS => "SOS".to_string(),
        DQT => "DQT".to_string(),
        DNL => "DNL".to_string(),
        DRI => "DRI".to_string(),
        0xDE => "DHP".to_string(),
        0xDF => "EXP".to_string(),
        0xE0..=0xEF => format!("APP{}", code - 0xE0),
        0xF7 => "SOF55".to_string(),
        0xF8 => "LSE".to_string(),
        COM => "COM".to_string(),
        _ => return format!("0xFF{code:02X}"),
    };
    format!("{name} (0xFF{code:02X})")
}

/// The error for a marker this decoder does not handle, saying which JPEG process it means.
fn unsupported(marker: u8) -> CodecError {
    let what = match marker {
        0xC2 => "progressive DCT JPEG",
        0xC3 => "lossless JPEG (not a DCT process)",
        0xC5..=0xC7 | 0xDE | 0xDF => "hierarchical JPEG",
        0xC9..=0xCF => "arithmetic-coded JPEG",
        DNL => "a JPEG frame height defined after the first scan (DNL)",
        0xF7 | 0xF8 => "JPEG-LS",
        _ => return CodecError::new(format!("unexpected JPEG marker {}", marker_name(marker))),
    };
    CodecError::new(format!(
        "{what} is not supported: marker {}",
        marker_name(marker)
    ))
}

/// Codes of up to this many bits are decoded with one table look-up.
const FAST_BITS: usize = 9;

/// A Huffman table ready for decoding (T.81 Annex C and F.2.2.3).
struct HuffTable {
    /// For each `FAST_BITS`-bit prefix that starts with a code of at most `FAST_BITS` bits:
    /// `(length << 8) | symbol`; 0 where the code is longer or invalid.
    fast: [u16; 1 << FAST_BITS],
    /// The largest code of each length (MAXCODE), −1 where there is none.
    max_code: [i32; 17],
    /// VALPTR − MINCODE of each length: added to a code, the index of its symbol.
    offset: [i32; 17],
    values: Vec<u8>,
    max_symbol: u8,
}

impl HuffTable {
    /// Builds the table from the DHT's count of codes of each length 1..=16 and its symbols.
    fn new(counts: &[u8], values: &[u8]) -> Result<HuffTable, String> {
        let mut table = HuffTable {
            fast: [0; 1 << FAST_BITS],
            max_code: [-1; 17],
            offset: [0; 17],
            values: values.to_vec(),
            max_symbol: values.iter().copied().max().unwrap_or(0),
        };
        // Canonical code assignment (Annex C): consecutive codes within a length, then a
        // shift to the next length.
        let mut code = 0usize;
        let mut k = 0usize;
        for (len, &n) in (1..=16).zip(counts) {
            let n = usize::from(n);
            // The codes of each length must fit in that many bits, all-ones excluded
            // (reserved, Annex C); libjpeg refuses such tables as well.
            if code + n >= 1 << len {
                return Err(format!(
                    "too many codes of length {len} (invalid code lengths)"
                ));
            }
            if n > 0 {
                table.offset[len] = k as i32 - code as i32;
                for &symbol in &values[k..k + n] {
                    if len <= FAST_BITS {
                        let spread = FAST_BITS - len;
                        let first = code << spread;
                        let entry = ((len as u16) << 8) | u16::from(symbol);
                        table.fast[first..first + (1 << spread)].fill(entry);
                    }
                    code += 1;
                }
                k += n;
                table.max_code[len] = code as i32 - 1;
            }
            code <<= 1;
        }
        Ok(table)
    }
}

/// Reads the entropy-coded data of a scan (T.81 F.2.2.5): bits MSB first, 0xFF00 read as
/// 0xFF, stopping at the first marker.
struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte to load into `acc`; never past a marker.
    pos: usize,
    /// Loaded bits, left-aligned.
    acc: u64,
    nbits: u32,
    /// Zero bits loaded after the data ran out (marker or end of input). Consuming any of
    /// them means the scan is shorter than its MCUs.
    padding: u64,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> BitReader<'a> {
        BitReader {
            data,
            pos,
            acc: 0,
            nbits: 0,
            padding: 0,
        }
    }

    /// Fills `acc` to at least 57 bits.
    fn refill(&mut self) {
        while self.nbits <= 56 {
            let byte = match self.data.get(self.pos) {
                Some(&0xFF) if self.data.get(self.pos + 1) == Some(&0) => {
                    self.pos += 2;
                    0xFF
                }
                Some(&0xFF) | None => {
                    self.padding += 8;
                    0
                }
                Some(&byte) => {
                    self.pos += 1;
                    byte
                }
            };
            self.acc |= u64::from(byte) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    /// Whether the decoded MCUs used bits the scan does not have.
    fn overran(&self) -> bool {
        self.padding > u64::from(self.nbits)
    }

    fn consume(&mut self, n: u32) {
        self.acc <<= n;
        self.nbits -= n;
    }

    fn symbol(&mut self, table: &HuffTable) -> Result<u8, CodecError> {
        if self.nbits < 32 {
            self.refill();
        }
        let peek = (self.acc >> 48) as usize;
        let fast = table.fast[peek >> (16 - FAST_BITS)];
        if fast != 0 {
            self.consume(u32::from(fast >> 8));
            return Ok(fast as u8);
        }
        for len in FAST_BITS + 1..=16 {
            let code = (peek >> (16 - len)) as i32;
            if code <= table.max_code[len] {
                let symbol = usize::try_from(code + table.offset[len])
                    .ok()
                    .and_then(|i| table.values.get(i));
                if let Some(&symbol) = symbol {
                    self.consume(len as u32);
                    return Ok(symbol);
                }
                break;
            }
        }
        Err(CodecError::new(
            "invalid Huffman code in JPEG scan (corrupt data)",
        ))
    }

    /// The next `size` bits (1..=15) as a signed value: RECEIVE and EXTEND, T.81 F.2.2.1.
    fn value(&mut self, size: u8) -> i32 {
        let size = u32::from(size);
        if self.nbits < size {
            self.refill();
        }
        let bits = (self.acc >> (64 - size)) as i32;
        self.consume(size);
        if bits < 1 << (size - 1) {
            bits - (1 << size) + 1
        } else {
            bits
        }
    }

    /// Decodes one block's coefficients in row-major order (T.81 F.2.2), updating the DC
    /// predictor of its component.
    fn decode_block(
        &mut self,
        dc: &HuffTable,
        ac: &HuffTable,
        pred: &mut i32,
        coefs: &mut [i16; 64],
    ) -> Result<(), CodecError> {
        *coefs = [0; 64];
        let size = self.symbol(dc)?;
        if size != 0 {
            // Only corrupt data makes the predictor wander off; wrap like libjpeg.
            *pred = pred.wrapping_add(self.value(size));
        }
        // libjpeg keeps coefficients in 16 bits; truncate as it does.
        coefs[0] = *pred as i16;
        let mut k = 1;
        while k < 64 {
            let rs = self.symbol(ac)?;
            let (run, size) = (usize::from(rs >> 4), rs & 15);
            if size == 0 {
                if run != 15 {
                    break; // EOB
                }
                k += 16; // ZRL: 16 zeros
                continue;
            }
            k += run;
            let Some(&pos) = ZIGZAG.get(k) else {
                return Err(CodecError::new(
                    "JPEG scan: AC coefficients run past the end of a block (corrupt data)",
                ));
            };
            // 15 magnitude bits at most: always fits.
            coefs[usize::from(pos)] = self.value(size) as i16;
            k += 1;
        }
        Ok(())
    }

    /// Ends a restart interval: the next one starts byte-aligned after marker RST`expected`
    /// (numbered modulo 8, T.81 B.2.4.4) with fresh DC predictors (reset by the caller).
    fn restart(&mut self, expected: u8) -> Result<(), CodecError> {
        match next_marker(self.data, self.pos) {
            Some((marker, next)) if marker == RST0 + expected => {
                *self = BitReader::new(self.data, next);
                Ok(())
            }
            Some((marker, _)) => Err(CodecError::new(format!(
                "JPEG scan: expected restart marker RST{expected}, found {}",
                marker_name(marker)
            ))),
            None => Err(CodecError::new(format!(
                "truncated JPEG scan: the data ends before restart marker RST{expected}"
            ))),
        }
    }
}

const CONST_BITS: u32 = 13;

/// `x` in CONST_BITS fixed point, as jidctint.c rounds its constants.
const fn fix(x: f64) -> i64 {
    (x * (1 << CONST_BITS) as f64 + 0.5) as i64
}

// The multipliers of the LL&M factorisation, named by value as in jidctint.c so that they can
// be checked against it. With cN = cos(N·π/16): the even part's rotation uses sqrt(2)·c6,
// sqrt(2)·(c2 − c6) and sqrt(2)·(c2 + c6); the odd part sqrt(2)·c3 and sums of ±c1, ±c3, ±c5,
// ±c7 scaled by sqrt(2).
const FIX_0_298631336: i64 = fix(0.298631336);
const FIX_0_390180644: i64 = fix(0.390180644);
const FIX_0_541196100: i64 = fix(0.541196100);
const FIX_0_765366865: i64 = fix(0.765366865);
const FIX_0_899976223: i64 = fix(0.899976223);
const FIX_1_175875602: i64 = fix(1.175875602);
const FIX_1_501321110: i64 = fix(1.501321110);
const FIX_1_847759065: i64 = fix(1.847759065);
const FIX_1_961570560: i64 = fix(1.961570560);
const FIX_2_053119869: i64 = fix(2.053119869);
const FIX_2_562915447: i64 = fix(2.562915447);
const FIX_3_072711026: i64 = fix(3.072711026);

/// libjpeg's "islow" inverse DCT with dequantisation and range limiting, for one precision.
struct Idct {
    /// Fraction bits kept between the column and the row pass.
    pass1_bits: u32,
    /// 32 − (precision + 2): shifts that sign-extend the low precision + 2 bits.
    wrap_shift: u32,
    center: i32,
    max: i32,
}

impl Idct {
    fn new(precision: u8) -> Idct {
        let p = u32::from(precision);
        Idct {
            // 12-bit data keeps one bit less so that the products stay in 32 bits in C.
            pass1_bits: if p == 8 { 2 } else { 1 },
            wrap_shift: 30 - p,
            center: 1 << (p - 1),
            max: (1 << p) - 1,
        }
    }

    fn run(&self, coefs: &[i16; 64], quant: &[u16; 64], out: &mut [u16; 64]) {
        let mut work = [0i32; 64];
        // Columns: dequantised coefficients in, pass1_bits fraction bits out.
        for col in 0..8 {
            let x: [i64; 8] = std::array::from_fn(|r| {
                i64::from(coefs[r * 8 + col]) * i64::from(quant[r * 8 + col])
            });
            if x[1..].iter().all(|&v| v == 0) {
                // What the full transform gives for a constant column, faster; truncated to 32
                // bits as libjpeg's int workspace does.
                let dc = (x[0] << self.pass1_bits) as i32;
                for r in 0..8 {
                    work[r * 8 + col] = dc;
                }
                continue;
            }
            let y = idct_1d(x, CONST_BITS - self.pass1_bits);
            for (r, &v) in y.iter().enumerate() {
                work[r * 8 + col] = v as i32;
            }
        }
        // Rows: a further factor 8 (2^3) of the 2-D transform, then the level shift and the
        // range limit.
        for (row, dst) in work.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
            let x: [i64; 8] = std::array::from_fn(|i| i64::from(row[i]));
            let y = idct_1d(x, CONST_BITS + self.pass1_bits + 3);
            for (d, &v) in dst.iter_mut().zip(&y) {
                *d = self.limit(v);
            }
        }
    }

    /// libjpeg's post-IDCT range limit: the value wraps modulo 4 × 2^P into
    /// [−2 × 2^P, 2 × 2^P) (its look-up table is indexed with a mask, so that corrupt data
    /// cannot read outside it), then clamps to [0, 2^P − 1] after the level shift.
    fn limit(&self, v: i64) -> u16 {
        let wrapped = (v as i32) << self.wrap_shift >> self.wrap_shift;
        (wrapped + self.center).clamp(0, self.max) as u16
    }
}

/// One 8-point pass of the islow IDCT, descaled by `shift` bits with rounding.
#[inline(always)]
fn idct_1d(x: [i64; 8], shift: u32) -> [i64; 8] {
    // Even part: inputs 0, 2, 4, 6.
    let z1 = (x[2] + x[6]) * FIX_0_541196100;
    let t2 = z1 - x[6] * FIX_1_847759065;
    let t3 = z1 + x[2] * FIX_0_765366865;
    let t0 = (x[0] + x[4]) << CONST_BITS;
    let t1 = (x[0] - x[4]) << CONST_BITS;
    let (e0, e3) = (t0 + t3, t0 - t3);
    let (e1, e2) = (t1 + t2, t1 - t2);

    // Odd part: inputs 7, 5, 3, 1.
    let (a0, a1, a2, a3) = (x[7], x[5], x[3], x[1]);
    let z5 = (a0 + a1 + a2 + a3) * FIX_1_175875602;
    let z1 = -(a0 + a3) * FIX_0_899976223;
    let z2 = -(a1 + a2) * FIX_2_562915447;
    let z3 = z5 - (a0 + a2) * FIX_1_961570560;
    let z4 = z5 - (a1 + a3) * FIX_0_390180644;
    let o0 = a0 * FIX_0_298631336 + z1 + z3;
    let o1 = a1 * FIX_2_053119869 + z2 + z4;
    let o2 = a2 * FIX_3_072711026 + z2 + z3;
    let o3 = a3 * FIX_1_501321110 + z1 + z4;

    let round = 1i64 << (shift - 1);
    let d = |v: i64| (v + round) >> shift;
    [
        d(e0 + o3),
        d(e1 + o2),
        d(e2 + o1),
        d(e3 + o0),
        d(e3 - o0),
        d(e2 - o1),
        d(e1 - o2),
        d(e0 - o3),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const LIMITS: Limits = Limits {
        max_samples: 1 << 24,
    };

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/codecs/jpeg-dct")
    }

    fn read(name: &str) -> Vec<u8> {
        let path = dir().join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// A line of manifest.txt: name width height components precision reference.
    struct Vector {
        name: String,
        width: u32,
        height: u32,
        components: u8,
        precision: u8,
        reference: String,
    }

    fn vectors() -> Vec<Vector> {
        let text = String::from_utf8(read("manifest.txt")).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(f.len(), 6, "manifest line {l:?}");
                Vector {
                    name: f[0].to_string(),
                    width: f[1].parse().unwrap(),
                    height: f[2].parse().unwrap(),
                    components: f[3].parse().unwrap(),
                    precision: f[4].parse().unwrap(),
                    reference: f[5].to_string(),
                }
            })
            .collect()
    }

    fn fnv1a64(samples: &[u16]) -> u64 {
        let mut h = 0xCBF2_9CE4_8422_2325u64;
        for b in samples.iter().flat_map(|s| s.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
        h
    }

    fn decode_ok(data: &[u8]) -> Frame {
        decode(data, &LIMITS).unwrap_or_else(|e| panic!("decode failed: {e}"))
    }

    fn decode_err(data: &[u8]) -> String {
        match decode(data, &LIMITS) {
            Ok(f) => panic!(
                "decoded a {}×{} frame, expected an error",
                f.width, f.height
            ),
            Err(e) => e.0,
        }
    }

    /// Offset of the first marker `code` (the 0xFF byte).
    fn find_marker(data: &[u8], code: u8) -> usize {
        data.windows(2)
            .position(|w| w == [0xFF, code])
            .unwrap_or_else(|| panic!("no marker 0xFF{code:02X}"))
    }

    #[test]
    fn vectors_equal_libjpeg_turbo() {
        let vectors = vectors();
        assert!(vectors.len() >= 10);
        for v in &vectors {
            let frame = decode(&read(&format!("{}.jpg", v.name)), &LIMITS)
                .unwrap_or_else(|e| panic!("{}: {e}", v.name));
            let header = (frame.width, frame.height, frame.components, frame.precision);
            assert_eq!(
                header,
                (v.width, v.height, v.components, v.precision),
                "{}",
                v.name
            );
            if let Some(hash) = v.reference.strip_prefix("fnv1a64:") {
                let want = u64::from_str_radix(hash, 16).unwrap();
                assert_eq!(fnv1a64(&frame.samples), want, "{}: samples differ", v.name);
                continue;
            }
            let want: Vec<u16> = read(&v.reference)
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            assert_eq!(frame.samples.len(), want.len(), "{}", v.name);
            let diffs: Vec<usize> = (0..want.len())
                .filter(|&i| frame.samples[i] != want[i])
                .collect();
            if let Some(&i) = diffs.first() {
                let c = usize::from(v.components);
                panic!(
                    "{}: {} samples differ from libjpeg-turbo; first at x {} y {} component {}: \
                     {} instead of {}",
                    v.name,
                    diffs.len(),
                    i / c % v.width as usize,
                    i / c / v.width as usize,
                    i % c,
                    frame.samples[i],
                    want[i]
                );
            }
        }
    }

    #[test]
    fn islow_constants_are_those_of_jidctint() {
        let ours = [
            FIX_0_298631336,
            FIX_0_390180644,
            FIX_0_541196100,
            FIX_0_765366865,
            FIX_0_899976223,
            FIX_1_175875602,
            FIX_1_501321110,
            FIX_1_847759065,
            FIX_1_961570560,
            FIX_2_053119869,
            FIX_2_562915447,
            FIX_3_072711026,
        ];
        let jidctint = [
            2446, 3196, 4433, 6270, 7373, 9633, 12299, 15137, 16069, 16819, 20995, 25172,
        ];
        assert_eq!(ours, jidctint);
    }

    #[test]
    fn range_limit_wraps_like_libjpeg() {
        // libjpeg indexes its limit table with (x & (4 << P) - 1): values past ±2 << P wrap.
        let idct = Idct::new(8);
        let cases = [
            (0, 128),
            (-128, 0),
            (127, 255),
            (300, 255),
            (-300, 0),
            (512, 0),    // wraps to −512
            (1024, 128), // wraps to 0
            (-513, 255), // wraps to 511
        ];
        for (x, want) in cases {
            assert_eq!(idct.limit(x), want, "8-bit {x}");
        }
        let idct = Idct::new(12);
        assert_eq!(idct.limit(0), 2048);
        assert_eq!(idct.limit(5000), 4095);
        assert_eq!(idct.limit(8192), 0);
        assert_eq!(idct.limit(16384 + 7), 2055);
    }

    #[test]
    fn dc_only_block_is_flat() {
        // A DC coefficient d, quantiser q: every sample is round(d·q/8) + 2^(P−1).
        let mut coefs = [0i16; 64];
        coefs[0] = -100;
        let mut quant = [1u16; 64];
        quant[0] = 12;
        let mut out = [0u16; 64];
        Idct::new(12).run(&coefs, &quant, &mut out);
        assert!(out.iter().all(|&s| s == 2048 - 150), "{out:?}");
    }

    #[test]
    fn refuses_gdcm_precision_16() {
        // GDCM's codestream in testdata/dicom-syntaxes/jpeg-extended-12bit: SOF1 with P = 16.
        let err = decode_err(&read("gdcm-precision16.jpg"));
        assert!(
            err.contains("SOF1") && err.contains("precision 16"),
            "{err}"
        );
    }

    #[test]
    fn refuses_other_processes_by_marker() {
        let data = read("gray8-q90-17x5.jpg");
        let sof = find_marker(&data, SOF0);
        for (code, name, what) in [
            (0xC2, "SOF2", "progressive"),
            (0xC3, "SOF3", "lossless"),
            (0xC5, "SOF5", "hierarchical"),
            (0xC6, "SOF6", "hierarchical"),
            (0xC7, "SOF7", "hierarchical"),
            (0xC9, "SOF9", "arithmetic"),
            (0xCA, "SOF10", "arithmetic"),
            (0xCB, "SOF11", "arithmetic"),
            (0xCD, "SOF13", "arithmetic"),
            (0xCE, "SOF14", "arithmetic"),
            (0xCF, "SOF15", "arithmetic"),
            (0xCC, "DAC", "arithmetic"),
            (0xDE, "DHP", "hierarchical"),
            (0xDF, "EXP", "hierarchical"),
            (0xF7, "SOF55", "JPEG-LS"),
        ] {
            let mut bad = data.clone();
            bad[sof + 1] = code;
            let err = decode_err(&bad);
            assert!(err.contains(name) && err.contains(what), "{name}: {err}");
        }
        // DNL after the scan, and a frame height of 0 that would need it.
        let mut bad = data.clone();
        let eoi = bad.len() - 2;
        bad.splice(eoi..eoi, [0xFF, DNL, 0, 4, 0, 5]);
        assert!(decode_err(&bad).contains("DNL"));
        let mut bad = data.clone();
        bad[sof + 5..sof + 7].copy_from_slice(&[0, 0]);
        assert!(decode_err(&bad).contains("DNL"));
    }

    #[test]
    fn refuses_subsampling() {
        let mut data = read("rgb8-444-48x32.jpg");
        let sof = find_marker(&data, SOF0);
        data[sof + 11] = 0x22; // component 1: 2×2, components 2 and 3 stay 1×1
        let err = decode_err(&data);
        assert!(err.contains("subsampling"), "{err}");
        // All three 2×2 is no subsampling, but 12 blocks are too many for one MCU.
        data[sof + 14] = 0x22;
        data[sof + 17] = 0x22;
        let err = decode_err(&data);
        assert!(err.contains("12 blocks per MCU"), "{err}");
    }

    #[test]
    fn missing_eoi_is_accepted_anything_else_missing_is_not() {
        for name in ["rgb8-scans-restart-48x32.jpg", "ct12-q90-17x5.jpg"] {
            let data = read(name);
            assert!(data.ends_with(&[0xFF, EOI]) && data[data.len() - 3] != 0xFF);
            let full = decode_ok(&data);
            assert_eq!(decode_ok(&data[..data.len() - 1]), full, "{name}");
            assert_eq!(decode_ok(&data[..data.len() - 2]), full, "{name}");
            for cut in 0..data.len() - 2 {
                assert!(
                    decode(&data[..cut], &LIMITS).is_err(),
                    "{name} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn truncated_scan_messages() {
        let data = read("ct12-q95-128x128.jpg");
        let err = decode_err(&data[..data.len() / 2]);
        assert!(err.starts_with("truncated JPEG scan"), "{err}");
        // The scan cut by EOI: the same, naming the marker.
        let mut cut = data[..data.len() / 2].to_vec();
        cut.extend_from_slice(&[0xFF, EOI]);
        let err = decode_err(&cut);
        assert!(
            err.starts_with("truncated JPEG scan") && err.contains("EOI"),
            "{err}"
        );
        // A whole scan missing (the stream has one per component).
        let data = read("rgb8-scans-restart-48x32.jpg");
        let second_sos = find_marker(&data[find_marker(&data, SOS) + 2..], SOS);
        let mut cut = data[..find_marker(&data, SOS) + 2 + second_sos].to_vec();
        cut.extend_from_slice(&[0xFF, EOI]);
        let err = decode_err(&cut);
        assert!(err.contains("before the scan of component"), "{err}");
    }

    #[test]
    fn wrong_restart_marker_is_an_error() {
        let mut data = read("ct12-restart4-72x40.jpg");
        let rst = find_marker(&data, RST0 + 2);
        data[rst + 1] = RST0 + 3;
        let err = decode_err(&data);
        assert!(err.contains("expected restart marker RST2"), "{err}");
    }

    #[test]
    fn invalid_huffman_code_is_an_error() {
        // All-ones bits are no code of any libjpeg table (Annex C reserves them).
        let data = read("gray8-q90-17x5.jpg");
        let sos = find_marker(&data, SOS);
        let start = sos + 2 + usize::from(data[sos + 3]);
        let mut bad = data[..start].to_vec();
        bad.extend_from_slice(&[0xFF, 0x00].repeat(8));
        bad.extend_from_slice(&[0xFF, EOI]);
        let err = decode_err(&bad);
        assert!(err.contains("invalid Huffman code"), "{err}");
    }

    #[test]
    fn dicom_padding_and_fill_bytes_are_accepted() {
        let data = read("gray8-q90-17x5.jpg");
        let full = decode_ok(&data);
        let mut padded = data.clone();
        padded.push(0); // fragments are padded to an even length
        assert_eq!(decode_ok(&padded), full);
        let mut filled = data.clone();
        let eoi = filled.len() - 2;
        filled.splice(eoi..eoi, [0xFF; 5]);
        assert_eq!(decode_ok(&filled), full);
    }

    #[test]
    fn limits_are_checked_before_allocating() {
        let data = read("ct12-q75-128x128.jpg");
        let tight = Limits {
            max_samples: 128 * 128 - 1,
        };
        let err = decode(&data, &tight).unwrap_err().0;
        assert!(err.contains("exceed the limit"), "{err}");
        assert!(decode(
            &data,
            &Limits {
                max_samples: 128 * 128
            }
        )
        .is_ok());

        // 65535 × 65535 × 4 components: refused from the header alone.
        let mut huge = vec![0xFF, SOI, 0xFF, SOF1, 0, 20, 12, 0xFF, 0xFF, 0xFF, 0xFF, 4];
        for id in 1..=4 {
            huge.extend_from_slice(&[id, 0x11, 0]);
        }
        huge.extend_from_slice(&[0xFF, EOI]);
        let err = decode(&huge, &Limits { max_samples: 1000 }).unwrap_err().0;
        assert!(
            err.contains("65535×65535 pixels × 4 components exceed"),
            "{err}"
        );
    }

    /// Every byte of small streams replaced by a few values, and every truncation: `Ok` or
    /// `Err`, never a panic (overflow checks are on in test builds).
    #[test]
    fn mutations_do_not_panic() {
        for name in [
            "rgb8-scans-restart-48x32.jpg",
            "ct12-restart4-72x40.jpg",
            "cmyk8-h1v2-restart1-24x20.jpg",
        ] {
            let data = read(name);
            let mut bad = data.clone();
            for i in 0..data.len() {
                for value in [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, data[i] ^ 0x10] {
                    bad[i] = value;
                    let _ = decode(&bad, &LIMITS);
                }
                bad[i] = data[i];
            }
            for cut in 0..data.len() {
                let _ = decode(&data[..cut], &LIMITS);
            }
        }
    }

    /// Corrupt coefficients at their extremes go through the IDCT without overflow.
    #[test]
    fn extreme_coefficients_do_not_overflow() {
        for precision in [8, 12] {
            let idct = Idct::new(precision);
            let mut out = [0u16; 64];
            for (c, q) in [(i16::MAX, u16::MAX), (i16::MIN, u16::MAX), (-1, u16::MAX)] {
                let coefs = [c; 64];
                let alternating: [i16; 64] =
                    std::array::from_fn(|i| if i % 3 == 0 { c } else { c.wrapping_neg() });
                idct.run(&coefs, &[q; 64], &mut out);
                idct.run(&alternating, &[q; 64], &mut out);
                assert!(out.iter().all(|&s| i32::from(s) <= idct.max));
            }
        }
    }
}
