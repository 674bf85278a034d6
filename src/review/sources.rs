//! The documents a review page is built from, as the page reads them: run reports
//! (`run --report`, one per shard of a Slurm array), `eval` JSON reports and `reproduce`'s
//! `reproduce.json`. Each is read into a view of the fields the page uses, so reports of
//! every shard (and of older versions, which lack a field or two) load alike; the run
//! report's own type ([`crate::pipeline::report::RunReport`]) is only ever serialised, and
//! `run --html` goes through the same JSON (see [`super::build_for_run`]).
//!
//! **Folders.** A folder given to `review` is searched (top level only) for `*.json` files
//! that are one of these documents; other JSON files (label tables, post-processing plans)
//! are passed over. A file named on the command line must be one of them.
//!
//! **Merging.** Cases are keyed by case id. A case in several reports (shards never share
//! one, but a resumed run reports the cases it skipped) keeps its record from the report that
//! last wrote it; a case only ever skipped keeps a skipped record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ReviewError;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ToolDoc {
    pub name: String,
    pub version: String,
    pub git_hash: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct PipelineDoc {
    /// `name` or `name:variant`.
    pub name: String,
    /// `built-in pipeline 'NAME' (...)` or the file it was read from.
    pub origin: String,
    pub window_hu: [f64; 2],
    pub summary: String,
}

impl PipelineDoc {
    /// The `--pipeline` argument that loads this pipeline again: the name of a built-in, or
    /// the file with the variant.
    pub fn spec(&self) -> String {
        if self.origin.starts_with("built-in") || self.origin.is_empty() {
            return self.name.clone();
        }
        match self.name.split_once(':') {
            Some((_, variant)) => format!("{}:{variant}", self.origin),
            None => self.origin.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ModelDoc {
    pub kind: String,
    pub config_source: String,
    pub weights: Option<PathBuf>,
    pub weights_sha256: Option<String>,
    pub ema: bool,
    pub num_classes: usize,
    pub slice_size: usize,
    pub demo_model: bool,
}

/// One label value of the outputs: id, name, colour.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct LabelDoc {
    pub id: u16,
    pub name: String,
    pub color: [u8; 3],
}

/// A label's statistics in a case (`pipeline::stats::LabelStat`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct LabelStatDoc {
    pub label: u16,
    pub name: String,
    pub voxels: u64,
    pub volume_ml: f64,
    pub mean_hu: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_uncertainty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncertain_ml: Option<f64>,
}

/// One case of a run report (`pipeline::report::CaseRecord`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CaseDoc {
    pub case: String,
    pub input: PathBuf,
    pub output: PathBuf,
    pub status: String,
    pub failed_stage: Option<String>,
    pub error: Option<String>,
    pub series_uid: Option<String>,
    pub series_description: Option<String>,
    pub shape: Option<[usize; 3]>,
    pub spacing_mm: Option<[f64; 3]>,
    pub orientation: Option<String>,
    pub slices: usize,
    pub seconds: Value,
    pub labels: Vec<LabelStatDoc>,
    pub warnings: Vec<String>,
    /// `--uncertainty`: the case's map.
    pub uncertainty: Option<PathBuf>,
}

/// A run report (`run --report`), as the page reads it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RunDoc {
    pub tool: ToolDoc,
    pub command: Vec<String>,
    pub started_unix_s: f64,
    pub finished_unix_s: f64,
    pub pipeline: PipelineDoc,
    pub model: Option<ModelDoc>,
    pub settings: Value,
    pub label_table: Vec<LabelDoc>,
    pub cases: Vec<CaseDoc>,
    pub totals: Value,
}

/// One label's scores in a case (an `eval` JSON case's `labels` entry); `null` is NaN.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct LabelScoreDoc {
    pub label: u16,
    pub name: String,
    pub dice: Option<f64>,
    pub iou: Option<f64>,
    pub hd95_mm: Option<f64>,
    pub assd_mm: Option<f64>,
    pub nsd: Option<f64>,
    pub n_pred: Option<u64>,
    pub n_gt: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ScoredCaseDoc {
    pub case: String,
    pub pred: PathBuf,
    pub gt: PathBuf,
    pub labels: Vec<LabelScoreDoc>,
}

/// An `eval` JSON report (`eval --out FILE.json`, `eval --json`; `reproduce`'s
/// `scores-<protocol>.json` and the protocols of `reproduce.json`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct EvalDoc {
    pub protocol: String,
    pub definitions: Value,
    pub cases: Vec<ScoredCaseDoc>,
}

/// Scores from a document, with where they came from.
#[derive(Clone, Debug)]
pub struct ScoreSource {
    pub doc: EvalDoc,
    pub path: PathBuf,
    /// Lower is preferred (see [`Documents::scores`]).
    rank: u8,
}

/// Every document found, in the order given (folders: file name order).
#[derive(Clone, Debug, Default)]
pub struct Documents {
    /// (path, report).
    pub runs: Vec<(PathBuf, RunDoc)>,
    pub scores: Vec<ScoreSource>,
}

/// What a JSON document is.
enum Kind {
    Run(Box<RunDoc>),
    Eval(EvalDoc),
    Reproduce(EvalDoc),
    Other,
}

fn classify(path: &Path, v: Value) -> Result<Kind, ReviewError> {
    let json = |error| ReviewError::Json {
        path: path.to_path_buf(),
        error,
    };
    let has = |k: &str| v.get(k).is_some();
    if has("tool") && has("cases") && has("totals") {
        return Ok(Kind::Run(Box::new(
            serde_json::from_value(v).map_err(json)?,
        )));
    }
    if has("protocols") && has("dataset") {
        // reproduce.json: one eval report per protocol; native resolution (`eval`'s default)
        // when it has it.
        let protocols = v.get("protocols").and_then(Value::as_object);
        let chosen = protocols.and_then(|p| p.get("nnunet").or_else(|| p.values().next()));
        return match chosen {
            Some(doc) => Ok(Kind::Reproduce(
                serde_json::from_value(doc.clone()).map_err(json)?,
            )),
            None => Ok(Kind::Other),
        };
    }
    if has("protocol") && has("cases") && has("summary") {
        return Ok(Kind::Eval(serde_json::from_value(v).map_err(json)?));
    }
    Ok(Kind::Other)
}

fn read_json(path: &Path) -> Result<Value, ReviewError> {
    let text = std::fs::read(path).map_err(|error| ReviewError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    serde_json::from_slice(&text).map_err(|error| ReviewError::Json {
        path: path.to_path_buf(),
        error,
    })
}

impl Documents {
    /// Read every source: a run report, an `eval`/`reproduce` JSON, or a folder holding them.
    pub fn load(sources: &[PathBuf]) -> Result<Documents, ReviewError> {
        let mut docs = Documents::default();
        for src in sources {
            if src.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(src)
                    .map_err(|error| ReviewError::Io {
                        path: src.clone(),
                        error,
                    })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.is_file()
                            && p.extension()
                                .is_some_and(|x| x.eq_ignore_ascii_case("json"))
                            && !p
                                .file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    })
                    .collect();
                files.sort();
                let before = docs.runs.len();
                for f in files {
                    // A JSON file that does not parse in a folder is not ours to judge.
                    let Ok(v) = read_json(&f) else { continue };
                    docs.add(&f, classify(&f, v)?, false);
                }
                if docs.runs.len() == before {
                    return Err(ReviewError::NoRunReport { dir: src.clone() });
                }
            } else if src.is_file() {
                let kind = classify(src, read_json(src)?)?;
                if matches!(kind, Kind::Other) {
                    return Err(ReviewError::NotADocument { path: src.clone() });
                }
                docs.add(src, kind, true);
            } else {
                return Err(ReviewError::Missing { path: src.clone() });
            }
        }
        if docs.runs.is_empty() {
            return Err(ReviewError::NoRunReportAtAll);
        }
        Ok(docs)
    }

    fn add(&mut self, path: &Path, kind: Kind, named: bool) {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match kind {
            Kind::Run(r) => self.runs.push((path.to_path_buf(), *r)),
            Kind::Reproduce(doc) => self.scores.push(ScoreSource {
                doc,
                path: path.to_path_buf(),
                rank: if named { 0 } else { 1 },
            }),
            Kind::Eval(doc) => {
                let rank = match (named, doc.protocol.as_str(), file.contains("postprocessed")) {
                    (true, _, _) => 0,
                    (false, "nnunet", false) => 2,
                    (false, _, false) => 3,
                    (false, _, true) => 4,
                };
                self.scores.push(ScoreSource {
                    doc,
                    path: path.to_path_buf(),
                    rank,
                });
            }
            Kind::Other => {}
        }
    }

    /// The scores the page shows: a file named on the command line, else `reproduce.json`
    /// (its native-resolution protocol), else a plain `eval` report of the native protocol,
    /// else any `eval` report (post-processed ones last).
    pub fn best_scores(&self) -> Option<&ScoreSource> {
        self.scores.iter().min_by_key(|s| s.rank)
    }
}

/// A path recorded in a report, resolved: as written when it exists from here (the report
/// holds paths as the run was given them), else relative to the report's folder.
pub fn resolve(recorded: &Path, report: &Path) -> PathBuf {
    if recorded.as_os_str().is_empty() || recorded.is_absolute() || recorded.exists() {
        return recorded.to_path_buf();
    }
    match report.parent() {
        Some(dir) if dir.join(recorded).exists() => dir.join(recorded),
        _ => recorded.to_path_buf(),
    }
}

/// A case's record and the run (index into [`Documents::runs`]) it came from.
#[derive(Clone, Debug)]
pub struct MergedCase {
    pub record: CaseDoc,
    pub run: usize,
}

/// Every case of every run report, by case id (see the module documentation).
pub fn merge_cases(runs: &[(PathBuf, RunDoc)]) -> Vec<MergedCase> {
    let mut by_id: BTreeMap<String, MergedCase> = BTreeMap::new();
    for (i, (path, run)) in runs.iter().enumerate() {
        for c in &run.cases {
            let mut record = c.clone();
            record.input = resolve(&c.input, path);
            record.output = resolve(&c.output, path);
            record.uncertainty = c.uncertainty.as_deref().map(|u| resolve(u, path));
            let new = MergedCase { record, run: i };
            match by_id.get(&c.case) {
                None => {
                    by_id.insert(c.case.clone(), new);
                }
                Some(old) => {
                    let newer = run.finished_unix_s >= runs[old.run].1.finished_unix_s;
                    let replaces = match (old.record.status.as_str(), c.status.as_str()) {
                        (_, "skipped") => old.record.status == "skipped" && newer,
                        ("skipped", _) => true,
                        _ => newer,
                    };
                    if replaces {
                        by_id.insert(c.case.clone(), new);
                    }
                }
            }
        }
    }
    by_id.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(finished: f64, cases: &[(&str, &str)]) -> RunDoc {
        RunDoc {
            finished_unix_s: finished,
            cases: cases
                .iter()
                .map(|(id, status)| CaseDoc {
                    case: id.to_string(),
                    status: status.to_string(),
                    output: PathBuf::from(format!("/out/{id}.nii.gz")),
                    ..CaseDoc::default()
                })
                .collect(),
            ..RunDoc::default()
        }
    }

    #[test]
    fn shards_merge_and_the_last_writer_wins() {
        let runs = vec![
            (
                PathBuf::from("a.json"),
                run(1.0, &[("c0", "written"), ("c2", "failed")]),
            ),
            (PathBuf::from("b.json"), run(2.0, &[("c1", "written")])),
            // A resumed run: c0 skipped (kept from the first), c2 redone.
            (
                PathBuf::from("c.json"),
                run(3.0, &[("c0", "skipped"), ("c2", "written")]),
            ),
        ];
        let merged = merge_cases(&runs);
        let got: Vec<(&str, &str, usize)> = merged
            .iter()
            .map(|m| (m.record.case.as_str(), m.record.status.as_str(), m.run))
            .collect();
        assert_eq!(
            got,
            [
                ("c0", "written", 0),
                ("c1", "written", 1),
                ("c2", "written", 2)
            ]
        );
    }

    #[test]
    fn documents_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let write = |name: &str, v: Value| {
            std::fs::write(d.path().join(name), v.to_string()).unwrap();
            d.path().join(name)
        };
        write(
            "run_0.json",
            serde_json::json!({"tool": {"name": "x", "version": "1"}, "cases": [], "totals": {}}),
        );
        write(
            "labels.json",
            serde_json::json!({"pipeline": "demo", "labels": []}),
        );
        write(
            "scores-nnunet-postprocessed.json",
            serde_json::json!({"version": 1, "protocol": "nnunet", "cases": [], "summary": {}}),
        );
        write(
            "scores-nnunet.json",
            serde_json::json!({"version": 1, "protocol": "nnunet", "cases": [], "summary": {}}),
        );
        let docs = Documents::load(&[d.path().to_path_buf()]).unwrap();
        assert_eq!(docs.runs.len(), 1);
        assert_eq!(docs.scores.len(), 2);
        assert!(docs
            .best_scores()
            .unwrap()
            .path
            .ends_with("scores-nnunet.json"));
        let plan = write("plan.json", serde_json::json!({"labels": {}}));
        assert!(matches!(
            Documents::load(&[plan]),
            Err(ReviewError::NotADocument { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            Documents::load(&[empty.path().to_path_buf()]),
            Err(ReviewError::NoRunReport { .. })
        ));
    }

    #[test]
    fn pipeline_specs_reload_the_pipeline() {
        let builtin = PipelineDoc {
            name: "btcv:cls9".into(),
            origin: "built-in pipeline 'btcv' (pipelines/btcv.toml)".into(),
            ..PipelineDoc::default()
        };
        assert_eq!(builtin.spec(), "btcv:cls9");
        let file = PipelineDoc {
            name: "mine:v2".into(),
            origin: "/p/mine.toml".into(),
            ..PipelineDoc::default()
        };
        assert_eq!(file.spec(), "/p/mine.toml:v2");
    }
}
