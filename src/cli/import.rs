//! `sdseg-volume import`: write the HU volume exactly as the pipeline sees it.

use super::{Globals, InputArgs};
use crate::error::{ResultExt, UsageError};
use crate::io::nifti::{self, VolumeDtype};
use crate::io::read_volume;
use anyhow::Context;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// DICOM series folder, multi-frame DICOM file, zip of a folder, or NIfTI file.
    pub input: PathBuf,
    /// Output NIfTI file (.nii or .nii.gz).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub read: InputArgs,
    /// Output voxel type: int16 when lossless (auto), float32, or int16 (error if lossy).
    #[arg(long, value_enum, default_value_t = VolumeDtype::Auto)]
    pub dtype: VolumeDtype,
}

pub fn run(args: Args, g: Globals) -> anyhow::Result<()> {
    if !nifti::is_nifti_path(&args.out) {
        return Err(UsageError(format!(
            "--out {}: the output must be a .nii or .nii.gz file",
            args.out.display()
        ))
        .into());
    }
    let t0 = Instant::now();
    let volume = read_volume(&args.input, &args.read.read_options())
        .classified()
        .context("reading the input")?;
    let t_read = t0.elapsed();
    let dtype = nifti::resolve_dtype(&args.out, &volume, args.dtype).classified()?;
    let t1 = Instant::now();
    nifti::write_volume(&args.out, &volume, dtype)
        .classified()
        .context("writing the output")?;
    let t_write = t1.elapsed();
    if !g.quiet {
        for w in &volume.provenance().warnings {
            eprintln!("warning: {w}");
        }
        let [nx, ny, nz] = volume.shape();
        let [sx, sy, sz] = volume.spacing();
        // A memory-order fold: `Volume::hu_range` iterates in logical order, which is slow on
        // the readers' Fortran-layout arrays.
        let (lo, hi) = volume
            .data()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let written = match dtype {
            VolumeDtype::I16 => "int16",
            _ => "float32",
        };
        eprintln!(
            "imported {} -> {}: {nx}x{ny}x{nz} voxels, {sx:.3}x{sy:.3}x{sz:.3} mm, {}, \
             HU {lo}..{hi}, stored {} -> written {written} (read {:.2} s, write {:.2} s)",
            args.input.display(),
            args.out.display(),
            volume.axcodes(),
            volume.provenance().stored_type.name(),
            t_read.as_secs_f64(),
            t_write.as_secs_f64(),
        );
    }
    Ok(())
}
