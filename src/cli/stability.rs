//! `sdseg-volume stability`: PSNR, SSIM and MS-SSIM of the soft maps of N seeded runs against
//! seed 0 (the paper's Table 5; [`crate::stability`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::reproduce::ModelFlags;
use super::Globals;
use crate::error::{ResultExt, UsageError};
use crate::pipeline::postprocess::ResizeBack;
use crate::reproduce::{self, Dataset};
use crate::stability::{self, StabilityCase, StabilityOptions, StabilityReport};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A dataset whose official test split to use, with --data (btcv or sts3d; the layouts of
    /// `reproduce`). Or give volumes with --input.
    #[arg(value_enum, value_name = "DATASET", requires = "data")]
    pub dataset: Option<Dataset>,
    /// The dataset folder in its own layout.
    #[arg(long, value_name = "DIR", requires = "dataset")]
    pub data: Option<PathBuf>,
    /// A CT volume (NIfTI file or DICOM series folder); repeat for several.
    #[arg(long = "input", value_name = "FILE", conflicts_with = "data")]
    pub inputs: Vec<PathBuf>,
    /// The ground-truth label volume of each --input, in the same order: only slices whose
    /// label is non-empty are evaluated (the official protocol); without labels every slice is.
    #[arg(long = "label", value_name = "FILE", requires = "inputs")]
    pub labels: Vec<PathBuf>,
    /// Pipeline for --input volumes: btcv, sts3d or a pipeline TOML file.
    #[arg(
        long,
        value_name = "NAME|FILE",
        default_value = "btcv",
        conflicts_with = "data"
    )]
    pub pipeline: String,
    /// Number of runs (seeds 0..N-1); the paper uses 10.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub runs: usize,
    #[command(flatten)]
    pub model: ModelFlags,
    /// Also write DIR/stability.md, .json and .csv (per slice and run).
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the JSON report on stdout instead of the Markdown table.
    #[arg(long)]
    pub json: bool,
}

fn case_id(p: &std::path::Path) -> String {
    crate::pipeline::cases::case_id_for(p).unwrap_or_else(|| p.display().to_string())
}

pub fn run(args: Args, g: Globals) -> anyhow::Result<()> {
    if args.runs < 2 {
        return Err(UsageError(format!(
            "--runs {}: at least 2 runs are needed to compare seeds",
            args.runs
        ))
        .into());
    }
    let pipeline_arg = match args.dataset {
        Some(d) => d.pipeline_name().to_string(),
        None => args.pipeline.clone(),
    };
    // The seed and resize are unused (seeds 0..N-1, soft maps at 256x256).
    let scratch = std::env::temp_dir();
    let run = args
        .model
        .run_options(&pipeline_arg, 0, ResizeBack::Nearest, scratch, false, g)?;
    let pipeline = run.slicer.pipeline.clone();
    let cases: Vec<StabilityCase> = match (&args.dataset, &args.data) {
        (Some(d), Some(data)) => reproduce::find_test_cases(*d, data, &pipeline)
            .classified()?
            .into_iter()
            .map(|c| StabilityCase {
                id: c.id,
                image: c.image,
                label: Some(c.label),
            })
            .collect(),
        _ => {
            if args.inputs.is_empty() {
                return Err(UsageError(
                    "give a DATASET with --data, or volumes with --input".into(),
                )
                .into());
            }
            if !args.labels.is_empty() && args.labels.len() != args.inputs.len() {
                return Err(UsageError(format!(
                    "{} --input but {} --label: give one label per input, or none",
                    args.inputs.len(),
                    args.labels.len()
                ))
                .into());
            }
            args.inputs
                .iter()
                .enumerate()
                .map(|(i, p)| StabilityCase {
                    id: case_id(p),
                    image: p.clone(),
                    label: args.labels.get(i).cloned(),
                })
                .collect()
        }
    };
    let labelled = cases.iter().all(|c| c.label.is_some());
    let (mut model, _info) = crate::pipeline::runner::load_segmenter(&run)?;
    let bar = if g.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new((cases.len() * args.runs) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "stability [{bar:30}] {pos}/{len} volume runs, {elapsed} ({eta} left) {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    };
    let opts = StabilityOptions {
        runs: args.runs,
        noise: args.model.noise,
        batch_size: args.model.batch_size.unwrap_or_else(|| {
            args.model
                .device
                .unwrap_or(crate::model::device::DeviceSpec::Cpu)
                .default_batch_size()
        }),
        read: Default::default(),
    };
    let scores = stability::compute(&cases, &pipeline, model.as_mut(), &opts, |id, seed| {
        bar.set_message(format!("case {id}, seed {seed}"));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let report = StabilityReport {
        runs: args.runs,
        noise: args.model.noise,
        pipeline: crate::pipeline::runner::pipeline_label(&pipeline),
        labelled,
        method: args.model.method(),
        cases: scores,
    };
    let md = report.to_markdown();
    let json = format!("{:#}\n", report.to_json());
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, text) in [
            ("stability.md", md.clone()),
            ("stability.json", json.clone()),
            ("stability.csv", report.to_csv()),
        ] {
            let path = dir.join(name);
            crate::io::atomic::write_atomic(&path, |f| f.write_all(text.as_bytes()))
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if !g.quiet {
        eprintln!(
            "stability: {} runs, {} of {} slices evaluated in {} volume(s); {}",
            report.runs,
            report.slices_used(),
            report.slices_total(),
            report.cases.len(),
            stability::LPIPS_NOT_COMPUTED
        );
    }
    let text = if args.json { json } else { md };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}
