//! The DDPM noise schedule, `ldm/models/diffusion/ddpm.py::DDPM.register_schedule` with
//! `ldm/modules/diffusionmodules/util.py::make_beta_schedule`.
//!
//! Everything is computed in f64 like the official numpy code; the checkpoint stores the
//! buffers rounded to f32 (`to_torch = partial(torch.tensor, dtype=torch.float32)`), and
//! inference uses those f32 values. [`Schedule::coefficients`] therefore returns the
//! f32-rounded numbers whether they came from the file or from the formula.

use serde::Deserialize;

/// `beta_schedule` of the LDM config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(√start, √end, T)²` (every SDSeg config).
    #[default]
    Linear,
    /// `linspace(start, end, T)`.
    SqrtLinear,
    /// `linspace(start, end, T)^½`.
    Sqrt,
    /// Nichol & Dhariwal, with `cosine_s = 8e-3`.
    Cosine,
}

/// √(1/ᾱ_t) and √(1/ᾱ_t − 1) for one timestep, as the f32 values the official code uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCoefficients {
    pub sqrt_recip_alphas_cumprod: f32,
    pub sqrt_recipm1_alphas_cumprod: f32,
}

/// Where the inference coefficients came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleSource {
    /// Computed from `timesteps`, `linear_start`, `linear_end`.
    Computed,
    /// The checkpoint's `sqrt_recip_alphas_cumprod` / `sqrt_recipm1_alphas_cumprod` buffers.
    Checkpoint,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    sqrt_recip: Vec<f32>,
    sqrt_recipm1: Vec<f32>,
    source: ScheduleSource,
}

/// `torch.linspace(start, end, steps, dtype=float64)`: the CPU kernel fills the first half
/// from `start` and the second half from `end` (`end − (steps−1−i)·step`), which is not
/// bit-identical to `start + i·step`.
pub fn torch_linspace(start: f64, end: f64, steps: usize) -> Vec<f64> {
    match steps {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (steps - 1) as f64;
            let half = steps / 2;
            (0..steps)
                .map(|i| {
                    if i < half {
                        start + step * i as f64
                    } else {
                        end - step * (steps - i - 1) as f64
                    }
                })
                .collect()
        }
    }
}

/// `make_beta_schedule(schedule, n_timestep, linear_start, linear_end, cosine_s=8e-3)`.
pub fn make_beta_schedule(kind: BetaSchedule, n: usize, start: f64, end: f64) -> Vec<f64> {
    match kind {
        BetaSchedule::Linear => torch_linspace(start.sqrt(), end.sqrt(), n)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        BetaSchedule::SqrtLinear => torch_linspace(start, end, n),
        BetaSchedule::Sqrt => torch_linspace(start, end, n)
            .into_iter()
            .map(f64::sqrt)
            .collect(),
        BetaSchedule::Cosine => {
            let s = 8e-3;
            let a: Vec<f64> = (0..=n)
                .map(|i| {
                    let t = i as f64 / n as f64 + s;
                    (t / (1.0 + s) * std::f64::consts::PI / 2.0).cos().powi(2)
                })
                .collect();
            (0..n)
                .map(|i| (1.0 - (a[i + 1] / a[0]) / (a[i] / a[0])).clamp(0.0, 0.999))
                .collect()
        }
    }
}

impl Schedule {
    /// `register_schedule(beta_schedule, timesteps, linear_start, linear_end)`.
    pub fn new(kind: BetaSchedule, timesteps: usize, linear_start: f64, linear_end: f64) -> Self {
        let betas = make_beta_schedule(kind, timesteps, linear_start, linear_end);
        Self::from_betas(betas)
    }

    /// Every SDSeg config: linear, T = 1000, β from 0.0015 to 0.0155.
    pub fn sdseg() -> Self {
        Self::new(BetaSchedule::Linear, 1000, 0.0015, 0.0155)
    }

    pub fn from_betas(betas: Vec<f64>) -> Self {
        // np.cumprod: a sequential running product.
        let mut acc = 1.0f64;
        let alphas_cumprod: Vec<f64> = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        let sqrt_recip = alphas_cumprod
            .iter()
            .map(|a| (1.0 / a).sqrt() as f32)
            .collect();
        let sqrt_recipm1 = alphas_cumprod
            .iter()
            .map(|a| (1.0 / a - 1.0).sqrt() as f32)
            .collect();
        Schedule {
            betas,
            alphas_cumprod,
            sqrt_recip,
            sqrt_recipm1,
            source: ScheduleSource::Computed,
        }
    }

    /// Replace the inference coefficients by the checkpoint's f32 buffers (length T each).
    pub fn with_buffers(
        mut self,
        sqrt_recip: Vec<f32>,
        sqrt_recipm1: Vec<f32>,
    ) -> Result<Self, String> {
        let t = self.num_timesteps();
        if sqrt_recip.len() != t || sqrt_recipm1.len() != t {
            return Err(format!(
                "schedule buffers have {} / {} entries, the config says timesteps = {t}",
                sqrt_recip.len(),
                sqrt_recipm1.len()
            ));
        }
        self.sqrt_recip = sqrt_recip;
        self.sqrt_recipm1 = sqrt_recipm1;
        self.source = ScheduleSource::Checkpoint;
        Ok(self)
    }

    pub fn num_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// The last timestep, `num_timesteps − 1` (999): where SDSeg's single step starts.
    pub fn final_t(&self) -> usize {
        self.num_timesteps() - 1
    }

    pub fn source(&self) -> ScheduleSource {
        self.source
    }

    /// Coefficients of `predict_start_from_noise` at `t` (None past the end).
    pub fn coefficients(&self, t: usize) -> Option<StepCoefficients> {
        Some(StepCoefficients {
            sqrt_recip_alphas_cumprod: *self.sqrt_recip.get(t)?,
            sqrt_recipm1_alphas_cumprod: *self.sqrt_recipm1.get(t)?,
        })
    }

    /// √(1/ᾱ) for every t, f32 as stored.
    pub fn sqrt_recip_alphas_cumprod(&self) -> &[f32] {
        &self.sqrt_recip
    }

    pub fn sqrt_recipm1_alphas_cumprod(&self) -> &[f32] {
        &self.sqrt_recipm1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdseg_constants_match_reference() {
        // sdseg-reference.md §1.6 (float64 from numpy): ᾱ_999 = 6.686651737e-4,
        // √(1/ᾱ_999) = 38.6719122704, √(1/ᾱ_999 − 1) = 38.6589808279, ᾱ_499 ≈ 0.151077.
        let s = Schedule::sdseg();
        assert_eq!(s.num_timesteps(), 1000);
        assert!((s.betas[0] - 0.0015).abs() < 1e-15);
        assert!((s.betas[999] - 0.0155).abs() < 1e-15);
        assert!((s.alphas_cumprod[999] - 6.686651737e-4).abs() < 1e-12);
        assert!((s.alphas_cumprod[499] - 0.151077).abs() < 1e-6);
        let c = s.coefficients(999).unwrap();
        assert_eq!(c.sqrt_recip_alphas_cumprod, 38.671_912_270_4_f64 as f32);
        assert_eq!(c.sqrt_recipm1_alphas_cumprod, 38.658_980_827_9_f64 as f32);
        assert!(s.coefficients(1000).is_none());
    }

    #[test]
    fn linspace_is_symmetric_like_torch() {
        let v = torch_linspace(0.0, 1.0, 5);
        assert_eq!(v, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        let v = torch_linspace(0.1, 0.7, 4);
        assert_eq!(v[3], 0.7, "last element comes from `end`");
        assert_eq!(v[0], 0.1);
    }

    #[test]
    fn buffers_replace_coefficients() {
        let s = Schedule::sdseg();
        assert!(s
            .clone()
            .with_buffers(vec![1.0; 10], vec![1.0; 10])
            .is_err());
        let s = s.with_buffers(vec![2.0; 1000], vec![3.0; 1000]).unwrap();
        assert_eq!(s.source(), ScheduleSource::Checkpoint);
        assert_eq!(s.coefficients(5).unwrap().sqrt_recipm1_alphas_cumprod, 3.0);
    }
}
