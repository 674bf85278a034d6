//! Report writers: Markdown (the paper's table layout), CSV and JSON.
//!
//! # JSON (stable; `"version": 1`)
//!
//! ```text
//! {
//!   "version": 1,
//!   "protocol": "nnunet" | "sdseg" | "monai",
//!   "definitions": {                       // human-readable, for the record
//!     "protocol": "...", "resolution": "native" | "256x256 in-plane (nearest)",
//!     "hd95": "symmetric" | "pooled", "hd95_definition": "...", "assd": "...",
//!     "nsd": "...", "nsd_tolerance_mm": 1.0, "surface": "...",
//!     "labels": "<scheme name>: <remapping>"
//!   },
//!   "cases": [
//!     { "case": "0001", "pred": "<path>", "gt": "<path>",
//!       "labels": [ { "label": 1, "name": "spleen",
//!                     "dice": 0.93, "iou": 0.87, "hd95_mm": 2.1, "assd_mm": 0.6, "nsd": 0.91,
//!                     "tp": 1234, "fp": 56, "fn": 78, "n_pred": 1290, "n_gt": 1312 }, ... ] },
//!     ...
//!   ],
//!   "summary": {
//!     "labels": [ { "label": 1, "name": "spleen",
//!                   "dice": {"mean": .., "std": .., "n": ..}, "iou": {..}, "hd95_mm": {..},
//!                   "assd_mm": {..}, "nsd": {..} }, ... ],
//!     "mean": { "dice": .., "iou": .., "hd95_mm": .., "assd_mm": .., "nsd": .. }
//!   }
//! }
//! ```
//! Cases are sorted by case id; every case lists the same labels in the same order.
//! Undefined values (NaN) are `null`. JSON has no infinity: the +inf distances of the
//! `monai` protocol (exactly one mask empty, visible from `n_pred`/`n_gt`) are `null` too.
//! `std` is the population standard deviation (ddof = 0); `n` counts the defined values;
//! `summary.mean` is the mean over labels of the per-label means.
//!
//! # CSV
//! Header `protocol,case,label,name,dice,iou,hd95_mm,assd_mm,nsd,tp,fp,fn,n_pred,n_gt`;
//! one row per case × label, then per label a row with case `mean` and one with case `std`
//! (counts empty), then case `mean`, label `all` (mean over labels). Undefined values are
//! empty fields, infinities `inf`.

use super::{LabelMetrics, Report};
use crate::metrics::Stat;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

/// Boundary definition, printed with distance results.
pub const SURFACE_DEFINITION: &str = "surfaces = boundary voxels (foreground voxels with a \
    6-neighbour outside the mask or the array; medpy/MONAI), distances between voxel centres \
    from an exact Euclidean distance transform with the voxel spacing of the affine";
/// ASSD definition.
pub const ASSD_DEFINITION: &str = "mean of all boundary-voxel distances of both directions \
    together (medpy >= 0.5 assd, MONAI symmetric average surface distance)";
/// NSD definition.
pub const NSD_DEFINITION: &str = "fraction of boundary voxels of both surfaces within the \
    tolerance (<=) of the other surface (voxel-counted surfaces as MONAI \
    use_subvoxels=False, not DeepMind surfel areas); undefined when both masks are empty, 0 \
    when exactly one is";

/// Output file formats, chosen by the `--out` extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Markdown,
    Csv,
    Json,
}

impl OutputFormat {
    /// `.md`/`.markdown`, `.csv` or `.json` (any case); `None` for anything else.
    pub fn from_path(path: &Path) -> Option<OutputFormat> {
        let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
        match ext.as_str() {
            "md" | "markdown" => Some(OutputFormat::Markdown),
            "csv" => Some(OutputFormat::Csv),
            "json" => Some(OutputFormat::Json),
            _ => None,
        }
    }
}

pub(super) fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn stat_json(s: &Stat) -> Value {
    json!({ "mean": num(s.mean), "std": num(s.std), "n": s.n })
}

fn label_json(m: &LabelMetrics, name: &str) -> Value {
    json!({
        "label": m.label,
        "name": name,
        "dice": num(m.dice),
        "iou": num(m.iou),
        "hd95_mm": num(m.hd95_mm),
        "assd_mm": num(m.assd_mm),
        "nsd": num(m.nsd),
        "tp": m.counts.tp,
        "fp": m.counts.fp,
        "fn": m.counts.fn_,
        "n_pred": m.counts.n_pred(),
        "n_gt": m.counts.n_gt(),
    })
}

impl Report {
    fn resolution(&self) -> &'static str {
        if self.metrics.protocol.resamples_to_sdseg_grid() {
            "256x256 in-plane (nearest)"
        } else {
            "native"
        }
    }

    /// The JSON document described in this module's documentation.
    pub fn to_json(&self) -> Value {
        let m = &self.metrics;
        let cases: Vec<Value> = self
            .cases
            .iter()
            .map(|c| {
                json!({
                    "case": c.case,
                    "pred": c.pred.display().to_string(),
                    "gt": c.gt.display().to_string(),
                    "labels": c.labels.iter().zip(&self.labels)
                        .map(|(x, spec)| label_json(x, &spec.name)).collect::<Vec<_>>(),
                })
            })
            .collect();
        let per_label: Vec<Value> = self
            .per_label
            .iter()
            .map(|s| {
                json!({
                    "label": s.label.id,
                    "name": s.label.name,
                    "dice": stat_json(&s.dice),
                    "iou": stat_json(&s.iou),
                    "hd95_mm": stat_json(&s.hd95_mm),
                    "assd_mm": stat_json(&s.assd_mm),
                    "nsd": stat_json(&s.nsd),
                })
            })
            .collect();
        json!({
            "version": 1,
            "protocol": m.protocol.name(),
            "definitions": {
                "protocol": m.protocol.description(),
                "resolution": self.resolution(),
                "hd95": m.hd95.name(),
                "hd95_definition": m.hd95.description(),
                "assd": ASSD_DEFINITION,
                "nsd": NSD_DEFINITION,
                "nsd_tolerance_mm": m.nsd_tolerance_mm,
                "surface": SURFACE_DEFINITION,
                "labels": format!("{}: {}", self.scheme_name, self.scheme_description),
            },
            "cases": cases,
            "summary": {
                "labels": per_label,
                "mean": {
                    "dice": num(self.mean.dice),
                    "iou": num(self.mean.iou),
                    "hd95_mm": num(self.mean.hd95_mm),
                    "assd_mm": num(self.mean.assd_mm),
                    "nsd": num(self.mean.nsd),
                },
            },
        })
    }

    /// The CSV described in this module's documentation.
    pub fn to_csv(&self) -> String {
        let p = self.metrics.protocol.name();
        let f = |v: f64| -> String {
            if v.is_nan() {
                String::new()
            } else if v.is_infinite() {
                if v > 0.0 { "inf" } else { "-inf" }.into()
            } else {
                format!("{v}")
            }
        };
        let mut s = String::from(
            "protocol,case,label,name,dice,iou,hd95_mm,assd_mm,nsd,tp,fp,fn,n_pred,n_gt\n",
        );
        for c in &self.cases {
            for (m, spec) in c.labels.iter().zip(&self.labels) {
                let _ = writeln!(
                    s,
                    "{p},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    csv_field(&c.case),
                    m.label,
                    csv_field(&spec.name),
                    f(m.dice),
                    f(m.iou),
                    f(m.hd95_mm),
                    f(m.assd_mm),
                    f(m.nsd),
                    m.counts.tp,
                    m.counts.fp,
                    m.counts.fn_,
                    m.counts.n_pred(),
                    m.counts.n_gt()
                );
            }
        }
        for l in &self.per_label {
            for (what, get) in [
                ("mean", (|s: &Stat| s.mean) as fn(&Stat) -> f64),
                ("std", |s: &Stat| s.std),
            ] {
                let _ = writeln!(
                    s,
                    "{p},{what},{},{},{},{},{},{},{},,,,,",
                    l.label.id,
                    csv_field(&l.label.name),
                    f(get(&l.dice)),
                    f(get(&l.iou)),
                    f(get(&l.hd95_mm)),
                    f(get(&l.assd_mm)),
                    f(get(&l.nsd)),
                );
            }
        }
        let m = &self.mean;
        let _ = writeln!(
            s,
            "{p},mean,all,mean over labels,{},{},{},{},{},,,,,",
            f(m.dice),
            f(m.iou),
            f(m.hd95_mm),
            f(m.assd_mm),
            f(m.nsd)
        );
        s
    }

    /// Markdown: definitions, the paper-style summary row for `method`, per-label
    /// mean ± std, and per-case scores.
    pub fn to_markdown(&self, method: &str) -> String {
        let mut s = String::new();
        self.md_definitions(&mut s);
        self.md_summary(&mut s, method);
        self.md_per_label(&mut s);
        self.md_per_case(&mut s);
        s
    }

    /// The title and what the protocol, metrics, labels and means are.
    fn md_definitions(&self, s: &mut String) {
        let m = &self.metrics;
        let tol = m.nsd_tolerance_mm;
        let _ = writeln!(s, "# Segmentation scores\n");
        let _ = writeln!(
            s,
            "- **Protocol `{}`** ({} resolution): {}.",
            m.protocol,
            self.resolution(),
            m.protocol.description()
        );
        let _ = writeln!(s, "- **HD95** {}.", m.hd95.description());
        let _ = writeln!(s, "- **ASSD**: {ASSD_DEFINITION}.");
        let _ = writeln!(s, "- **NSD@{tol} mm**: {NSD_DEFINITION}.");
        let _ = writeln!(s, "- Surfaces: {SURFACE_DEFINITION}.");
        let _ = writeln!(
            s,
            "- Labels: {} ({}). Cases: {}. Means skip undefined values (n = defined cases); \
             ± is the population standard deviation over cases.\n",
            self.scheme_name,
            self.scheme_description,
            self.cases.len()
        );
    }

    /// The paper's layout: one row per method, mean over labels (and cases).
    fn md_summary(&self, s: &mut String, method: &str) {
        let tol = self.metrics.nsd_tolerance_mm;
        let _ = writeln!(s, "## Summary (mean over labels of the mean over cases)\n");
        let mut head = format!("| Method | Dice | IoU | HD95 (mm) | ASSD (mm) | NSD@{tol}mm |");
        let mut rule = String::from("|---|---|---|---|---|---|");
        let mut row = format!(
            "| {} | {} | {} | {} | {} | {} |",
            md_cell(method),
            fx(self.mean.dice, 4),
            fx(self.mean.iou, 4),
            fx(self.mean.hd95_mm, 2),
            fx(self.mean.assd_mm, 2),
            fx(self.mean.nsd, 4)
        );
        if self.labels.len() > 1 {
            for l in &self.per_label {
                let _ = write!(head, " {} |", md_cell(&l.label.name));
                rule.push_str("---|");
                let _ = write!(row, " {} |", fx(l.dice.mean, 4));
            }
        }
        let _ = writeln!(s, "{head}\n{rule}\n{row}\n");
        if self.labels.len() > 1 {
            let _ = writeln!(s, "Label columns: Dice.\n");
        }
    }

    /// Mean ± std over cases of every label, and the mean over labels.
    fn md_per_label(&self, s: &mut String) {
        let tol = self.metrics.nsd_tolerance_mm;
        let _ = writeln!(s, "## Per label (mean ± std over cases)\n");
        let _ = writeln!(
            s,
            "| Label | Name | Dice | IoU | HD95 (mm) | ASSD (mm) | NSD@{tol}mm | n |\n|---|---|---|---|---|---|---|---|"
        );
        for l in &self.per_label {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                l.label.id,
                md_cell(&l.label.name),
                pm(&l.dice, 4),
                pm(&l.iou, 4),
                pm(&l.hd95_mm, 2),
                pm(&l.assd_mm, 2),
                pm(&l.nsd, 4),
                l.dice.n
            );
        }
        let _ = writeln!(
            s,
            "| | **mean over labels** | {} | {} | {} | {} | {} | |\n",
            fx(self.mean.dice, 4),
            fx(self.mean.iou, 4),
            fx(self.mean.hd95_mm, 2),
            fx(self.mean.assd_mm, 2),
            fx(self.mean.nsd, 4)
        );
    }

    /// Every case's scores (every label's Dice and HD95 when there are several).
    fn md_per_case(&self, s: &mut String) {
        let tol = self.metrics.nsd_tolerance_mm;
        let _ = writeln!(s, "## Per case\n");
        if self.labels.len() == 1 {
            let _ = writeln!(
                s,
                "| Case | Dice | IoU | HD95 (mm) | ASSD (mm) | NSD@{tol}mm | TP | FP | FN |\n|---|---|---|---|---|---|---|---|---|"
            );
            for c in &self.cases {
                let x = &c.labels[0];
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    md_cell(&c.case),
                    fx(x.dice, 4),
                    fx(x.iou, 4),
                    fx(x.hd95_mm, 2),
                    fx(x.assd_mm, 2),
                    fx(x.nsd, 4),
                    x.counts.tp,
                    x.counts.fp,
                    x.counts.fn_
                );
            }
        } else {
            let mut head = String::from("| Case |");
            let mut rule = String::from("|---|");
            for l in &self.labels {
                let _ = write!(head, " {} |", md_cell(&l.name));
                rule.push_str("---|");
            }
            let _ = writeln!(
                s,
                "Dice per label; HD95 in mm in parentheses.\n\n{head} mean Dice |\n{rule}---|"
            );
            for c in &self.cases {
                let mut row = format!("| {} |", md_cell(&c.case));
                for x in &c.labels {
                    let _ = write!(row, " {} ({}) |", fx(x.dice, 4), fx(x.hd95_mm, 2));
                }
                let mean = Stat::of(c.labels.iter().map(|x| x.dice)).mean;
                let _ = writeln!(s, "{row} {} |", fx(mean, 4));
            }
        }
    }
}

/// A number with `d` decimals; `–` when undefined, `inf` for infinity.
pub(super) fn fx(v: f64, d: usize) -> String {
    if v.is_nan() {
        "–".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{v:.d$}")
    }
}

fn pm(s: &Stat, d: usize) -> String {
    if s.mean.is_finite() && s.std.is_finite() {
        format!("{:.d$} ± {:.d$}", s.mean, s.std)
    } else {
        fx(s.mean, d)
    }
}

pub(super) fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
