//! Reading a `.nii` / `.nii.gz` file: whole or not at all.

use super::header::{self, Datatype, NiftiInfo, HEADER_SIZE};
use super::NiftiError;
use flate2::bufread::MultiGzDecoder;
use ndarray::{Array3, ShapeBuilder};
use nifti::NiftiHeader;
use rayon::prelude::*;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::path::Path;

/// Voxels converted per rayon task.
const CHUNK: usize = 1 << 16;

pub(crate) struct RawImage {
    pub header: NiftiHeader,
    pub info: NiftiInfo,
    /// Exactly `info.nbytes` bytes of voxel data in file byte order.
    pub data: Vec<u8>,
}

fn io_err(path: &Path, gz: bool, e: std::io::Error) -> NiftiError {
    let path = path.to_path_buf();
    if gz && matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::InvalidData) {
        NiftiError::Gzip { path, source: e }
    } else {
        NiftiError::Io { path, source: e }
    }
}

/// Read until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

struct Opened {
    reader: Box<dyn Read>,
    gz: bool,
    /// On-disk length (for early truncation checks of uncompressed files).
    file_len: u64,
}

fn open(path: &Path) -> Result<Opened, NiftiError> {
    let file = File::open(path).map_err(|e| io_err(path, false, e))?;
    let file_len = file.metadata().map_err(|e| io_err(path, false, e))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    // Sniff the gzip magic rather than trusting the name.
    let gz = r
        .fill_buf()
        .map_err(|e| io_err(path, false, e))?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(r))
    } else {
        Box::new(r)
    };
    Ok(Opened {
        reader,
        gz,
        file_len,
    })
}

fn read_header_from(o: &mut Opened, path: &Path) -> Result<(NiftiHeader, NiftiInfo), NiftiError> {
    let mut head = [0u8; HEADER_SIZE];
    let got = read_full(&mut o.reader, &mut head).map_err(|e| truncated_or(path, o.gz, e))?;
    if got < HEADER_SIZE {
        return Err(NiftiError::Truncated {
            path: path.to_path_buf(),
            what: "header",
            expected: HEADER_SIZE as u64,
            got: got as u64,
        });
    }
    let h = header::parse(&head, path)?;
    let info = header::interpret(&h, path)?;
    Ok((h, info))
}

/// An unexpected end of a gzip stream is a truncated file, not an I/O failure.
fn truncated_or(path: &Path, gz: bool, e: std::io::Error) -> NiftiError {
    if e.kind() == ErrorKind::UnexpectedEof {
        NiftiError::Gzip {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "the compressed stream ends early (truncated file?)",
            ),
        }
    } else {
        io_err(path, gz, e)
    }
}

/// Read and validate only the header (cheap: a few hundred bytes, even for `.nii.gz`).
pub fn read_header(path: &Path) -> Result<(NiftiHeader, NiftiInfo), NiftiError> {
    let mut o = open(path)?;
    let (h, info) = read_header_from(&mut o, path)?;
    Ok((h, info))
}

/// The largest expansion of a deflate stream (RFC 1951: 258-byte matches coded in ~2 bits).
const MAX_DEFLATE_RATIO: u64 = 1032;

pub(crate) fn read_raw(path: &Path) -> Result<RawImage, NiftiError> {
    let mut o = open(path)?;
    let (header, info) = read_header_from(&mut o, path)?;
    let need = info.vox_offset.saturating_add(info.nbytes as u64);
    if !o.gz && o.file_len < need {
        return Err(NiftiError::Truncated {
            path: path.to_path_buf(),
            what: "voxel data",
            expected: info.nbytes as u64,
            got: o.file_len.saturating_sub(info.vox_offset),
        });
    }
    // Skip extensions up to vox_offset.
    let skip = info.vox_offset - HEADER_SIZE as u64;
    let skipped = std::io::copy(&mut (&mut o.reader).take(skip), &mut std::io::sink())
        .map_err(|e| truncated_or(path, o.gz, e))?;
    if skipped < skip {
        return Err(NiftiError::Truncated {
            path: path.to_path_buf(),
            what: "extensions before vox_offset",
            expected: skip,
            got: skipped,
        });
    }
    // Deflate expands at most 1032:1, so a gzip stream of `file_len` bytes cannot hold more:
    // refuse a header that claims otherwise before reserving what it claims.
    if o.gz && need > o.file_len.saturating_mul(MAX_DEFLATE_RATIO) {
        return Err(NiftiError::Truncated {
            path: path.to_path_buf(),
            what: "voxel data (more than a gzip stream of this size can hold)",
            expected: info.nbytes as u64,
            got: o.file_len.saturating_mul(MAX_DEFLATE_RATIO),
        });
    }
    let mut data = Vec::new();
    data.try_reserve_exact(info.nbytes)
        .map_err(|_| NiftiError::TooLarge {
            path: path.to_path_buf(),
            bytes: info.nbytes,
        })?;
    (&mut o.reader)
        .take(info.nbytes as u64)
        .read_to_end(&mut data)
        .map_err(|e| truncated_or(path, o.gz, e))?;
    if data.len() < info.nbytes {
        return Err(NiftiError::Truncated {
            path: path.to_path_buf(),
            what: "voxel data",
            expected: info.nbytes as u64,
            got: data.len() as u64,
        });
    }
    if o.gz {
        // Read to the end of the stream so the gzip CRC and length are checked.
        std::io::copy(&mut o.reader, &mut std::io::sink())
            .map_err(|e| truncated_or(path, true, e))?;
    }
    Ok(RawImage { header, info, data })
}

/// Convert every voxel with `f` (given the stored value as f64, exactly for all our types);
/// returns the flat (file-order) index of the first voxel `f` rejects.
fn convert<O, F>(raw: &[u8], dt: Datatype, big: bool, out: &mut [O], f: F) -> Option<usize>
where
    O: Send,
    F: Fn(f64) -> Option<O> + Sync,
{
    macro_rules! run {
        ($t:ty) => {{
            const S: usize = std::mem::size_of::<$t>();
            raw.par_chunks(CHUNK * S)
                .zip(out.par_chunks_mut(CHUNK))
                .enumerate()
                .filter_map(|(ci, (src, dst))| {
                    for (n, (b, o)) in src.chunks_exact(S).zip(dst.iter_mut()).enumerate() {
                        let mut a = [0u8; S];
                        a.copy_from_slice(b);
                        let v = if big {
                            <$t>::from_be_bytes(a)
                        } else {
                            <$t>::from_le_bytes(a)
                        };
                        match f(v as f64) {
                            Some(x) => *o = x,
                            None => return Some(ci * CHUNK + n),
                        }
                    }
                    None
                })
                .min()
        }};
    }
    match dt {
        Datatype::U8 => run!(u8),
        Datatype::I8 => run!(i8),
        Datatype::I16 => run!(i16),
        Datatype::U16 => run!(u16),
        Datatype::I32 => run!(i32),
        Datatype::U32 => run!(u32),
        Datatype::F32 => run!(f32),
        Datatype::F64 => run!(f64),
    }
}

fn scaler(scaling: Option<(f64, f64)>) -> impl Fn(f64) -> f64 + Sync {
    let (slope, inter) = scaling.unwrap_or((1.0, 0.0));
    move |v| v * slope + inter
}

fn fortran<T>(shape: [usize; 3], v: Vec<T>) -> Array3<T> {
    Array3::from_shape_vec((shape[0], shape[1], shape[2]).f(), v)
        .expect("voxel count equals the shape product (checked in interpret)")
}

fn unflat(shape: [usize; 3], n: usize) -> [usize; 3] {
    [
        n % shape[0],
        (n / shape[0]) % shape[1],
        n / (shape[0] * shape[1]),
    ]
}

/// Scaled f32 voxels, and whether every one is an integer that fits int16.
pub(crate) fn to_f32(raw: &RawImage) -> (Array3<f32>, bool) {
    let n = raw.info.shape.iter().product();
    let mut out = vec![0f32; n];
    decode_f32(
        &raw.data,
        raw.info.datatype,
        raw.info.big_endian,
        raw.info.scaling,
        &mut out,
    );
    let integral_i16 = out.par_chunks(CHUNK).all(|c| c.iter().all(|&v| is_i16(v)));
    (fortran(raw.info.shape, out), integral_i16)
}

/// The hot path of [`to_f32`]: byte order and scaling are decided once per chunk, not per
/// voxel. Without scaling `v as f32` equals `(v as f64) as f32` for every stored type
/// (both round to nearest), so results match the general [`convert`].
fn decode_f32(raw: &[u8], dt: Datatype, big: bool, scaling: Option<(f64, f64)>, out: &mut [f32]) {
    macro_rules! run {
        ($t:ty) => {{
            const S: usize = std::mem::size_of::<$t>();
            let read = |b: &[u8]| {
                let mut a = [0u8; S];
                a.copy_from_slice(b);
                if big {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                }
            };
            raw.par_chunks(CHUNK * S)
                .zip(out.par_chunks_mut(CHUNK))
                .for_each(|(src, dst)| {
                    let pairs = src.chunks_exact(S).zip(dst.iter_mut());
                    match scaling {
                        None => pairs.for_each(|(b, o)| *o = read(b) as f32),
                        Some((slope, inter)) => {
                            pairs.for_each(|(b, o)| *o = (read(b) as f64 * slope + inter) as f32)
                        }
                    }
                })
        }};
    }
    match dt {
        Datatype::U8 => run!(u8),
        Datatype::I8 => run!(i8),
        Datatype::I16 => run!(i16),
        Datatype::U16 => run!(u16),
        Datatype::I32 => run!(i32),
        Datatype::U32 => run!(u32),
        Datatype::F32 => run!(f32),
        Datatype::F64 => run!(f64),
    }
}

pub(crate) fn is_i16(v: f32) -> bool {
    v.fract() == 0.0 && (i16::MIN as f32..=i16::MAX as f32).contains(&v)
}

pub(crate) fn to_labels(raw: &RawImage, path: &Path) -> Result<Array3<u16>, NiftiError> {
    let n = raw.info.shape.iter().product();
    let mut out = vec![0u16; n];
    let scale = scaler(raw.info.scaling);
    let label = |v: f64| {
        let v = scale(v);
        (v.fract() == 0.0 && (0.0..=u16::MAX as f64).contains(&v)).then_some(v as u16)
    };
    if let Some(bad) = convert(
        &raw.data,
        raw.info.datatype,
        raw.info.big_endian,
        &mut out,
        label,
    ) {
        // Decode the offending voxel again to report it.
        let mut one = [0f64];
        let s = raw.info.datatype.size();
        convert(
            &raw.data[bad * s..(bad + 1) * s],
            raw.info.datatype,
            raw.info.big_endian,
            &mut one,
            |v| Some(scale(v)),
        );
        let value = one[0];
        let reason = if value.is_nan() {
            "not a number"
        } else if value < 0.0 {
            "negative"
        } else if value.fract() != 0.0 {
            "not an integer"
        } else {
            "above 65535"
        };
        return Err(NiftiError::BadLabel {
            path: path.to_path_buf(),
            index: unflat(raw.info.shape, bad),
            value,
            reason,
        });
    }
    Ok(fortran(raw.info.shape, out))
}
