//! `sdseg-volume inspect <INPUT> [--json] [--series UID]`: what would be read, and why.

use super::Globals;
use super::InputArgs;
use crate::error::{classified, ResultExt};
use crate::io::dicom::{DicomInput, ScanReport, SeriesStatus};
use crate::io::{input_kind, InputKind};
use crate::volume::{Source, Volume};
use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// DICOM folder (searched recursively), multi-frame DICOM file, .zip of a DICOM folder,
    /// or NIfTI file.
    pub input: PathBuf,
    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub read: InputArgs,
}

/// The `inspect --json` object. Fields are stable; new ones may be added.
#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub input: PathBuf,
    /// "dicom" or "nifti".
    pub kind: &'static str,
    /// DICOM only: every series found, which is chosen and why, skipped files.
    pub scan: Option<ScanReport>,
    /// The volume as the pipeline sees it; absent when it cannot be read.
    pub volume: Option<VolumeSummary>,
    pub warnings: Vec<String>,
    /// Why the input cannot be read (the command then exits with code 2).
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct VolumeSummary {
    /// Voxels along i, j, k.
    pub shape: [usize; 3],
    /// Voxel size along i, j, k (mm).
    pub spacing: [f64; 3],
    /// Orientation codes (nibabel's aff2axcodes), e.g. "LPS".
    pub axcodes: String,
    /// Voxel → RAS (mm), row-major 4×4.
    pub affine: [[f64; 4]; 4],
    pub hu_min: f32,
    pub hu_max: f32,
    pub stored_type: &'static str,
    /// Every voxel is a whole HU that fits int16 (`import` writes int16 losslessly).
    pub integral_i16: bool,
    pub series_uid: Option<String>,
    pub transfer_syntax: Option<String>,
    pub transfer_syntax_name: Option<String>,
}

fn summarize(v: &Volume) -> VolumeSummary {
    // Memory-order fold: volumes are usually Fortran-ordered (as read), where a logical-order
    // `iter()` walks with a stride of one slice per element.
    let (lo, hi) = v
        .data()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            if x.is_nan() {
                (lo, hi)
            } else {
                (lo.min(x), hi.max(x))
            }
        });
    let p = v.provenance();
    let (uid, ts) = match &p.source {
        Source::Dicom(d) => (
            Some(d.series_instance_uid.clone()),
            Some(d.transfer_syntax.clone()),
        ),
        _ => (None, None),
    };
    VolumeSummary {
        shape: v.shape(),
        spacing: v.spacing(),
        axcodes: v.axcodes().to_string(),
        affine: v.affine().0,
        hu_min: lo,
        hu_max: hi,
        stored_type: p.stored_type.name(),
        integral_i16: p.integral_i16,
        series_uid: uid,
        transfer_syntax_name: ts.as_deref().map(crate::io::dicom::transfer_syntax_name),
        transfer_syntax: ts,
    }
}

pub fn run(args: Args, _g: Globals) -> anyhow::Result<()> {
    let opts = args.read.read_options();
    let kind = input_kind(&args.input).classified()?;
    let mut report = InspectReport {
        input: args.input.clone(),
        kind: if kind == InputKind::Nifti {
            "nifti"
        } else {
            "dicom"
        },
        scan: None,
        volume: None,
        warnings: vec![],
        error: None,
    };
    let result: anyhow::Result<Volume> = if kind == InputKind::Nifti {
        crate::io::read_volume(&args.input, &opts).classified()
    } else {
        match DicomInput::open(&args.input, &opts) {
            Err(e) => Err(classified(e)),
            Ok(input) => {
                report.scan = Some(input.report().clone());
                input.read().classified()
            }
        }
    };
    let err = match result {
        Ok(v) => {
            report.warnings = v.provenance().warnings.clone();
            report.volume = Some(summarize(&v));
            None
        }
        Err(e) => {
            if let Some(s) = &report.scan {
                report.warnings = s.warnings.clone();
            }
            report.error = Some(format!("{e:#}"));
            Some(e)
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("serialising the report")?
        );
    } else {
        print!("{}", human(&report));
    }
    match err {
        Some(e) => Err(e.context(format!("cannot read {}", args.input.display()))),
        None => Ok(()),
    }
}

/// The human summary printed by `inspect`.
pub fn human(r: &InspectReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "Input: {} ({})", r.input.display(), r.kind);
    if let Some(scan) = &r.scan {
        let _ = writeln!(
            s,
            "Files: {} found, {} skipped",
            scan.files_found,
            scan.skipped_files.len()
        );
        let _ = writeln!(s, "Series: {}", scan.series.len());
        for info in &scan.series {
            let mark = match info.status {
                SeriesStatus::Chosen => "*",
                _ => " ",
            };
            let status = match info.status {
                SeriesStatus::Chosen => "chosen",
                SeriesStatus::Candidate => "candidate",
                SeriesStatus::Skipped => "skipped",
            };
            let _ = writeln!(
                s,
                "  {mark} {} #{} \"{}\" {} {}×{} {} slice(s) in {} file(s), {}",
                info.uid,
                info.number.map(|n| n.to_string()).unwrap_or("-".into()),
                info.description.as_deref().unwrap_or(""),
                info.modality.as_deref().unwrap_or("?"),
                info.columns,
                info.rows,
                info.slices,
                info.files,
                info.transfer_syntax_name
            );
            if info.status != SeriesStatus::Chosen {
                let _ = writeln!(s, "      {status}: {}", info.reason);
            }
        }
        for f in scan.skipped_files.iter().take(10) {
            let _ = writeln!(s, "  skipped file {}: {}", f.path.display(), f.reason);
        }
        if scan.skipped_files.len() > 10 {
            let _ = writeln!(
                s,
                "  … and {} more skipped files",
                scan.skipped_files.len() - 10
            );
        }
        match &scan.chosen {
            Some(uid) => {
                let _ = writeln!(s, "Chosen series: {uid}\n  why: {}", scan.choice);
            }
            None => {
                let _ = writeln!(s, "No series chosen: {}", scan.choice);
            }
        }
    }
    if let Some(v) = &r.volume {
        let _ = writeln!(
            s,
            "Size: {} × {} × {} voxels (i × j × k)",
            v.shape[0], v.shape[1], v.shape[2]
        );
        let _ = writeln!(
            s,
            "Spacing: {:.4} × {:.4} × {:.4} mm",
            v.spacing[0], v.spacing[1], v.spacing[2]
        );
        let _ = writeln!(s, "Orientation: {}", v.axcodes);
        let _ = writeln!(s, "HU range: {} .. {}", v.hu_min, v.hu_max);
        let _ = writeln!(
            s,
            "Stored as: {}{}",
            v.stored_type,
            if v.integral_i16 {
                " (whole HU within int16)"
            } else {
                ""
            }
        );
        if let (Some(ts), Some(name)) = (&v.transfer_syntax, &v.transfer_syntax_name) {
            let _ = writeln!(s, "Transfer syntax: {ts} ({name})");
        }
        let _ = writeln!(s, "Affine (voxel → RAS mm):");
        for row in &v.affine {
            let _ = writeln!(
                s,
                "  [{:>10.4} {:>10.4} {:>10.4} {:>10.4}]",
                row[0], row[1], row[2], row[3]
            );
        }
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(s, "Warnings:");
        for w in &r.warnings {
            let _ = writeln!(s, "  - {w}");
        }
    }
    s
}
