//! `stability`: how much a prediction changes with the noise seed (the paper's Table 5), as
//! the official protocol measures it (`README`, `scripts/stability_evaluation.ipynb`,
//! reference §4).
//!
//! The official recipe runs `slice2seg.py --times N` (seeds 0..N−1; each run draws **one**
//! noise latent, shared by every slice), saves per slice with a non-empty label the soft
//! foreground map as an 8-bit PNG (`(out_p*255).astype(np.uint8)`, `*-logits.png`), and the
//! notebook compares every run with the first one:
//!
//! * per slice, PSNR, SSIM and MS-SSIM of run i against run 0 for i = 1..N−1
//!   (torchmetrics defaults, [`crate::metrics::image`]), skipping a slice whose run-0 map is
//!   all zero, skipping runs whose map is all zero, and for PSNR skipping runs identical to
//!   run 0 (infinite PSNR); the slice's value is the mean over the remaining runs;
//! * the table value is the mean over slices that kept at least one run.
//!
//! (The notebook's reference is whichever seed folder `glob` lists first; here it is seed 0.)
//!
//! Here the same happens in memory: each volume is prepared by the pipeline (the same slices
//! and preprocessing as `run`), only the slices whose label is non-empty at 256×256 (after the
//! pipeline's label remapping, nearest zoom like `get_dice_loop`) are segmented, once per seed,
//! with the noise of that seed ([`NoiseSource`]; [`NoiseMode::Shared`] is the official one
//! draw per run), and the soft maps are quantised like the PNGs (`(p·255)` truncated to
//! `u8`). Without labels every slice is used (not the official selection).
//!
//! **LPIPS** (the notebook's dataset-level measure) needs torchvision's pretrained AlexNet
//! plus the LPIPS linear layers; those weights cannot be fetched here, so it is reported as
//! not computed, never estimated.

use std::path::PathBuf;

use anyhow::Context;
use ndarray::{Array2, Array3};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::error::{ResultExt, UsageError};
use crate::metrics::image::{ms_ssim, psnr, ssim, SsimOptions, MS_SSIM_BETAS};
use crate::metrics::Stat;
use crate::pipeline::segmenter::{
    plane_len, slice_len, NoiseMode, NoiseSource, SliceSegmenter, SoftOutput, OFFICIAL_SIZE,
};

/// The protocol's map side: the official notebook compares 256×256 soft maps (and MS-SSIM's
/// five scales need a map this large), so stability runs only 256² pipelines.
const MODEL_SIZE: usize = OFFICIAL_SIZE;
const PLANE_LEN: usize = plane_len(MODEL_SIZE);
const SLICE_LEN: usize = slice_len(MODEL_SIZE);
use crate::pipeline::{LabelSlices, Pipeline, SliceSource};
use crate::volume::Volume;

/// Why LPIPS is missing from every stability report.
pub const LPIPS_NOT_COMPUTED: &str =
    "LPIPS: not computed (needs pretrained AlexNet weights, unavailable offline)";

/// The stored outputs of the official notebook for SDSeg on BTCV (binary, 10 seeds × 847
/// slices, `eval_path = outputs/slice2seg-samples-synapse-b`): probably the paper's SDSeg row
/// of Table 5 (reference §4, §6). (LPIPS, PSNR, SSIM, MS-SSIM.)
pub const OFFICIAL_BTCV_NOTEBOOK: (f64, f64, f64, f64) = (
    0.021929613625009853,
    30.076366424560547,
    0.9450787305831909,
    0.9855666160583496,
);

/// One volume to evaluate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StabilityCase {
    pub id: String,
    pub image: PathBuf,
    /// Ground truth selecting the slices (the official protocol); `None`: every slice.
    pub label: Option<PathBuf>,
}

/// How to run the seeds.
#[derive(Clone, Debug)]
pub struct StabilityOptions {
    /// Runs with seeds `0..runs` (at least 2).
    pub runs: usize,
    pub noise: NoiseMode,
    pub batch_size: usize,
    pub read: crate::io::ReadOptions,
}

/// One slice of one run compared with run 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairScore {
    /// `+inf` when the maps are identical.
    pub psnr: f64,
    pub ssim: f64,
    pub ms_ssim: f64,
    /// This run's map is all zero (the notebook skips the pair).
    pub empty: bool,
    /// Identical to run 0 (the notebook skips the pair for PSNR).
    pub identical: bool,
}

/// Every run's comparison for one slice; `runs[0]` is run 0 against itself.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceScores {
    pub case: String,
    /// Slice index along the pipeline's slicing axis.
    pub slice: usize,
    /// Run 0's map is all zero: the notebook skips the slice.
    pub reference_empty: bool,
    pub runs: Vec<PairScore>,
}

/// One volume's slices.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseScores {
    pub id: String,
    /// Slices in the volume.
    pub slices_total: usize,
    /// The evaluated slices (non-empty label, or all).
    pub slices: Vec<SliceScores>,
}

/// Everything a stability report shows.
#[derive(Clone, Debug)]
pub struct StabilityReport {
    pub runs: usize,
    pub noise: NoiseMode,
    pub pipeline: String,
    /// Whether slices were selected by their labels (the official protocol).
    pub labelled: bool,
    pub method: String,
    pub cases: Vec<CaseScores>,
}

/// The three instance-level measures, each a mean with the number of values behind it.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub psnr: Stat,
    pub ssim: Stat,
    pub ms_ssim: Stat,
}

/// Which metric of a [`PairScore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Metric {
    Psnr,
    Ssim,
    MsSsim,
}

impl Metric {
    /// The pair's value, `None` where the notebook skips the pair (all-zero map; identical
    /// maps for PSNR) or the value is undefined (NaN: e.g. MS-SSIM with a negative contrast
    /// term, which torchmetrics 0.9 raises to a fractional power; the notebook's mean would
    /// be NaN, here the pair is skipped and counted, see [`StabilityReport::undefined`]).
    fn of(self, p: &PairScore) -> Option<f64> {
        self.raw(p).filter(|v| !v.is_nan())
    }

    fn raw(self, p: &PairScore) -> Option<f64> {
        if p.empty {
            return None;
        }
        match self {
            Metric::Psnr => (!p.identical).then_some(p.psnr),
            Metric::Ssim => Some(p.ssim),
            Metric::MsSsim => Some(p.ms_ssim),
        }
    }
}

/// The notebook's aggregation over `slices`: per slice the mean over runs 1.., then the mean
/// over slices that have a value.
fn official(slices: &[&SliceScores], m: Metric) -> Stat {
    Stat::of(
        slices
            .iter()
            .filter(|s| !s.reference_empty)
            .filter_map(|s| {
                let v: Vec<f64> = s.runs.iter().skip(1).filter_map(|p| m.of(p)).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            }),
    )
}

fn summary_of(slices: &[&SliceScores]) -> Summary {
    Summary {
        psnr: official(slices, Metric::Psnr),
        ssim: official(slices, Metric::Ssim),
        ms_ssim: official(slices, Metric::MsSsim),
    }
}

/// Run `r` against run 0, over slices (same skips as the notebook).
#[derive(Clone, Copy, Debug)]
pub struct SeedRunSummary {
    pub seed: u64,
    pub scores: Summary,
    /// Slices (with a non-empty run-0 map) where this run is identical to run 0.
    pub identical: usize,
    /// Slices (with a non-empty run-0 map) where this run's map is all zero.
    pub empty: usize,
}

impl StabilityReport {
    fn all_slices(&self) -> Vec<&SliceScores> {
        self.cases.iter().flat_map(|c| c.slices.iter()).collect()
    }

    /// The table values (the notebook's aggregation).
    pub fn summary(&self) -> Summary {
        summary_of(&self.all_slices())
    }

    /// Each run against run 0 (run 0 against itself first: SSIM = MS-SSIM = 1).
    pub fn per_run(&self) -> Vec<SeedRunSummary> {
        let slices: Vec<&SliceScores> = self
            .all_slices()
            .into_iter()
            .filter(|s| !s.reference_empty)
            .collect();
        (0..self.runs)
            .map(|r| {
                let col = |m: Metric| Stat::of(slices.iter().filter_map(|s| m.of(&s.runs[r])));
                SeedRunSummary {
                    seed: r as u64,
                    scores: Summary {
                        psnr: col(Metric::Psnr),
                        ssim: col(Metric::Ssim),
                        ms_ssim: col(Metric::MsSsim),
                    },
                    identical: slices
                        .iter()
                        .filter(|s| s.runs[r].identical && !s.runs[r].empty)
                        .count(),
                    empty: slices.iter().filter(|s| s.runs[r].empty).count(),
                }
            })
            .collect()
    }

    /// Pairs (runs 1.. against run 0, on slices the notebook keeps) whose PSNR, SSIM and
    /// MS-SSIM are undefined (NaN) and therefore skipped.
    pub fn undefined(&self) -> [usize; 3] {
        let count = |m: Metric| {
            self.all_slices()
                .iter()
                .filter(|s| !s.reference_empty)
                .flat_map(|s| s.runs.iter().skip(1))
                .filter(|p| m.raw(p).is_some_and(f64::is_nan))
                .count()
        };
        [
            count(Metric::Psnr),
            count(Metric::Ssim),
            count(Metric::MsSsim),
        ]
    }

    pub fn slices_total(&self) -> usize {
        self.cases.iter().map(|c| c.slices_total).sum()
    }

    pub fn slices_used(&self) -> usize {
        self.cases.iter().map(|c| c.slices.len()).sum()
    }

    /// Slices whose run-0 map is all zero (skipped).
    pub fn slices_reference_empty(&self) -> usize {
        self.all_slices()
            .iter()
            .filter(|s| s.reference_empty)
            .count()
    }

    fn noise_words(&self) -> &'static str {
        match self.noise {
            NoiseMode::Shared => {
                "shared (one draw per run for every slice, as the official evaluation)"
            }
            NoiseMode::PerSlice => "per slice (a draw per slice and run; not the official mode)",
        }
    }

    /// Markdown: definitions, the Table 5 row, per run and per case.
    pub fn to_markdown(&self) -> String {
        let s4 = |st: &Stat| fx(st.mean, 4);
        let mut s = String::from("# Stability over seeds (paper Table 5)\n\n");
        s.push_str(&format!(
            "- Runs: {} (seeds 0..{}), noise {}.\n",
            self.runs,
            self.runs - 1,
            self.noise_words()
        ));
        s.push_str(&format!(
            "- Images: soft foreground maps at {MODEL_SIZE}x{MODEL_SIZE}, quantised to 8 bits like \
             the official `*-logits.png` ((p*255) truncated), of {} slices ({}) out of {} in {} \
             volume(s) (pipeline {}); {} slice(s) with an all-zero seed-0 map are skipped.\n",
            self.slices_used(),
            if self.labelled {
                "those whose 256x256 label is non-empty, the official selection"
            } else {
                "every slice: no labels given, not the official selection"
            },
            self.slices_total(),
            self.cases.len(),
            self.pipeline,
            self.slices_reference_empty()
        ));
        s.push_str(
            "- PSNR, SSIM, MS-SSIM: torchmetrics (0.9) defaults (Gaussian window 11, sigma 1.5, \
             K1 0.01, K2 0.03, data range from the images; MS-SSIM 5 scales, weights 0.0448, \
             0.2856, 0.3001, 0.2363, 0.1333), each run against seed 0 per slice; per slice the \
             mean over runs 1.., then the mean over slices (the official notebook). All-zero \
             maps are skipped; PSNR also skips maps identical to seed 0 (infinite).\n",
        );
        s.push_str(&format!("- {LPIPS_NOT_COMPUTED}.\n\n"));

        let sum = self.summary();
        s.push_str("## Summary\n\n| Method | LPIPS | PSNR (dB) | SSIM | MS-SSIM |\n|---|---|---|---|---|\n");
        s.push_str(&format!(
            "| {} | not computed | {} | {} | {} |\n",
            self.method.replace('|', "\\|"),
            psnr_cell(&sum.psnr, any_identical(&self.all_slices())),
            s4(&sum.ssim),
            s4(&sum.ms_ssim)
        ));
        if self.pipeline == "btcv" {
            let (l, p, ss, ms) = OFFICIAL_BTCV_NOTEBOOK;
            s.push_str(&format!(
                "| official notebook, SDSeg on BTCV (stored output, for reference) | {l:.4} | {p:.3} | {ss:.4} | {ms:.4} |\n"
            ));
        }
        s.push_str(&format!(
            "\nSlices with a value: PSNR {}, SSIM {}, MS-SSIM {}.\n",
            sum.psnr.n, sum.ssim.n, sum.ms_ssim.n
        ));
        let [up, us, um] = self.undefined();
        if up + us + um > 0 {
            s.push_str(&format!(
                "Undefined values skipped (run pairs): PSNR {up}, SSIM {us}, MS-SSIM {um} \
                 (MS-SSIM: a negative contrast term raised to a fractional power, as torchmetrics \
                 0.9 computes it; the notebook's mean would be NaN).\n"
            ));
        }
        s.push('\n');

        s.push_str(
            "## Per run (against seed 0, mean over slices)\n\n\
             | Seed | PSNR (dB) | SSIM | MS-SSIM | identical to seed 0 | all-zero |\n\
             |---|---|---|---|---|---|\n",
        );
        for r in self.per_run() {
            let p = psnr_cell(&r.scores.psnr, r.identical > 0);
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.seed,
                p,
                s4(&r.scores.ssim),
                s4(&r.scores.ms_ssim),
                r.identical,
                r.empty
            ));
        }
        s.push_str(
            "\n## Per case\n\n| Case | slices | evaluated | PSNR (dB) | SSIM | MS-SSIM |\n|---|---|---|---|---|---|\n",
        );
        for c in &self.cases {
            let sl: Vec<&SliceScores> = c.slices.iter().collect();
            let cs = summary_of(&sl);
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                c.id.replace('|', "\\|"),
                c.slices_total,
                c.slices.len(),
                psnr_cell(&cs.psnr, any_identical(&sl)),
                s4(&cs.ssim),
                s4(&cs.ms_ssim)
            ));
        }
        s
    }

    /// JSON (`"version": 1`): settings, `summary` (the table row), `per_run`, `cases`.
    /// Undefined values (and the infinite PSNR of identical maps) are `null`.
    pub fn to_json(&self) -> Value {
        let st = |s: &Stat| json!({ "mean": num(s.mean), "n": s.n });
        let sm = |s: &Summary| json!({ "psnr_db": st(&s.psnr), "ssim": st(&s.ssim), "ms_ssim": st(&s.ms_ssim) });
        let sum = self.summary();
        json!({
            "version": 1,
            "method": self.method,
            "pipeline": self.pipeline,
            "runs": self.runs,
            "seeds": (0..self.runs as u64).collect::<Vec<_>>(),
            "noise": self.noise,
            "slices": {
                "selection": if self.labelled { "non-empty label at 256x256" } else { "all" },
                "total": self.slices_total(),
                "evaluated": self.slices_used(),
                "reference_empty": self.slices_reference_empty(),
            },
            "images": "soft foreground map at 256x256, (p*255) truncated to uint8",
            "lpips": { "computed": false, "reason": LPIPS_NOT_COMPUTED },
            "summary": sm(&sum),
            "undefined_pairs": {
                "psnr_db": self.undefined()[0],
                "ssim": self.undefined()[1],
                "ms_ssim": self.undefined()[2],
            },
            "per_run": self.per_run().iter().map(|r| json!({
                "seed": r.seed,
                "scores": sm(&r.scores),
                "identical": r.identical,
                "empty": r.empty,
            })).collect::<Vec<_>>(),
            "cases": self.cases.iter().map(|c| {
                let sl: Vec<&SliceScores> = c.slices.iter().collect();
                json!({
                    "case": c.id,
                    "slices_total": c.slices_total,
                    "slices": c.slices.iter().map(|s| s.slice).collect::<Vec<_>>(),
                    "scores": sm(&summary_of(&sl)),
                })
            }).collect::<Vec<_>>(),
        })
    }

    /// CSV, one row per slice and run: `case,slice,seed,psnr_db,ssim,ms_ssim,empty,identical`
    /// (`inf` for identical maps; the skip rules are the caller's).
    pub fn to_csv(&self) -> String {
        let mut s = String::from("case,slice,seed,psnr_db,ssim,ms_ssim,empty,identical\n");
        for sl in self.all_slices() {
            for (r, p) in sl.runs.iter().enumerate() {
                s.push_str(&format!(
                    "{},{},{r},{},{},{},{},{}\n",
                    csv_field(&sl.case),
                    sl.slice,
                    csv_num(p.psnr),
                    csv_num(p.ssim),
                    csv_num(p.ms_ssim),
                    p.empty,
                    p.identical
                ));
            }
        }
        s
    }
}

/// Whether some run 1.. of a kept slice is identical to run 0 (non-empty).
fn any_identical(slices: &[&SliceScores]) -> bool {
    slices
        .iter()
        .filter(|s| !s.reference_empty)
        .flat_map(|s| s.runs.iter().skip(1))
        .any(|p| p.identical && !p.empty)
}

/// A PSNR mean; `inf (identical)` when every pair was skipped for being identical.
fn psnr_cell(st: &Stat, identical: bool) -> String {
    if st.n == 0 && identical {
        "inf (identical)".into()
    } else {
        fx(st.mean, 3)
    }
}

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn fx(v: f64, d: usize) -> String {
    if v.is_nan() {
        "–".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{v:.d$}")
    }
}

fn csv_num(v: f64) -> String {
    if v.is_nan() {
        String::new()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{v}")
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `(p·255)` truncated to `u8`, like `(out_p*255).astype(np.uint8)`.
pub fn quantise(p: &[f32]) -> Vec<u8> {
    p.iter().map(|&v| (v * 255.0) as u8).collect()
}

fn as_image(q: &[u8]) -> Array2<f64> {
    Array2::from_shape_fn((MODEL_SIZE, MODEL_SIZE), |(i, j)| {
        f64::from(q[i * MODEL_SIZE + j])
    })
}

/// Compare one run's quantised map with run 0's (`pred` = this run, `target` = run 0, as the
/// notebook's `update(pred_i, pred_0)`).
pub fn compare(map: &[u8], reference: &[u8]) -> PairScore {
    let empty = map.iter().all(|&v| v == 0);
    let identical = map == reference;
    let (p, t) = (as_image(map), as_image(reference));
    let o = SsimOptions::default();
    // 256×256 maps always satisfy the size checks.
    let err = |e| panic!("image metric on a {MODEL_SIZE}² map: {e}");
    PairScore {
        psnr: psnr(p.view(), t.view(), None).unwrap_or_else(err),
        ssim: ssim(p.view(), t.view(), &o).unwrap_or_else(err),
        ms_ssim: ms_ssim(p.view(), t.view(), &o, &MS_SSIM_BETAS).unwrap_or_else(err),
        empty,
        identical,
    }
}

/// The slices of `volume` to evaluate: those whose label (remapped, at 256×256) is non-empty,
/// or all of them without a label.
pub fn select_slices(
    src: &SliceSource<'_>,
    labels: Option<&Array3<u16>>,
    pipeline: &Pipeline,
) -> Result<Vec<usize>, crate::pipeline::PreprocessError> {
    let n = src.n_slices();
    match labels {
        None => Ok((0..n).collect()),
        Some(l) => {
            let ls = LabelSlices::new(l, src.geometry(), &pipeline.labels.remap)?;
            Ok((0..n)
                .filter(|&k| ls.slice(k).iter().any(|&v| v != 0))
                .collect())
        }
    }
}

/// Segment the selected slices of one volume once per seed and compare every run with run 0.
/// `on_run(seed)` is called after each run.
pub fn compute_case(
    id: &str,
    volume: &Volume,
    labels: Option<&Array3<u16>>,
    pipeline: &Pipeline,
    model: &mut dyn SliceSegmenter,
    opts: &StabilityOptions,
    mut on_run: impl FnMut(u64),
) -> anyhow::Result<CaseScores> {
    if model.num_classes() != 2 {
        return Err(UsageError(format!(
            "stability compares binary soft maps (the official protocol); this model has {} classes",
            model.num_classes()
        ))
        .into());
    }
    if opts.runs < 2 || opts.batch_size == 0 {
        return Err(
            UsageError("stability needs at least 2 runs and a batch size >= 1".into()).into(),
        );
    }
    let src = SliceSource::new(volume, pipeline);
    if src.geometry().model_size != MODEL_SIZE || model.size() != MODEL_SIZE {
        return Err(UsageError(format!(
            "pipeline '{}': slicing.size {} (model: {}); stability compares {MODEL_SIZE}×{MODEL_SIZE} maps, the official protocol",
            pipeline.name,
            src.geometry().model_size,
            model.size()
        ))
        .into());
    }
    let selected = select_slices(&src, labels, pipeline)
        .classified()
        .with_context(|| format!("case {id}: selecting the labelled slices"))?;
    let latent = model.latent_shape();
    let latent_len: usize = latent.iter().product();
    let mut reference: Vec<Vec<u8>> = Vec::with_capacity(selected.len());
    let mut slices: Vec<SliceScores> = selected
        .iter()
        .map(|&k| SliceScores {
            case: id.to_string(),
            slice: k,
            reference_empty: false,
            runs: Vec::with_capacity(opts.runs),
        })
        .collect();
    for seed in 0..opts.runs as u64 {
        let noise = NoiseSource::new(opts.noise, seed, latent);
        for (chunk_i, chunk) in selected.chunks(opts.batch_size).enumerate() {
            let b = chunk.len();
            let mut images = vec![0f32; b * SLICE_LEN];
            for (dst, &k) in images.chunks_mut(SLICE_LEN).zip(chunk) {
                let s = src.prepare_slice(k);
                let plane = s.as_slice().expect("prepare_slice is standard layout");
                for c in 0..3 {
                    dst[c * PLANE_LEN..(c + 1) * PLANE_LEN].copy_from_slice(plane);
                }
            }
            let mut z = vec![0f32; b * latent_len];
            for (dst, &k) in z.chunks_mut(latent_len).zip(chunk) {
                noise.fill(id, k, dst);
            }
            let out = model
                .segment(&images, &z, b)
                .map_err(|e| anyhow::anyhow!("case {id}, seed {seed}: the model failed: {e}"))?;
            let SoftOutput::Probabilities(_) = &out else {
                anyhow::bail!("case {id}: the model returned logits, not binary probabilities");
            };
            let maps: Vec<Vec<u8>> = (0..b)
                .map(|s| quantise(out.slice_planes(s, MODEL_SIZE)))
                .collect();
            let first = chunk_i * opts.batch_size;
            if seed == 0 {
                reference.extend(maps.iter().cloned());
            }
            let scores: Vec<PairScore> = maps
                .par_iter()
                .enumerate()
                .map(|(s, m)| compare(m, &reference[first + s]))
                .collect();
            for (s, p) in scores.into_iter().enumerate() {
                let sl = &mut slices[first + s];
                if seed == 0 {
                    sl.reference_empty = p.empty;
                }
                sl.runs.push(p);
            }
        }
        on_run(seed);
    }
    Ok(CaseScores {
        id: id.to_string(),
        slices_total: src.n_slices(),
        slices,
    })
}

/// Read every case and run [`compute_case`]; `progress(case, seed)` after each run.
pub fn compute(
    cases: &[StabilityCase],
    pipeline: &Pipeline,
    model: &mut dyn SliceSegmenter,
    opts: &StabilityOptions,
    mut progress: impl FnMut(&str, u64),
) -> anyhow::Result<Vec<CaseScores>> {
    let mut out = Vec::with_capacity(cases.len());
    for c in cases {
        let volume = crate::io::read_volume(&c.image, &opts.read)
            .classified()
            .with_context(|| format!("case {}: reading {}", c.id, c.image.display()))?;
        let labels = match &c.label {
            Some(p) => Some(
                crate::io::nifti::read_labels(p)
                    .classified()
                    .with_context(|| format!("case {}: reading {}", c.id, p.display()))?
                    .0,
            ),
            None => None,
        };
        out.push(compute_case(
            &c.id,
            &volume,
            labels.as_ref(),
            pipeline,
            model,
            opts,
            |seed| progress(&c.id, seed),
        )?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Affine;
    use crate::pipeline::segmenter::ThresholdSegmenter;
    use crate::volume::Provenance;

    fn volume() -> (Volume, Array3<u16>) {
        let shape = (40, 36, 5);
        let data = Array3::from_shape_fn(shape, |(i, j, k)| {
            let d = ((i as f32 - 20.0).powi(2) + (j as f32 - 18.0).powi(2)).sqrt();
            if d < 10.0 + k as f32 {
                120.0 + (i % 5) as f32 * 20.0
            } else {
                -200.0 + j as f32 * 3.0
            }
        });
        // label on slices 1..=3 only
        let labels = Array3::from_shape_fn(shape, |(i, j, k)| {
            let d = ((i as f32 - 20.0).powi(2) + (j as f32 - 18.0).powi(2)).sqrt();
            u16::from((1..=3).contains(&k) && d < 8.0) * 6 // liver (6) → 1 in btcv
        });
        (
            Volume::new(
                data,
                Affine::from_spacing([0.8, 0.8, 2.5]),
                Provenance::synthetic(),
            )
            .unwrap(),
            labels,
        )
    }

    fn opts(runs: usize) -> StabilityOptions {
        StabilityOptions {
            runs,
            noise: NoiseMode::Shared,
            batch_size: 2,
            read: Default::default(),
        }
    }

    #[test]
    fn labelled_slices_and_seed_zero_is_perfect() {
        let (vol, labels) = volume();
        let p = Pipeline::load("btcv").unwrap();
        let mut m = ThresholdSegmenter::binary();
        m.noise_weight = 0.05;
        let mut seen = Vec::new();
        let c = compute_case("v", &vol, Some(&labels), &p, &mut m, &opts(3), |s| {
            seen.push(s)
        })
        .unwrap();
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(c.slices_total, 5);
        assert_eq!(
            c.slices.iter().map(|s| s.slice).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        for s in &c.slices {
            assert_eq!(s.runs.len(), 3);
            let r0 = s.runs[0];
            assert!(r0.identical && !r0.empty);
            assert_eq!((r0.ssim, r0.ms_ssim, r0.psnr), (1.0, 1.0, f64::INFINITY));
            // the noise differs per seed, so the maps do too
            assert!(!s.runs[1].identical && s.runs[1].ssim < 1.0 && s.runs[1].psnr.is_finite());
        }
        let rep = StabilityReport {
            runs: 3,
            noise: NoiseMode::Shared,
            pipeline: "btcv".into(),
            labelled: true,
            method: "test".into(),
            cases: vec![c.clone()],
        };
        let per = rep.per_run();
        assert_eq!(per.len(), 3);
        assert_eq!(per[0].scores.ssim.mean, 1.0);
        assert_eq!(per[0].scores.psnr.n, 0);
        assert_eq!(per[0].identical, 3);
        // official = mean over slices of the mean over runs 1 and 2
        let want = c
            .slices
            .iter()
            .map(|s| (s.runs[1].ssim + s.runs[2].ssim) / 2.0)
            .sum::<f64>()
            / 3.0;
        assert!((rep.summary().ssim.mean - want).abs() < 1e-12);
        let md = rep.to_markdown();
        assert!(
            md.contains("| 0 | inf (identical) | 1.0000 | 1.0000 | 3 | 0 |"),
            "{md}"
        );
        assert!(md.contains(LPIPS_NOT_COMPUTED), "{md}");
        let j = rep.to_json();
        assert_eq!(j["per_run"][0]["scores"]["ssim"]["mean"], 1.0);
        assert_eq!(j["lpips"]["computed"], false);
        assert_eq!(rep.to_csv().lines().count(), 1 + 3 * 3);

        // Without labels every slice is evaluated; the same seed gives the same maps.
        let c2 = compute_case("v", &vol, None, &p, &mut m, &opts(2), |_| {}).unwrap();
        assert_eq!(c2.slices.len(), 5);
        assert_eq!(c2.slices[1].runs[1], c.slices[0].runs[1]);
    }

    #[test]
    fn notebook_skips_empty_and_identical() {
        let pair = |psnr: f64, ssim: f64, empty: bool, identical: bool| PairScore {
            psnr,
            ssim,
            ms_ssim: ssim,
            empty,
            identical,
        };
        let me = pair(f64::INFINITY, 1.0, false, true);
        let s = |runs: Vec<PairScore>, reference_empty| SliceScores {
            case: "c".into(),
            slice: 0,
            reference_empty,
            runs,
        };
        let slices = [
            s(
                vec![
                    me,
                    pair(30.0, 0.9, false, false),
                    pair(f64::INFINITY, 1.0, false, true),
                ],
                false,
            ),
            s(
                vec![
                    me,
                    pair(20.0, 0.5, false, false),
                    pair(0.0, 0.0, true, false),
                ],
                false,
            ),
            s(
                vec![
                    pair(f64::INFINITY, 1.0, true, true),
                    pair(10.0, 0.1, false, false),
                ],
                true,
            ),
        ];
        let refs: Vec<&SliceScores> = slices.iter().collect();
        let sum = summary_of(&refs);
        // slice 1: PSNR 30 (identical run skipped), SSIM (0.9 + 1)/2; slice 2: 20 and 0.5
        // (empty run skipped); slice 3 skipped (empty reference).
        assert_eq!(sum.psnr.mean, 25.0);
        assert_eq!(sum.psnr.n, 2);
        assert!((sum.ssim.mean - (0.95 + 0.5) / 2.0).abs() < 1e-15);

        // An undefined MS-SSIM (NaN) is skipped and counted, not allowed to poison the mean.
        let mut nan = pair(25.0, 0.8, false, false);
        nan.ms_ssim = f64::NAN;
        let slices = [s(vec![me, nan, pair(30.0, 0.9, false, false)], false)];
        let rep = StabilityReport {
            runs: 3,
            noise: NoiseMode::Shared,
            pipeline: "x".into(),
            labelled: true,
            method: "m".into(),
            cases: vec![CaseScores {
                id: "c".into(),
                slices_total: 1,
                slices: slices.to_vec(),
            }],
        };
        assert_eq!(rep.summary().ms_ssim.mean, 0.9);
        assert!((rep.summary().ssim.mean - 0.85).abs() < 1e-15);
        assert_eq!(rep.undefined(), [0, 0, 1]);
        assert!(rep
            .to_markdown()
            .contains("MS-SSIM 1 (MS-SSIM: a negative contrast term"));
    }

    #[test]
    fn quantise_truncates() {
        assert_eq!(
            quantise(&[0.0, 0.999, 1.0, 0.5, 0.003_92]),
            [0, 254, 255, 127, 0]
        );
    }

    #[test]
    fn multiclass_models_are_refused() {
        let (vol, _) = volume();
        let p = Pipeline::load("btcv").unwrap();
        let mut m = ThresholdSegmenter::multiclass(3);
        let e = compute_case("v", &vol, None, &p, &mut m, &opts(2), |_| {}).unwrap_err();
        assert!(e.to_string().contains("binary"), "{e}");
        assert_eq!(
            crate::error::exit_code_for(&e),
            crate::error::ExitCode::BadInput
        );
    }
}
