//! `sdseg-volume reproduce`: the paper's BTCV / STS-3D tables from a dataset folder
//! ([`crate::reproduce`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::run::{ModelArgs, OutputArgs};
use super::{Globals, InputArgs};
use crate::error::ResultExt;
use crate::model::device::{DTypeSpec, DeviceSpec};
use crate::pipeline::postprocess::ResizeBack;
use crate::pipeline::runner::{RunOptions, TestModel};
use crate::pipeline::segmenter::NoiseMode;
use crate::pipeline::shard::Shard;
use crate::pipeline::RefinePlan;
use crate::reproduce::{self, Dataset, OutputFolder, Postprocessing, ReproduceOptions};

/// The model flags `reproduce` and `stability` share with `run`.
#[derive(Clone, Debug, clap::Args)]
pub struct ModelFlags {
    /// Model weights: an official Lightning .ckpt or a .safetensors.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Model config: a JSON file or a preset name (sdseg-binary, sdseg-cls9, sdseg-cls14);
    /// default: <weights>.json or config.json beside the weights, else the pipeline's preset.
    #[arg(long, value_name = "FILE|PRESET")]
    pub model_config: Option<String>,
    /// Slices per model batch (default: as `run`'s).
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// cpu, cuda or cuda:N (gpu = cuda:0).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceSpec>,
    /// Model dtype: f32, bf16, bf16-fast or f16. On CPUs with AMX (Intel Sapphire Rapids and
    /// later) bf16 is the fast CPU path (about 1.5x f32, labels equal to f32 on 99.99 % of
    /// pixels) and bf16-fast faster still (plain bf16); other CPUs run both as f32, with a
    /// warning. On CUDA all four run natively; on the CPU f16 runs the f32 path, with a
    /// warning (no f16 kernels there).
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub dtype: DTypeSpec,
    /// shared: one noise draw per run for every slice (the official evaluation); per-slice: a
    /// draw per (case, slice).
    #[arg(long, value_name = "MODE", default_value = "shared")]
    pub noise: NoiseMode,
    /// Use the raw UNet weights instead of the EMA copy.
    #[arg(long)]
    pub no_ema: bool,
    /// Developer: replace the model by a threshold test double (threshold or threshold:K).
    #[arg(long, value_name = "threshold[:K]", hide = true)]
    pub test_segmenter: Option<TestModel>,
}

impl ModelFlags {
    /// `run`'s model arguments for `pipeline`.
    pub fn to_run_args(&self, pipeline: &str, seed: u64, resize: ResizeBack) -> ModelArgs {
        ModelArgs {
            weights: self.weights.clone(),
            model_config: self.model_config.clone(),
            pipeline: pipeline.to_string(),
            batch_size: self.batch_size,
            device: self.device,
            dtype: self.dtype,
            seed,
            samples: 1,
            noise: self.noise,
            no_ema: self.no_ema,
            resize,
            read: InputArgs::default(),
            test_segmenter: self.test_segmenter,
        }
    }

    /// `run`'s validated options for these flags (inputs and outputs are the caller's).
    pub fn run_options(
        &self,
        pipeline: &str,
        seed: u64,
        resize: ResizeBack,
        out: PathBuf,
        overwrite: bool,
        g: Globals,
    ) -> anyhow::Result<RunOptions> {
        let args = super::run::Args {
            inputs: Vec::new(),
            out,
            manifest: None,
            shard: Some(Shard::ALL),
            model: self.to_run_args(pipeline, seed, resize),
            output: OutputArgs {
                name: None,
                format: Default::default(),
                empty_segments: false,
                uncertainty: None,
                postprocess: None,
                overwrite,
                report: None,
                preview: None,
                statistics: false,
                json: false,
            },
            html: None,
            gt: None,
            html_ct_size: crate::review::CT_IN_PLANE,
        };
        Ok(args.to_options(g)?)
    }

    /// The method's name in the tables.
    pub fn method(&self) -> String {
        match (&self.test_segmenter, &self.weights) {
            (Some(_), _) => "threshold test model".into(),
            (None, Some(w)) => format!(
                "SDSeg ({})",
                w.file_name().unwrap_or_default().to_string_lossy()
            ),
            (None, None) => "SDSeg".into(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dataset: btcv (--data = Abdomen/RawData, with Training/img/imgNNNN.nii.gz and
    /// Training/label/labelNNNN.nii.gz) or sts3d (--data holding
    /// labelled/image/Teeth_NNNN_0000.nii.gz and labelled/label/...). The test cases are the
    /// pipeline's official split.
    #[arg(value_enum, value_name = "DATASET")]
    pub dataset: Dataset,
    /// The dataset folder in its own layout.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Output folder: predictions in DIR/pred/, tables DIR/scores-<protocol>.{md,csv,json},
    /// DIR/reproduce.{md,json} (default: reproduce-<dataset>).
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelFlags,
    /// Seed of the noise latent (the official evaluation uses 0).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Resize of predictions back to the native grid: nearest (default; with native sizes
    /// >= 256 the sdseg table then scores exactly the official 256x256 masks) or bilinear.
    #[arg(long, value_name = "MODE", default_value = "nearest")]
    pub resize: ResizeBack,
    /// Redo existing predictions (default: reuse them, i.e. resume).
    #[arg(long)]
    pub overwrite: bool,
    /// Print the combined JSON report on stdout instead of the Markdown tables.
    #[arg(long)]
    pub json: bool,
    /// 3D post-processing for the extra "with post-processing" tables (the paper's tables are
    /// scored without it, as always): `default` (largest connected component and per-slice
    /// hole filling for every label) or a plan file, e.g. the DIR/postprocessing.json of an
    /// earlier --choose-postprocessing. Default: `default`.
    #[arg(long, value_name = "PLAN.json|default")]
    pub postprocess: Option<String>,
    /// Choose the post-processing per label on the pipeline's training cases as nnU-Net does
    /// (a step is kept only where it raises the label's mean Dice there), score the test cases
    /// with it, and save it as DIR/postprocessing.json for `run --postprocess`. Cost: the model
    /// also runs on every training case (BTCV 18 volumes besides the 12 test volumes, about
    /// 2.5x the inference of a plain reproduce; STS-3D 9 besides 3, about 4x), predictions in
    /// DIR/pred-train/, reused on reruns; choosing itself is a few seconds per case.
    #[arg(long, conflicts_with = "postprocess")]
    pub choose_postprocessing: bool,
}

pub fn run(args: Args, g: Globals) -> anyhow::Result<()> {
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("reproduce-{}", args.dataset)));
    let layout = OutputFolder { dir };
    let run = args.model.run_options(
        args.dataset.pipeline_name(),
        args.seed,
        args.resize,
        layout.pred_dir(),
        args.overwrite,
        g,
    )?;
    let cases =
        reproduce::find_test_cases(args.dataset, &args.data, &run.slicer.pipeline).classified()?;
    let postprocess = if args.choose_postprocessing {
        Postprocessing::Choose {
            cases: reproduce::find_train_cases(args.dataset, &args.data, &run.slicer.pipeline)
                .classified()
                .context("--choose-postprocessing")?,
        }
    } else {
        let spec = args.postprocess.as_deref().unwrap_or("default");
        Postprocessing::Plan {
            plan: RefinePlan::from_spec(spec)
                .classified()
                .context("--postprocess")?,
            source: spec.to_string(),
        }
    };
    if !g.quiet {
        eprintln!(
            "reproduce {}: {} official test cases under {}: {}",
            args.dataset,
            cases.len(),
            args.data.display(),
            cases
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let r = reproduce::execute(&ReproduceOptions {
        dataset: args.dataset,
        data: args.data.clone(),
        cases,
        layout,
        run,
        method: args.model.method(),
        postprocess,
    })?;
    let text = if args.json {
        format!("{:#}\n", r.json)
    } else {
        r.markdown
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}
