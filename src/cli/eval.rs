//! `sdseg-volume eval`: score prediction files against ground truth.

use super::Globals;
use crate::error::{ResultExt, UsageError};
use crate::eval::{self, Comparison, EvalOptions, LabelScheme, OutputFormat, Report};
use crate::metrics::{Hd95Mode, MetricOptions, Protocol, DEFAULT_NSD_TOLERANCE_MM};
use crate::pipeline::RefinePlan;
use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Predicted label volume (NIfTI) or a folder of them.
    #[arg(long, value_name = "DIR|FILE")]
    pub pred: PathBuf,
    /// Ground-truth label volume or folder; folders are paired by case id (file name without
    /// extension and without a leading img/label/pred/seg/gt/... tag: img0001 ↔ label0001).
    #[arg(long, value_name = "DIR|FILE")]
    pub gt: PathBuf,
    /// Pipeline whose label remapping and classes to use: `btcv` (the paper's binary task:
    /// union of the 8 TransUNet organs), `btcv:cls9` (13 organs → the 8), `btcv:cls14`,
    /// `sts3d`, or a pipeline TOML file (`FILE[:VARIANT]`). Default: labels as stored.
    #[arg(long, value_name = "NAME|FILE[:VARIANT]")]
    pub pipeline: Option<String>,
    /// Score only these labels (after remapping), e.g. `1,2,3`.
    #[arg(long, value_delimiter = ',', value_name = "L,...")]
    pub labels: Option<Vec<u16>>,
    /// Empty-label convention: `nnunet` (NaN when TP+FP+FN = 0, nanmean; native resolution),
    /// `sdseg` (official SDSeg code at 256×256 in-plane), `monai` (ignore_empty).
    #[arg(long, value_enum, default_value_t = Protocol::Nnunet)]
    pub protocol: Protocol,
    /// HD95 definition: `symmetric` (max of the directed 95th percentiles; MONAI, DeepMind)
    /// or `pooled` (95th percentile of both directions together; medpy).
    #[arg(long, value_enum, default_value_t = Hd95Mode::Symmetric)]
    pub hd95: Hd95Mode,
    /// Normalised surface Dice tolerance in mm.
    #[arg(long, value_name = "MM", default_value_t = DEFAULT_NSD_TOLERANCE_MM)]
    pub nsd_tolerance: f64,
    /// Also write the report to this file: `.md`, `.csv` or `.json`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print the JSON report on stdout instead of the Markdown tables.
    #[arg(long)]
    pub json: bool,
    /// Score the predictions after 3D post-processing, and compare with the scores without:
    /// `default` (no value; largest connected component and per-slice hole filling for every
    /// label) or a plan file (`reproduce`'s postprocessing.json or reproduce.json, a run
    /// report). The plan is applied to each prediction as stored, before --pipeline's
    /// remapping, as `run --postprocess` would. The tables, --json and --out are the
    /// post-processed scores; Markdown and JSON add the scores without and the difference.
    #[arg(
        long,
        value_name = "PLAN.json|default",
        num_args = 0..=1,
        default_missing_value = "default"
    )]
    pub postprocess: Option<String>,
}

pub fn run(args: Args, g: Globals) -> anyhow::Result<()> {
    let format = match &args.out {
        Some(p) => Some(OutputFormat::from_path(p).ok_or_else(|| {
            UsageError(format!(
                "--out {}: unknown report format; use a .md, .csv or .json file name",
                p.display()
            ))
        })?),
        None => None,
    };
    if !args.nsd_tolerance.is_finite() || args.nsd_tolerance < 0.0 {
        return Err(UsageError(format!(
            "--nsd-tolerance {}: must be a finite number of mm >= 0",
            args.nsd_tolerance
        ))
        .into());
    }
    let scheme = match args.pipeline.as_deref() {
        Some(spec) => LabelScheme::load(spec).classified()?,
        None => LabelScheme::as_stored(),
    };
    let opts = EvalOptions {
        metrics: MetricOptions {
            protocol: args.protocol,
            hd95: args.hd95,
            nsd_tolerance_mm: args.nsd_tolerance,
        },
        scheme,
        labels: args.labels.clone(),
    };

    let plan = match args.postprocess.as_deref() {
        Some(spec) => Some(
            RefinePlan::from_spec(spec)
                .classified()
                .context("--postprocess")?,
        ),
        None => None,
    };

    let pairing = eval::pair_cases(&args.pred, &args.gt).classified()?;
    if !g.quiet {
        for p in &pairing.unmatched_predictions {
            eprintln!(
                "warning: {}: no ground truth with this case id; ignored",
                p.display()
            );
        }
    }
    let bar = if g.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(pairing.pairs.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "eval [{bar:30}] {pos}/{len} cases, {elapsed} ({eta} left) {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    };
    let mut results = Vec::with_capacity(pairing.pairs.len());
    let mut unrefined = Vec::new();
    for pair in &pairing.pairs {
        bar.set_message(pair.case.clone());
        let scored = match &plan {
            Some(plan) => eval::evaluate_pair_refined(pair, &opts, plan).map(|(without, with)| {
                unrefined.push(without);
                with
            }),
            None => eval::evaluate_pair(pair, &opts),
        };
        let r = scored
            .classified()
            .with_context(|| format!("scoring case {}", pair.case))?;
        results.push(r);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let report = Report::new(results, &opts);
    let without = plan.as_ref().map(|_| Report::new(unrefined, &opts));
    let comparison = match (&plan, &without) {
        (Some(plan), Some(without)) => Some(Comparison {
            without,
            with: &report,
            plan,
            source: args.postprocess.as_deref().unwrap_or("default"),
        }),
        _ => None,
    };
    if !g.quiet {
        eprintln!(
            "eval: {} cases; {}",
            report.cases.len(),
            report.definitions_line()
        );
        if let Some(c) = &comparison {
            eprintln!(
                "eval: scores after post-processing ({}); mean Dice {} without",
                c.plan.describe(),
                fmt_mean(c.without.mean.dice)
            );
        }
    }
    let method = args
        .pred
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "prediction".into());
    if let (Some(path), Some(format)) = (&args.out, format) {
        let text = match format {
            OutputFormat::Markdown => markdown(&report, comparison.as_ref(), &method),
            OutputFormat::Csv => report.to_csv(),
            OutputFormat::Json => format!("{:#}\n", json(&report, comparison.as_ref())),
        };
        crate::io::atomic::write_atomic(path, |f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        if !g.quiet {
            eprintln!("wrote {}", path.display());
        }
    }
    let stdout = if args.json {
        format!("{:#}\n", json(&report, comparison.as_ref()))
    } else {
        markdown(&report, comparison.as_ref(), &method)
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(stdout.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

fn markdown(report: &Report, comparison: Option<&Comparison<'_>>, method: &str) -> String {
    let mut s = report.to_markdown(method);
    if let Some(c) = comparison {
        s.push('\n');
        s.push_str(&c.to_markdown());
    }
    s
}

fn json(report: &Report, comparison: Option<&Comparison<'_>>) -> serde_json::Value {
    match comparison {
        Some(c) => c.to_json(),
        None => report.to_json(),
    }
}

fn fmt_mean(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "undefined".into()
    }
}
