//! DICOM RLE Lossless (PS3.5 Annex G): a 64-byte header of segment offsets, then one PackBits
//! segment per byte plane (most significant byte first, for each sample in turn).
//!
//! Ours rather than dicom-rs's because that adapter indexes past the end of a segment that
//! decodes short (a cut or corrupt stream panicked the process).

use super::CodecError;

/// Decode one frame of `rows × cols` pixels, `samples` samples of `bytes` bytes each, into
/// pixel-interleaved little-endian samples. Every segment must fill its byte plane.
pub(crate) fn decode(
    data: &[u8],
    rows: u32,
    cols: u32,
    samples: u16,
    bytes: usize,
) -> Result<Vec<u8>, CodecError> {
    let plane = rows as usize * cols as usize;
    let expected_segments = usize::from(samples) * bytes;
    if data.len() < 64 {
        return Err(CodecError::new(format!(
            "RLE frame of {} bytes is shorter than its 64-byte header",
            data.len()
        )));
    }
    let word = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let n = word(0) as usize;
    if n != expected_segments {
        return Err(CodecError::new(format!(
            "RLE header lists {n} segment(s); {samples} sample(s) of {bytes} byte(s) need {expected_segments}"
        )));
    }
    let offsets: Vec<usize> = (0..n).map(|i| word(4 + 4 * i) as usize).collect();
    for (i, &o) in offsets.iter().enumerate() {
        let prev = if i == 0 { 64 } else { offsets[i - 1] };
        if o < prev || o > data.len() || (i == 0 && o != 64) {
            return Err(CodecError::new(format!(
                "RLE segment {} starts at byte {o}, outside {prev}..={} (header or stream corrupt)",
                i + 1,
                data.len()
            )));
        }
    }
    let total = plane
        .checked_mul(expected_segments)
        .ok_or_else(|| CodecError::new("RLE frame size overflows"))?;
    let mut out = vec![0u8; total];
    let mut seg_plane = vec![0u8; plane];
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(data.len());
        unpack(&data[start..end], &mut seg_plane).map_err(|got| {
            CodecError::new(format!(
                "RLE segment {} decodes to {got} of {plane} bytes (truncated or corrupt stream)",
                i + 1
            ))
        })?;
        // Segment i holds byte (bytes - 1 - b) of sample c, little-endian order being LSB first.
        let (c, b) = (i / bytes, i % bytes);
        let lane = c * bytes + (bytes - 1 - b);
        let stride = expected_segments;
        for (p, &v) in seg_plane.iter().enumerate() {
            out[p * stride + lane] = v;
        }
    }
    Ok(out)
}

/// PackBits into `out`, which must be filled exactly; `Err` gives how many bytes were.
fn unpack(seg: &[u8], out: &mut [u8]) -> Result<(), usize> {
    let (mut i, mut o) = (0usize, 0usize);
    while o < out.len() {
        let Some(&h) = seg.get(i) else {
            return Err(o);
        };
        i += 1;
        let h = h as i8;
        if h >= 0 {
            let n = h as usize + 1;
            let Some(src) = seg.get(i..i + n) else {
                return Err(o);
            };
            let m = n.min(out.len() - o);
            out[o..o + m].copy_from_slice(&src[..m]);
            o += m;
            i += n;
        } else if h != -128 {
            let n = (1 - h as isize) as usize;
            let Some(&v) = seg.get(i) else {
                return Err(o);
            };
            let m = n.min(out.len() - o);
            out[o..o + m].fill(v);
            o += m;
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(segments: &[Vec<u8>]) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&(segments.len() as u32).to_le_bytes());
        let mut at = 64u32;
        for (i, s) in segments.iter().enumerate() {
            h[4 + 4 * i..8 + 4 * i].copy_from_slice(&at.to_le_bytes());
            at += s.len() as u32;
        }
        h.extend(segments.iter().flatten());
        h
    }

    #[test]
    fn sixteen_bit_planes_become_little_endian_samples() {
        // 2×2 pixels: MSB plane [0x01 ×4] as a run, LSB plane literal [1, 2, 3, 4].
        let f = frame(&[vec![0xFD, 0x01], vec![0x03, 1, 2, 3, 4]]);
        let out = decode(&f, 2, 2, 1, 2).unwrap();
        assert_eq!(out, [1, 1, 2, 1, 3, 1, 4, 1]);
    }

    #[test]
    fn a_short_segment_is_an_error_not_a_panic() {
        let f = frame(&[vec![0xFD, 0x01], vec![0x03, 1, 2]]);
        let e = decode(&f, 2, 2, 1, 2).unwrap_err();
        assert!(e.to_string().contains("segment 2"), "{e}");
        for n in 0..f.len() {
            let _ = decode(&f[..n], 2, 2, 1, 2);
        }
        for i in 0..f.len() {
            for v in [0, 0x7F, 0x80, 0xFF] {
                let mut g = f.clone();
                g[i] = v;
                let _ = decode(&g, 2, 2, 1, 2);
            }
        }
    }

    #[test]
    fn segment_count_must_match_the_pixel_format() {
        let f = frame(&[vec![0xFD, 0x01]]);
        assert!(decode(&f, 2, 2, 1, 2).is_err());
        assert_eq!(decode(&f, 2, 2, 1, 1).unwrap(), [1, 1, 1, 1]);
    }
}
