//! JPEG 2000 (lossless and lossy) through OpenJPEG, with the sizes checked on both sides.
//!
//! Ours rather than dicom-rs's adapter because that one writes the decoded samples into a
//! buffer sized from the DICOM header without comparing the codestream's size (a codestream
//! larger than Rows × Columns indexed past the buffer and panicked). Here the SIZ marker is
//! read first, so OpenJPEG is never asked to decode an image larger than the header allows,
//! and the decoded components must match the header exactly.

use super::{CodecError, Limits};

/// The image size a JPEG 2000 codestream declares in its SIZ marker segment (ISO 15444-1
/// A.5.1): width, height, components.
fn siz(data: &[u8]) -> Result<(u64, u64, u64), CodecError> {
    // A raw codestream starts with SOC (FF4F) then SIZ (FF51); a JP2 file wraps it in boxes,
    // so look for the pair near the start.
    let at = data
        .windows(4)
        .take(4096)
        .position(|w| w == [0xFF, 0x4F, 0xFF, 0x51])
        .ok_or_else(|| CodecError::new("no JPEG 2000 codestream (SOC + SIZ markers) found"))?;
    let s = &data[at + 4..];
    if s.len() < 38 {
        return Err(CodecError::new("JPEG 2000 SIZ marker segment is truncated"));
    }
    let u32at = |i: usize| u64::from(u32::from_be_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]));
    let (xsiz, ysiz, xo, yo) = (u32at(4), u32at(8), u32at(12), u32at(16));
    let csiz = u64::from(u16::from_be_bytes([s[36], s[37]]));
    if xsiz <= xo || ysiz <= yo || csiz == 0 {
        return Err(CodecError::new(format!(
            "JPEG 2000 SIZ declares an empty image ({xsiz}−{xo} × {ysiz}−{yo}, {csiz} components)"
        )));
    }
    Ok((xsiz - xo, ysiz - yo, csiz))
}

/// Decode one frame into pixel-interleaved little-endian samples of `bytes` bytes each (the
/// low bytes of each two's-complement sample; signedness is the DICOM header's business).
pub(crate) fn decode(
    data: &[u8],
    limits: &Limits,
    (width, height, components): (u32, u32, u16),
    bytes: usize,
) -> Result<Vec<u8>, CodecError> {
    let (w, h, c) = siz(data)?;
    if w.saturating_mul(h).saturating_mul(c) > limits.max_samples as u64 {
        return Err(CodecError::new(format!(
            "the JPEG 2000 codestream declares {w}×{h} pixels of {c} component(s), more than the header's {width}×{height} of {components}"
        )));
    }
    let image = jpeg2k::Image::from_bytes(data)
        .map_err(|e| CodecError::new(format!("OpenJPEG cannot decode the codestream: {e}")))?;
    let comps = image.components();
    let n = width as usize * height as usize;
    if comps.len() != usize::from(components)
        || comps
            .iter()
            .any(|k| (k.width(), k.height()) != (width, height) || k.data().len() != n)
    {
        return Err(CodecError::new(format!(
            "the JPEG 2000 image is {}×{} with {} component(s); the header says {width}×{height} with {components}",
            image.width(),
            image.height(),
            comps.len()
        )));
    }
    let spp = usize::from(components);
    let mut out = vec![0u8; n * spp * bytes];
    for (ci, k) in comps.iter().enumerate() {
        for (p, &v) in k.data().iter().enumerate() {
            let at = (p * spp + ci) * bytes;
            out[at..at + bytes].copy_from_slice(&v.to_le_bytes()[..bytes]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siz_is_read_and_checked_before_decoding() {
        let mut cs = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 41, 0, 0];
        for v in [65535u32, 65535, 0, 0, 65535, 65535, 0, 0] {
            cs.extend(v.to_be_bytes());
        }
        cs.extend(1u16.to_be_bytes());
        cs.extend([15, 1, 1]);
        assert_eq!(siz(&cs).unwrap(), (65535, 65535, 1));
        let e = decode(&cs, &Limits { max_samples: 768 }, (32, 24, 1), 2).unwrap_err();
        assert!(e.to_string().contains("65535×65535"), "{e}");
        for n in 0..cs.len() {
            assert!(decode(&cs[..n], &Limits { max_samples: 768 }, (32, 24, 1), 2).is_err());
        }
    }
}
