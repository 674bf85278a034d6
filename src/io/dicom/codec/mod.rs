//! Pixel-data codecs this crate implements itself, because no maintained pure-Rust decoder
//! exists in the dicom-rs stack for them (JPEG-LS, 12-bit JPEG Extended), or the one there
//! panics on damaged data (RLE, JPEG 2000, whose OpenJPEG decoding we call ourselves).
//!
//! Each decoder takes one compressed frame (the concatenated fragments of one frame of
//! encapsulated Pixel Data) and returns its samples. Sizes read from a codestream are checked
//! against [`Limits`] before anything is allocated, so a hostile header cannot make the
//! process allocate more than the caller expects the frame to hold.

pub(crate) mod j2k;
pub(crate) mod jpeg_dct;
pub(crate) mod jpegls;
pub(crate) mod rle;

/// One decoded frame: `width × height` pixels of `components` samples each, pixel-interleaved
/// (`samples[(y * width + x) * components + c]`), unsigned, `precision` bits per sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub width: u32,
    pub height: u32,
    pub components: u8,
    pub precision: u8,
    pub samples: Vec<u16>,
}

/// What a decoder may allocate: at most `max_samples` output samples (width × height ×
/// components). The caller derives it from the DICOM header (Rows × Columns ×
/// SamplesPerPixel), which it has already bounded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_samples: usize,
}

/// Why a codestream could not be decoded; the message names the marker or field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CodecError(pub String);

impl crate::error::Classify for CodecError {
    /// A codestream that does not decode is the file's fault.
    fn is_input_error(&self) -> bool {
        true
    }
}

impl CodecError {
    pub(crate) fn new(msg: impl Into<String>) -> CodecError {
        CodecError(msg.into())
    }
}
