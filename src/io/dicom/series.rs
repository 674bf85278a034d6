//! Series logic: grouping by SeriesInstanceUID, geometry (sort on the slice normal, checks
//! for mixed sizes/orientations, duplicates, gaps and tilt) and the LPS affine.

use super::scan::FileHeader;
use super::DicomError;

/// One slice: a frame of a file, with its position.
#[derive(Clone, Debug)]
pub(crate) struct SliceRef {
    /// Index into the header list.
    pub file: usize,
    pub frame: u32,
    pub ipp: [f64; 3],
    /// Position along the slice normal (mm).
    pub pos: f64,
    pub slope: f64,
    pub intercept: f64,
}

/// Non-uniform slice spacing found in a series.
#[derive(Clone, Debug)]
pub(crate) struct Gaps {
    pub median: f64,
    /// (position before, position after, spacing) for every spacing off the median.
    pub off: Vec<(f64, f64, f64)>,
    /// Largest distance (mm) by which a slice lies from where the median spacing puts it.
    pub max_displacement: f64,
}

impl Gaps {
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .off
            .iter()
            .take(3)
            .map(|(a, b, d)| {
                let missing = (d / self.median).round() as i64 - 1;
                let hint = if missing >= 1 && (d / self.median - (missing + 1) as f64).abs() < 0.05
                {
                    format!(", {missing} slice(s) missing?")
                } else {
                    String::new()
                };
                format!("{d:.3} mm between slices at {a:.3} and {b:.3} mm{hint}")
            })
            .collect();
        if self.off.len() > 3 {
            parts.push(format!("and {} more", self.off.len() - 3));
        }
        format!(
            "slice spacing is not uniform: expected {:.3} mm (the median spacing) but found {}",
            self.median,
            parts.join("; ")
        )
    }
}

/// Slice positions that do not lie on the slice normal through the first slice.
#[derive(Clone, Debug)]
pub(crate) struct Tilt {
    /// In-plane offset of the last slice from the first (mm, LPS).
    pub shear_per_mm: [f64; 3],
    pub angle_deg: f64,
    pub max_offset: f64,
}

impl Tilt {
    pub fn describe(&self) -> String {
        format!(
            "slice positions are not along the slice normal (gantry tilt or sheared stack: \
             {:.2}°, slices drift up to {:.3} mm in-plane)",
            self.angle_deg, self.max_offset
        )
    }
}

/// A validated stack: slices sorted ascending along the normal, and its LPS affine.
#[derive(Clone, Debug)]
pub(crate) struct Geometry {
    pub slices: Vec<SliceRef>,
    pub rows: u32,
    pub cols: u32,
    /// PixelSpacing [between rows, between columns].
    pub pixel_spacing: [f64; 2],
    pub iop: [f64; 6],
    pub normal: [f64; 3],
    pub gaps: Option<Gaps>,
    pub tilt: Option<Tilt>,
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}
fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn fmt3(v: [f64; 3]) -> String {
    format!("({:.3}, {:.3}, {:.3})", v[0], v[1], v[2])
}

/// Spacing tolerance: a spacing is "uniform" when within 1% of the median or 0.01 mm.
pub(crate) fn spacing_tolerance(median: f64) -> f64 {
    (0.01 * median).max(0.01)
}

/// Build and check the geometry of one series from its files' headers.
pub(crate) fn geometry(
    uid: &str,
    headers: &[FileHeader],
    members: &[usize],
) -> Result<Geometry, DicomError> {
    let first = &headers[members[0]];
    check_image_pixels(uid, headers, members)?;
    let Positioned {
        mut slices,
        iop,
        pixel_spacing,
    } = positioned_slices(uid, headers, members)?;
    let row = [iop[0], iop[1], iop[2]];
    let col = [iop[3], iop[4], iop[5]];
    if (norm(row) - 1.0).abs() > 1e-2
        || (norm(col) - 1.0).abs() > 1e-2
        || dot(row, col).abs() > 1e-2
    {
        return Err(DicomError::BadValue {
            path: first.source.display_path().to_path_buf(),
            tag: "ImageOrientationPatient (0020,0037)",
            detail: format!("{iop:?} is not two orthogonal unit vectors"),
        });
    }
    let mut normal = cross(row, col);
    let nn = norm(normal);
    normal = normal.map(|x| x / nn);
    for s in &mut slices {
        s.pos = dot(s.ipp, normal);
    }
    // Sort along the normal; equal positions keep file order (reported as duplicates below).
    slices.sort_by(|a, b| a.pos.total_cmp(&b.pos));
    if slices.len() < 2 {
        return Err(DicomError::NotAVolume {
            series: uid.to_string(),
            detail: "it has a single image (2D), not a stack of slices".into(),
        });
    }
    check_duplicate_positions(uid, headers, &slices)?;
    let gaps = spacing_gaps(&slices);
    let tilt = stack_tilt(&slices, normal);
    Ok(Geometry {
        slices,
        rows: first.rows,
        cols: first.cols,
        pixel_spacing,
        iop,
        normal,
        gaps,
        tilt,
    })
}

/// One image size, and single-channel greyscale pixels, in every file of the series.
fn check_image_pixels(
    uid: &str,
    headers: &[FileHeader],
    members: &[usize],
) -> Result<(), DicomError> {
    let shown = |i: usize| headers[i].source.display_path().display().to_string();
    let mut sizes: Vec<((u32, u32), usize, usize)> = Vec::new();
    for &m in members {
        let h = &headers[m];
        let key = (h.rows, h.cols);
        match sizes.iter_mut().find(|s| s.0 == key) {
            Some(s) => s.1 += h.n_frames as usize,
            None => sizes.push((key, h.n_frames as usize, m)),
        }
    }
    if sizes.len() > 1 {
        let detail = sizes
            .iter()
            .map(|((r, c), n, ex)| format!("{c}×{r} ({n} slices, e.g. {})", shown(*ex)))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(DicomError::MixedSizes {
            series: uid.to_string(),
            detail,
        });
    }
    for &m in members {
        let h = &headers[m];
        if h.samples_per_pixel != 1 {
            return Err(DicomError::UnsupportedPixels {
                path: h.source.display_path().to_path_buf(),
                detail: format!(
                    "SamplesPerPixel is {} (a colour image); CT volumes have 1",
                    h.samples_per_pixel
                ),
            });
        }
        if let Some(pi) = h
            .photometric
            .as_deref()
            .filter(|p| !p.starts_with("MONOCHROME"))
        {
            return Err(DicomError::UnsupportedPixels {
                path: h.source.display_path().to_path_buf(),
                detail: format!(
                    "PhotometricInterpretation is {pi} (a colour image: stored values are \
                     colour indices or components, not intensities); CT volumes are MONOCHROME2"
                ),
            });
        }
    }
    Ok(())
}

/// The frames of a series with their positions, and the orientation and pixel spacing they
/// share.
struct Positioned {
    /// In file order; positions along the normal still 0.
    slices: Vec<SliceRef>,
    iop: [f64; 6],
    pixel_spacing: [f64; 2],
}

/// Every frame of the series as a slice with its position and rescale, checked for one
/// orientation and one pixel spacing.
fn positioned_slices(
    uid: &str,
    headers: &[FileHeader],
    members: &[usize],
) -> Result<Positioned, DicomError> {
    let shown = |i: usize| headers[i].source.display_path().display().to_string();
    let mut slices = Vec::new();
    let mut iop0: Option<[f64; 6]> = None;
    let mut ps0: Option<[f64; 2]> = None;
    for &m in members {
        let h = &headers[m];
        for (fi, f) in h.frames.iter().enumerate() {
            let path = h.source.display_path();
            let frame = (h.n_frames > 1).then_some(fi as u32);
            let ipp = f
                .ipp
                .require(path, "ImagePositionPatient (0020,0032)", frame)?;
            let iop = f
                .iop
                .require(path, "ImageOrientationPatient (0020,0037)", frame)?;
            let ps = f.spacing.require(path, "PixelSpacing (0028,0030)", frame)?;
            let (slope, intercept) = f.rescale(path, frame)?;
            if ps[0] <= 0.0 || ps[1] <= 0.0 {
                return Err(DicomError::BadValue {
                    path: h.source.display_path().to_path_buf(),
                    tag: "PixelSpacing (0028,0030)",
                    detail: format!("{} \\ {} is not positive", ps[0], ps[1]),
                });
            }
            match iop0 {
                None => iop0 = Some(iop),
                Some(o) => {
                    let d = (0..6).map(|i| (o[i] - iop[i]).abs()).fold(0.0, f64::max);
                    if d > 1e-4 {
                        return Err(DicomError::MixedOrientation {
                            series: uid.to_string(),
                            detail: format!(
                                "{} has {:?} but {} has {:?}",
                                shown(members[0]),
                                o,
                                h.source.display_path().display(),
                                iop
                            ),
                        });
                    }
                }
            }
            match ps0 {
                None => ps0 = Some(ps),
                Some(p) => {
                    if (p[0] - ps[0]).abs() > 1e-4 || (p[1] - ps[1]).abs() > 1e-4 {
                        return Err(DicomError::MixedSpacing {
                            series: uid.to_string(),
                            detail: format!(
                                "{} has {:?} but {} has {:?}",
                                shown(members[0]),
                                p,
                                h.source.display_path().display(),
                                ps
                            ),
                        });
                    }
                }
            }
            slices.push(SliceRef {
                file: m,
                frame: fi as u32,
                ipp,
                pos: 0.0,
                slope,
                intercept,
            });
        }
    }
    let iop = iop0.expect("at least one slice");
    let pixel_spacing = ps0.expect("at least one slice");
    Ok(Positioned {
        slices,
        iop,
        pixel_spacing,
    })
}

/// Two slices (sorted along the normal) at the same position are an error naming both.
fn check_duplicate_positions(
    uid: &str,
    headers: &[FileHeader],
    slices: &[SliceRef],
) -> Result<(), DicomError> {
    for w in slices.windows(2) {
        if (w[1].pos - w[0].pos).abs() < 1e-3 {
            let file = |s: &SliceRef| {
                let h = &headers[s.file];
                if h.n_frames > 1 {
                    format!(
                        "{} frame {}",
                        h.source.display_path().display(),
                        s.frame + 1
                    )
                } else {
                    h.source.display_path().display().to_string()
                }
            };
            return Err(DicomError::DuplicatePositions {
                series: uid.to_string(),
                position: fmt3(w[0].ipp),
                files: format!("{} and {}", file(&w[0]), file(&w[1])),
            });
        }
    }
    Ok(())
}

/// Spacings along the normal off the median (at least 2 sorted slices), if any.
fn spacing_gaps(slices: &[SliceRef]) -> Option<Gaps> {
    let diffs: Vec<f64> = slices.windows(2).map(|w| w[1].pos - w[0].pos).collect();
    let mut sorted = diffs.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let tol = spacing_tolerance(median);
    let off: Vec<(f64, f64, f64)> = slices
        .windows(2)
        .zip(&diffs)
        .filter(|(_, d)| (**d - median).abs() > tol)
        .map(|(w, d)| (w[0].pos, w[1].pos, *d))
        .collect();
    (!off.is_empty()).then(|| {
        let p0 = slices[0].pos;
        let max_displacement = slices
            .iter()
            .enumerate()
            .map(|(k, s)| ((s.pos - p0) - k as f64 * median).abs())
            .fold(0.0, f64::max);
        Gaps {
            median,
            off,
            max_displacement,
        }
    })
}

/// In-plane drift of the positions (gantry tilt / shear) beyond rounding, if any.
fn stack_tilt(slices: &[SliceRef], normal: [f64; 3]) -> Option<Tilt> {
    let p0 = slices[0].ipp;
    let extent = slices.last().unwrap().pos - slices[0].pos;
    let mut max_offset: f64 = 0.0;
    for s in slices {
        let d = sub(s.ipp, p0);
        let along = dot(d, normal);
        let inplane = sub(d, normal.map(|x| x * along));
        max_offset = max_offset.max(norm(inplane));
    }
    (max_offset > 0.02 + 1e-4 * extent).then(|| {
        let last = slices.last().unwrap();
        let d = sub(last.ipp, p0);
        let along = dot(d, normal);
        let inplane = sub(d, normal.map(|x| x * along));
        let shear_per_mm = inplane.map(|x| x / along);
        Tilt {
            shear_per_mm,
            angle_deg: norm(shear_per_mm).atan().to_degrees(),
            max_offset,
        }
    })
}

impl Geometry {
    /// Slice spacing along the normal used by the affine: the mean spacing of a uniform
    /// stack, the median spacing when the stack has gaps.
    pub fn slice_spacing(&self) -> f64 {
        match &self.gaps {
            Some(g) => g.median,
            None => {
                let n = self.slices.len();
                (self.slices[n - 1].pos - self.slices[0].pos) / (n - 1) as f64
            }
        }
    }

    /// Voxel (i = column, j = row, k = sorted slice) → LPS mm.
    pub fn affine_lps(&self) -> [[f64; 4]; 4] {
        let dr = self.pixel_spacing[0];
        let dc = self.pixel_spacing[1];
        let row = [self.iop[0], self.iop[1], self.iop[2]];
        let col = [self.iop[3], self.iop[4], self.iop[5]];
        let ds = self.slice_spacing();
        let shear = self
            .tilt
            .as_ref()
            .map(|t| t.shear_per_mm)
            .unwrap_or([0.0; 3]);
        let step: [f64; 3] = std::array::from_fn(|d| (self.normal[d] + shear[d]) * ds);
        let o = self.slices[0].ipp;
        let mut m = [[0.0; 4]; 4];
        for d in 0..3 {
            m[d][0] = row[d] * dc;
            m[d][1] = col[d] * dr;
            m[d][2] = step[d];
            m[d][3] = o[d];
        }
        m[3][3] = 1.0;
        m
    }

    /// The same affine in RAS (NIfTI) world coordinates: x and y negated, as dcm2niix does.
    pub fn affine_ras(&self) -> crate::geometry::Affine {
        let mut m = self.affine_lps();
        for row in m.iter_mut().take(2) {
            for x in row.iter_mut() {
                *x = -*x + 0.0; // + 0.0: no negative zeros
            }
        }
        crate::geometry::Affine(m)
    }
}
