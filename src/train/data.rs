//! Training data: labelled volumes → model-sized slices → shuffled batches, prepared on rayon
//! threads ahead of the optimiser.
//!
//! Sources ([`DataSource`]):
//! * a folder in one of the dataset layouts of [`crate::dataset`] (BTCV, STS-3D, or generic
//!   `images/` + `labels/`), told apart by its sub-folders ([`crate::dataset::discover`]);
//! * `phantom:FIRST-LAST[@IxJxK]`: synthetic abdomen phantoms ([`crate::phantom`]) made in
//!   memory from seeds FIRST..=LAST (default size 64×64×32), case ids `phantom-<seed>`.
//!
//! Every volume is sliced with the pipeline's own preprocessing ([`SliceSource`],
//! [`LabelSlices`]: slicing frame, window, normalisation, resize to S×S, label remap), so
//! training sees exactly what `run` feeds the model. The pipeline's `[train]` options apply:
//! `mask_labels_to_image`, `min_object_size` (26-connected components of the foreground,
//! `skimage.morphology.remove_small_objects`), `skip_constant_slices` and `hflip`.
//!
//! Each sample's target follows `ldm/data/synapse.py`: for a binary model the foreground
//! union (`label > 0`); for a K-class model a class id drawn uniformly among the classes
//! present in the slice (background included), with target `label == id`, or `label != 0`
//! for id 0. Targets are 3-channel masks in {−1, 1}; images are the slice repeated on 3
//! channels.
//!
//! Sampling is deterministic in (seed, step): epoch `e` is a permutation drawn from
//! (seed, e), step `n` takes samples `n·B .. (n+1)·B` of the concatenated epochs, and each
//! sample's flip and class come from (seed, sample index). A resumed run therefore sees the
//! same batches as an uninterrupted one.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use ndarray::{Array3, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::dataset::{discover, CaseFiles, DatasetError};
use crate::io::{read_volume, ReadOptions};
use crate::phantom::{abdomen_phantom, PhantomParams};
use crate::pipeline::{LabelSlices, Pipeline, SliceSource};
use crate::volume::Volume;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Layout(#[from] DatasetError),
    #[error("case '{case}': reading {path}: {message}")]
    Read {
        case: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "case '{case}': label {label} has shape {label_shape:?} but image {image} has shape \
         {image_shape:?}; the label must be on the image's grid"
    )]
    LabelShape {
        case: String,
        image: PathBuf,
        label: PathBuf,
        image_shape: [usize; 3],
        label_shape: [usize; 3],
    },
    #[error(
        "invalid data source '{spec}': {message} (a folder, or phantom:FIRST-LAST[@IxJxK], \
         e.g. phantom:1000-1039@64x64x32)"
    )]
    BadSpec { spec: String, message: String },
    #[error("no training slices: every slice was skipped or no case was selected")]
    NoSlices,
}

impl crate::error::Classify for DataError {
    fn is_input_error(&self) -> bool {
        true
    }
}

/// Where labelled volumes come from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    Dir(PathBuf),
    /// Synthetic phantoms for seeds `first..=last`.
    Phantoms {
        first: u64,
        last: u64,
        shape: [usize; 3],
    },
}

/// Default phantom size (what `sdseg-volume phantom` writes by default).
pub const DEFAULT_PHANTOM_SHAPE: [usize; 3] = [64, 64, 32];

impl FromStr for DataSource {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        let Some(rest) = s.strip_prefix("phantom:") else {
            return Ok(DataSource::Dir(PathBuf::from(s)));
        };
        let bad = |m: &str| DataError::BadSpec {
            spec: s.to_string(),
            message: m.to_string(),
        };
        let (range, shape) = match rest.split_once('@') {
            Some((r, sh)) => (r, Some(sh)),
            None => (rest, None),
        };
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let first: u64 = a.trim().parse().map_err(|_| bad("seed is not a number"))?;
        let last: u64 = b.trim().parse().map_err(|_| bad("seed is not a number"))?;
        if last < first {
            return Err(bad("LAST is below FIRST"));
        }
        if last - first >= 100_000 {
            return Err(bad("more than 100000 phantoms"));
        }
        let shape = match shape {
            None => DEFAULT_PHANTOM_SHAPE,
            Some(sh) => {
                let parts: Vec<&str> = sh.split(['x', 'X']).collect();
                if parts.len() != 3 {
                    return Err(bad("size must be IxJxK"));
                }
                let mut out = [0usize; 3];
                for (o, p) in out.iter_mut().zip(&parts) {
                    *o = p.trim().parse().map_err(|_| bad("size must be IxJxK"))?;
                    if *o == 0 || *o > 1024 {
                        return Err(bad("sizes must be 1..=1024"));
                    }
                }
                out
            }
        };
        Ok(DataSource::Phantoms { first, last, shape })
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSource::Dir(p) => write!(f, "{}", p.display()),
            DataSource::Phantoms { first, last, shape } => write!(
                f,
                "phantom:{first}-{last}@{}x{}x{}",
                shape[0], shape[1], shape[2]
            ),
        }
    }
}

/// A case listed by a [`DataSource`]: files to read, or a phantom to generate.
#[derive(Clone, Debug, PartialEq)]
pub enum CaseRef {
    Files(CaseFiles),
    Phantom { seed: u64, shape: [usize; 3] },
}

impl CaseRef {
    pub fn id(&self) -> String {
        match self {
            CaseRef::Files(c) => c.id.clone(),
            CaseRef::Phantom { seed, .. } => format!("phantom-{seed}"),
        }
    }
}

/// The cases of a source, split into (train, held-out) by the pipeline's `[splits]` when the
/// folder holds cases named there (train = `splits.train`, held out = `splits.test`);
/// otherwise every case trains and nothing is held out. Notes go to `warnings`.
pub fn list_cases(
    source: &DataSource,
    pipeline: &Pipeline,
    warnings: &mut Vec<String>,
) -> Result<(Vec<CaseRef>, Vec<CaseRef>), DataError> {
    match source {
        DataSource::Phantoms { first, last, shape } => Ok((
            (*first..=*last)
                .map(|seed| CaseRef::Phantom {
                    seed,
                    shape: *shape,
                })
                .collect(),
            vec![],
        )),
        DataSource::Dir(dir) => {
            let (_, cases) = discover(dir)?;
            let splits = &pipeline.splits;
            let named: BTreeSet<&str> = splits
                .train
                .iter()
                .chain(&splits.test)
                .map(String::as_str)
                .collect();
            if splits.train.is_empty() || !cases.iter().any(|c| named.contains(c.id.as_str())) {
                return Ok((cases.into_iter().map(CaseRef::Files).collect(), vec![]));
            }
            let pick = |ids: &[String]| -> Vec<CaseRef> {
                ids.iter()
                    .filter_map(|id| cases.iter().find(|c| &c.id == id).cloned())
                    .map(CaseRef::Files)
                    .collect()
            };
            let train = pick(&splits.train);
            let held = pick(&splits.test);
            let missing: Vec<&String> = splits
                .train
                .iter()
                .chain(&splits.test)
                .filter(|id| !cases.iter().any(|c| &c.id == *id))
                .collect();
            if !missing.is_empty() {
                warnings.push(format!(
                    "{}: {} case(s) of the pipeline's splits are not in the folder: {}",
                    dir.display(),
                    missing.len(),
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Ok((train, held))
        }
    }
}

/// A case in memory: the image volume and its raw label volume (same grid).
#[derive(Clone, Debug)]
pub struct LabelledVolume {
    pub id: String,
    pub volume: Volume,
    pub labels: Array3<u16>,
}

/// Read (or generate) one case. DICOM images are read with default options.
pub fn load_case(case: &CaseRef) -> Result<LabelledVolume, DataError> {
    match case {
        CaseRef::Phantom { seed, shape } => {
            let ph = abdomen_phantom(&PhantomParams::new(*shape), *seed);
            Ok(LabelledVolume {
                id: case.id(),
                volume: ph.volume,
                labels: ph.labels,
            })
        }
        CaseRef::Files(c) => {
            let volume =
                read_volume(&c.image, &ReadOptions::default()).map_err(|e| DataError::Read {
                    case: c.id.clone(),
                    path: c.image.clone(),
                    message: e.to_string(),
                })?;
            let (labels, _, _) =
                crate::io::nifti::read_labels(&c.label).map_err(|e| DataError::Read {
                    case: c.id.clone(),
                    path: c.label.clone(),
                    message: e.to_string(),
                })?;
            let ls = labels.shape();
            let label_shape = [ls[0], ls[1], ls[2]];
            if label_shape != volume.shape() {
                return Err(DataError::LabelShape {
                    case: c.id.clone(),
                    image: c.image.clone(),
                    label: c.label.clone(),
                    image_shape: volume.shape(),
                    label_shape,
                });
            }
            Ok(LabelledVolume {
                id: c.id.clone(),
                volume,
                labels,
            })
        }
    }
}

/// Load cases in parallel (order kept).
pub fn load_cases(cases: &[CaseRef]) -> Result<Vec<LabelledVolume>, DataError> {
    cases.par_iter().map(load_case).collect()
}

/// Zero foreground components (26-connected) with fewer than `min_size` voxels, as
/// `remove_small_objects(label.astype(bool), min_size, connectivity=3)` followed by masking
/// the label with the result.
pub fn remove_small_objects(labels: &mut Array3<u16>, min_size: usize) {
    let (nx, ny, nz) = labels.dim();
    let mut seen = Array3::<bool>::from_elem((nx, ny, nz), false);
    let mut stack = Vec::new();
    let mut comp = Vec::new();
    for start in ndarray::indices((nx, ny, nz)) {
        if seen[start] || labels[start] == 0 {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        comp.clear();
        while let Some((i, j, k)) = stack.pop() {
            comp.push((i, j, k));
            for di in -1i64..=1 {
                for dj in -1i64..=1 {
                    for dk in -1i64..=1 {
                        let (a, b, c) = (i as i64 + di, j as i64 + dj, k as i64 + dk);
                        if a < 0 || b < 0 || c < 0 {
                            continue;
                        }
                        let p = (a as usize, b as usize, c as usize);
                        if p.0 >= nx || p.1 >= ny || p.2 >= nz || seen[p] || labels[p] == 0 {
                            continue;
                        }
                        seen[p] = true;
                        stack.push(p);
                    }
                }
            }
        }
        if comp.len() < min_size {
            for &p in &comp {
                labels[p] = 0;
            }
        }
    }
}

/// All training slices of a set of volumes at the model size, in memory.
#[derive(Debug)]
pub struct SliceSet {
    /// S (slices are S×S).
    pub size: usize,
    /// Model classes (2 = binary).
    pub num_classes: usize,
    /// Random horizontal flip (reverses W).
    pub hflip: bool,
    /// `[n, S, S]` normalised image slices.
    images: Vec<f32>,
    /// `[n, S, S]` remapped labels.
    labels: Vec<u16>,
    /// Sorted classes present in each slice (background included).
    present: Vec<Vec<u16>>,
    /// (case index, slice index in the slicing frame) of each slice.
    pub origin: Vec<(usize, usize)>,
    pub case_ids: Vec<String>,
    /// Slices skipped as constant.
    pub skipped_constant: usize,
}

impl SliceSet {
    /// Slice every case with the pipeline (module docs); cases are consumed one at a time.
    pub fn build(cases: Vec<LabelledVolume>, pipeline: &Pipeline) -> Result<SliceSet, DataError> {
        let s = pipeline.slicing.size;
        let opts = &pipeline.train;
        let plane = s * s;
        let mut set = SliceSet {
            size: s,
            num_classes: pipeline.num_classes(),
            hflip: opts.hflip,
            images: Vec::new(),
            labels: Vec::new(),
            present: Vec::new(),
            origin: Vec::new(),
            case_ids: Vec::new(),
            skipped_constant: 0,
        };
        for (ci, mut case) in cases.into_iter().enumerate() {
            if opts.mask_labels_to_image {
                let min = case
                    .volume
                    .data()
                    .iter()
                    .copied()
                    .fold(f32::INFINITY, f32::min);
                ndarray::Zip::from(&mut case.labels)
                    .and(case.volume.data())
                    .for_each(|l, &v| {
                        if v == min {
                            *l = 0
                        }
                    });
            }
            if let Some(m) = opts.min_object_size {
                remove_small_objects(&mut case.labels, m as usize);
            }
            let src = SliceSource::new(&case.volume, pipeline);
            let labels = LabelSlices::new(&case.labels, src.geometry(), &pipeline.labels.remap)
                .map_err(|e| DataError::Read {
                    case: case.id.clone(),
                    path: PathBuf::from(&case.id),
                    message: e.to_string(),
                })?;
            let n = src.n_slices();
            let prepared: Vec<_> = (0..n)
                .into_par_iter()
                .map(|k| {
                    let constant = opts.skip_constant_slices && {
                        let x = src.normalised_native_slice(k);
                        let first = x.iter().next().copied().unwrap_or(0.0);
                        x.iter().all(|&v| v == first)
                    };
                    if constant {
                        None
                    } else {
                        Some((src.prepare_slice(k), labels.slice(k)))
                    }
                })
                .collect();
            for (k, p) in prepared.into_iter().enumerate() {
                let Some((img, lab)) = p else {
                    set.skipped_constant += 1;
                    continue;
                };
                set.images.extend(img.iter());
                let mut present = BTreeSet::new();
                for &v in lab.iter() {
                    present.insert(v);
                }
                set.labels.extend(lab.iter());
                set.present.push(present.into_iter().collect());
                set.origin.push((ci, k));
            }
            set.case_ids.push(case.id.clone());
            debug_assert_eq!(set.images.len(), set.origin.len() * plane);
        }
        if set.origin.is_empty() {
            return Err(DataError::NoSlices);
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.origin.len()
    }

    pub fn is_empty(&self) -> bool {
        self.origin.is_empty()
    }

    pub fn image(&self, i: usize) -> &[f32] {
        let p = self.size * self.size;
        &self.images[i * p..(i + 1) * p]
    }

    pub fn label(&self, i: usize) -> &[u16] {
        let p = self.size * self.size;
        &self.labels[i * p..(i + 1) * p]
    }

    /// Fraction of slices with any foreground.
    pub fn foreground_fraction(&self) -> f64 {
        let n = self
            .present
            .iter()
            .filter(|p| p.iter().any(|&c| c != 0))
            .count();
        n as f64 / self.len().max(1) as f64
    }
}

/// One batch on the host, NCHW row-major.
#[derive(Clone, Debug)]
pub struct HostBatch {
    /// Optimiser step this batch is for.
    pub step: u64,
    pub batch: usize,
    pub size: usize,
    /// `[B, 3, S, S]` images (slice repeated on 3 channels).
    pub images: Vec<f32>,
    /// `[B, 3, S, S]` targets in {−1, 1}.
    pub masks: Vec<f32>,
    /// `[B]` class ids (the drawn class for multi-class models, 1 for binary).
    pub class_ids: Vec<u32>,
}

/// Deterministic sampling of batches (module docs).
#[derive(Clone, Debug)]
pub struct Sampler {
    pub seed: u64,
    pub batch: usize,
}

/// Independent RNG streams derived from the run seed.
pub fn rng_for(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    r.set_stream(index);
    r
}

/// Stream ids for [`rng_for`].
pub mod streams {
    pub const EPOCH: u64 = 1;
    pub const SAMPLE: u64 = 2;
    pub const STEP: u64 = 3;
    pub const INIT: u64 = 4;
    pub const VALIDATION: u64 = 5;
}

impl Sampler {
    fn permutation(&self, n: usize, epoch: u64) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        p.shuffle(&mut rng_for(self.seed, streams::EPOCH, epoch));
        p
    }

    /// The batch of optimiser step `step`. `perm_cache` keeps the current epoch's order.
    pub fn batch(
        &self,
        set: &SliceSet,
        step: u64,
        perm_cache: &mut Option<(u64, Vec<usize>)>,
    ) -> HostBatch {
        let n = set.len();
        let b = self.batch;
        let picks: Vec<(u64, usize)> = (0..b)
            .map(|i| {
                let g = step * b as u64 + i as u64;
                let epoch = g / n as u64;
                let pos = (g % n as u64) as usize;
                if perm_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    *perm_cache = Some((epoch, self.permutation(n, epoch)));
                }
                (g, perm_cache.as_ref().expect("just set").1[pos])
            })
            .collect();
        let s = set.size;
        let plane = s * s;
        let mut images = vec![0f32; b * 3 * plane];
        let mut masks = vec![0f32; b * 3 * plane];
        let class_ids: Vec<u32> = images
            .par_chunks_mut(3 * plane)
            .zip(masks.par_chunks_mut(3 * plane))
            .zip(picks.par_iter())
            .map(|((img, msk), &(g, idx))| {
                let mut rng = rng_for(self.seed, streams::SAMPLE, g);
                let flip = set.hflip && rng.random_bool(0.5);
                let class = if set.num_classes > 2 {
                    let p = &set.present[idx];
                    p[rng.random_range(0..p.len())]
                } else {
                    1
                };
                let src_img = set.image(idx);
                let src_lab = set.label(idx);
                for r in 0..s {
                    for c in 0..s {
                        let from = r * s + if flip { s - 1 - c } else { c };
                        let to = r * s + c;
                        let l = src_lab[from];
                        let fg = if set.num_classes > 2 && class != 0 {
                            l == class
                        } else {
                            l != 0
                        };
                        let m = if fg { 1.0 } else { -1.0 };
                        let v = src_img[from];
                        for ch in 0..3 {
                            img[ch * plane + to] = v;
                            msk[ch * plane + to] = m;
                        }
                    }
                }
                class as u32
            })
            .collect();
        HostBatch {
            step,
            batch: b,
            size: s,
            images,
            masks,
            class_ids,
        }
    }
}

/// Batches for steps `start..end` built on a background thread (rayon inside), at most
/// `depth` ahead of the consumer. Dropping the receiver stops the producer.
pub fn prefetch(
    set: Arc<SliceSet>,
    sampler: Sampler,
    start: u64,
    end: u64,
    depth: usize,
) -> (
    crossbeam_channel::Receiver<HostBatch>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = crossbeam_channel::bounded(depth.max(1));
    let handle = std::thread::Builder::new()
        .name("train-data".into())
        .spawn(move || {
            let mut cache = None;
            for step in start..end {
                let b = sampler.batch(&set, step, &mut cache);
                if tx.send(b).is_err() {
                    break;
                }
            }
        })
        .expect("spawning the data thread");
    (rx, handle)
}

/// Number of voxels per remapped class in a label volume (for logs).
pub fn class_counts(labels: &Array3<u16>) -> Vec<(u16, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for &v in labels.iter() {
        *counts.entry(v).or_insert(0usize) += 1;
    }
    counts.into_iter().collect()
}

/// A label volume remapped to model classes (binary models: foreground union as 1).
pub fn model_labels(labels: &Array3<u16>, pipeline: &Pipeline) -> Array3<u16> {
    let remapped = crate::pipeline::remap_labels(labels, &pipeline.labels.remap);
    if pipeline.num_classes() == 2 {
        remapped.mapv(|v| u16::from(v != 0))
    } else {
        remapped
    }
}

/// The slices `k` of a volume along axis 2 (helper for tests).
pub fn n_slices(labels: &Array3<u16>) -> usize {
    labels.len_of(Axis(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phantom_spec_parses() {
        let d: DataSource = "phantom:3-5@32x32x8".parse().unwrap();
        assert_eq!(
            d,
            DataSource::Phantoms {
                first: 3,
                last: 5,
                shape: [32, 32, 8]
            }
        );
        assert_eq!(d.to_string(), "phantom:3-5@32x32x8");
        let d: DataSource = "phantom:7".parse().unwrap();
        assert!(matches!(
            d,
            DataSource::Phantoms {
                first: 7,
                last: 7,
                ..
            }
        ));
        assert!("phantom:5-3".parse::<DataSource>().is_err());
        assert!("phantom:1-2@3x4".parse::<DataSource>().is_err());
        assert_eq!(
            "some/dir".parse::<DataSource>().unwrap(),
            DataSource::Dir("some/dir".into())
        );
    }

    #[test]
    fn small_objects_are_removed_26_connected() {
        let mut l = Array3::<u16>::zeros((6, 6, 6));
        // A 2×2×2 cube (8 voxels) and a diagonal pair touching only at a corner (2 voxels,
        // one component under 26-connectivity).
        for i in 0..2 {
            for j in 0..2 {
                for k in 0..2 {
                    l[[i, j, k]] = 1;
                }
            }
        }
        l[[4, 4, 4]] = 2;
        l[[5, 5, 5]] = 2;
        let mut a = l.clone();
        remove_small_objects(&mut a, 3);
        assert_eq!(a.iter().filter(|&&v| v != 0).count(), 8);
        let mut b = l.clone();
        remove_small_objects(&mut b, 2);
        assert_eq!(b, l, "the corner-touching pair is one object of 2 voxels");
    }

    #[test]
    fn batches_are_deterministic_and_cover_an_epoch() {
        let p = Pipeline::load("btcv").unwrap();
        let mut p = p.clone();
        p.slicing.size = 16;
        let cases = load_cases(&[CaseRef::Phantom {
            seed: 1,
            shape: [16, 16, 6],
        }])
        .unwrap();
        let set = SliceSet::build(cases, &p).unwrap();
        assert_eq!(set.len(), 6);
        let s = Sampler { seed: 9, batch: 2 };
        let mut c1 = None;
        let mut c2 = None;
        let a = s.batch(&set, 1, &mut c1);
        let b = s.batch(&set, 1, &mut c2);
        assert_eq!(a.images, b.images);
        assert_eq!(a.masks, b.masks);
        // Steps 0..3 visit each slice once (one epoch of 6 with batch 2).
        let mut seen = std::collections::BTreeSet::new();
        for step in 0..3 {
            let batch = s.batch(&set, step, &mut c1);
            for i in 0..2 {
                let img = &batch.images[i * 3 * 256..i * 3 * 256 + 256];
                let idx = (0..set.len()).find(|&j| set.image(j) == img).unwrap();
                seen.insert(idx);
            }
        }
        assert_eq!(seen.len(), 6);
        // Masks are ±1 and replicated over channels.
        assert!(a.masks.iter().all(|&m| m == 1.0 || m == -1.0));
        assert_eq!(a.masks[..256], a.masks[256..512]);
    }
}
