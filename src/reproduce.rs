//! `reproduce`: the paper's BTCV / STS-3D segmentation tables from a dataset folder in the
//! dataset's own layout.
//!
//! 1. [`find_test_cases`]: the pipeline's official `[splits] test` ids, located in the
//!    dataset's folder layout ([`Dataset::layout`], [`crate::dataset::find_cases`]): BTCV
//!    `Training/img/imgNNNN.nii.gz` + `Training/label/labelNNNN.nii.gz` under
//!    `Abdomen/RawData`; STS-3D `labelled/image/Teeth_NNNN_0000.nii.gz` +
//!    `labelled/label/Teeth_NNNN_0000.nii.gz`. A missing case is an input error naming it.
//! 2. [`execute`]: the cases go through `run` ([`crate::pipeline::runner::execute`]) with the
//!    pipeline's official preprocessing, via a manifest (`DIR/cases.csv`) so predictions are
//!    named by case id (`DIR/pred/<id>.nii.gz`) and existing ones are reused (resume) unless
//!    `overwrite`.
//! 3. Every case is scored once per protocol in [`PROTOCOLS`]: `sdseg` (the official code at
//!    256×256 in-plane: the paper's numbers) and `nnunet` (native resolution, `eval`'s
//!    default), with the pipeline's label scheme (BTCV: `transfer_to_9` then the union of the
//!    8 organs). Tables go to `DIR/scores-<protocol>.{md,csv,json}` ([`crate::eval::Report`]
//!    writers) and the combined report to `DIR/reproduce.{md,json}`.
//! 4. **Post-processing** (not the paper's protocol, whose tables above are unchanged): the same
//!    cases are scored again after a [`RefinePlan`] (`--postprocess`, the `default` plan unless
//!    told otherwise) into `DIR/scores-<protocol>-postprocessed.{md,csv,json}` and the
//!    combined report's post-processing sections; the plan goes to `DIR/postprocessing.json`.
//!    With [`Postprocessing::Choose`] (`--choose-postprocessing`) the plan is chosen first, per
//!    label, on the pipeline's `[splits] train` cases ([`choose_postprocessing`], nnU-Net's rule:
//!    a step is kept only where it raises the label's mean Dice), predicted like the test cases
//!    into `DIR/pred-train/` (manifest `DIR/cases-train.csv`, report
//!    `DIR/run-report-train.json`, reused on reruns). SDSeg has no cross-validation folds, so
//!    these are cases the model was trained on (nnU-Net chooses on its folds' held-out
//!    predictions): the model errs less there than on unseen cases, so a step that fixes
//!    errors seen mostly on unseen cases can be under-rated.
//!
//! **Resize back.** The official code never resizes predictions back to the native grid: it
//! scores the 256×256 masks against labels zoomed to 256 with `order=0` (its resize back,
//! commented out, would have been `zoom(order=0)`). `reproduce` therefore defaults to
//! `--resize nearest`: a mask taken 256 → native with nearest neighbour and back to 256 with
//! the `sdseg` protocol's nearest resampling is the original mask whenever the native size is
//! at least 256 (BTCV's 512², STS-3D's scans), so the `sdseg` table scores exactly the
//! model-grid masks the official code scores (test `nearest_round_trip_is_the_identity`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Value};

use crate::dataset::{CaseFiles, DatasetError, DatasetLayout};
use crate::error::ResultExt;
use crate::eval::{self, CasePair, Comparison, EvalError, EvalOptions, LabelScheme, Report};
use crate::metrics::{MetricOptions, Protocol};
use crate::pipeline::refine::{voxel_ml, Choice, MinComponentScore, PlanChooser};
use crate::pipeline::runner::RunOptions;
use crate::pipeline::{Pipeline, RefinePlan};

/// The protocols every reproduction is scored under, in table order.
pub const PROTOCOLS: [Protocol; 2] = [Protocol::Sdseg, Protocol::Nnunet];

/// A dataset whose official test split `reproduce` knows how to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    /// BTCV (Synapse multi-organ CT), binary: the union of the 8 TransUNet organs.
    Btcv,
    /// STS-3D dental CBCT, binary: teeth.
    Sts3d,
}

impl Dataset {
    /// The built-in pipeline of this dataset.
    pub fn pipeline_name(self) -> &'static str {
        match self {
            Dataset::Btcv => "btcv",
            Dataset::Sts3d => "sts3d",
        }
    }

    pub fn title(self) -> &'static str {
        self.layout().title()
    }

    /// The dataset's folder layout.
    pub fn layout(self) -> DatasetLayout {
        match self {
            Dataset::Btcv => DatasetLayout::Btcv,
            Dataset::Sts3d => DatasetLayout::Sts3d,
        }
    }
}

impl std::fmt::Display for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.pipeline_name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReproduceError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("pipeline '{0}' has no [splits] test list")]
    NoTestSplit(String),
    #[error("pipeline '{0}' has no [splits] train list to choose the post-processing on")]
    NoTrainSplit(String),
}

impl crate::error::Classify for ReproduceError {
    fn is_input_error(&self) -> bool {
        true
    }
}

/// Locate the pipeline's official test cases under `root` in `dataset`'s layout.
pub fn find_test_cases(
    dataset: Dataset,
    root: &Path,
    pipeline: &Pipeline,
) -> Result<Vec<CaseFiles>, ReproduceError> {
    let ids = &pipeline.splits.test;
    if ids.is_empty() {
        return Err(ReproduceError::NoTestSplit(pipeline.name.clone()));
    }
    Ok(crate::dataset::find_cases(dataset.layout(), root, ids)?)
}

/// Locate the pipeline's training cases (`[splits] train`) under `root`, for
/// `--choose-postprocessing`.
pub fn find_train_cases(
    dataset: Dataset,
    root: &Path,
    pipeline: &Pipeline,
) -> Result<Vec<CaseFiles>, ReproduceError> {
    let ids = &pipeline.splits.train;
    if ids.is_empty() {
        return Err(ReproduceError::NoTrainSplit(pipeline.name.clone()));
    }
    Ok(crate::dataset::find_cases(dataset.layout(), root, ids)?)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with('#') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Write the `run` manifest of `cases` (`input,case`; absolute inputs), atomically.
pub fn write_manifest(path: &Path, cases: &[CaseFiles]) -> std::io::Result<()> {
    let mut text = String::from("input,case\n");
    for c in cases {
        let input = std::path::absolute(&c.image).unwrap_or_else(|_| c.image.clone());
        text.push_str(&format!(
            "{},{}\n",
            csv_field(&input.to_string_lossy()),
            csv_field(&c.id)
        ));
    }
    crate::io::atomic::write_atomic(path, |f| f.write_all(text.as_bytes()))
}

/// Where a reproduction puts its files.
#[derive(Clone, Debug)]
pub struct OutputFolder {
    pub dir: PathBuf,
}

impl OutputFolder {
    pub fn pred_dir(&self) -> PathBuf {
        self.dir.join("pred")
    }
    pub fn prediction(&self, id: &str) -> PathBuf {
        self.pred_dir().join(format!("{id}.nii.gz"))
    }
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("cases.csv")
    }
    pub fn run_report(&self) -> PathBuf {
        self.dir.join("run-report.json")
    }
    pub fn scores(&self, p: Protocol, ext: &str) -> PathBuf {
        self.dir.join(format!("scores-{}.{ext}", p.name()))
    }
    pub fn combined(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("reproduce.{ext}"))
    }
    /// Predictions of the training cases (`--choose-postprocessing`).
    pub fn train_pred_dir(&self) -> PathBuf {
        self.dir.join("pred-train")
    }
    pub fn train_prediction(&self, id: &str) -> PathBuf {
        self.train_pred_dir().join(format!("{id}.nii.gz"))
    }
    pub fn train_manifest(&self) -> PathBuf {
        self.dir.join("cases-train.csv")
    }
    pub fn train_run_report(&self) -> PathBuf {
        self.dir.join("run-report-train.json")
    }
    /// The tables of the post-processed predictions.
    pub fn scores_postprocessed(&self, p: Protocol, ext: &str) -> PathBuf {
        self.dir
            .join(format!("scores-{}-postprocessed.{ext}", p.name()))
    }
    /// The plan the post-processed tables used (`run --postprocess FILE` reads it).
    pub fn plan(&self) -> PathBuf {
        self.dir.join("postprocessing.json")
    }
}

/// What the post-processed tables apply.
#[derive(Clone, Debug)]
pub enum Postprocessing {
    /// A given plan; `source` says where it came from (`default`, a file).
    Plan { plan: RefinePlan, source: String },
    /// Choose the plan on these cases (the pipeline's training split) first.
    Choose { cases: Vec<CaseFiles> },
}

/// The options of every protocol's scoring, in [`PROTOCOLS`] order.
fn protocol_options(pipeline: &Pipeline) -> Vec<EvalOptions> {
    let scheme = LabelScheme::from_pipeline(pipeline);
    PROTOCOLS
        .iter()
        .map(|&protocol| EvalOptions {
            metrics: MetricOptions {
                protocol,
                ..MetricOptions::default()
            },
            scheme: scheme.clone(),
            labels: None,
        })
        .collect()
}

/// The reports of one reproduction, per protocol in [`PROTOCOLS`] order: the predictions as
/// they are (the paper's tables) and after the post-processing plan.
#[derive(Clone, Debug)]
pub struct Scores {
    pub plain: Vec<Report>,
    pub postprocessed: Vec<Report>,
}

/// Score every case's prediction (`layout.prediction(id)`) under each protocol of
/// [`PROTOCOLS`], as it is and after `plan`; both files are read once. `on_case` is called
/// before each case.
pub fn score(
    cases: &[CaseFiles],
    layout: &OutputFolder,
    pipeline: &Pipeline,
    plan: &RefinePlan,
    mut on_case: impl FnMut(&str),
) -> Result<Scores, EvalError> {
    let opts = protocol_options(pipeline);
    let mut plain: Vec<Vec<eval::CaseResult>> = vec![Vec::new(); opts.len()];
    let mut refined: Vec<Vec<eval::CaseResult>> = vec![Vec::new(); opts.len()];
    for c in cases {
        on_case(&c.id);
        let pair = CasePair {
            case: c.id.clone(),
            pred: layout.prediction(&c.id),
            gt: c.label.clone(),
        };
        let (p, g) = rayon::join(
            || eval::read_labels(&pair.pred),
            || eval::read_labels(&pair.gt),
        );
        let (p, g) = (p?, g?);
        eval::check_same_grid(&pair, (&p.0, &p.1), (&g.0, &g.1))?;
        let mut post = p.0.clone();
        eval::refine_prediction(&pair, plan, (&mut post, &p.1))?;
        for (i, o) in opts.iter().enumerate() {
            plain[i].push(eval::evaluate_arrays(&pair, p.clone(), g.clone(), o)?);
            refined[i].push(eval::evaluate_arrays(
                &pair,
                (post.clone(), p.1),
                g.clone(),
                o,
            )?);
        }
    }
    let reports = |results: Vec<Vec<eval::CaseResult>>| -> Vec<Report> {
        opts.iter()
            .zip(results)
            .map(|(o, r)| Report::new(r, o))
            .collect()
    };
    Ok(Scores {
        plain: reports(plain),
        postprocessed: reports(refined),
    })
}

/// Choose a post-processing plan on `cases` (prediction of case `id`: `prediction(id)`): per
/// scored label of the pipeline, nnU-Net's rule ([`PlanChooser`]) on the Dice at native
/// resolution after the pipeline's label remapping. The plan's label ids are the scored ids,
/// which are the values the pipeline's model writes. `on_case` is called before each case.
pub fn choose_postprocessing(
    cases: &[CaseFiles],
    prediction: impl Fn(&str) -> PathBuf,
    pipeline: &Pipeline,
    mut on_case: impl FnMut(&str),
) -> Result<Choice, EvalError> {
    let scheme = LabelScheme::from_pipeline(pipeline);
    let labels: Vec<u16> = scheme.labels.iter().map(|l| l.id).collect();
    let mut chooser = PlanChooser::new(&labels);
    for c in cases {
        on_case(&c.id);
        let pair = CasePair {
            case: c.id.clone(),
            pred: prediction(&c.id),
            gt: c.label.clone(),
        };
        let (p, g) = rayon::join(
            || eval::read_labels(&pair.pred),
            || eval::read_labels(&pair.gt),
        );
        let ((mut pred, pred_affine), (mut gt, gt_affine)) = (p?, g?);
        eval::check_same_grid(&pair, (&pred, &pred_affine), (&gt, &gt_affine))?;
        scheme.remap_gt(&mut gt);
        scheme.remap_pred(&mut pred);
        chooser
            .add_case(pred.view(), gt.view(), voxel_ml(&pred_affine))
            .map_err(|error| EvalError::Refine {
                case: pair.case.clone(),
                pred: pair.pred.clone(),
                error,
            })?;
    }
    Ok(chooser.choose())
}

/// Everything [`execute`] needs; `run` is the validated `run` options (model, pipeline,
/// batch size, seed, ...); its inputs, manifest, output and report are set here.
#[derive(Clone, Debug)]
pub struct ReproduceOptions {
    pub dataset: Dataset,
    pub data: PathBuf,
    pub cases: Vec<CaseFiles>,
    pub layout: OutputFolder,
    pub run: RunOptions,
    /// Name of the method in the tables' summary row.
    pub method: String,
    pub postprocess: Postprocessing,
}

/// The plan the post-processed tables used, where it came from, and the evidence when it was
/// chosen.
#[derive(Clone, Debug)]
pub struct UsedPlan {
    pub plan: RefinePlan,
    pub source: String,
    pub choice: Option<Choice>,
}

/// The scores of a reproduction and its rendered reports.
#[derive(Clone, Debug)]
pub struct Reproduction {
    /// The paper's tables: predictions as they are, per protocol.
    pub reports: Vec<Report>,
    /// The same after post-processing.
    pub postprocessed: Vec<Report>,
    pub plan: UsedPlan,
    pub markdown: String,
    pub json: Value,
}

/// Run `run` on `cases` into `pred_dir` (named by case id) unless every prediction exists;
/// the run report goes to `report` only when something runs.
fn predict(
    base: &RunOptions,
    cases: &[CaseFiles],
    manifest: &Path,
    pred_dir: &Path,
    report: PathBuf,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(pred_dir)
        .with_context(|| format!("creating {}", pred_dir.display()))?;
    write_manifest(manifest, cases).with_context(|| format!("writing {}", manifest.display()))?;
    let mut run = base.clone();
    run.inputs = Vec::new();
    run.manifest = Some(manifest.to_path_buf());
    run.out = crate::pipeline::cases::OutTarget::Dir(pred_dir.to_path_buf());
    run.name = crate::pipeline::cases::NamePattern::default();
    run.json = false;
    run.preview = None;
    // Keep the provenance of the run that made the predictions: a rerun that only reuses
    // them writes no new run report.
    let any_to_run = run.overwrite
        || cases
            .iter()
            .any(|c| !pred_dir.join(format!("{}.nii.gz", c.id)).exists());
    run.report = any_to_run.then_some(report);
    crate::pipeline::runner::execute(&run)?;
    Ok(())
}

fn progress_bar(quiet: bool, what: &str, n: usize) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(n as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} [{{bar:30}}] {{pos}}/{{len}} cases, {{elapsed}} ({{eta}} left) {{msg}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    b
}

/// Run inference for the missing predictions, choose the post-processing if asked, score,
/// write every table.
pub fn execute(opts: &ReproduceOptions) -> anyhow::Result<Reproduction> {
    let layout = &opts.layout;
    let quiet = opts.run.quiet;
    predict(
        &opts.run,
        &opts.cases,
        &layout.manifest(),
        &layout.pred_dir(),
        layout.run_report(),
    )?;

    let pipeline = &opts.run.slicer.pipeline;
    let used = match &opts.postprocess {
        Postprocessing::Plan { plan, source } => UsedPlan {
            plan: plan.clone(),
            source: source.clone(),
            choice: None,
        },
        Postprocessing::Choose { cases } => {
            if !quiet {
                eprintln!(
                    "reproduce: predicting the {} training cases to choose the post-processing on",
                    cases.len()
                );
            }
            predict(
                &opts.run,
                cases,
                &layout.train_manifest(),
                &layout.train_pred_dir(),
                layout.train_run_report(),
            )?;
            let bar = progress_bar(quiet, "choosing post-processing", cases.len());
            let choice = choose_postprocessing(
                cases,
                |id| layout.train_prediction(id),
                pipeline,
                |id| {
                    bar.set_message(id.to_string());
                    bar.inc(1);
                },
            )
            .classified()?;
            bar.finish_and_clear();
            UsedPlan {
                plan: choice.plan.clone(),
                source: format!("chosen on the {} training cases", cases.len()),
                choice: Some(choice),
            }
        }
    };
    let plan_path = layout.plan();
    crate::io::atomic::write_atomic(&plan_path, |f| {
        f.write_all(used.plan.to_json_string().as_bytes())
    })
    .with_context(|| format!("writing {}", plan_path.display()))?;

    let bar = progress_bar(quiet, "scoring", opts.cases.len());
    let scores = score(&opts.cases, layout, pipeline, &used.plan, |id| {
        bar.set_message(id.to_string());
        bar.inc(1);
    })
    .classified()?;
    bar.finish_and_clear();

    let tables = scores
        .plain
        .iter()
        .map(|r| (r, false))
        .chain(scores.postprocessed.iter().map(|r| (r, true)));
    for (r, post) in tables {
        let p = r.metrics.protocol;
        let files = [
            ("md", r.to_markdown(&opts.method)),
            ("csv", r.to_csv()),
            ("json", format!("{:#}\n", r.to_json())),
        ];
        for (ext, text) in files {
            let path = if post {
                layout.scores_postprocessed(p, ext)
            } else {
                layout.scores(p, ext)
            };
            crate::io::atomic::write_atomic(&path, |f| f.write_all(text.as_bytes()))
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let markdown = render_markdown(opts, &scores, &used);
    let json = render_json(opts, &scores, &used);
    for (ext, text) in [("md", markdown.clone()), ("json", format!("{json:#}\n"))] {
        let path = layout.combined(ext);
        crate::io::atomic::write_atomic(&path, |f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !quiet {
        eprintln!(
            "reproduce: {} cases scored under {}; tables in {}",
            opts.cases.len(),
            PROTOCOLS.map(|p| p.name()).join(" and "),
            layout.dir.display()
        );
        eprintln!(
            "reproduce: post-processed tables with the plan {} ({}), saved as {}",
            used.source,
            used.plan.describe(),
            plan_path.display()
        );
    }
    Ok(Reproduction {
        reports: scores.plain,
        postprocessed: scores.postprocessed,
        plan: used,
        markdown,
        json,
    })
}

/// Demote every Markdown heading by `levels`.
fn demote_headings(md: &str, levels: usize) -> String {
    let extra = "#".repeat(levels);
    md.lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("{extra}{l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// What a protocol's table means, one line.
pub fn protocol_role(p: Protocol) -> &'static str {
    match p {
        Protocol::Sdseg => {
            "the official SDSeg evaluation at 256x256 in-plane (how the paper's numbers are computed)"
        }
        Protocol::Nnunet => "the same predictions at native resolution with nnU-Net's rules",
        Protocol::Monai => "MONAI's rules at native resolution",
    }
}

fn render_markdown(opts: &ReproduceOptions, scores: &Scores, used: &UsedPlan) -> String {
    let reports = &scores.plain;
    let run = &opts.run;
    let ids: Vec<&str> = opts.cases.iter().map(|c| c.id.as_str()).collect();
    let mut s = format!(
        "# Reproduction: {}, {} official test volumes\n\n",
        opts.dataset.title(),
        ids.len()
    );
    s.push_str(&format!(
        "- Data: {} (layout {}); cases {}.\n",
        opts.data.display(),
        opts.dataset.layout().description(),
        ids.join(", ")
    ));
    let model = match (&run.model.test, &run.model.weights) {
        (Some(_), _) => "threshold test model (not SDSeg)".to_string(),
        (None, Some(w)) => w.display().to_string(),
        (None, None) => "none".to_string(),
    };
    s.push_str(&format!(
        "- Model: {model}; {} weights; device {}, dtype {}; seed {}, noise {}; batch {}.\n",
        if run.model.ema {
            "EMA"
        } else {
            "raw (non-EMA)"
        },
        run.model.device,
        run.model.dtype,
        run.seed,
        match run.noise {
            crate::pipeline::segmenter::NoiseMode::Shared =>
                "shared (one draw, as the official code)",
            crate::pipeline::segmenter::NoiseMode::PerSlice => "per slice",
        },
        run.batch_size
    ));
    s.push_str(&format!(
        "- Pipeline {}\n- Predictions: {} (resize back: {}).\n",
        run.slicer.pipeline.summary(),
        opts.layout.pred_dir().display(),
        run.slicer.resize
    ));
    if opts.dataset == Dataset::Btcv {
        s.push_str(
            "- For comparison (not from the paper, whose table body could not be retrieved): a \
             third-party reproduction reports BTCV binary Dice 0.9217, IoU 0.8558 under the \
             official protocol.\n",
        );
    }
    s.push('\n');
    for r in reports {
        let p = r.metrics.protocol;
        s.push_str(&format!(
            "## Protocol `{}`: {}\n\n",
            p.name(),
            protocol_role(p)
        ));
        s.push_str(&demote_headings(&r.to_markdown(&opts.method), 2));
        s.push('\n');
    }
    s.push_str(&postprocessing_markdown(opts, scores, used));
    s
}

fn fx(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.4}"))
}

/// The post-processing sections: the plan (and how it was chosen), then per protocol the
/// effect table and the post-processed tables.
fn postprocessing_markdown(opts: &ReproduceOptions, scores: &Scores, used: &UsedPlan) -> String {
    let plan_file = opts.layout.plan();
    let mut s = String::from("## Post-processing (beyond the paper's protocol)\n\n");
    s.push_str(&format!(
        "- Plan ({}): {}. Saved as {}; `run --postprocess {}` applies it.\n",
        used.source,
        used.plan.describe(),
        plan_file.display(),
        plan_file.display()
    ));
    if let Some(choice) = &used.choice {
        s.push_str(&format!(
            "- Chosen per label on {} training cases (predictions in {}), as nnU-Net does: a \
             step is kept only where it raises the label's mean Dice (native resolution, \
             undefined cases skipped); the model was trained on these cases.\n\n",
            choice.cases,
            opts.layout.train_pred_dir().display()
        ));
        s.push_str(
            "| Label | Dice as is | Largest component | Best removal below (ml) | + holes \
             filled | Chosen | Dice chosen |\n|---|---|---|---|---|---|---|\n",
        );
        for l in &choice.labels {
            // The first best, as the chooser breaks ties (toward the smaller volume).
            let mut best_min: Option<&MinComponentScore> = None;
            for m in &l.dice_min_component {
                let better = match (m.dice, best_min.and_then(|b| b.dice)) {
                    (Some(d), Some(b)) => d > b,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if better {
                    best_min = Some(m);
                }
            }
            let best_min = best_min.map_or_else(
                || "–".to_string(),
                |m| format!("{} ({})", fx(m.dice), m.min_component_ml),
            );
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                l.label,
                fx(l.dice_without),
                fx(l.dice_largest_component),
                best_min,
                fx(l.dice_fill_holes),
                l.chosen.describe(),
                fx(l.dice_chosen),
            ));
        }
    }
    s.push('\n');
    for (without, with) in scores.plain.iter().zip(&scores.postprocessed) {
        let p = with.metrics.protocol;
        s.push_str(&format!(
            "## With post-processing, protocol `{}`: {}\n\n",
            p.name(),
            protocol_role(p)
        ));
        let c = Comparison {
            without,
            with,
            plan: &used.plan,
            source: &used.source,
        };
        s.push_str(&demote_headings(&c.to_markdown(), 1));
        s.push_str(&demote_headings(&with.to_markdown(&opts.method), 2));
        s.push('\n');
    }
    s
}

fn means_json(reports: &[Report]) -> serde_json::Map<String, Value> {
    reports
        .iter()
        .map(|r| {
            let n = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
            (
                r.metrics.protocol.name().to_string(),
                json!({
                    "dice": n(r.mean.dice),
                    "iou": n(r.mean.iou),
                    "hd95_mm": n(r.mean.hd95_mm),
                    "assd_mm": n(r.mean.assd_mm),
                    "nsd": n(r.mean.nsd),
                }),
            )
        })
        .collect()
}

fn render_json(opts: &ReproduceOptions, scores: &Scores, used: &UsedPlan) -> Value {
    let reports = &scores.plain;
    let run = &opts.run;
    let protocols: serde_json::Map<String, Value> = reports
        .iter()
        .map(|r| (r.metrics.protocol.name().to_string(), r.to_json()))
        .collect();
    let summary = means_json(reports);
    let post_protocols: serde_json::Map<String, Value> = scores
        .postprocessed
        .iter()
        .map(|r| (r.metrics.protocol.name().to_string(), r.to_json()))
        .collect();
    let effect: serde_json::Map<String, Value> = reports
        .iter()
        .zip(&scores.postprocessed)
        .map(|(without, with)| {
            let c = Comparison {
                without,
                with,
                plan: &used.plan,
                source: &used.source,
            };
            (with.metrics.protocol.name().to_string(), c.effect_json())
        })
        .collect();
    let choice = used.choice.as_ref().map(|c| {
        json!({
            "cases": c.cases,
            "predictions": opts.layout.train_pred_dir(),
            "rule": "per label, a step is kept only where it raises the label's mean Dice \
                     (native resolution, nnU-Net's Dice, undefined cases skipped)",
            "labels": c.labels,
        })
    });
    json!({
        "version": 1,
        "dataset": opts.dataset,
        "data": opts.data,
        "layout": opts.dataset.layout().description(),
        "method": opts.method,
        "cases": opts.cases.iter().map(|c| json!({
            "case": c.id,
            "image": c.image,
            "label": c.label,
            "prediction": opts.layout.prediction(&c.id),
        })).collect::<Vec<_>>(),
        "settings": {
            "pipeline": crate::pipeline::runner::pipeline_label(&run.slicer.pipeline),
            "weights": run.model.weights,
            "test_model": run.model.test.is_some(),
            "ema": run.model.ema,
            "device": run.model.device.to_string(),
            "dtype": run.model.dtype.to_string(),
            "seed": run.seed,
            "noise": run.noise,
            "batch_size": run.batch_size,
            "resize": run.slicer.resize.to_string(),
        },
        "summary": summary,
        "protocols": protocols,
        "postprocessing": {
            "plan": used.plan,
            "source": used.source,
            "description": used.plan.describe(),
            "file": opts.layout.plan(),
            "choice": choice,
            "summary": means_json(&scores.postprocessed),
            "effect": effect,
            "protocols": post_protocols,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::resize::{zoom_nearest, Edge};
    use crate::pipeline::resize_labels_nearest;
    use ndarray::{Array2, Array3};

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn btcv_layout_and_missing_cases() {
        let d = tempfile::tempdir().unwrap();
        let p = Pipeline::load("btcv").unwrap();
        let root = d.path().join("RawData");
        assert!(matches!(
            find_test_cases(Dataset::Btcv, &root, &p),
            Err(ReproduceError::Dataset(DatasetError::NotLaidOut { .. }))
        ));
        for id in &p.splits.test {
            touch(&root.join(format!("Training/img/img{id}.nii.gz")));
            if id != "0022" {
                touch(&root.join(format!("Training/label/label{id}.nii.gz")));
            }
        }
        let e = find_test_cases(Dataset::Btcv, &root, &p).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("1 of the 12 official BTCV test cases missing: 0022"),
            "{msg}"
        );
        assert!(msg.contains("label0022.nii.gz"), "{msg}");
        assert!(!msg.contains("img0022"), "{msg}");
        touch(&root.join("Training/label/label0022.nii"));
        let cases = find_test_cases(Dataset::Btcv, &root, &p).unwrap();
        assert_eq!(cases.len(), 12);
        assert_eq!(cases[0].id, "0001");
        assert!(cases[5].label.ends_with("Training/label/label0022.nii"));
        // --data may also point at Training/ or at Abdomen/.
        let c2 = find_test_cases(Dataset::Btcv, &root.join("Training"), &p).unwrap();
        assert_eq!(c2, cases);
    }

    #[test]
    fn sts3d_layout_with_and_without_channel_suffix() {
        let d = tempfile::tempdir().unwrap();
        let p = Pipeline::load("sts3d").unwrap();
        let root = d.path();
        touch(&root.join("labelled/image/Teeth_0010_0000.nii.gz"));
        touch(&root.join("labelled/label/Teeth_0010_0000.nii.gz"));
        touch(&root.join("labelled/image/Teeth_0011.nii.gz"));
        touch(&root.join("labelled/label/Teeth_0011.nii.gz"));
        let e = find_test_cases(Dataset::Sts3d, root, &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Teeth_0012 (expected "), "{e}");
        assert!(e.contains("image/Teeth_0012_0000.nii.gz"), "{e}");
        touch(&root.join("labelled/image/Teeth_0012_0000.nii.gz"));
        touch(&root.join("labelled/label/Teeth_0012_0000.nii.gz"));
        let cases = find_test_cases(Dataset::Sts3d, root, &p).unwrap();
        let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["Teeth_0010", "Teeth_0011", "Teeth_0012"]);
        assert!(cases[1].image.ends_with("Teeth_0011.nii.gz"));
    }

    #[test]
    fn manifest_quotes_and_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let cases = vec![CaseFiles {
            id: "0001".into(),
            image: d.path().join("a,b/img0001.nii.gz"),
            label: d.path().join("l.nii.gz"),
        }];
        touch(&cases[0].image);
        let m = d.path().join("cases.csv");
        write_manifest(&m, &cases).unwrap();
        let e = crate::pipeline::cases::read_manifest(&m).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].case.as_deref(), Some("0001"));
        assert_eq!(e[0].input, cases[0].image);
    }

    /// Why `reproduce` resizes back with nearest neighbour: 256 → n (nearest, as
    /// `--resize nearest` writes the prediction) → 256 (the `sdseg` protocol's resampling)
    /// returns the model-grid mask exactly for every native size n >= 256.
    #[test]
    fn nearest_round_trip_is_the_identity() {
        let mask = Array2::from_shape_fn((256, 256), |(i, j)| ((i * 31 + j * 17) % 7) as u16);
        for n in [256, 257, 300, 333, 384, 511, 512, 640, 768, 1000, 1024] {
            // postprocess's labels_slice_to_native uses the clamped edge
            let native = zoom_nearest(mask.view(), [n, n + 1], Edge::Clamp);
            let vol = native.insert_axis(ndarray::Axis(2));
            let back = resize_labels_nearest(&vol, [256, 256]);
            assert_eq!(
                back.index_axis(ndarray::Axis(2), 0),
                mask.view(),
                "native size {n}"
            );
        }
        // Below 256 information is lost: not the identity.
        let small = zoom_nearest(mask.view(), [40, 40], Edge::Clamp);
        let back: Array3<u16> =
            resize_labels_nearest(&small.insert_axis(ndarray::Axis(2)), [256, 256]);
        assert_ne!(back.index_axis(ndarray::Axis(2), 0), mask.view());
    }

    #[test]
    fn headings_are_demoted() {
        assert_eq!(
            demote_headings("# A\ntext\n## B\n", 2),
            "### A\ntext\n#### B\n"
        );
    }
}
