//! RT Structure Set: one ROI per label, CLOSED_PLANAR contours per slice (patient LPS mm).

use super::{DerivedError, DerivedRequest};
use std::path::Path;

/// SOP Class UID of the RT Structure Set Storage SOP class.
pub const RT_STRUCTURE_SET_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.481.3";

/// Write `req` as an RTSTRUCT file at `path` (atomically).
pub fn write_rtstruct(path: &Path, req: &DerivedRequest) -> Result<(), DerivedError> {
    let _ = (path, req);
    Err(DerivedError::Request(
        "RTSTRUCT writing is not built yet".into(),
    ))
}
