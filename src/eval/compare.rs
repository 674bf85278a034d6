//! Scores with and without post-processing (`eval --postprocess`, `reproduce`): the per-label
//! effect of a [`RefinePlan`] on the same cases under the same protocol.
//!
//! # JSON (`"postprocessing"` of `eval --postprocess --json`; `reproduce.json` has its own)
//! ```text
//! "postprocessing": {
//!   "plan": { ...RefinePlan... }, "source": "default" | "<file>", "description": "...",
//!   "effect": {
//!     "labels": [ { "label": 1, "name": "spleen", "dice_without": .., "dice_with": ..,
//!                   "hd95_mm_without": .., "hd95_mm_with": .. }, ... ],
//!     "mean": { "dice_without": .., "dice_with": .., "hd95_mm_without": .., "hd95_mm_with": .. }
//!   },
//!   "without": { ...the report of the predictions as they are (this module's parent format)... }
//! }
//! ```

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::write::{fx, md_cell, num};
use super::Report;
use crate::pipeline::RefinePlan;

/// Two reports of the same cases and protocol: the predictions as they are and after `plan`.
#[derive(Clone, Copy, Debug)]
pub struct Comparison<'a> {
    pub without: &'a Report,
    pub with: &'a Report,
    pub plan: &'a RefinePlan,
    /// Where the plan came from, for the record (`default`, a file, "chosen on ...").
    pub source: &'a str,
}

fn signed(v: f64, d: usize) -> String {
    if v.is_finite() {
        format!("{v:+.d$}")
    } else {
        fx(v, d)
    }
}

impl Comparison<'_> {
    /// `## Post-processing`: the plan and a per-label table of mean Dice and HD95 without and
    /// with it.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## Post-processing (effect on these scores)\n");
        let _ = writeln!(
            s,
            "- Plan ({}): {}.\n- Protocol `{}`; means over cases as in the tables (undefined \
             values skipped).\n",
            self.source,
            self.plan.describe(),
            self.with.metrics.protocol
        );
        let _ = writeln!(
            s,
            "| Label | Name | Dice without | Dice with | Δ Dice | HD95 without (mm) | HD95 with \
             (mm) | Δ HD95 (mm) |\n|---|---|---|---|---|---|---|---|"
        );
        for (a, b) in self.without.per_label.iter().zip(&self.with.per_label) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                a.label.id,
                md_cell(&a.label.name),
                fx(a.dice.mean, 4),
                fx(b.dice.mean, 4),
                signed(b.dice.mean - a.dice.mean, 4),
                fx(a.hd95_mm.mean, 2),
                fx(b.hd95_mm.mean, 2),
                signed(b.hd95_mm.mean - a.hd95_mm.mean, 2),
            );
        }
        let (a, b) = (&self.without.mean, &self.with.mean);
        let _ = writeln!(
            s,
            "| mean | all labels | {} | {} | {} | {} | {} | {} |\n",
            fx(a.dice, 4),
            fx(b.dice, 4),
            signed(b.dice - a.dice, 4),
            fx(a.hd95_mm, 2),
            fx(b.hd95_mm, 2),
            signed(b.hd95_mm - a.hd95_mm, 2),
        );
        s
    }

    /// The `"effect"` object of the module documentation.
    pub fn effect_json(&self) -> Value {
        let labels: Vec<Value> = self
            .without
            .per_label
            .iter()
            .zip(&self.with.per_label)
            .map(|(a, b)| {
                json!({
                    "label": a.label.id,
                    "name": a.label.name,
                    "dice_without": num(a.dice.mean),
                    "dice_with": num(b.dice.mean),
                    "hd95_mm_without": num(a.hd95_mm.mean),
                    "hd95_mm_with": num(b.hd95_mm.mean),
                })
            })
            .collect();
        json!({
            "labels": labels,
            "mean": {
                "dice_without": num(self.without.mean.dice),
                "dice_with": num(self.with.mean.dice),
                "hd95_mm_without": num(self.without.mean.hd95_mm),
                "hd95_mm_with": num(self.with.mean.hd95_mm),
            },
        })
    }

    /// The post-processed report's JSON with the `"postprocessing"` object added.
    pub fn to_json(&self) -> Value {
        let mut doc = self.with.to_json();
        doc["postprocessing"] = json!({
            "plan": self.plan,
            "source": self.source,
            "description": self.plan.describe(),
            "effect": self.effect_json(),
            "without": self.without.to_json(),
        });
        doc
    }
}
