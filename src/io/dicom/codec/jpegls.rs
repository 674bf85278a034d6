//! JPEG-LS decoder (ITU-T T.87 | ISO/IEC 14495-1), for the DICOM transfer syntaxes
//! 1.2.840.10008.1.2.4.80 (lossless) and .81 (near-lossless).
//!
//! Supported: lossless and near-lossless coding, 2..=16-bit samples, 1..=4 components in any
//! interleave mode (one scan per component, line or sample interleaved), the default coding
//! parameters of C.2.4.1.1.1 or custom ones from an LSE segment of type 1, restart intervals
//! (DRI and RSTm). APPn and COM segments are skipped.
//!
//! Refused with an error that names the marker or field: mapping tables (LSE types 2..=4, a
//! table selector in SOS), sub-sampled components, a point transform, the HP colour transforms
//! (APP8 "mrfx"), a height defined by DNL, and any other frame type (SOF0..SOF15).
//!
//! The decoder is fed untrusted data: the frame size is checked against [`Limits`] before the
//! output is allocated, every value that steers the decoding is bounded before it is used, and
//! a scan that ends before its last sample is an error, not a frame padded with zeros.

use super::{CodecError, Frame, Limits};

type Result<T> = std::result::Result<T, CodecError>;

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const DNL: u8 = 0xDC;
const DRI: u8 = 0xDD;
const RST0: u8 = 0xD0;
const RST7: u8 = 0xD7;
const APP0: u8 = 0xE0;
const APP8: u8 = 0xE8;
const APP15: u8 = 0xEF;
const SOF55: u8 = 0xF7;
const LSE: u8 = 0xF8;
const COM: u8 = 0xFE;

/// The order of the run length code for each RUNindex (A.2.1, J[0..31]).
const J: [u32; 32] = [
    0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 9, 10, 11, 12, 13,
    14, 15,
];

/// Decode one JPEG-LS codestream (SOI … EOI).
pub(crate) fn decode(data: &[u8], limits: &Limits) -> Result<Frame> {
    if !data.starts_with(&[0xFF, SOI]) {
        return fail("not a JPEG-LS codestream: no SOI marker at the start");
    }
    let mut markers = Markers { data, pos: 2 };
    let mut frame: Option<FrameHeader> = None;
    let mut samples = Vec::new();
    let mut decoded = [false; 4];
    let mut presets = Presets::default();
    let mut restart_interval = 0;

    loop {
        let marker = markers.next()?;
        match marker {
            SOF55 => {
                if frame.is_some() {
                    return fail("JPEG-LS codestream has a second SOF55 frame");
                }
                let header = FrameHeader::parse(markers.segment("SOF55")?)?;
                samples = allocate_output(&header, limits)?;
                frame = Some(header);
            }
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                return fail(format!(
                    "SOF{} (0xFF{marker:02X}) is not a JPEG-LS frame (SOF55)",
                    marker - 0xC0
                ));
            }
            LSE => presets.parse(markers.segment("LSE")?)?,
            DRI => restart_interval = parse_dri(markers.segment("DRI")?)?,
            SOS => {
                let frame = frame
                    .as_ref()
                    .ok_or_else(|| CodecError::new("JPEG-LS SOS before the SOF55 frame header"))?;
                let scan = ScanHeader::parse(markers.segment("SOS")?, frame, &presets)?;
                for &c in &scan.components {
                    if std::mem::replace(&mut decoded[c], true) {
                        return fail(format!(
                            "JPEG-LS component {} is coded in more than one scan",
                            frame.ids[c]
                        ));
                    }
                }
                let mut bits = BitReader::new(data, markers.pos);
                decode_scan(&mut bits, frame, &scan, restart_interval, &mut samples)?;
                markers.pos = bits.marker_position();
            }
            EOI => break,
            APP0..=APP15 | COM => {
                let payload = markers.segment("APPn/COM")?;
                // HP's colour transforms (T.87 does not define them) change the sample values
                // after decoding; 0 means none.
                if marker == APP8 && payload.starts_with(b"mrfx") {
                    match payload.get(4) {
                        Some(0) => {}
                        Some(t) => {
                            return fail(format!(
                                "JPEG-LS APP8 \"mrfx\" colour transform {t} is not supported"
                            ));
                        }
                        None => return fail("JPEG-LS APP8 \"mrfx\" is truncated"),
                    }
                }
            }
            RST0..=RST7 => {
                return fail(format!(
                    "JPEG-LS RST{} marker outside a scan",
                    marker - RST0
                ));
            }
            DNL => {
                return fail(
                    "JPEG-LS DNL marker: a height defined after the scan is not supported",
                );
            }
            _ => {
                return fail(format!(
                    "unexpected marker 0xFF{marker:02X} in a JPEG-LS codestream"
                ));
            }
        }
    }

    let frame = frame.ok_or_else(|| CodecError::new("JPEG-LS codestream has no SOF55 frame"))?;
    if let Some(c) = (0..frame.ids.len()).find(|&c| !decoded[c]) {
        return fail(format!(
            "JPEG-LS codestream has no scan for component {}",
            frame.ids[c]
        ));
    }
    Ok(Frame {
        width: frame.width as u32,
        height: frame.height as u32,
        components: frame.ids.len() as u8,
        precision: frame.precision,
        samples,
    })
}

fn allocate_output(frame: &FrameHeader, limits: &Limits) -> Result<Vec<u16>> {
    let count = frame
        .width
        .checked_mul(frame.height)
        .and_then(|n| n.checked_mul(frame.ids.len()))
        .filter(|&n| n <= limits.max_samples)
        .ok_or_else(|| {
            CodecError::new(format!(
                "JPEG-LS frame of {}x{}x{} samples exceeds the limit of {}",
                frame.width,
                frame.height,
                frame.ids.len(),
                limits.max_samples
            ))
        })?;
    Ok(vec![0; count])
}

/// The marker segments between the scans.
struct Markers<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Markers<'a> {
    /// The code of the marker at `pos`, past any fill bytes (0xFF) before it.
    fn next(&mut self) -> Result<u8> {
        match self.data.get(self.pos) {
            Some(0xFF) => {}
            Some(&b) => {
                return fail(format!(
                    "JPEG-LS codestream: expected a marker at offset {}, found 0x{b:02X}",
                    self.pos
                ));
            }
            None => return fail("truncated JPEG-LS codestream: no EOI marker"),
        }
        while self.data.get(self.pos) == Some(&0xFF) {
            self.pos += 1;
        }
        let code = *self.data.get(self.pos).ok_or_else(|| {
            CodecError::new("truncated JPEG-LS codestream: it ends inside a marker")
        })?;
        self.pos += 1;
        Ok(code)
    }

    /// The payload of the segment at `pos` (after its 2-byte length).
    fn segment(&mut self, name: &str) -> Result<&'a [u8]> {
        let truncated = || CodecError::new(format!("truncated JPEG-LS {name} segment"));
        let length = self
            .data
            .get(self.pos..self.pos + 2)
            .ok_or_else(truncated)?;
        let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
        if length < 2 {
            return fail(format!("JPEG-LS {name} segment length {length} < 2"));
        }
        let payload = self
            .data
            .get(self.pos + 2..self.pos + length)
            .ok_or_else(truncated)?;
        self.pos += length;
        Ok(payload)
    }
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

struct FrameHeader {
    width: usize,
    height: usize,
    precision: u8,
    /// Component identifiers, in frame order (the order of the output samples).
    ids: Vec<u8>,
}

impl FrameHeader {
    /// SOF55 (C.2.2): P, Y, X, Nf, then Ci, Hi/Vi, Tqi for each component.
    fn parse(payload: &[u8]) -> Result<FrameHeader> {
        if payload.len() < 6 {
            return fail("JPEG-LS SOF55 segment is too short");
        }
        let precision = payload[0];
        let height = usize::from(be16(payload, 1));
        let width = usize::from(be16(payload, 3));
        let count = usize::from(payload[5]);
        if !(2..=16).contains(&precision) {
            return fail(format!(
                "JPEG-LS SOF55 precision {precision} is outside 2..=16"
            ));
        }
        if width == 0 || height == 0 {
            return fail(format!(
                "JPEG-LS SOF55 size {width}x{height}: a zero size (height from DNL, \
                 size from LSE type 4) is not supported"
            ));
        }
        if !(1..=4).contains(&count) {
            return fail(format!(
                "JPEG-LS SOF55 has {count} components; 1..=4 are supported"
            ));
        }
        if payload.len() != 6 + 3 * count {
            return fail(format!(
                "JPEG-LS SOF55 segment length {} does not match {count} components",
                payload.len() + 2
            ));
        }
        let mut ids = Vec::with_capacity(count);
        for spec in payload[6..].chunks_exact(3) {
            if spec[1] != 0x11 {
                return fail(format!(
                    "JPEG-LS SOF55 component {} has sampling factors {}x{}: sub-sampled \
                     components are not supported",
                    spec[0],
                    spec[1] >> 4,
                    spec[1] & 15
                ));
            }
            if ids.contains(&spec[0]) {
                return fail(format!("JPEG-LS SOF55 lists component {} twice", spec[0]));
            }
            ids.push(spec[0]);
        }
        Ok(FrameHeader {
            width,
            height,
            precision,
            ids,
        })
    }
}

/// The restart interval in lines; JPEG-LS lets Ri take 2, 3 or 4 bytes (C.2.5).
fn parse_dri(payload: &[u8]) -> Result<usize> {
    if !(2..=4).contains(&payload.len()) {
        return fail(format!(
            "JPEG-LS DRI segment length {} is not 4, 5 or 6",
            payload.len() + 2
        ));
    }
    Ok(payload.iter().fold(0, |ri, &b| (ri << 8) | usize::from(b)))
}

/// The preset coding parameters of an LSE segment of type 1 (C.2.4.1.1); 0 stands for the
/// default. They are resolved at each SOS, as the defaults depend on the scan's NEAR.
#[derive(Clone, Copy, Default)]
struct Presets {
    maxval: u16,
    t1: u16,
    t2: u16,
    t3: u16,
    reset: u16,
}

impl Presets {
    fn parse(&mut self, payload: &[u8]) -> Result<()> {
        match payload.first() {
            Some(1) if payload.len() == 11 => {
                *self = Presets {
                    maxval: be16(payload, 1),
                    t1: be16(payload, 3),
                    t2: be16(payload, 5),
                    t3: be16(payload, 7),
                    reset: be16(payload, 9),
                };
                Ok(())
            }
            Some(1) => fail(format!(
                "JPEG-LS LSE type 1 segment length {} is not 13",
                payload.len() + 2
            )),
            Some(2 | 3) => fail("JPEG-LS LSE mapping table (type 2/3) is not supported"),
            Some(4) => fail("JPEG-LS LSE oversize image dimension (type 4) is not supported"),
            Some(t) => fail(format!("JPEG-LS LSE type {t} is not defined")),
            None => fail("JPEG-LS LSE segment is empty"),
        }
    }
}

struct ScanHeader {
    /// Frame indices of the scan's components, in scan order.
    components: Vec<usize>,
    interleave: u8,
    coding: Coding,
}

impl ScanHeader {
    /// SOS (C.2.3): Ns, then Csj, Tmj for each component, NEAR, ILV, Al/Ah.
    fn parse(payload: &[u8], frame: &FrameHeader, presets: &Presets) -> Result<ScanHeader> {
        let count = usize::from(*payload.first().unwrap_or(&0));
        if !(1..=4).contains(&count) {
            return fail(format!(
                "JPEG-LS SOS has {count} components; 1..=4 are allowed"
            ));
        }
        if payload.len() != 4 + 2 * count {
            return fail(format!(
                "JPEG-LS SOS segment length {} does not match {count} components",
                payload.len() + 2
            ));
        }
        let mut components = Vec::with_capacity(count);
        for spec in payload[1..1 + 2 * count].chunks_exact(2) {
            let index = frame
                .ids
                .iter()
                .position(|&id| id == spec[0])
                .ok_or_else(|| {
                    CodecError::new(format!(
                        "JPEG-LS SOS component {} is not in the frame",
                        spec[0]
                    ))
                })?;
            if components.contains(&index) {
                return fail(format!("JPEG-LS SOS lists component {} twice", spec[0]));
            }
            if spec[1] != 0 {
                return fail(format!(
                    "JPEG-LS SOS component {} uses mapping table {}: mapping tables are not \
                     supported",
                    spec[0], spec[1]
                ));
            }
            components.push(index);
        }
        let tail = &payload[1 + 2 * count..];
        let (near, interleave, transform) = (tail[0], tail[1], tail[2]);
        if interleave > 2 {
            return fail(format!(
                "JPEG-LS SOS interleave mode (ILV) {interleave} is not 0, 1 or 2"
            ));
        }
        if interleave == 0 && count > 1 {
            return fail(format!(
                "JPEG-LS SOS with ILV 0 has {count} components; it must have one"
            ));
        }
        if transform != 0 {
            return fail(format!(
                "JPEG-LS SOS point transform (Al/Ah = 0x{transform:02X}) is not supported"
            ));
        }
        let coding = Coding::new(frame.precision, near, presets)?;
        Ok(ScanHeader {
            components,
            interleave,
            coding,
        })
    }
}

/// The parameters of the coding process of one scan (A.2.1).
#[derive(Clone, Copy)]
struct Coding {
    maxval: i32,
    near: i32,
    t1: i32,
    t2: i32,
    t3: i32,
    reset: i32,
    range: i32,
    /// Bits of a mapped error value (qbpp).
    qbpp: u32,
    /// Maximum length of a limited-length Golomb code word (LIMIT).
    limit: u32,
}

impl Coding {
    fn new(precision: u8, near: u8, presets: &Presets) -> Result<Coding> {
        let near = i32::from(near);
        let precision_max = (1i32 << precision) - 1;
        let maxval = match i32::from(presets.maxval) {
            0 => precision_max,
            m if m > precision_max => {
                return fail(format!(
                    "JPEG-LS LSE MAXVAL {m} exceeds the {precision}-bit sample range"
                ));
            }
            m => m,
        };
        // C.2.3: NEAR <= min(255, MAXVAL / 2).
        if near > maxval / 2 {
            return fail(format!(
                "JPEG-LS SOS NEAR {near} is larger than MAXVAL / 2 = {}",
                maxval / 2
            ));
        }
        let (d1, d2, d3) = default_thresholds(maxval, near);
        let t1 = preset("T1", presets.t1, d1, near + 1, maxval)?;
        let t2 = preset("T2", presets.t2, d2, t1, maxval)?;
        let t3 = preset("T3", presets.t3, d3, t2, maxval)?;
        let reset = preset("RESET", presets.reset, 64, 3, maxval.max(255))?;

        let range = (maxval + 2 * near) / (2 * near + 1) + 1;
        let bpp = ceil_log2(maxval as u32 + 1).max(2);
        Ok(Coding {
            maxval,
            near,
            t1,
            t2,
            t3,
            reset,
            range,
            qbpp: ceil_log2(range as u32),
            limit: 2 * (bpp + bpp.max(8)),
        })
    }

    /// The initial A of every context (A.2.1).
    fn initial_a(&self) -> i32 {
        ((self.range + 32) / 64).max(2)
    }

    /// The region number Q of a local gradient D (A.3.3).
    fn quantize_gradient(&self, d: i32) -> i8 {
        let (near, t1, t2, t3) = (self.near, self.t1, self.t2, self.t3);
        match d {
            _ if d <= -t3 => -4,
            _ if d <= -t2 => -3,
            _ if d <= -t1 => -2,
            _ if d < -near => -1,
            _ if d <= near => 0,
            _ if d < t1 => 1,
            _ if d < t2 => 2,
            _ if d < t3 => 3,
            _ => 4,
        }
    }

    /// Rx from the prediction and the (signed, quantized) error: the error was taken modulo
    /// RANGE by the encoder, so the sum may need to wrap back into 0..=MAXVAL (A.4.5, A.6.1).
    fn reconstruct(&self, predicted: i32, error: i32) -> i32 {
        let step = 2 * self.near + 1;
        let mut value = predicted + error * step;
        if value < -self.near {
            value += self.range * step;
        } else if value > self.maxval + self.near {
            value -= self.range * step;
        }
        value.clamp(0, self.maxval)
    }
}

/// A preset coding parameter from an LSE segment, or its default for 0 (C.2.4.1.1, Table C.1
/// gives the bounds).
fn preset(name: &str, value: u16, default: i32, min: i32, max: i32) -> Result<i32> {
    match i32::from(value) {
        0 => Ok(default),
        v if (min..=max).contains(&v) => Ok(v),
        v => fail(format!("JPEG-LS LSE {name} = {v} is outside {min}..={max}")),
    }
}

/// Default T1, T2, T3 for MAXVAL and NEAR (C.2.4.1.1.1): Table C.3's values for 8 bits,
/// scaled to MAXVAL and widened by NEAR.
fn default_thresholds(maxval: i32, near: i32) -> (i32, i32, i32) {
    const BASIC_T1: i32 = 3;
    const BASIC_T2: i32 = 7;
    const BASIC_T3: i32 = 21;
    let clamp = |i: i32, j: i32| if i > maxval || i < j { j } else { i };
    if maxval >= 128 {
        let factor = (maxval.min(4095) + 128) / 256;
        let t1 = clamp(factor * (BASIC_T1 - 2) + 2 + 3 * near, near + 1);
        let t2 = clamp(factor * (BASIC_T2 - 3) + 3 + 5 * near, t1);
        let t3 = clamp(factor * (BASIC_T3 - 4) + 4 + 7 * near, t2);
        (t1, t2, t3)
    } else {
        let factor = 256 / (maxval + 1);
        let t1 = clamp((BASIC_T1 / factor + 3 * near).max(2), near + 1);
        let t2 = clamp((BASIC_T2 / factor + 5 * near).max(3), t1);
        let t3 = clamp((BASIC_T3 / factor + 7 * near).max(4), t2);
        (t1, t2, t3)
    }
}

/// ⌈log2(x)⌉ for x >= 1.
fn ceil_log2(x: u32) -> u32 {
    32 - (x - 1).leading_zeros()
}

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(CodecError::new(message))
}

fn truncated() -> CodecError {
    CodecError::new("truncated JPEG-LS scan: the entropy-coded data ends before the last sample")
}

/// Reads the entropy-coded data of a scan, MSB first, dropping the stuffed bit after each
/// 0xFF (A.1) and stopping in front of the next marker (0xFF followed by a byte >= 0x80).
struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte to load.
    pos: usize,
    /// Index of the first 0xFF at or after `pos` (or `data.len()`), so that the common case
    /// can load eight bytes at once.
    next_ff: usize,
    /// Unread bits, left-aligned; the bits past `count` are zero.
    buf: u64,
    /// Number of unread bits in `buf`, at most 56.
    count: u32,
    /// The last byte loaded was 0xFF: the next one holds only 7 bits.
    after_ff: bool,
}

fn find_ff(data: &[u8], from: usize) -> usize {
    data.get(from..)
        .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
        .map_or(data.len(), |i| from + i)
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> BitReader<'a> {
        BitReader {
            data,
            pos,
            next_ff: find_ff(data, pos),
            buf: 0,
            count: 0,
            after_ff: false,
        }
    }

    /// Tops the buffer up to at least 49 bits, unless the scan's data ends first.
    fn fill(&mut self) {
        if !self.after_ff && self.pos + 8 <= self.next_ff {
            let mut word = [0; 8];
            word.copy_from_slice(&self.data[self.pos..self.pos + 8]);
            let bytes = (56 - self.count) / 8;
            let word = u64::from_be_bytes(word) & !(u64::MAX >> (8 * bytes));
            self.buf |= word >> self.count;
            self.count += 8 * bytes;
            self.pos += bytes as usize;
            return;
        }
        while self.count <= 48 {
            let Some(&byte) = self.data.get(self.pos) else {
                break;
            };
            if self.after_ff {
                self.buf |= u64::from(byte & 0x7F) << (57 - self.count);
                self.count += 7;
                self.after_ff = false;
            } else {
                if byte == 0xFF && self.data.get(self.pos + 1).is_none_or(|&next| next >= 0x80) {
                    break;
                }
                self.buf |= u64::from(byte) << (56 - self.count);
                self.count += 8;
                self.after_ff = byte == 0xFF;
            }
            self.pos += 1;
        }
        if self.pos > self.next_ff {
            self.next_ff = find_ff(self.data, self.pos);
        }
    }

    fn consume(&mut self, n: u32) {
        debug_assert!(n <= self.count);
        self.buf <<= n;
        self.count -= n;
    }

    /// The next `n` (<= 32) bits as a number.
    fn read(&mut self, n: u32) -> Result<u32> {
        if n == 0 {
            return Ok(0);
        }
        if self.count < n {
            self.fill();
            if self.count < n {
                return Err(truncated());
            }
        }
        let value = (self.buf >> (64 - n)) as u32;
        self.consume(n);
        Ok(value)
    }

    fn bit(&mut self) -> Result<bool> {
        Ok(self.read(1)? == 1)
    }

    /// The number of 0 bits before the next 1 bit (which is consumed too), at most `max`.
    fn unary(&mut self, max: u32) -> Result<u32> {
        let mut zeros = 0;
        loop {
            if self.count < 32 {
                self.fill();
            }
            let run = self.buf.leading_zeros();
            if run < self.count {
                zeros += run;
                self.consume(run + 1);
                break;
            }
            if self.count == 0 {
                return Err(truncated());
            }
            zeros += self.count;
            self.consume(self.count);
            if zeros > max {
                break;
            }
        }
        if zeros > max {
            return fail("JPEG-LS scan: Golomb code longer than LIMIT (corrupt data)");
        }
        Ok(zeros)
    }

    /// A limited-length Golomb code word of order `k` (A.5.3), which the caller bounds by
    /// `max` so that corrupt data cannot push the context statistics out of range.
    fn golomb(&mut self, k: u32, limit: u32, qbpp: u32, max: i32) -> Result<i32> {
        // The escape code starts with LIMIT - qbpp - 1 zeros; at least 1 for any parameters.
        let escape = limit.saturating_sub(qbpp + 1);
        let zeros = self.unary(escape)?;
        let value = if zeros < escape {
            (u64::from(zeros) << k) | u64::from(self.read(k)?)
        } else {
            u64::from(self.read(qbpp)?) + 1
        };
        if value > max as u64 {
            return fail(format!(
                "JPEG-LS scan: mapped error value {value} is out of range (corrupt data)"
            ));
        }
        Ok(value as i32)
    }

    /// Where the marker after the data read so far starts (or `data.len()`). The unread bits
    /// are the padding of the last byte; an encoder may also add a byte after a final 0xFF.
    fn marker_position(&mut self) -> usize {
        self.buf = 0;
        self.count = 0;
        self.after_ff = false;
        let mut at = self.pos;
        while at < self.data.len() {
            at = find_ff(self.data, at);
            if self.data.get(at + 1).is_none_or(|&next| next >= 0x80) {
                break;
            }
            at += 1;
        }
        at
    }

    /// Skips the padding at the end of a restart interval and its RSTm marker.
    fn restart(&mut self, m: u8) -> Result<()> {
        let at = self.marker_position();
        if at == self.data.len() {
            return Err(truncated());
        }
        let mut markers = Markers {
            data: self.data,
            pos: at,
        };
        let expected = RST0 + m;
        match markers.next()? {
            code if code == expected => {}
            code => {
                return fail(format!(
                    "JPEG-LS scan: expected RST{m} after a restart interval, found marker \
                     0xFF{code:02X}"
                ));
            }
        }
        self.pos = markers.pos;
        self.next_ff = find_ff(self.data, self.pos);
        Ok(())
    }
}

/// Statistics of one regular-mode context (A.2.1).
#[derive(Clone, Copy)]
struct Context {
    a: i32,
    b: i32,
    c: i32,
    n: i32,
}

/// Statistics of one of the two run-interruption contexts (A.2.1).
#[derive(Clone, Copy)]
struct RunContext {
    a: i32,
    n: i32,
    nn: i32,
}

impl Context {
    fn new(a: i32) -> Context {
        Context {
            a,
            b: 0,
            c: 0,
            n: 1,
        }
    }
}

impl RunContext {
    fn new(a: i32) -> RunContext {
        RunContext { a, n: 1, nn: 0 }
    }
}

/// The context model of a scan and the decoding of single samples.
///
/// Corrupt data cannot overflow the i32 statistics: the Golomb decoder rejects mapped errors
/// above RANGE <= 65536, so one sample adds at most 32768 to A (32769 only when k = 0, that
/// is while A <= N); with N <= RESET <= 65535 and A halved whenever N reaches RESET, A stays
/// below 2^31. B stays within (-N, 0] after each update.
struct Model {
    coding: Coding,
    /// Q(D) for D in -MAXVAL..=MAXVAL, indexed by D + MAXVAL (A.3.3).
    quantized: Vec<i8>,
    regular: [Context; 365],
    run: [RunContext; 2],
}

impl Model {
    fn new(coding: Coding) -> Model {
        let a = coding.initial_a();
        Model {
            coding,
            quantized: (-coding.maxval..=coding.maxval)
                .map(|d| coding.quantize_gradient(d))
                .collect(),
            regular: [Context::new(a); 365],
            run: [RunContext::new(a); 2],
        }
    }

    /// Back to the initial statistics, at the start of a restart interval.
    fn reset(&mut self) {
        let a = self.coding.initial_a();
        self.regular = [Context::new(a); 365];
        self.run = [RunContext::new(a); 2];
    }

    /// The signed context number 81 Q1 + 9 Q2 + Q3 (A.3.4); its sign is SIGN.
    fn context(&self, d1: i32, d2: i32, d3: i32) -> i32 {
        // Samples lie in 0..=MAXVAL, so D + MAXVAL indexes the table.
        let q = |d: i32| i32::from(self.quantized[(d + self.coding.maxval) as usize]);
        (q(d1) * 9 + q(d2)) * 9 + q(d3)
    }

    /// A sample in regular mode (A.4 to A.6).
    fn regular(&mut self, bits: &mut BitReader, q: i32, predicted: i32) -> Result<i32> {
        let coding = &self.coding;
        let ctx = &mut self.regular[q.unsigned_abs() as usize];
        let predicted = if q < 0 {
            predicted - ctx.c
        } else {
            predicted + ctx.c
        };
        let predicted = predicted.clamp(0, coding.maxval);
        let k = golomb_k(ctx.n, ctx.a.into());
        let mapped = bits.golomb(k, coding.limit, coding.qbpp, coding.range)?;
        // A.5.2: the inverse of the error mapping, which is flipped when k = 0 and the
        // context has a negative bias.
        let mut error = (mapped >> 1) ^ -(mapped & 1);
        if coding.near == 0 && k == 0 && 2 * ctx.b <= -ctx.n {
            error = !error;
        }

        // A.6.1 and A.6.2: update the statistics and the bias correction.
        ctx.b += error * (2 * coding.near + 1);
        ctx.a += error.abs();
        if ctx.n == coding.reset {
            ctx.a >>= 1;
            ctx.b >>= 1;
            ctx.n >>= 1;
        }
        ctx.n += 1;
        if ctx.b <= -ctx.n {
            ctx.b += ctx.n;
            ctx.c = (ctx.c - 1).max(-128);
            if ctx.b <= -ctx.n {
                ctx.b = -ctx.n + 1;
            }
        } else if ctx.b > 0 {
            ctx.b -= ctx.n;
            ctx.c = (ctx.c + 1).min(127);
            if ctx.b > 0 {
                ctx.b = 0;
            }
        }

        let error = if q < 0 { -error } else { error };
        Ok(coding.reconstruct(predicted, error))
    }

    /// The sample that ends a run before the end of the line (A.7.2). `Ra` and `Rb` are its
    /// neighbours; `same` (RItype 1, for |Ra - Rb| <= NEAR) makes Ra the prediction, else Rb
    /// is, and the error's sign follows Rb - Ra. The samples of a sample-interleaved scan
    /// always use RItype 0, as CharLS and libjpeg do.
    fn interruption(
        &mut self,
        bits: &mut BitReader,
        ra: i32,
        rb: i32,
        same: bool,
        run_index: usize,
    ) -> Result<i32> {
        let coding = &self.coding;
        let ri_type = i32::from(same);
        let ctx = &mut self.run[usize::from(same)];
        let temp = i64::from(ctx.a) + i64::from((ctx.n >> 1) * ri_type);
        let k = golomb_k(ctx.n, temp);
        let limit = coding.limit - J[run_index] - 1;
        let mapped = bits.golomb(k, limit, coding.qbpp, coding.range)?;

        // EMErrval = 2 |Errval| - RItype - map, where map tells the sign of the magnitude.
        let t = mapped + ri_type;
        let map = t & 1 == 1;
        let magnitude = (t + i32::from(map)) / 2;
        let negative = (k != 0 || 2 * ctx.nn >= ctx.n) == map;
        let error = if negative { -magnitude } else { magnitude };

        if error < 0 {
            ctx.nn += 1;
        }
        ctx.a += (mapped + 1 - ri_type) >> 1;
        if ctx.n == coding.reset {
            ctx.a >>= 1;
            ctx.n >>= 1;
            ctx.nn >>= 1;
        }
        ctx.n += 1;

        Ok(if same {
            coding.reconstruct(ra, error)
        } else if rb < ra {
            coding.reconstruct(rb, -error)
        } else {
            coding.reconstruct(rb, error)
        })
    }

    /// One line of one component. `prev` and `cur` hold the previous and the current line
    /// at 1..=width, with room for the neighbours outside the image at 0 and width + 1.
    fn decode_line(
        &mut self,
        bits: &mut BitReader,
        prev: &mut [i32],
        cur: &mut [i32],
        run_index: &mut usize,
    ) -> Result<()> {
        let width = cur.len() - 2;
        // A.2.1: outside the image, Rd repeats Rb of the last sample and Ra of the first
        // sample is Rb; Rc of the first sample is the Ra of the line above.
        prev[width + 1] = prev[width];
        cur[0] = prev[1];
        let mut x = 1;
        while x <= width {
            let (ra, rb, rc, rd) = (cur[x - 1], prev[x], prev[x - 1], prev[x + 1]);
            let q = self.context(rd - rb, rb - rc, rc - ra);
            if q != 0 {
                cur[x] = self.regular(bits, q, predict(ra, rb, rc))?;
                x += 1;
                continue;
            }
            let (length, interrupted) = run_length(bits, width + 1 - x, run_index)?;
            cur[x..x + length].fill(ra);
            x += length;
            if interrupted {
                let rb = prev[x];
                let same = (ra - rb).abs() <= self.coding.near;
                cur[x] = self.interruption(bits, ra, rb, same, *run_index)?;
                *run_index = run_index.saturating_sub(1);
                x += 1;
            }
        }
        Ok(())
    }

    /// One line of a sample-interleaved scan of `n` components (Annex B): as `decode_line`,
    /// with pixels of `n` samples that share the context statistics and RUNindex; a run
    /// needs all components to be flat and covers whole pixels.
    fn decode_pixel_line(
        &mut self,
        bits: &mut BitReader,
        prev: &mut [i32],
        cur: &mut [i32],
        n: usize,
        run_index: &mut usize,
    ) -> Result<()> {
        let width = cur.len() / n - 2;
        let (last, edge) = (width * n, (width + 1) * n);
        prev.copy_within(last..last + n, edge);
        cur[..n].copy_from_slice(&prev[n..2 * n]);
        let mut x = 1;
        while x <= width {
            let mut q = [0; 4];
            let mut predicted = [0; 4];
            for i in 0..n {
                let (ra, rb) = (cur[(x - 1) * n + i], prev[x * n + i]);
                let (rc, rd) = (prev[(x - 1) * n + i], prev[(x + 1) * n + i]);
                q[i] = self.context(rd - rb, rb - rc, rc - ra);
                predicted[i] = predict(ra, rb, rc);
            }
            if q[..n].iter().any(|&q| q != 0) {
                for i in 0..n {
                    cur[x * n + i] = self.regular(bits, q[i], predicted[i])?;
                }
                x += 1;
                continue;
            }
            let (length, interrupted) = run_length(bits, width + 1 - x, run_index)?;
            for pixel in x..x + length {
                cur.copy_within((x - 1) * n..x * n, pixel * n);
            }
            x += length;
            if interrupted {
                for i in 0..n {
                    let (ra, rb) = (cur[(x - 1) * n + i], prev[x * n + i]);
                    cur[x * n + i] = self.interruption(bits, ra, rb, false, *run_index)?;
                }
                *run_index = run_index.saturating_sub(1);
                x += 1;
            }
        }
        Ok(())
    }
}

/// The length of a run that starts `left` samples before the end of the line, and
/// whether an interruption sample follows it (A.7.1).
fn run_length(bits: &mut BitReader, left: usize, run_index: &mut usize) -> Result<(usize, bool)> {
    let mut length = 0;
    while bits.bit()? {
        // Each 1 bit stands for 2^J[RUNindex] samples, or for the rest of the line.
        let segment = 1 << J[*run_index];
        if segment <= left - length {
            length += segment;
            *run_index = (*run_index + 1).min(31);
        } else {
            length = left;
        }
        if length == left {
            return Ok((length, false));
        }
    }
    length += bits.read(J[*run_index])? as usize;
    if length > left {
        return fail("JPEG-LS scan: run past the end of the line");
    }
    // CharLS also accepts a run that ends exactly at the end of the line this way, with
    // no interruption sample.
    Ok((length, length < left))
}

/// The smallest k with N 2^k >= A (A.5.1, code segment A.10); at most 32 for any input.
fn golomb_k(n: i32, a: i64) -> u32 {
    let mut k = 0;
    while (i64::from(n) << k) < a {
        k += 1;
    }
    k
}

/// The median edge detector (A.4.1).
fn predict(ra: i32, rb: i32, rc: i32) -> i32 {
    let (low, high) = if ra < rb { (ra, rb) } else { (rb, ra) };
    if rc >= high {
        low
    } else if rc <= low {
        high
    } else {
        ra + rb - rc
    }
}

/// Decodes the entropy-coded data of one scan into `out` (pixel-interleaved frame samples).
fn decode_scan(
    bits: &mut BitReader,
    frame: &FrameHeader,
    scan: &ScanHeader,
    restart_interval: usize,
    out: &mut [u16],
) -> Result<()> {
    let (width, components) = (frame.width, frame.ids.len());
    let n = scan.components.len();
    let mut model = Model::new(scan.coding);
    // One line buffer pair per component; a sample-interleaved scan keeps whole pixels in a
    // single pair. The first line of the scan and of each restart interval has a line of
    // zeros above it.
    let pixel_interleaved = scan.interleave == 2 && n > 1;
    let (pairs, stride) = if pixel_interleaved { (1, n) } else { (n, 1) };
    let mut lines = vec![(vec![0; (width + 2) * stride], vec![0; (width + 2) * stride]); pairs];
    // A line-interleaved scan shares the context statistics between its components but keeps
    // a RUNindex for each (Annex B).
    let mut run_index = [0; 4];

    for y in 0..frame.height {
        if restart_interval > 0 && y > 0 && y % restart_interval == 0 {
            bits.restart(((y / restart_interval - 1) % 8) as u8)?;
            model.reset();
            run_index = [0; 4];
            for (prev, _) in &mut lines {
                prev.fill(0);
            }
        }
        let row = &mut out[y * width * components..(y + 1) * width * components];
        if pixel_interleaved {
            let (prev, cur) = &mut lines[0];
            model.decode_pixel_line(bits, prev, cur, n, &mut run_index[0])?;
            for (pixel, samples) in row.chunks_exact_mut(components).zip(cur[n..].chunks(n)) {
                for (&c, &value) in scan.components.iter().zip(samples) {
                    pixel[c] = value as u16;
                }
            }
            std::mem::swap(prev, cur);
        } else {
            for (i, &c) in scan.components.iter().enumerate() {
                let (prev, cur) = &mut lines[i];
                model.decode_line(bits, prev, cur, &mut run_index[i])?;
                for (sample, &value) in row[c..].iter_mut().step_by(components).zip(&cur[1..]) {
                    *sample = value as u16;
                }
                std::mem::swap(prev, cur);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/codecs/jpegls")
    }

    fn read(name: &str) -> Vec<u8> {
        let path = dir().join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn read_u16(name: &str) -> Vec<u16> {
        read(name)
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    const LIMITS: Limits = Limits {
        max_samples: 1 << 20,
    };

    fn limit(max_samples: usize) -> Limits {
        Limits { max_samples }
    }

    fn fnv1a64(samples: &[u16]) -> u64 {
        let bytes = samples.iter().flat_map(|s| s.to_le_bytes());
        bytes.fold(0xcbf29ce484222325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        })
    }

    /// A line of manifest.tsv (see make.py).
    struct Vector {
        name: String,
        width: u32,
        height: u32,
        components: u8,
        precision: u8,
        /// "u16" (the decode is NAME.u16) or "fnv1a64:<hash of the decode>".
        reference: String,
    }

    fn manifest() -> Vec<Vector> {
        let text = String::from_utf8(read("manifest.tsv")).unwrap();
        let vectors: Vec<_> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                assert_eq!(f.len(), 6, "manifest line {line:?}");
                let number = |i: usize| f[i].parse::<u32>().unwrap();
                Vector {
                    name: f[0].to_string(),
                    width: number(1),
                    height: number(2),
                    components: number(3) as u8,
                    precision: number(4) as u8,
                    reference: f[5].to_string(),
                }
            })
            .collect();
        assert!(
            vectors.len() >= 17,
            "manifest.tsv lists {} vectors",
            vectors.len()
        );
        vectors
    }

    #[test]
    fn decodes_every_vector_like_charls_and_libjpeg() {
        for v in manifest() {
            let name = &v.name;
            let frame = decode(&read(&format!("{name}.jls")), &LIMITS)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (frame.width, frame.height, frame.components, frame.precision),
                (v.width, v.height, v.components, v.precision),
                "{name}"
            );
            if let Some(hash) = v.reference.strip_prefix("fnv1a64:") {
                assert_eq!(format!("{:016x}", fnv1a64(&frame.samples)), hash, "{name}");
                continue;
            }
            let expected = read_u16(&format!("{name}.u16"));
            assert_eq!(frame.samples.len(), expected.len(), "{name}");
            if let Some(i) = (0..expected.len()).find(|&i| frame.samples[i] != expected[i]) {
                let pixel = i / usize::from(v.components);
                let (x, y) = (pixel % v.width as usize, pixel / v.width as usize);
                let (got, want) = (frame.samples[i], expected[i]);
                panic!("{name}: sample {i} (x {x}, y {y}) is {got}, expected {want}");
            }
        }
    }

    /// The codestream inside a DICOM file with encapsulated Pixel Data, from its SOI to the
    /// end of the file: what follows the EOI (an item's padding byte, the sequence delimiter)
    /// must be ignored.
    fn codestream_in(file: &[u8]) -> &[u8] {
        let soi = file.windows(2).position(|w| w == [0xFF, 0xD8]).unwrap();
        &file[soi..]
    }

    #[test]
    fn decodes_the_gdcm_dicom_series() {
        let series = dir().join("../../dicom-syntaxes/jpegls-lossless");
        for i in 1..=6 {
            let file = std::fs::read(series.join(format!("IM000{i}.dcm"))).unwrap();
            let frame = decode(codestream_in(&file), &LIMITS).unwrap();
            assert_eq!((frame.width, frame.height, frame.components), (32, 24, 1));
            assert_eq!(
                frame.samples,
                read_u16(&format!("dicom-IM000{i}.u16")),
                "IM000{i}"
            );
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for name in ["gray10_17x5", "rgb8_ilv2_near2", "restart_gray12"] {
            let data = read(&format!("{name}.jls"));
            for end in 0..data.len() {
                assert!(
                    decode(&data[..end], &LIMITS).is_err(),
                    "{name} cut at {end}"
                );
            }
        }
        // Cut inside the entropy-coded data, with the EOI put back: still an error.
        let data = read("gray8_ct.jls");
        let mut cut = data[..data.len() / 2].to_vec();
        cut.extend_from_slice(&[0xFF, EOI]);
        let error = decode(&cut, &LIMITS).unwrap_err();
        assert!(error.0.starts_with("truncated JPEG-LS scan"), "{error}");
    }

    #[test]
    fn single_byte_mutations_never_panic() {
        // Every value at every offset of the two smallest streams; a few values at every
        // offset of a larger one with restart markers.
        for (name, every_value) in [
            ("gray10_17x5", true),
            ("gray2", true),
            ("restart_gray12", false),
        ] {
            let data = read(&format!("{name}.jls"));
            let mut mutated = data.clone();
            for i in 0..data.len() {
                let values = if every_value {
                    (0..=255).collect()
                } else {
                    vec![data[i] ^ 0x01, data[i] ^ 0x80, 0x00, 0xFF]
                };
                for value in values {
                    mutated[i] = value;
                    let _ = decode(&mutated, &LIMITS);
                }
                mutated[i] = data[i];
            }
        }
    }

    /// SOI, then an SOF55 segment for `width` x `height` x `components` samples of `bits`.
    fn sof(width: u16, height: u16, components: u8, bits: u8) -> Vec<u8> {
        let mut data = vec![0xFF, SOI, 0xFF, SOF55, 0, 8 + 3 * components, bits];
        data.extend(height.to_be_bytes());
        data.extend(width.to_be_bytes());
        data.push(components);
        for c in 1..=components {
            data.extend([c, 0x11, 0]);
        }
        data
    }

    #[test]
    fn frame_size_is_checked_before_allocation() {
        let data = read("gray8_ct.jls");
        let error = decode(&data, &limit(96 * 80 - 1)).unwrap_err();
        assert!(error.0.contains("exceeds the limit"), "{error}");
        assert!(decode(&data, &limit(96 * 80)).is_ok());

        // Nothing follows the SOF55: a check after the allocation would fail only later.
        let huge = sof(65535, 65535, 4, 16);
        let error = decode(&huge, &limit(1000)).unwrap_err();
        let message = "65535x65535x4 samples exceeds the limit of 1000";
        assert!(error.0.contains(message), "{error}");
    }

    #[test]
    fn refuses_what_is_out_of_scope() {
        let refuse = |data: &[u8], needle: &str| {
            let error = decode(data, &LIMITS).unwrap_err();
            assert!(error.0.contains(needle), "{error:?} lacks {needle:?}");
        };
        refuse(&sof(0, 8, 1, 8), "zero size");
        refuse(&sof(8, 0, 1, 8), "zero size");
        refuse(&sof(8, 8, 1, 1), "precision 1");
        refuse(&sof(8, 8, 1, 17), "precision 17");
        refuse(&sof(8, 8, 5, 8), "5 components");
        let mut subsampled = sof(8, 8, 3, 8);
        subsampled[16] = 0x21; // component 2: H = 2, V = 1
        refuse(&subsampled, "sub-sampled");
        refuse(
            &[0xFF, SOI, 0xFF, 0xC3, 0, 2],
            "SOF3 (0xFFC3) is not a JPEG-LS frame",
        );
        refuse(&[0xFF, 0xD9], "no SOI");

        let mut mapping = sof(8, 8, 1, 8);
        mapping.extend([0xFF, LSE, 0, 5, 2, 1, 1]);
        refuse(&mapping, "mapping table (type 2/3)");
        let mut hp = vec![0xFF, SOI, 0xFF, APP8, 0, 7];
        hp.extend(b"mrfx\x01");
        refuse(&hp, "colour transform 1");

        // A valid stream with one byte of a header changed.
        let data = read("gray8_ct.jls");
        let sos = data.windows(2).position(|w| w == [0xFF, SOS]).unwrap();
        let with = |offset: usize, value: u8| {
            let mut changed = data.clone();
            changed[offset] = value;
            changed
        };
        refuse(&with(sos + 6, 1), "mapping table 1");
        refuse(&with(sos + 9, 0x01), "point transform");
        refuse(&with(sos + 7, 128), "NEAR 128");
        refuse(&with(sos + 8, 3), "interleave mode (ILV) 3");
        refuse(&with(sos + 5, 9), "component 9 is not in the frame");
        refuse(&with(sos + 1, DNL), "DNL");
        refuse(&with(sos + 1, 0xD3), "RST3 marker outside a scan");
        refuse(&with(3, SOS), "SOS before the SOF55");

        // LSE presets out of range, and an LSE type 4.
        let lse = |payload: &[u8]| {
            let mut changed = data[..sos].to_vec();
            changed.extend([0xFF, LSE, 0, payload.len() as u8 + 2]);
            changed.extend(payload);
            changed.extend(&data[sos..]);
            changed
        };
        refuse(
            &lse(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            "MAXVAL 256 exceeds",
        );
        refuse(
            &lse(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
            "T1 = 256 is outside 1..=255",
        );
        refuse(
            &lse(&[1, 0, 0, 0, 9, 0, 5, 0, 0, 0, 0]),
            "T2 = 5 is outside 9..=255",
        );
        refuse(
            &lse(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
            "RESET = 2 is outside 3..=255",
        );
        refuse(
            &lse(&[4, 2, 0, 9, 0, 9]),
            "oversize image dimension (type 4)",
        );
        let mut dri = data[..sos].to_vec();
        dri.extend([0xFF, DRI, 0, 3, 1]);
        refuse(&dri, "DRI segment length 3");
    }

    #[test]
    fn restart_markers_must_count_up() {
        let data = read("restart_gray12.jls");
        let rst0 = data.windows(2).position(|w| w == [0xFF, RST0]).unwrap();
        let mut wrong = data.clone();
        wrong[rst0 + 1] = RST0 + 1;
        let error = decode(&wrong, &LIMITS).unwrap_err();
        assert!(error.0.contains("expected RST0"), "{error}");
    }

    #[test]
    fn missing_component_scan_is_an_error() {
        // rgb8_ilv0 without its last scan (SOS … up to EOI).
        let data = read("rgb8_ilv0.jls");
        let last_sos = data.windows(2).rposition(|w| w == [0xFF, SOS]).unwrap();
        let mut cut = data[..last_sos].to_vec();
        cut.extend_from_slice(&[0xFF, EOI]);
        let error = decode(&cut, &LIMITS).unwrap_err();
        assert!(error.0.contains("no scan for component 3"), "{error}");
    }

    #[test]
    fn default_thresholds_follow_t87() {
        // C.2.4.1.1.1 and Table C.3 (MAXVAL 255, NEAR 0: 3, 7, 21).
        assert_eq!(default_thresholds(255, 0), (3, 7, 21));
        assert_eq!(default_thresholds(4095, 0), (18, 67, 276));
        assert_eq!(default_thresholds(65535, 0), (18, 67, 276));
        assert_eq!(default_thresholds(255, 3), (12, 22, 42));
        assert_eq!(default_thresholds(3, 0), (2, 3, 3));
        assert_eq!(default_thresholds(15, 1), (3, 5, 8));
    }
}
