//! `sdseg-volume phantom --out DIR`: write a synthetic abdomen CT (developer tool for tests,
//! demos and benchmarks).

use super::Globals;
use crate::error::{ResultExt, UsageError};
use crate::phantom::{
    abdomen_phantom, write_dicom_series, DicomWriteOptions, FrameLayout, PhantomParams, WriteSyntax,
};
use anyhow::Context;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A DICOM CT series (one file per slice unless --multiframe).
    Dicom,
    /// `phantom.nii.gz` (HU, int16) and `labels.nii.gz` in the --out folder.
    Nifti,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Syntax {
    Explicit,
    Implicit,
    BigEndian,
    Deflated,
    Rle,
    /// JPEG Baseline (lossy, 8-bit): stored as 8 bits with slope 16, intercept -1024.
    JpegBaseline,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output folder (created; must be empty or absent).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed: the same seed gives the same phantom and the same files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Voxels as IxJxK (columns × rows × slices).
    #[arg(long, default_value = "64x64x32", value_parser = parse_size)]
    pub size: [usize; 3],
    #[arg(long, value_enum, default_value_t = Format::Dicom)]
    pub format: Format,
    /// DICOM transfer syntax.
    #[arg(long, value_enum, default_value_t = Syntax::Explicit)]
    pub syntax: Syntax,
    /// One Enhanced CT multi-frame file instead of one file per slice.
    #[arg(long)]
    pub multiframe: bool,
    /// Also write the organ labels (BTCV ids: 1 spleen, 2 right kidney, 3 left kidney,
    /// 6 liver, 8 aorta) as a NIfTI label file on the phantom's grid.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Noise standard deviation in HU.
    #[arg(long, default_value_t = 12.0)]
    pub noise: f32,
}

fn parse_size(s: &str) -> Result<[usize; 3], String> {
    let parts: Vec<&str> = s.split(['x', 'X', '×']).collect();
    let bad = || format!("size '{s}': expected three positive integers like 64x64x32");
    if parts.len() != 3 {
        return Err(bad());
    }
    let mut out = [0usize; 3];
    for (o, p) in out.iter_mut().zip(&parts) {
        *o = p.trim().parse().map_err(|_| bad())?;
        if *o == 0 || *o > 4096 {
            return Err(bad());
        }
    }
    Ok(out)
}

pub fn run(args: Args, g: Globals) -> anyhow::Result<()> {
    if args.out.exists()
        && std::fs::read_dir(&args.out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(UsageError(format!(
            "{}: exists and is not an empty folder; choose a new --out",
            args.out.display()
        ))
        .into());
    }
    let mut params = PhantomParams::new(args.size);
    params.noise_sd = args.noise;
    let ph = abdomen_phantom(&params, args.seed);
    // (labels, grid) for --labels, kept before the volume is consumed below.
    let label_out = args
        .labels
        .as_ref()
        .map(|_| (ph.labels.clone(), ph.volume.clone()));
    match args.format {
        Format::Dicom => {
            let mut o = DicomWriteOptions {
                seed: args.seed,
                layout: if args.multiframe {
                    FrameLayout::MultiFrame
                } else {
                    FrameLayout::SingleFrame
                },
                ..Default::default()
            };
            o.syntax = match args.syntax {
                Syntax::Explicit => WriteSyntax::ExplicitLittle,
                Syntax::Implicit => WriteSyntax::ImplicitLittle,
                Syntax::BigEndian => WriteSyntax::ExplicitBig,
                Syntax::Deflated => WriteSyntax::Deflated,
                Syntax::Rle => WriteSyntax::Rle,
                Syntax::JpegBaseline => {
                    o.bits_stored = 8;
                    o.rescale_slope = 16.0;
                    o.rescale_intercept = -1024.0;
                    WriteSyntax::JpegBaseline
                }
            };
            let ph = if args.syntax == Syntax::JpegBaseline {
                // 8-bit storage cannot hold bone: clip to what slope 16 reaches.
                let (mut data, affine, prov) = ph.volume.into_parts();
                data.mapv_inplace(|v| (v.clamp(-1024.0, 3056.0) / 16.0).round() * 16.0);
                crate::volume::Volume::new(data, affine, prov).classified()?
            } else {
                ph.volume
            };
            let files = write_dicom_series(&ph, &args.out, &o)
                .classified()
                .with_context(|| format!("writing the phantom to {}", args.out.display()))?;
            if !g.quiet {
                eprintln!(
                    "wrote {} DICOM file(s) of a {}×{}×{} phantom (seed {}) to {}",
                    files.len(),
                    args.size[0],
                    args.size[1],
                    args.size[2],
                    args.seed,
                    args.out.display()
                );
            }
        }
        Format::Nifti => {
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            let vol_path = args.out.join("phantom.nii.gz");
            // Tagged like the DICOM SeriesDescription, so `run` knows a demo phantom.
            crate::io::nifti::write_volume_described(
                &vol_path,
                &ph.volume,
                crate::io::nifti::VolumeDtype::Auto,
                crate::phantom::PHANTOM_TAG,
            )
            .classified()
            .with_context(|| format!("writing {}", vol_path.display()))?;
            let lab_path = args.out.join("labels.nii.gz");
            crate::io::nifti::write_labels(&lab_path, &ph.labels, &ph.volume)
                .classified()
                .with_context(|| format!("writing {}", lab_path.display()))?;
            if !g.quiet {
                eprintln!(
                    "wrote {} and {} ({}×{}×{}, seed {})",
                    vol_path.display(),
                    lab_path.display(),
                    args.size[0],
                    args.size[1],
                    args.size[2],
                    args.seed
                );
            }
        }
    }
    if let (Some(path), Some((labels, grid))) = (&args.labels, &label_out) {
        crate::io::nifti::write_labels(path, labels, grid)
            .classified()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
