//! DICOM Segmentation (Segmentation IOD, SegmentationType BINARY, bit-packed frames).

use super::{DerivedError, DerivedRequest};
use std::path::Path;

/// SOP Class UID of the Segmentation Storage SOP class.
pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// Write `req` as a DICOM-SEG file at `path` (atomically).
pub fn write_dicom_seg(path: &Path, req: &DerivedRequest) -> Result<(), DerivedError> {
    let _ = (path, req);
    Err(DerivedError::Request(
        "DICOM-SEG writing is not built yet".into(),
    ))
}
