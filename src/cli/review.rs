//! `sdseg-volume review`: the review page of a finished run, built from its report(s) (every
//! shard of a Slurm array), the written labels and the inputs ([`crate::review`]).

use std::path::PathBuf;

use anyhow::Context;

use super::Globals;
use crate::error::ResultExt;
use crate::review::{PageSummary, ReviewOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run reports (`run --report`; every shard's), `eval` JSON reports (`eval --out
    /// FILE.json`), `reproduce.json`, or folders holding them (a `reproduce` output folder, the
    /// folder of a Slurm array's reports).
    #[arg(value_name = "REPORT|DIR", required = true)]
    pub sources: Vec<PathBuf>,
    /// The page to write: one self-contained HTML file (no network).
    #[arg(long, value_name = "FILE.html")]
    pub html: PathBuf,
    /// Ground truth: a label volume or a folder of them, paired with the outputs by case id
    /// and scored as `eval` scores them (instead of the scores of an `eval`/`reproduce` report
    /// among the sources).
    #[arg(long, value_name = "DIR|FILE")]
    pub gt: Option<PathBuf>,
    /// Label scheme for the scores and the ground-truth contours, as `eval --pipeline`
    /// (default: the run's pipeline).
    #[arg(long, value_name = "NAME|FILE[:VARIANT]")]
    pub pipeline: Option<String>,
    /// The page's title (default: the number of cases and the pipeline).
    #[arg(long)]
    pub title: Option<String>,
    /// The CT's largest in-plane size on the page, 32 to 512 (labels stay at full resolution
    /// up to 512²): 128 makes a page of many cases about a quarter of the size.
    #[arg(long, value_name = "N", default_value_t = crate::review::CT_IN_PLANE,
          value_parser = ct_size)]
    pub ct_size: usize,
}

/// `--ct-size` / `--html-ct-size`: within `review::CT_IN_PLANE_RANGE`.
pub fn ct_size(s: &str) -> Result<usize, String> {
    let r = crate::review::CT_IN_PLANE_RANGE;
    match s.parse::<usize>() {
        Ok(n) if r.contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a size from {} to {} pixels, got '{s}'",
            r.start(),
            r.end()
        )),
    }
}

/// One line on stderr about the page, and its notes as warnings.
pub fn print_summary(p: &PageSummary, g: Globals) {
    for w in &p.warnings {
        eprintln!("warning: {w}");
    }
    if !g.quiet {
        eprintln!(
            "review page: {} ({:.1} MB): {} case(s), {} with images, {} scored",
            p.path.display(),
            p.bytes as f64 / 1e6,
            p.cases,
            p.viewable,
            p.scored
        );
    }
}

pub fn run(args: Args, g: Globals) -> anyhow::Result<()> {
    let opts = ReviewOptions {
        html: args.html.clone(),
        gt: args.gt.clone(),
        pipeline: args.pipeline.clone(),
        title: args.title.clone(),
        ct_in_plane: args.ct_size,
        quiet: g.quiet,
    };
    let page = crate::review::review(&args.sources, &opts)
        .classified()
        .with_context(|| format!("writing the review page {}", args.html.display()))?;
    print_summary(&page, g);
    Ok(())
}
