//! The model seam: what the engine needs from a segmentation model, and the seeded noise it
//! feeds it.
//!
//! The engine never sees candle. It hands a [`SliceSegmenter`] a batch of prepared slices
//! (`[B,3,S,S]`, values in [-1, 1], S = the pipeline's `slicing.size`: 256 for the official
//! models, 64 for the demo) plus the noise latents it drew for exactly those slices
//! (`[B,C,h,w]`, see [`NoiseSource`]), and gets back soft maps at S×S: probabilities for a
//! binary model, per-class logits for a multi-class one ([`SoftOutput`]). Thresholding, argmax
//! and the resize back to the native slice size happen in postprocessing, so the model adapter
//! stays a thin call into `model::sdseg::Sdseg`. A segmenter is built for one size
//! ([`SliceSegmenter::size`]); the engine refuses a segmenter whose size is not the pipeline's.
//!
//! Noise lives here, not in the model, so that determinism is one rule in one place: the same
//! seed gives bit-identical inputs to the model whatever the batch size, shard or resume point.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use sha2::{Digest, Sha256};

/// Slice side of the official SDSeg models (BTCV, STS-3D: 256×256), the size of the official
/// evaluation protocols (`stability`). `run` takes the size from the pipeline.
pub const OFFICIAL_SIZE: usize = 256;

/// Values in one prepared slice of side `size`: 3 channels × size × size.
pub const fn slice_len(size: usize) -> usize {
    3 * size * size
}

/// Values in one soft map plane of side `size`.
pub const fn plane_len(size: usize) -> usize {
    size * size
}

/// Errors a model may return; the engine records them as the case's failure reason.
pub type SegmentError = Box<dyn std::error::Error + Send + Sync>;

/// Soft output of one batch at the model's S×S, row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum SoftOutput {
    /// Binary model: foreground probability per pixel, `[B,S,S]`; the mask is `p > 0.5`.
    Probabilities(Vec<f32>),
    /// Multi-class model: one logit map per class, `[B,K,S,S]`; the label is the argmax
    /// over K (class 0 is background).
    Logits { classes: usize, data: Vec<f32> },
}

impl SoftOutput {
    /// Number of label values this output can produce (2 for binary).
    pub fn classes(&self) -> usize {
        match self {
            SoftOutput::Probabilities(_) => 2,
            SoftOutput::Logits { classes, .. } => *classes,
        }
    }

    /// Number of planes per slice (1 for probabilities, K for logits).
    pub fn planes_per_slice(&self) -> usize {
        match self {
            SoftOutput::Probabilities(_) => 1,
            SoftOutput::Logits { classes, .. } => *classes,
        }
    }

    pub fn data(&self) -> &[f32] {
        match self {
            SoftOutput::Probabilities(d) => d,
            SoftOutput::Logits { data, .. } => data,
        }
    }

    /// The planes of slice `s` of a batch of `size`×`size` maps.
    pub fn slice_planes(&self, s: usize, size: usize) -> &[f32] {
        let n = self.planes_per_slice() * plane_len(size);
        &self.data()[s * n..(s + 1) * n]
    }

    /// Batches one after the other (all of the same kind).
    pub fn concat(parts: Vec<SoftOutput>) -> SoftOutput {
        let mut it = parts.into_iter();
        let Some(mut first) = it.next() else {
            return SoftOutput::Probabilities(Vec::new());
        };
        for p in it {
            match (&mut first, p) {
                (SoftOutput::Probabilities(a), SoftOutput::Probabilities(b)) => a.extend(b),
                (SoftOutput::Logits { data: a, .. }, SoftOutput::Logits { data: b, .. }) => {
                    a.extend(b)
                }
                _ => unreachable!("one model returns one kind of output"),
            }
        }
        first
    }
}

/// What K noise draws of one slice say, at the model's S×S: the planes that decide the label
/// and how much the draws disagree.
#[derive(Clone, Debug, PartialEq)]
pub struct DrawSummary {
    /// Binary: the mean foreground probability (one plane; `> 0.5` decides). Multi-class: the
    /// mean over draws of each class's probability (softmax of the draw's logits; K planes,
    /// argmax decides). With one draw: the draw's own planes, unchanged (logits stay logits).
    pub planes: Vec<f32>,
    /// Binary: the standard deviation over draws of the foreground probability (0 … 0.5).
    /// Multi-class: the entropy (nats) of the mean class probabilities (0 … ln K).
    pub uncertainty: Vec<f32>,
}

/// Reduce the `draws` soft maps of slice `s` of a draw-major batch of `b` slices.
pub fn summarise_draws(
    soft: &SoftOutput,
    s: usize,
    b: usize,
    draws: usize,
    size: usize,
) -> DrawSummary {
    let plane = plane_len(size);
    let draw = |d: usize| soft.slice_planes(d * b + s, size);
    match soft {
        SoftOutput::Probabilities(_) => {
            let mut mean = vec![0f64; plane];
            let mut sq = vec![0f64; plane];
            for d in 0..draws {
                for ((m, q), &p) in mean.iter_mut().zip(&mut sq).zip(draw(d)) {
                    let p = f64::from(p);
                    *m += p;
                    *q += p * p;
                }
            }
            let n = draws as f64;
            let planes = if draws == 1 {
                draw(0).to_vec()
            } else {
                mean.iter().map(|m| (m / n) as f32).collect()
            };
            let uncertainty = mean
                .iter()
                .zip(&sq)
                .map(|(m, q)| {
                    let mu = m / n;
                    ((q / n - mu * mu).max(0.0)).sqrt() as f32
                })
                .collect();
            DrawSummary {
                planes,
                uncertainty,
            }
        }
        SoftOutput::Logits { classes, .. } => {
            let k = *classes;
            let mut probs = vec![0f64; k * plane];
            let mut e = vec![0f64; k];
            for d in 0..draws {
                let l = draw(d);
                for px in 0..plane {
                    let max = (0..k).map(|c| l[c * plane + px]).fold(f32::MIN, f32::max);
                    let mut z = 0f64;
                    for (c, ec) in e.iter_mut().enumerate() {
                        *ec = f64::from(l[c * plane + px] - max).exp();
                        z += *ec;
                    }
                    for (c, ec) in e.iter().enumerate() {
                        probs[c * plane + px] += ec / z;
                    }
                }
            }
            let n = draws as f64;
            probs.iter_mut().for_each(|p| *p /= n);
            let uncertainty = (0..plane)
                .map(|px| {
                    -(0..k)
                        .map(|c| probs[c * plane + px])
                        .filter(|&p| p > 0.0)
                        .map(|p| p * p.ln())
                        .sum::<f64>() as f32
                })
                .collect();
            let planes = if draws == 1 {
                draw(0).to_vec()
            } else {
                probs.iter().map(|&p| p as f32).collect()
            };
            DrawSummary {
                planes,
                uncertainty,
            }
        }
    }
}

/// A model that segments batches of prepared slices.
///
/// `Send` so the engine can run it on its own thread; calls come from one thread at a time.
pub trait SliceSegmenter: Send {
    /// Label values the model produces: 2 for binary, K for a K-class model.
    fn num_classes(&self) -> usize;

    /// Side S of the square slices it takes and the soft maps it returns.
    fn size(&self) -> usize;

    /// Shape `[C, h, w]` of the noise latent of one slice (SDSeg at 256²: `[4, 32, 32]`).
    fn latent_shape(&self) -> [usize; 3];

    /// Segment `b` slices. `images` is `[b,3,S,S]` (f32 in [-1, 1], row-major, NCHW, S =
    /// `size()`); `noise` is `[b, C, h, w]` with `[C, h, w] = latent_shape()`. Returns
    /// probabilities `[b,S,S]` when `num_classes() == 2`, else logits `[b,K,S,S]`.
    fn segment(
        &mut self,
        images: &[f32],
        noise: &[f32],
        b: usize,
    ) -> Result<SoftOutput, SegmentError>;

    /// `draws` segmentations of each of the `b` slices, one per noise latent: `noise` is
    /// `[draws·b, C, h, w]`, draw-major (draw d of slice s at row d·b + s), and so is the
    /// output (`draws·b` slices of soft maps). With `draws` = 1 it is [`Self::segment`]. The
    /// default runs [`Self::segment`] once per draw; a model whose condition does not depend on
    /// the noise computes it once ([`SdsegSegmenter`]).
    fn segment_draws(
        &mut self,
        images: &[f32],
        noise: &[f32],
        b: usize,
        draws: usize,
    ) -> Result<SoftOutput, SegmentError> {
        if draws <= 1 {
            return self.segment(images, noise, b);
        }
        let per_draw = noise.len() / draws;
        let mut parts = Vec::with_capacity(draws);
        for d in 0..draws {
            parts.push(self.segment(images, &noise[d * per_draw..(d + 1) * per_draw], b)?);
        }
        Ok(SoftOutput::concat(parts))
    }
}

/// Test double: foreground probability = (channel 0 + 1) / 2, so a pixel is foreground where
/// the windowed, normalised input is above the middle of the window. With `classes > 2` it
/// returns logits that put class `c` where the channel-0 value falls in the `c`-th of `K`
/// equal bins of [-1, 1]. The noise is checked for shape and added at `noise_weight` (0 by
/// default) so tests can see that the noise reaches the model.
#[derive(Clone, Debug)]
pub struct ThresholdSegmenter {
    pub classes: usize,
    /// Slice side S (256 unless [`Self::with_size`]).
    pub size: usize,
    pub latent: [usize; 3],
    pub noise_weight: f32,
    /// Fail the call when a slice's mean input equals this value (test hook for model errors).
    pub fail_on_mean: Option<f32>,
    /// Sleep this long per call (stands in for model time in kill/resume tests).
    pub delay: std::time::Duration,
}

impl ThresholdSegmenter {
    pub fn binary() -> ThresholdSegmenter {
        ThresholdSegmenter {
            classes: 2,
            size: OFFICIAL_SIZE,
            latent: [4, 32, 32],
            noise_weight: 0.0,
            fail_on_mean: None,
            delay: std::time::Duration::ZERO,
        }
    }

    pub fn multiclass(classes: usize) -> ThresholdSegmenter {
        ThresholdSegmenter {
            classes,
            ..ThresholdSegmenter::binary()
        }
    }

    /// For `size`×`size` slices, with the latent an SDSeg KL-f8 encoder would give
    /// (`[4, size/8, size/8]`, at least 1×1): `[4, 32, 32]` at 256.
    pub fn with_size(self, size: usize) -> ThresholdSegmenter {
        let side = (size / 8).max(1);
        ThresholdSegmenter {
            size,
            latent: [4, side, side],
            ..self
        }
    }
}

impl SliceSegmenter for ThresholdSegmenter {
    fn num_classes(&self) -> usize {
        self.classes
    }

    fn size(&self) -> usize {
        self.size
    }

    fn latent_shape(&self) -> [usize; 3] {
        self.latent
    }

    fn segment(
        &mut self,
        images: &[f32],
        noise: &[f32],
        b: usize,
    ) -> Result<SoftOutput, SegmentError> {
        std::thread::sleep(self.delay);
        let latent_len: usize = self.latent.iter().product();
        let (slice, plane) = (slice_len(self.size), plane_len(self.size));
        if images.len() != b * slice || noise.len() != b * latent_len {
            return Err(format!(
                "batch of {b}: got {} image values and {} noise values, expected {} and {} ({}×{} slices)",
                images.len(),
                noise.len(),
                b * slice,
                b * latent_len,
                self.size,
                self.size
            )
            .into());
        }
        let mut planes = Vec::with_capacity(b * plane);
        for s in 0..b {
            let img = &images[s * slice..s * slice + plane];
            if let Some(bad) = self.fail_on_mean {
                let mean = img.iter().sum::<f32>() / plane as f32;
                if mean == bad {
                    return Err(format!("test segmenter refuses a slice of mean {bad}").into());
                }
            }
            let n = &noise[s * latent_len..(s + 1) * latent_len];
            for (p, &v) in img.iter().enumerate() {
                planes.push(v + self.noise_weight * n[p % latent_len]);
            }
        }
        if self.classes <= 2 {
            planes
                .iter_mut()
                .for_each(|v| *v = ((*v + 1.0) / 2.0).clamp(0.0, 1.0));
            return Ok(SoftOutput::Probabilities(planes));
        }
        let k = self.classes;
        let mut data = vec![0f32; b * k * plane];
        for s in 0..b {
            for p in 0..plane {
                let v = planes[s * plane + p];
                // bin centre c: -1 + (2c + 1)/K; logit = -(distance to the centre)
                for c in 0..k {
                    let centre = -1.0 + (2 * c + 1) as f32 / k as f32;
                    data[(s * k + c) * plane + p] = -(v - centre).abs();
                }
            }
        }
        Ok(SoftOutput::Logits { classes: k, data })
    }
}

/// The SDSeg model (`model::sdseg::Sdseg`) behind the seam, for S×S slices: images and noise
/// go in as CPU tensors (the model moves them to its device and dtype), soft maps come back
/// as f32. The noise latent is the condition's shape at S (`[C, S/f, S/f]`, f the condition
/// encoder's down-sampling), whatever resolution the model was trained at.
pub struct SdsegSegmenter {
    model: crate::model::sdseg::Sdseg,
    size: usize,
    latent: [usize; 3],
}

/// Why a model cannot take slices of a size: the side must be a positive multiple of the
/// model's total down-sampling (condition encoder × UNet).
pub fn check_model_size(
    config: &crate::model::config::SdsegConfig,
    size: usize,
) -> Result<(), String> {
    let f = config.image_factor();
    if size > 0 && size.is_multiple_of(f) {
        return Ok(());
    }
    let below = size / f * f;
    let suggest = if below == 0 {
        format!("{f}")
    } else {
        format!("{below} or {}", below + f)
    };
    Err(format!(
        "slice size {size} is not a multiple of {f}, the model's down-sampling factor \
         (condition encoder {} × UNet {}); use a size like {suggest}",
        config.cond_stage().ddconfig.downsample_factor(),
        config.unet().downsample_factor()
    ))
}

impl SdsegSegmenter {
    /// The model for `size`×`size` slices; an error (see [`check_model_size`]) if the model
    /// cannot take that size.
    pub fn new(
        model: crate::model::sdseg::Sdseg,
        size: usize,
    ) -> Result<SdsegSegmenter, crate::model::checkpoint::ModelError> {
        check_model_size(model.config(), size)
            .map_err(crate::model::checkpoint::ModelError::Input)?;
        let latent = model.config().latent_shape_for(size);
        Ok(SdsegSegmenter {
            model,
            size,
            latent,
        })
    }
    pub fn model(&self) -> &crate::model::sdseg::Sdseg {
        &self.model
    }
}

impl SliceSegmenter for SdsegSegmenter {
    fn num_classes(&self) -> usize {
        match self.model.task() {
            crate::model::config::Task::Binary => 2,
            crate::model::config::Task::MultiClass { num_classes } => num_classes,
        }
    }

    fn size(&self) -> usize {
        self.size
    }

    fn latent_shape(&self) -> [usize; 3] {
        self.latent
    }

    fn segment(
        &mut self,
        images: &[f32],
        noise: &[f32],
        b: usize,
    ) -> Result<SoftOutput, SegmentError> {
        use crate::model::sdseg::Output;
        use candle_core::{DType, Device, Tensor};
        let [c, h, w] = self.latent_shape();
        let img = Tensor::from_slice(images, (b, 3, self.size, self.size), &Device::Cpu)?;
        let z = Tensor::from_slice(noise, (b, c, h, w), &Device::Cpu)?;
        let host = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
            t.to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        Ok(match self.model.segment(&img, &z, None)? {
            Output::Binary { mask_prob, .. } => SoftOutput::Probabilities(host(&mask_prob)?),
            Output::MultiClass { logits, .. } => SoftOutput::Logits {
                classes: logits.dim(1)?,
                data: host(&logits)?,
            },
        })
    }

    fn segment_draws(
        &mut self,
        images: &[f32],
        noise: &[f32],
        b: usize,
        draws: usize,
    ) -> Result<SoftOutput, SegmentError> {
        use crate::model::sdseg::Output;
        use candle_core::{DType, Device, Tensor};
        if draws <= 1 {
            return self.segment(images, noise, b);
        }
        let [c, h, w] = self.latent_shape();
        let img = Tensor::from_slice(images, (b, 3, self.size, self.size), &Device::Cpu)?;
        let z = Tensor::from_slice(noise, (draws * b, c, h, w), &Device::Cpu)?;
        let host = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
            t.to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        Ok(match self.model.segment_draws(&img, &z, draws, None)? {
            Output::Binary { mask_prob, .. } => SoftOutput::Probabilities(host(&mask_prob)?),
            Output::MultiClass { logits, .. } => SoftOutput::Logits {
                classes: logits.dim(1)?,
                data: host(&logits)?,
            },
        })
    }
}

/// How noise latents are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseMode {
    /// One draw from the seed, shared by every slice, class and volume: what the official
    /// evaluation does (`get_dice_loop` reuses its first `randn_like`).
    #[default]
    Shared,
    /// A draw per slice, derived from (seed, case id, slice index): independent of batching,
    /// sharding and resume, but different for every slice.
    PerSlice,
}

impl std::str::FromStr for NoiseMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "shared" => Ok(NoiseMode::Shared),
            "per-slice" => Ok(NoiseMode::PerSlice),
            _ => Err(format!("noise mode '{s}': expected shared or per-slice")),
        }
    }
}

/// Seeded standard-normal noise latents: the one noise of `run`, `reproduce`, `stability`,
/// `trace` and training validation. Every value depends only on the seed (shared mode) or
/// on (seed, case id, slice index) (per-slice mode), never on call order.
#[derive(Clone, Debug)]
pub struct NoiseSource {
    mode: NoiseMode,
    seed: u64,
    shape: [usize; 3],
    latent_len: usize,
    shared: Vec<f32>,
}

impl NoiseSource {
    pub fn new(mode: NoiseMode, seed: u64, latent_shape: [usize; 3]) -> NoiseSource {
        let latent_len = latent_shape.iter().product();
        let shared = match mode {
            // The model module's draw (ChaCha8, stream 0): `trace` and `run` share noise.
            NoiseMode::Shared => crate::model::sdseg::standard_normal(seed, 0, latent_len),
            NoiseMode::PerSlice => Vec::new(),
        };
        NoiseSource {
            mode,
            seed,
            shape: latent_shape,
            latent_len,
            shared,
        }
    }

    pub fn mode(&self) -> NoiseMode {
        self.mode
    }

    pub fn latent_len(&self) -> usize {
        self.latent_len
    }

    /// The noise of slices `slices` of case `case_id` as one [B, C, h, w] f32 CPU tensor.
    pub fn batch(
        &self,
        case_id: &str,
        slices: &[usize],
    ) -> candle_core::Result<candle_core::Tensor> {
        let n = self.latent_len;
        let mut data = vec![0f32; n * slices.len()];
        for (out, &slice) in data.chunks_exact_mut(n.max(1)).zip(slices) {
            self.fill(case_id, slice, out);
        }
        let [c, h, w] = self.shape;
        candle_core::Tensor::from_vec(data, (slices.len(), c, h, w), &candle_core::Device::Cpu)
    }

    /// Fill `out` (length `latent_len`) with the noise of slice `slice` of case `case_id`.
    pub fn fill(&self, case_id: &str, slice: usize, out: &mut [f32]) {
        self.fill_draw(case_id, slice, 0, out)
    }

    /// Fill `out` with noise draw `draw` of slice `slice` (`--samples`): draw 0 is
    /// [`Self::fill`]'s noise, so one draw is today's run; draw d > 0 is ChaCha8 stream d of
    /// the seed (shared mode: the same for every slice) or keyed by (seed, case, slice, d)
    /// (per-slice mode).
    pub fn fill_draw(&self, case_id: &str, slice: usize, draw: usize, out: &mut [f32]) {
        match self.mode {
            NoiseMode::Shared if draw == 0 => out.copy_from_slice(&self.shared),
            NoiseMode::Shared => out.copy_from_slice(&crate::model::sdseg::standard_normal(
                self.seed,
                draw as u64,
                out.len(),
            )),
            NoiseMode::PerSlice => {
                let mut h = Sha256::new();
                h.update(b"sdseg-volume noise v1\0");
                h.update(self.seed.to_le_bytes());
                h.update((case_id.len() as u64).to_le_bytes());
                h.update(case_id.as_bytes());
                h.update((slice as u64).to_le_bytes());
                if draw > 0 {
                    h.update(b"draw");
                    h.update((draw as u64).to_le_bytes());
                }
                let key: [u8; 32] = h.finalize().into();
                let mut rng = ChaCha8Rng::from_seed(key);
                for v in out.iter_mut() {
                    *v = StandardNormal.sample(&mut rng);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_noise_is_one_draw_and_per_slice_depends_on_case_and_index() {
        let shared = NoiseSource::new(NoiseMode::Shared, 7, [4, 32, 32]);
        let mut a = vec![0f32; 4096];
        let mut b = vec![0f32; 4096];
        shared.fill("x", 0, &mut a);
        shared.fill("y", 99, &mut b);
        assert_eq!(a, b);
        let again = NoiseSource::new(NoiseMode::Shared, 7, [4, 32, 32]);
        again.fill("z", 3, &mut b);
        assert_eq!(a, b, "same seed, same draw");
        let other = NoiseSource::new(NoiseMode::Shared, 8, [4, 32, 32]);
        other.fill("x", 0, &mut b);
        assert_ne!(a, b);
        // A standard normal draw: mean near 0, variance near 1 (4096 samples).
        let mean = a.iter().sum::<f32>() / 4096.0;
        let var = a.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4096.0;
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.1, "{mean} {var}");

        let per = NoiseSource::new(NoiseMode::PerSlice, 7, [4, 32, 32]);
        per.fill("x", 0, &mut a);
        per.fill("x", 0, &mut b);
        assert_eq!(a, b);
        per.fill("x", 1, &mut b);
        assert_ne!(a, b);
        per.fill("y", 0, &mut b);
        assert_ne!(a, b);

        // A batch is the slices' fills, in order, shaped [B, C, h, w]: batching changes nothing.
        let t = per.batch("x", &[1, 0]).unwrap();
        assert_eq!(t.dims(), &[2, 4, 32, 32]);
        let rows = t.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(rows[1], a);
        per.fill("x", 1, &mut b);
        assert_eq!(rows[0], b);
    }

    #[test]
    fn draws_summarise_to_mean_and_spread() {
        // 2 slices × 3 draws, 1×1 planes, draw-major.
        let p = SoftOutput::Probabilities(vec![0.2, 0.9, 0.4, 0.9, 0.6, 0.9]);
        let s0 = summarise_draws(&p, 0, 2, 3, 1);
        assert!((s0.planes[0] - 0.4).abs() < 1e-6);
        let sd = ((0.04f64 + 0.0 + 0.04) / 3.0).sqrt() as f32;
        assert!((s0.uncertainty[0] - sd).abs() < 1e-6);
        let s1 = summarise_draws(&p, 1, 2, 3, 1);
        assert_eq!((s1.planes[0], s1.uncertainty[0]), (0.9, 0.0));
        // One draw: the planes unchanged.
        let one = summarise_draws(&SoftOutput::Probabilities(vec![0.7]), 0, 1, 1, 1);
        assert_eq!(one.planes, vec![0.7]);
        // Multi-class: two draws that disagree completely between two of 3 classes.
        let big = 30.0;
        let l = SoftOutput::Logits {
            classes: 3,
            data: vec![big, 0.0, 0.0, 0.0, big, 0.0],
        };
        let m = summarise_draws(&l, 0, 1, 2, 1);
        assert!((m.planes[0] - 0.5).abs() < 1e-6 && (m.planes[1] - 0.5).abs() < 1e-6);
        assert!((m.uncertainty[0] - std::f32::consts::LN_2).abs() < 1e-5);
        let same = SoftOutput::Logits {
            classes: 3,
            data: vec![0.0, big, 0.0, 0.0, big, 0.0],
        };
        assert!(summarise_draws(&same, 0, 1, 2, 1).uncertainty[0] < 1e-6);
    }

    #[test]
    fn draw_zero_is_the_single_draw_noise_and_draws_differ() {
        for mode in [NoiseMode::Shared, NoiseMode::PerSlice] {
            let n = NoiseSource::new(mode, 7, [4, 8, 8]);
            let (mut a, mut b, mut c) = (vec![0f32; 256], vec![0f32; 256], vec![0f32; 256]);
            n.fill("case", 3, &mut a);
            n.fill_draw("case", 3, 0, &mut b);
            assert_eq!(a, b);
            n.fill_draw("case", 3, 1, &mut c);
            assert_ne!(a, c);
            let mut again = vec![0f32; 256];
            n.fill_draw("case", 3, 1, &mut again);
            assert_eq!(c, again);
        }
    }

    #[test]
    fn default_draws_call_segment_per_draw() {
        let mut m = ThresholdSegmenter::binary().with_size(8);
        m.noise_weight = 1.0;
        let img = vec![0.1f32; slice_len(8)];
        let noise: Vec<f32> = (0..2 * 4).map(|i| i as f32 * 0.01).collect();
        let both = m.segment_draws(&img, &noise, 1, 2).unwrap();
        let d1 = m.segment(&img, &noise[4..], 1).unwrap();
        assert_eq!(both.slice_planes(1, 8), d1.slice_planes(0, 8));
    }

    #[test]
    fn threshold_segmenter_binary_and_multiclass() {
        let mut img = vec![0f32; slice_len(OFFICIAL_SIZE)];
        img[0] = 1.0;
        img[1] = -1.0;
        img[2] = 0.2;
        let noise = vec![0f32; 4096];
        let mut m = ThresholdSegmenter::binary();
        let out = m.segment(&img, &noise, 1).unwrap();
        let p = out.slice_planes(0, OFFICIAL_SIZE);
        assert_eq!(&p[..3], &[1.0, 0.0, 0.6]);
        let mut m = ThresholdSegmenter::multiclass(4);
        let out = m.segment(&img, &noise, 1).unwrap();
        assert_eq!(out.classes(), 4);
        let planes = out.slice_planes(0, OFFICIAL_SIZE);
        let pl = plane_len(OFFICIAL_SIZE);
        let argmax = |p: usize| {
            (0..4)
                .max_by(|&a, &b| planes[a * pl + p].total_cmp(&planes[b * pl + p]))
                .unwrap()
        };
        // bins of [-1,1] by quarters: 1.0 → 3, -1.0 → 0, 0.2 → 2
        assert_eq!((argmax(0), argmax(1), argmax(2)), (3, 0, 2));
        assert!(m.segment(&img, &noise[..10], 1).is_err());
    }

    #[test]
    fn threshold_segmenter_at_another_size() {
        let m = ThresholdSegmenter::binary().with_size(64);
        assert_eq!((m.size(), m.latent_shape()), (64, [4, 8, 8]));
        assert_eq!(
            ThresholdSegmenter::binary().with_size(256).latent,
            [4, 32, 32]
        );
        let mut m = m;
        let mut img = vec![0f32; slice_len(64)];
        img[5] = 1.0;
        let noise = vec![0f32; 4 * 8 * 8];
        let out = m.segment(&img, &noise, 1).unwrap();
        assert_eq!(out.data().len(), plane_len(64));
        assert_eq!(out.slice_planes(0, 64)[5], 1.0);
        // 256² slices for a 64² model: refused with the sizes in the message.
        let big = vec![0f32; slice_len(256)];
        let e = m.segment(&big, &noise, 1).unwrap_err().to_string();
        assert!(e.contains("64×64"), "{e}");
    }

    #[test]
    fn model_sizes_must_divide_by_the_down_sampling() {
        let demo = crate::model::config::SdsegConfig::preset("sdseg-demo").unwrap();
        assert!(check_model_size(&demo, 64).is_ok());
        assert!(check_model_size(&demo, 96).is_ok());
        let e = check_model_size(&demo, 60).unwrap_err();
        assert!(
            e.contains("not a multiple of 8") && e.contains("56 or 64"),
            "{e}"
        );
        assert!(check_model_size(&demo, 0).is_err());
        let official = crate::model::config::SdsegConfig::preset("sdseg-binary").unwrap();
        assert!(check_model_size(&official, 256).is_ok());
        let e = check_model_size(&official, 64).unwrap_err();
        assert!(e.contains("128") && e.contains("8 × UNet 16"), "{e}");
    }
}
