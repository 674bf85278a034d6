//! Pixel data: transfer-syntax support, parallel decoding, and stored values → f32 HU.

use super::codec::{self, CodecError, Frame, Limits};
use super::scan::{open_object, FileHeader};
use super::series::{Geometry, SliceRef};
use super::DicomError;
use crate::volume::StoredType;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use ndarray::{Array3, ShapeBuilder};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// The registry name of a transfer syntax, or "unknown transfer syntax".
pub(crate) fn syntax_name(uid: &str) -> String {
    TransferSyntaxRegistry
        .get(uid)
        .map(|ts| ts.name().to_string())
        .unwrap_or_else(|| "unknown transfer syntax".to_string())
}

/// What to do about a syntax this build cannot decode.
fn hint(_uid: &str) -> &'static str {
    ""
}

type Decoder = fn(&[u8], &Limits) -> Result<Frame, CodecError>;

/// Syntaxes decoded by this crate's own codecs ([`super::codec`]) rather than dicom-rs:
/// JPEG-LS (dicom-rs needs CharLS, built with cmake) and JPEG baseline/extended, 8 and 12 bit
/// (jpeg-decoder has no 12-bit support; ours also matches libjpeg's IDCT sample for sample).
fn own_decoder(uid: &str) -> Option<Decoder> {
    match uid {
        "1.2.840.10008.1.2.4.50" | "1.2.840.10008.1.2.4.51" => Some(codec::jpeg_dct::decode),
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => Some(codec::jpegls::decode),
        _ => None,
    }
}

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// JPEG 2000 lossless / lossy (HTJ2K is not decoded).
fn is_j2k(uid: &str) -> bool {
    matches!(uid, "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91")
}

/// Whether this build can decode the pixel data of `uid`; `Err` says why not.
pub(crate) fn check_syntax(uid: &str) -> Result<(), String> {
    if own_decoder(uid).is_some() || uid == RLE_LOSSLESS || is_j2k(uid) {
        return Ok(());
    }
    match TransferSyntaxRegistry.get(uid) {
        None => Err(format!("unknown transfer syntax {uid}")),
        Some(ts) if !ts.can_decode_all() => Err(format!(
            "transfer syntax {uid} ({}) is not supported by this build{}",
            ts.name(),
            hint(uid)
        )),
        Some(_) => Ok(()),
    }
}

/// Storage type of the stored values.
pub(crate) fn stored_type(h: &FileHeader) -> Result<StoredType, DicomError> {
    Ok(match (h.bits_allocated, h.signed) {
        (8, false) => StoredType::U8,
        (8, true) => StoredType::I8,
        (16, false) => StoredType::U16,
        (16, true) => StoredType::I16,
        (32, false) => StoredType::U32,
        (32, true) => StoredType::I32,
        (b, _) => {
            return Err(DicomError::UnsupportedPixels {
                path: h.source.display_path().to_path_buf(),
                detail: format!("BitsAllocated {b} (expected 8, 16 or 32)"),
            })
        }
    })
}

/// How stored bytes become an integer value.
#[derive(Clone, Copy, Debug)]
struct PixelFormat {
    bytes: usize,
    bits_stored: u32,
    shift: u32,
    signed: bool,
}

impl PixelFormat {
    fn of(h: &FileHeader, native: bool) -> PixelFormat {
        let bits_stored = u32::from(h.bits_stored.clamp(1, h.bits_allocated));
        // Only native (uncompressed) data can carry the value above bit 0 (HighBit).
        let shift = if native {
            (u32::from(h.high_bit) + 1).saturating_sub(bits_stored)
        } else {
            0
        };
        PixelFormat {
            bytes: usize::from(h.bits_allocated / 8),
            bits_stored,
            shift,
            signed: h.signed,
        }
    }

    #[inline]
    fn value(&self, raw: u32) -> i64 {
        let v = raw >> self.shift;
        let v = if self.bits_stored >= 32 {
            v
        } else {
            v & ((1u32 << self.bits_stored) - 1)
        };
        if self.signed && self.bits_stored < 64 && (v >> (self.bits_stored - 1)) & 1 == 1 {
            i64::from(v) - (1i64 << self.bits_stored)
        } else {
            i64::from(v)
        }
    }
}

/// Convert one frame's little-endian samples to HU into `out`. Returns whether every value
/// is an integer that fits i16.
fn convert_frame(
    bytes: &[u8],
    fmt: PixelFormat,
    slope: f64,
    intercept: f64,
    out: &mut [f32],
) -> bool {
    let mut integral = slope.fract() == 0.0 && intercept.fract() == 0.0;
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    match fmt.bytes {
        1 => {
            for (o, b) in out.iter_mut().zip(bytes) {
                let v = fmt.value(u32::from(*b)) as f64 * slope + intercept;
                lo = lo.min(v);
                hi = hi.max(v);
                *o = v as f32;
            }
        }
        2 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                let raw = u32::from(u16::from_le_bytes([b[0], b[1]]));
                let v = fmt.value(raw) as f64 * slope + intercept;
                lo = lo.min(v);
                hi = hi.max(v);
                *o = v as f32;
            }
        }
        _ => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                let raw = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let v = fmt.value(raw) as f64 * slope + intercept;
                lo = lo.min(v);
                hi = hi.max(v);
                *o = v as f32;
            }
        }
    }
    if !integral {
        // Non-integer slope/intercept can still give integers (e.g. slope 0.5 on even values).
        integral = out.iter().all(|v| v.fract() == 0.0);
    }
    integral && lo >= f64::from(i16::MIN) && hi <= f64::from(i16::MAX)
}

/// Decode the chosen stack into an `[i, j, k]` f32 HU array (column, row, sorted slice).
/// Returns the array, the stored type, and whether all values are integers that fit i16.
pub(crate) fn decode_stack(
    headers: &[FileHeader],
    geom: &Geometry,
) -> Result<(Array3<f32>, StoredType, bool), DicomError> {
    let (nx, ny, nz) = (geom.cols as usize, geom.rows as usize, geom.slices.len());
    let first = &headers[geom.slices[0].file];
    let stype = stored_type(first)?;
    let mut files: Vec<usize> = geom.slices.iter().map(|s| s.file).collect();
    files.sort_unstable();
    files.dedup();
    check_pixel_format(headers, &files, first)?;

    // Multi-frame files are opened once and shared by the workers.
    let mut shared: HashMap<usize, Arc<DefaultDicomObject>> = HashMap::new();
    for &f in &files {
        if headers[f].n_frames > 1 {
            shared.insert(f, Arc::new(open_full(&headers[f])?));
        }
    }

    let mut data = Array3::<f32>::zeros((nx, ny, nz).f());
    let plane = nx * ny;
    let buf = data
        .as_slice_memory_order_mut()
        .expect("freshly allocated array is contiguous");
    let integral: Result<Vec<bool>, DicomError> = buf
        .par_chunks_mut(plane)
        .zip(geom.slices.par_iter())
        .map(|(out, s)| {
            let h = &headers[s.file];
            let owned;
            let obj: &DefaultDicomObject = match shared.get(&s.file) {
                Some(o) => o,
                None => {
                    owned = open_full(h)?;
                    &owned
                }
            };
            decode_slice(h, obj, s, [nx, ny], out)
        })
        .collect();
    let integral = integral?.into_iter().all(|b| b);
    Ok((data, stype, integral))
}

/// Every file must share the pixel format, and its syntax must be decodable.
fn check_pixel_format(
    headers: &[FileHeader],
    files: &[usize],
    first: &FileHeader,
) -> Result<(), DicomError> {
    for &f in files {
        let h = &headers[f];
        check_syntax(&h.transfer_syntax).map_err(|detail| DicomError::UnsupportedSyntax {
            path: h.source.display_path().to_path_buf(),
            uid: h.transfer_syntax.clone(),
            detail,
        })?;
        if (h.bits_allocated, h.signed) != (first.bits_allocated, first.signed) {
            return Err(DicomError::UnsupportedPixels {
                path: h.source.display_path().to_path_buf(),
                detail: format!(
                    "BitsAllocated {} / PixelRepresentation {} differs from {} in the same series",
                    h.bits_allocated,
                    u8::from(h.signed),
                    first.source.display_path().display()
                ),
            });
        }
        stored_type(h)?;
    }
    Ok(())
}

/// Decode slice `s` (a frame of `obj`, the file of header `h`) of `nx × ny` pixels into `out`
/// as rescaled f32; whether all its values are integers that fit i16.
fn decode_slice(
    h: &FileHeader,
    obj: &DefaultDicomObject,
    s: &SliceRef,
    [nx, ny]: [usize; 2],
    out: &mut [f32],
) -> Result<bool, DicomError> {
    let plane = nx * ny;
    let decode_err = |e: String| DicomError::Decode {
        path: h.source.display_path().to_path_buf(),
        syntax: format!(
            "{} ({})",
            h.transfer_syntax,
            syntax_name(&h.transfer_syntax)
        ),
        detail: format!("{e}{}", hint(&h.transfer_syntax)),
    };
    let native = TransferSyntaxRegistry
        .get(&h.transfer_syntax)
        .is_some_and(|ts| !ts.is_encapsulated_pixel_data());
    let fmt = PixelFormat::of(h, native);
    let frame_bytes = plane * fmt.bytes;
    let decoded;
    let bytes: std::borrow::Cow<[u8]> = if native {
        native_frame(obj, h, s.frame, frame_bytes).map_err(decode_err)?
    } else if is_j2k(&h.transfer_syntax) {
        let data = frame_fragments(obj, h, s.frame).map_err(decode_err)?;
        let le = codec::j2k::decode(
            &data,
            &Limits { max_samples: plane },
            (h.cols, h.rows, 1),
            fmt.bytes,
        )
        .map_err(|e| decode_err(e.to_string()))?;
        std::borrow::Cow::Owned(le)
    } else if h.transfer_syntax == RLE_LOSSLESS {
        let data = frame_fragments(obj, h, s.frame).map_err(decode_err)?;
        let le = codec::rle::decode(&data, h.rows, h.cols, 1, fmt.bytes)
            .map_err(|e| decode_err(e.to_string()))?;
        std::borrow::Cow::Owned(le)
    } else if let Some(decode) = own_decoder(&h.transfer_syntax) {
        let data = frame_fragments(obj, h, s.frame).map_err(decode_err)?;
        let frame =
            decode(&data, &Limits { max_samples: plane }).map_err(|e| decode_err(e.to_string()))?;
        std::borrow::Cow::Owned(frame_to_le(&frame, h, fmt.bytes).map_err(decode_err)?)
    } else {
        // A third-party decoder that panics on damaged data must not take the process
        // down: its panic becomes this file's decode error.
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if h.n_frames > 1 {
                obj.decode_pixel_data_frame(s.frame)
            } else {
                obj.decode_pixel_data()
            }
        }));
        decoded = match attempt {
            Ok(r) => r.map_err(|e| decode_err(e.to_string()))?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                return Err(decode_err(format!(
                    "the decoder failed on this data ({what})"
                )));
            }
        };
        std::borrow::Cow::Borrowed(
            decoded
                .frame_data(0)
                .map_err(|e| decode_err(e.to_string()))?,
        )
    };
    if bytes.len() < frame_bytes {
        return Err(decode_err(format!(
            "frame has {} bytes, expected {} ({}×{} × {} bytes)",
            bytes.len(),
            frame_bytes,
            nx,
            ny,
            fmt.bytes
        )));
    }
    Ok(convert_frame(&bytes, fmt, s.slope, s.intercept, out))
}

fn open_full(h: &FileHeader) -> Result<DefaultDicomObject, DicomError> {
    open_object(&h.source, false)
        .map(|o| o.obj)
        .map_err(|e| DicomError::Unreadable {
            path: h.source.display_path().to_path_buf(),
            detail: e.message,
        })
}

/// Frame `frame` of native (uncompressed) Pixel Data as little-endian samples of
/// `frame_bytes / plane` bytes each.
///
/// dicom-rs hands native Pixel Data over as the values of its VR (OW: 16-bit words already
/// in machine order). For 32-bit samples in a big-endian file that order is wrong, since each
/// sample spans two words: the words are put back into file order first, and every sample
/// is then read in the file's byte order.
fn native_frame<'a>(
    obj: &'a DefaultDicomObject,
    h: &FileHeader,
    frame: u32,
    frame_bytes: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, String> {
    use dicom_core::value::{PrimitiveValue, Value};
    use std::borrow::Cow;
    let big_endian = h.transfer_syntax == "1.2.840.10008.1.2.2";
    let sample = usize::from(h.bits_allocated / 8).max(1);
    let elem = obj
        .element(dicom_dictionary_std::tags::PIXEL_DATA)
        .map_err(|e| format!("no Pixel Data: {e}"))?;
    let Value::Primitive(p) = elem.value() else {
        return Err("Pixel Data is encapsulated although the transfer syntax is native".into());
    };
    // Bytes in file order.
    let file_order: Cow<[u8]> = match p {
        PrimitiveValue::U8(b) => Cow::Borrowed(&b[..]),
        PrimitiveValue::U16(w) if sample == 2 => {
            // Words are samples: machine order is what we want.
            let mut v = Vec::with_capacity(w.len() * 2);
            w.iter().for_each(|x| v.extend(x.to_le_bytes()));
            return slice_frame(Cow::Owned(v), frame, frame_bytes);
        }
        PrimitiveValue::U16(w) => {
            let mut v = Vec::with_capacity(w.len() * 2);
            if big_endian {
                w.iter().for_each(|x| v.extend(x.to_be_bytes()));
            } else {
                w.iter().for_each(|x| v.extend(x.to_le_bytes()));
            }
            Cow::Owned(v)
        }
        PrimitiveValue::U32(w) if sample == 4 => {
            let mut v = Vec::with_capacity(w.len() * 4);
            w.iter().for_each(|x| v.extend(x.to_le_bytes()));
            return slice_frame(Cow::Owned(v), frame, frame_bytes);
        }
        other => {
            return Err(format!(
                "Pixel Data with VR {:?} holding {} values is not supported for BitsAllocated {}",
                elem.vr(),
                other.multiplicity(),
                h.bits_allocated
            ))
        }
    };
    if !big_endian || sample == 1 {
        return slice_frame(file_order, frame, frame_bytes);
    }
    let mut le = file_order.into_owned();
    le.chunks_exact_mut(sample).for_each(|c| c.reverse());
    slice_frame(Cow::Owned(le), frame, frame_bytes)
}

/// The compressed bytes of frame `frame`: all fragments of a single-frame file, one fragment
/// per frame when the counts match, else the fragments the Basic Offset Table assigns to it.
fn frame_fragments<'a>(
    obj: &'a DefaultDicomObject,
    h: &FileHeader,
    frame: u32,
) -> Result<std::borrow::Cow<'a, [u8]>, String> {
    use dicom_core::value::Value;
    use std::borrow::Cow;
    let elem = obj
        .element(dicom_dictionary_std::tags::PIXEL_DATA)
        .map_err(|e| format!("no Pixel Data: {e}"))?;
    let Value::PixelSequence(seq) = elem.value() else {
        return Err("Pixel Data is not encapsulated although the transfer syntax is".into());
    };
    let fragments = seq.fragments();
    let concat = |range: &[Vec<u8>]| -> Cow<'a, [u8]> {
        Cow::Owned(range.iter().flat_map(|f| f.iter().copied()).collect())
    };
    let n = h.n_frames as usize;
    let i = frame as usize;
    if n == 1 {
        return Ok(match fragments {
            [one] => Cow::Borrowed(&one[..]),
            many => concat(many),
        });
    }
    if fragments.len() == n {
        return Ok(Cow::Borrowed(&fragments[i][..]));
    }
    // Offsets count from the first fragment's item tag; each item has an 8-byte header.
    let bot = seq.offset_table();
    if bot.len() == n {
        let mut starts = Vec::with_capacity(fragments.len());
        let mut at = 0u64;
        for f in fragments {
            starts.push(at);
            at += 8 + f.len() as u64;
        }
        let lo = u64::from(bot[i]);
        let hi = bot.get(i + 1).map_or(u64::MAX, |&b| u64::from(b));
        let first = starts.iter().position(|&s| s >= lo);
        let last = starts.iter().rposition(|&s| s < hi);
        if let (Some(a), Some(b)) = (first, last) {
            if a <= b && starts[a] == lo {
                return Ok(concat(&fragments[a..=b]));
            }
        }
        return Err(format!(
            "the Basic Offset Table entry {lo} of frame {} does not start a fragment",
            i + 1
        ));
    }
    Err(format!(
        "{} fragments for {n} frames and no Basic Offset Table to tell which belong to frame {}",
        fragments.len(),
        i + 1
    ))
}

/// A decoded single-component frame as little-endian samples of `bytes` bytes each.
fn frame_to_le(frame: &Frame, h: &FileHeader, bytes: usize) -> Result<Vec<u8>, String> {
    if (frame.width, frame.height, frame.components) != (h.cols, h.rows, 1) {
        return Err(format!(
            "the codestream holds {}×{} pixels of {} component(s), the header says {}×{} of 1",
            frame.width, frame.height, frame.components, h.cols, h.rows
        ));
    }
    if u16::from(frame.precision) > h.bits_allocated {
        return Err(format!(
            "the codestream has {}-bit samples, more than BitsAllocated {}",
            frame.precision, h.bits_allocated
        ));
    }
    let mut out = Vec::with_capacity(frame.samples.len() * bytes);
    match bytes {
        1 => out.extend(frame.samples.iter().map(|&v| v as u8)),
        2 => frame
            .samples
            .iter()
            .for_each(|v| out.extend(v.to_le_bytes())),
        _ => frame
            .samples
            .iter()
            .for_each(|&v| out.extend(u32::from(v).to_le_bytes())),
    }
    Ok(out)
}

fn slice_frame(
    all: std::borrow::Cow<'_, [u8]>,
    frame: u32,
    frame_bytes: usize,
) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    use std::borrow::Cow;
    let start = frame as usize * frame_bytes;
    let end = start + frame_bytes;
    if all.len() < end {
        return Err(format!(
            "Pixel Data holds {} bytes; frame {} needs bytes {start}..{end}",
            all.len(),
            frame + 1
        ));
    }
    Ok(match all {
        Cow::Borrowed(b) => Cow::Borrowed(&b[start..end]),
        Cow::Owned(mut v) => {
            v.truncate(end);
            v.drain(..start);
            Cow::Owned(v)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twelve_bit_signed_and_high_bit() {
        let f = PixelFormat {
            bytes: 2,
            bits_stored: 12,
            shift: 0,
            signed: true,
        };
        assert_eq!(f.value(0x0FFF), -1);
        assert_eq!(f.value(0xFFFF), -1); // sign-extended storage reads the same
        assert_eq!(f.value(0x07FF), 2047);
        assert_eq!(f.value(0x0800), -2048);
        let u = PixelFormat {
            bytes: 2,
            bits_stored: 12,
            shift: 4,
            signed: false,
        };
        assert_eq!(u.value(0xABC0), 0xABC);
        let mut out = [0f32; 2];
        let ok = convert_frame(&[0x02, 0x00, 0xFE, 0x0F], f, 0.5, -10.0, &mut out);
        assert_eq!(out, [-9.0, -11.0]);
        assert!(ok);
        let ok = convert_frame(&[0x03, 0x00, 0x00, 0x00], f, 0.5, 0.0, &mut out);
        assert_eq!(out, [1.5, 0.0]);
        assert!(!ok);
    }
}
