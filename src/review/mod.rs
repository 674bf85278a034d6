//! The review page: one self-contained HTML file per run (`run --html`, `review`), with an
//! index of the cases and an interactive viewer per case, for looking at a run's results
//! without opening NIfTI files one by one.
//!
//! The page is built from a run's report ([`sources`]: `run --report`, every shard of a Slurm
//! array, merged), the written label volumes, the inputs (the CT under the labels), the
//! `--uncertainty` maps and, when there is ground truth, either `--gt DIR` (paired and scored
//! by `eval`'s own code: [`crate::eval::case_id`], [`crate::eval::evaluate_arrays`],
//! [`crate::eval::Report`]) or the scores of an `eval`/`reproduce` JSON report. `run --html`
//! takes the same road: its report is serialised and read back as `review` reads a file
//! ([`build_for_run`]), so both write the same page.
//!
//! Parts: this file (the page's model: cases, provenance, scores, and the build),
//! [`data`] (each case's images packed for the browser), [`html`] (the file: template,
//! index JSON, one lazily decoded data block per case); the viewer itself is `viewer.js`,
//! `viewer.css` and `page.html` beside this file, embedded with `include_str!`. A case whose
//! files cannot be read gets a note on the page (and a warning), never a failed page.

mod data;
mod html;
pub mod sources;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::eval::{CasePair, EvalError, EvalOptions, LabelScheme};
use crate::metrics::MetricOptions;
use sources::{
    CaseDoc, Documents, LabelDoc, LabelScoreDoc, MergedCase, ModelDoc, PipelineDoc, RunDoc,
    ScoreSource, ToolDoc,
};

pub use data::{HuCompander, CT_IN_PLANE, CT_IN_PLANE_RANGE, HU_KNOTS, LABELS_IN_PLANE};

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{path}: no such file or folder")]
    Missing { path: PathBuf },
    #[error(
        "{dir}: no run report in this folder (`run --report FILE.json` writes one; with a Slurm \
         array, `--report DIR/run-{{shard}}.json`); or pass the report files themselves"
    )]
    NoRunReport { dir: PathBuf },
    #[error("no run report among the sources: give a `run --report` file or its folder")]
    NoRunReportAtAll,
    #[error(
        "{path}: not a run report (`run --report`), an `eval` JSON report or `reproduce.json`"
    )]
    NotADocument { path: PathBuf },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not valid JSON for this document: {error}")]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error(
        "--gt {gt}: one ground-truth file for {cases} cases; give a folder (paired by case id, \
         as `eval` pairs)"
    )]
    GtFileForManyCases { gt: PathBuf, cases: usize },
    #[error(
        "the label scheme of pipeline '{spec}' (from the run report) cannot be loaded: {error}; \
         pass --pipeline NAME|FILE[:VARIANT]"
    )]
    Scheme { spec: String, error: Box<EvalError> },
    #[error(transparent)]
    Eval(Box<EvalError>),
    #[error("--html {path}: must end in .html or .htm")]
    HtmlName { path: PathBuf },
    #[error("writing {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl From<EvalError> for ReviewError {
    fn from(e: EvalError) -> ReviewError {
        ReviewError::Eval(Box::new(e))
    }
}

impl crate::error::Classify for ReviewError {
    fn is_input_error(&self) -> bool {
        match self {
            ReviewError::Eval(e) => e.is_input_error(),
            ReviewError::Scheme { .. } => true,
            ReviewError::Write { .. } => false,
            _ => true,
        }
    }
}

/// `--html` must name an HTML file.
pub fn check_html_name(path: &Path) -> Result<(), ReviewError> {
    let ok = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| e == "html" || e == "htm");
    if ok {
        Ok(())
    } else {
        Err(ReviewError::HtmlName {
            path: path.to_path_buf(),
        })
    }
}

/// What a page is built from and where it goes.
#[derive(Clone, Debug, Default)]
pub struct ReviewOptions {
    pub html: PathBuf,
    /// `--gt DIR|FILE`: ground truth, paired with the outputs by case id as `eval` pairs.
    pub gt: Option<PathBuf>,
    /// `--pipeline`: the label scheme for scoring and for the ground-truth contours (default:
    /// the run's pipeline, as `eval --pipeline` would use it).
    pub pipeline: Option<String>,
    pub title: Option<String>,
    /// `--html-ct-size`: the CT's largest in-plane size on the page (`data::CT_IN_PLANE`,
    /// 256, by default; 128 quarters a page of many cases).
    pub ct_in_plane: usize,
    pub quiet: bool,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct PageSummary {
    pub path: PathBuf,
    pub cases: usize,
    /// Cases with a viewer (their label volume could be read).
    pub viewable: usize,
    pub scored: usize,
    pub bytes: u64,
    /// Problems the page notes (a file that could not be read, unpaired ground truth).
    pub warnings: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// The page's model (serialised as the index JSON the viewer reads)

/// One run report's provenance, as in `--report`.
#[derive(Clone, Debug, Serialize)]
struct RunProvenance {
    report: PathBuf,
    tool: ToolDoc,
    command: String,
    started_unix_s: f64,
    finished_unix_s: f64,
    pipeline: PipelineDoc,
    model: Option<ModelDoc>,
    settings: Value,
    cases: usize,
}

/// Where the scores come from and how they were computed.
#[derive(Clone, Debug, Serialize)]
struct ScoresInfo {
    source: String,
    protocol: String,
    definitions: String,
}

/// The packed images of a case, for the viewer.
#[derive(Clone, Debug, Serialize)]
struct ViewMeta {
    /// The `id` of the case's data element.
    block: String,
    /// Base64 characters in the page.
    page_bytes: usize,
    /// Bytes once inflated.
    raw_bytes: usize,
    grid: data::GridMeta,
    layers: Vec<data::LayerMeta>,
}

#[derive(Clone, Debug, Serialize)]
struct CasePage {
    #[serde(flatten)]
    record: CaseDoc,
    /// Index into `runs`.
    run: usize,
    gt: Option<PathBuf>,
    scores: Option<Vec<LabelScoreDoc>>,
    mean_dice: Option<f64>,
    mean_hd95_mm: Option<f64>,
    view: Option<ViewMeta>,
    /// Why a layer (or the whole viewer) is missing.
    notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
struct PageIndex {
    title: String,
    generated_by: ToolDoc,
    generated_unix_s: f64,
    runs: Vec<RunProvenance>,
    labels: Vec<LabelDoc>,
    scores: Option<ScoresInfo>,
    /// HU of each 8-bit CT code ([`HuCompander`]).
    hu_of_code: Vec<f32>,
    notes: Vec<String>,
    cases: Vec<CasePage>,
}

// ---------------------------------------------------------------------------------------
// Building

/// `review`: build the page from report files or folders.
pub fn review(sources: &[PathBuf], opts: &ReviewOptions) -> Result<PageSummary, ReviewError> {
    check_html_name(&opts.html)?;
    let docs = Documents::load(sources)?;
    build(docs, opts)
}

/// `run --html`: build the page from the run's own report (serialised and read back as a
/// report file is, so `run --html` and `review` are one code path). `report_path` is where
/// the report was written, if it was.
pub fn build_for_run(
    report: &crate::pipeline::report::RunReport,
    report_path: Option<&Path>,
    opts: &ReviewOptions,
) -> Result<PageSummary, ReviewError> {
    check_html_name(&opts.html)?;
    let path = report_path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("run report"));
    let json = |error| ReviewError::Json {
        path: path.clone(),
        error,
    };
    let value = serde_json::to_value(report).map_err(json)?;
    let doc: RunDoc = serde_json::from_value(value).map_err(json)?;
    build(
        Documents {
            runs: vec![(path.clone(), doc)],
            scores: Vec::new(),
        },
        opts,
    )
}

/// How the cases get their scores.
enum Scoring<'a> {
    None,
    /// `--gt`: scored here with `eval`'s options (its defaults and the run's label scheme).
    Gt {
        eval: EvalOptions,
        pairs: BTreeMap<String, PathBuf>,
    },
    /// An `eval`/`reproduce` report: its scores, and its ground truth for the contours.
    Doc {
        source: &'a ScoreSource,
        by_case: BTreeMap<String, usize>,
    },
}

fn label_scheme(opts: &ReviewOptions, pipeline: &PipelineDoc) -> Result<LabelScheme, ReviewError> {
    let spec = opts.pipeline.clone().unwrap_or_else(|| pipeline.spec());
    LabelScheme::load(&spec).map_err(|error| ReviewError::Scheme {
        spec,
        error: Box::new(error),
    })
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Pair the cases' outputs with `gt` as `eval` pairs files: by [`crate::eval::case_id`] of
/// the file names; a single file pairs with the only case. Ground truth without a case is
/// noted.
fn pair_ground_truth(
    gt: &Path,
    cases: &[MergedCase],
    notes: &mut Vec<String>,
) -> Result<BTreeMap<String, PathBuf>, ReviewError> {
    let with_output: Vec<&MergedCase> = cases
        .iter()
        .filter(|c| c.record.status != "failed")
        .collect();
    if !gt.exists() {
        return Err(ReviewError::Missing {
            path: gt.to_path_buf(),
        });
    }
    if gt.is_file() {
        return match with_output.as_slice() {
            [one] => Ok(BTreeMap::from([(
                one.record.case.clone(),
                gt.to_path_buf(),
            )])),
            _ => Err(ReviewError::GtFileForManyCases {
                gt: gt.to_path_buf(),
                cases: with_output.len(),
            }),
        };
    }
    let mut files = crate::eval::list_cases(gt)?;
    let mut pairs = BTreeMap::new();
    for c in &with_output {
        let id = crate::eval::case_id(&file_name(&c.record.output));
        if let Some(g) = files.remove(&id) {
            pairs.insert(c.record.case.clone(), g);
        }
    }
    for (id, path) in files {
        notes.push(format!(
            "ground truth {} (case id {id}) has no output in the run",
            path.display()
        ));
    }
    Ok(pairs)
}

/// Match an `eval` report's cases to the run's: by prediction path, else by case id of the
/// output's file name.
fn match_scored_cases(source: &ScoreSource, cases: &[MergedCase]) -> BTreeMap<String, usize> {
    let by_pred: BTreeMap<PathBuf, usize> = source
        .doc
        .cases
        .iter()
        .enumerate()
        .map(|(i, c)| (canonical(&sources::resolve(&c.pred, &source.path)), i))
        .collect();
    let by_id: BTreeMap<&str, usize> = source
        .doc
        .cases
        .iter()
        .enumerate()
        .map(|(i, c)| (c.case.as_str(), i))
        .collect();
    let mut out = BTreeMap::new();
    for c in cases {
        let found = by_pred
            .get(&canonical(&c.record.output))
            .copied()
            .or_else(|| {
                by_id
                    .get(crate::eval::case_id(&file_name(&c.record.output)).as_str())
                    .copied()
            });
        if let Some(i) = found {
            out.insert(c.record.case.clone(), i);
        }
    }
    out
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn mean_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn scores_of(
    result: &crate::eval::CaseResult,
    labels: &[crate::eval::LabelSpec],
) -> Vec<LabelScoreDoc> {
    result
        .labels
        .iter()
        .zip(labels)
        .map(|(m, spec)| LabelScoreDoc {
            label: m.label,
            name: spec.name.clone(),
            dice: finite(m.dice),
            iou: finite(m.iou),
            hd95_mm: finite(m.hd95_mm),
            assd_mm: finite(m.assd_mm),
            nsd: finite(m.nsd),
            n_pred: Some(m.counts.n_pred()),
            n_gt: Some(m.counts.n_gt()),
        })
        .collect()
}

/// What reading and packing one case gave.
#[derive(Default)]
struct CaseWork {
    encoded: Option<data::EncodedCase>,
    scored: Option<crate::eval::CaseResult>,
    notes: Vec<String>,
}

/// Read a case's files, score it against its ground truth (with `eval`) and pack it.
fn work_case(
    case: &MergedCase,
    run: &RunDoc,
    gt: Option<&Path>,
    scheme: Option<&LabelScheme>,
    eval: Option<&EvalOptions>,
    ct_in_plane: usize,
) -> CaseWork {
    let mut w = CaseWork::default();
    let rec = &case.record;
    if rec.status == "failed" {
        return w;
    }
    let (labels, affine) = match crate::eval::read_labels(&rec.output) {
        Ok(x) => x,
        Err(e) => {
            w.notes
                .push(format!("no viewer: the labels cannot be read: {e}"));
            return w;
        }
    };
    let shape = labels.dim();
    let same_grid = |what: &str,
                     s: (usize, usize, usize),
                     a: Option<&crate::Affine>,
                     notes: &mut Vec<String>| {
        let diff = a.map_or(0.0, |a| a.max_abs_diff(&affine));
        if s != shape || diff.is_nan() || diff > crate::eval::AFFINE_TOLERANCE_MM {
            notes.push(format!(
                "{what} left out: its grid {s:?} differs from the labels' {shape:?} (affines differ by {diff:.4} mm)"
            ));
            false
        } else {
            true
        }
    };
    let settings = &run.settings;
    let flag = |k: &str| settings.get(k).and_then(Value::as_bool).unwrap_or(false);
    let dicom = !matches!(
        crate::io::input_kind(&rec.input),
        Ok(crate::io::InputKind::Nifti)
    );
    let read = crate::io::ReadOptions {
        series: rec.series_uid.clone().filter(|_| dicom),
        allow_gaps: flag("allow_gaps"),
        allow_tilt: flag("allow_tilt"),
    };
    let ct = match crate::io::read_volume(&rec.input, &read) {
        Ok(v) => {
            let (data, a, _) = v.into_parts();
            same_grid("the CT", data.dim(), Some(&a), &mut w.notes).then_some(data)
        }
        Err(e) => {
            w.notes.push(format!("the CT is not shown: {e}"));
            None
        }
    };
    let uncertainty = rec.uncertainty.as_deref().and_then(|p| {
        match crate::io::read_volume(p, &Default::default()) {
            Ok(v) => {
                let (data, a, _) = v.into_parts();
                same_grid("the uncertainty map", data.dim(), Some(&a), &mut w.notes).then_some(data)
            }
            Err(e) => {
                w.notes
                    .push(format!("the uncertainty map is not shown: {e}"));
                None
            }
        }
    });
    let mut gt_raw = None;
    let mut gt_shown = None;
    if let Some(g) = gt {
        match crate::eval::read_labels(g) {
            Ok((raw, ga)) => {
                if same_grid("the ground truth", raw.dim(), Some(&ga), &mut w.notes) {
                    let mut shown = raw.clone();
                    if let Some(s) = scheme {
                        s.remap_gt(&mut shown);
                    }
                    gt_shown = Some(shown);
                    gt_raw = Some((raw, ga));
                }
            }
            Err(e) => w.notes.push(format!("the ground truth is not shown: {e}")),
        }
    }
    match data::encode_case(&data::CaseArrays {
        labels: labels.view(),
        affine: &affine,
        ct: ct.as_ref().map(|a| a.view()),
        gt: gt_shown.as_ref().map(|a| a.view()),
        uncertainty: uncertainty.as_ref().map(|a| a.view()),
        ct_in_plane,
    }) {
        Ok(e) => w.encoded = Some(e),
        Err(e) => w
            .notes
            .push(format!("no viewer: packing the images failed: {e}")),
    }
    drop((ct, uncertainty, gt_shown));
    if let (Some(eval), Some((raw, ga)), Some(g)) = (eval, gt_raw, gt) {
        let pair = CasePair {
            case: rec.case.clone(),
            pred: rec.output.clone(),
            gt: g.to_path_buf(),
        };
        match crate::eval::evaluate_arrays(&pair, (labels, affine), (raw, ga), eval) {
            Ok(r) => w.scored = Some(r),
            Err(e) => w.notes.push(format!("not scored: {e}")),
        }
    }
    w
}

fn title_for(runs: &[(PathBuf, RunDoc)], cases: usize) -> String {
    let pipeline = runs
        .first()
        .map(|r| r.1.pipeline.name.clone())
        .unwrap_or_default();
    format!("sdseg-volume review: {cases} case(s), pipeline {pipeline}")
}

fn provenance(path: &Path, run: &RunDoc) -> RunProvenance {
    RunProvenance {
        report: path.to_path_buf(),
        tool: run.tool.clone(),
        command: run.command.join(" "),
        started_unix_s: run.started_unix_s,
        finished_unix_s: run.finished_unix_s,
        pipeline: run.pipeline.clone(),
        model: run.model.clone(),
        settings: run.settings.clone(),
        cases: run.cases.len(),
    }
}

/// Build and write the page.
fn build(docs: Documents, opts: &ReviewOptions) -> Result<PageSummary, ReviewError> {
    let cases = sources::merge_cases(&docs.runs);
    let mut notes = Vec::new();
    let first_run = &docs.runs[0].1;
    let scorable = opts.gt.is_some() || docs.best_scores().is_some();
    let scheme = if scorable {
        Some(label_scheme(opts, &first_run.pipeline)?)
    } else {
        None
    };
    let mut scores_info = None;
    let scoring = match (&opts.gt, docs.best_scores(), &scheme) {
        (Some(gt), _, Some(scheme)) => {
            let eval = EvalOptions {
                metrics: MetricOptions::default(),
                scheme: scheme.clone(),
                labels: None,
            };
            let pairs = pair_ground_truth(gt, &cases, &mut notes)?;
            scores_info = Some(ScoresInfo {
                source: format!("--gt {} (paired and scored as `eval` does)", gt.display()),
                protocol: eval.metrics.protocol.to_string(),
                definitions: String::new(),
            });
            Scoring::Gt { eval, pairs }
        }
        (None, Some(source), _) => {
            scores_info = Some(ScoresInfo {
                source: source.path.display().to_string(),
                protocol: source.doc.protocol.clone(),
                definitions: source
                    .doc
                    .definitions
                    .as_object()
                    .map(|d| {
                        d.iter()
                            .map(|(k, v)| match v {
                                Value::String(s) => format!("{k}: {s}"),
                                v => format!("{k}: {v}"),
                            })
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_default(),
            });
            Scoring::Doc {
                by_case: match_scored_cases(source, &cases),
                source,
            }
        }
        _ => Scoring::None,
    };

    let bar = if opts.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(cases.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "review [{bar:30}] {pos}/{len} cases, {elapsed} ({eta} left) {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    };
    let dir = match opts.html.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|error| ReviewError::Write {
        path: dir.clone(),
        error,
    })?;
    let write_err = |error| ReviewError::Write {
        path: opts.html.clone(),
        error,
    };
    // The data blocks go to a scratch file as they are made (a 100-case page need not fit
    // in memory) and are copied after the index.
    let mut blocks = tempfile::tempfile_in(&dir).map_err(write_err)?;
    let mut pages = Vec::with_capacity(cases.len());
    let mut results = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        bar.set_message(case.record.case.clone());
        let run = &docs.runs[case.run].1;
        let (gt, doc_scores) = match &scoring {
            Scoring::None => (None, None),
            Scoring::Gt { pairs, .. } => (pairs.get(&case.record.case).cloned(), None),
            Scoring::Doc { source, by_case } => match by_case.get(&case.record.case) {
                Some(&i) => {
                    let c = &source.doc.cases[i];
                    (
                        Some(sources::resolve(&c.gt, &source.path)),
                        Some(c.labels.clone()),
                    )
                }
                None => (None, None),
            },
        };
        let eval = match &scoring {
            Scoring::Gt { eval, .. } => Some(eval),
            _ => None,
        };
        let work = work_case(
            case,
            run,
            gt.as_deref(),
            scheme.as_ref(),
            eval,
            opts.ct_in_plane,
        );
        let mut page = CasePage {
            record: case.record.clone(),
            run: case.run,
            gt,
            scores: doc_scores,
            mean_dice: None,
            mean_hd95_mm: None,
            view: None,
            notes: work.notes,
        };
        for note in &page.notes {
            notes.push(format!("case {}: {note}", case.record.case));
        }
        if let Some(e) = work.encoded {
            let block = format!("case-data-{n}");
            let page_bytes = html::write_block(&mut blocks, &block, &e.gzip).map_err(write_err)?;
            page.view = Some(ViewMeta {
                block,
                page_bytes,
                raw_bytes: e.raw_bytes,
                grid: e.grid,
                layers: e.layers,
            });
        }
        if let Some(r) = work.scored {
            results.push(r);
        }
        pages.push(page);
        bar.inc(1);
    }
    bar.finish_and_clear();

    // `--gt`: the scores as `eval` reports them (every label of the scheme, in its order).
    if let Scoring::Gt { eval, .. } = &scoring {
        let report = crate::eval::Report::new(results, eval);
        if let Some(info) = &mut scores_info {
            info.definitions = report.definitions_line();
        }
        let by_case: BTreeMap<&str, &crate::eval::CaseResult> =
            report.cases.iter().map(|c| (c.case.as_str(), c)).collect();
        for p in &mut pages {
            if let Some(r) = by_case.get(p.record.case.as_str()) {
                p.scores = Some(scores_of(r, &report.labels));
            }
        }
    }
    let mut scored = 0;
    for p in &mut pages {
        if let Some(s) = &p.scores {
            scored += 1;
            p.mean_dice = mean_of(s.iter().map(|l| l.dice));
            p.mean_hd95_mm = mean_of(s.iter().map(|l| l.hd95_mm));
        }
    }

    let viewable = pages.iter().filter(|p| p.view.is_some()).count();
    let tool = crate::pipeline::report::tool_info();
    let index = PageIndex {
        title: opts
            .title
            .clone()
            .unwrap_or_else(|| title_for(&docs.runs, pages.len())),
        generated_by: ToolDoc {
            name: tool.name.into(),
            version: tool.version.into(),
            git_hash: tool.git_hash.map(String::from),
        },
        generated_unix_s: crate::pipeline::report::unix_now(),
        runs: docs.runs.iter().map(|(p, r)| provenance(p, r)).collect(),
        labels: first_run.label_table.clone(),
        scores: scores_info,
        hu_of_code: HuCompander::table(),
        notes: notes.clone(),
        cases: pages,
    };
    let index_json = serde_json::to_string(&index).map_err(|error| ReviewError::Json {
        path: opts.html.clone(),
        error,
    })?;
    crate::io::atomic::write_atomic(&opts.html, |f| {
        html::write_page(f, &index.title, &index_json, &mut blocks)
    })
    .map_err(write_err)?;
    let bytes = std::fs::metadata(&opts.html).map(|m| m.len()).unwrap_or(0);
    Ok(PageSummary {
        path: opts.html.clone(),
        cases: index.cases.len(),
        viewable,
        scored,
        bytes,
        warnings: notes,
    })
}
