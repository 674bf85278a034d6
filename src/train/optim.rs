//! AdamW with parameter groups and a serialisable state, and the linear warm-up learning-rate
//! schedule of the official SDSeg configs.
//!
//! * [`AdamW`] is `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments,
//!   `eps` added after the square root), with the defaults SDSeg gets by not passing any:
//!   betas (0.9, 0.999), eps 1e-8, weight decay 0.01. Each [`ParamGroup`] has its own learning
//!   rate multiplier (SDSeg: `label_emb` at 100× the base rate, `SDSeg.configure_optimizers`).
//! * [`LinearWarmup`] is `ldm/lr_scheduler.py::LambdaLinearScheduler` with one cycle: the
//!   factor rises linearly from `f_start` to `f_max` over `warm_up_steps`, then decays linearly
//!   from `f_max` towards `f_min` over the cycle length (the SDSeg configs set `f_min = f_max =
//!   1`, so it stays at 1). Lightning's `LambdaLR` multiplies every group's rate by it; optimiser
//!   step `n` (0-based) uses `factor(n)`.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

/// `torch.optim.AdamW` hyper-parameters (PyTorch defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Parameters that share a learning rate (`lr_scale` × the base rate).
#[derive(Clone, Debug)]
pub struct ParamGroup {
    pub name: String,
    pub lr_scale: f64,
    /// (checkpoint key, variable)
    pub params: Vec<(String, Var)>,
}

/// First and second moment of one parameter.
#[derive(Clone, Debug)]
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Updates this parameter has had (PyTorch keeps a per-parameter `step`).
    step: u64,
}

/// AdamW over named parameter groups.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    base_lr: f64,
    groups: Vec<ParamGroup>,
    state: HashMap<String, Moments>,
}

/// Key prefixes of the serialised state (see [`AdamW::state_tensors`]).
const EXP_AVG: &str = "exp_avg.";
const EXP_AVG_SQ: &str = "exp_avg_sq.";
const STEP: &str = "step.";

impl AdamW {
    pub fn new(groups: Vec<ParamGroup>, base_lr: f64, config: AdamWConfig) -> Result<AdamW> {
        let mut seen = std::collections::HashSet::new();
        for g in &groups {
            for (k, v) in &g.params {
                if !seen.insert(k.clone()) {
                    candle_core::bail!("AdamW: parameter {k} is in two groups");
                }
                if v.dtype() != DType::F32 && v.dtype() != DType::F64 {
                    candle_core::bail!("AdamW: parameter {k} has dtype {:?}", v.dtype());
                }
            }
        }
        Ok(AdamW {
            config,
            base_lr,
            groups,
            state: HashMap::new(),
        })
    }

    pub fn base_lr(&self) -> f64 {
        self.base_lr
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Number of trainable values.
    pub fn num_params(&self) -> usize {
        self.groups
            .iter()
            .flat_map(|g| &g.params)
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// One update with learning rate `base_lr · factor · group.lr_scale`. Parameters without a
    /// gradient are skipped, as PyTorch skips `p.grad is None`.
    pub fn step(&mut self, grads: &GradStore, factor: f64) -> Result<()> {
        let c = self.config;
        for g in &self.groups {
            let lr = self.base_lr * factor * g.lr_scale;
            for (key, var) in &g.params {
                let Some(grad) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let grad = grad.to_dtype(var.dtype())?;
                let m = match self.state.remove(key) {
                    Some(m) => m,
                    None => Moments {
                        exp_avg: var.zeros_like()?,
                        exp_avg_sq: var.zeros_like()?,
                        step: 0,
                    },
                };
                let step = m.step + 1;
                // p ← p·(1 − lr·λ)
                let p = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
                // m ← β1·m + (1 − β1)·g ; v ← β2·v + (1 − β2)·g²
                let exp_avg = ((&m.exp_avg * c.beta1)? + (&grad * (1.0 - c.beta1))?)?;
                let exp_avg_sq = ((&m.exp_avg_sq * c.beta2)? + (grad.sqr()? * (1.0 - c.beta2))?)?;
                let bc1 = 1.0 - c.beta1.powi(step as i32);
                let bc2 = 1.0 - c.beta2.powi(step as i32);
                // denom = √v / √bc2 + eps ; p ← p − (lr / bc1)·m / denom
                let denom = ((exp_avg_sq.sqrt()? / bc2.sqrt())? + c.eps)?;
                let p = (p - ((&exp_avg / denom)? * (lr / bc1))?)?;
                var.set(&p)?;
                self.state.insert(
                    key.clone(),
                    Moments {
                        exp_avg,
                        exp_avg_sq,
                        step,
                    },
                );
            }
        }
        Ok(())
    }

    /// The optimiser state as named tensors (`exp_avg.<key>`, `exp_avg_sq.<key>`,
    /// `step.<key>` as a 0-d i64), for the `--resume` sidecar.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (k, m) in &self.state {
            out.insert(format!("{EXP_AVG}{k}"), m.exp_avg.clone());
            out.insert(format!("{EXP_AVG_SQ}{k}"), m.exp_avg_sq.clone());
            let dev = m.exp_avg.device();
            out.insert(format!("{STEP}{k}"), Tensor::new(m.step as i64, dev)?);
        }
        Ok(out)
    }

    /// Restore a state written by [`Self::state_tensors`]. Every entry must name a parameter
    /// of this optimiser with the right shape; parameters missing from the state start fresh.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let params: HashMap<&str, &Var> = self
            .groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(k, v)| (k.as_str(), v)))
            .collect();
        let mut state = HashMap::new();
        for (name, t) in tensors {
            let Some(key) = name.strip_prefix(EXP_AVG) else {
                continue;
            };
            let Some(var) = params.get(key) else {
                candle_core::bail!(
                    "optimizer state names {key}, which is not a trainable parameter"
                );
            };
            let sq = tensors.get(&format!("{EXP_AVG_SQ}{key}")).ok_or_else(|| {
                candle_core::Error::Msg(format!("optimizer state lacks {EXP_AVG_SQ}{key}"))
            })?;
            let step = tensors
                .get(&format!("{STEP}{key}"))
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state lacks {STEP}{key}"))
                })?
                .to_dtype(DType::I64)?
                .to_scalar::<i64>()?;
            for (what, x) in [("exp_avg", t), ("exp_avg_sq", sq)] {
                if x.dims() != var.dims() {
                    candle_core::bail!(
                        "optimizer state {what} of {key} has shape {:?}, the parameter {:?}",
                        x.dims(),
                        var.dims()
                    );
                }
            }
            let dev = var.device();
            state.insert(
                key.to_string(),
                Moments {
                    exp_avg: t.to_dtype(var.dtype())?.to_device(dev)?,
                    exp_avg_sq: sq.to_dtype(var.dtype())?.to_device(dev)?,
                    step: step.max(0) as u64,
                },
            );
        }
        self.state = state;
        Ok(())
    }
}

/// `LambdaLinearScheduler` with a single cycle (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearWarmup {
    pub warm_up_steps: u64,
    pub f_start: f64,
    pub f_max: f64,
    pub f_min: f64,
    pub cycle_length: f64,
}

impl LinearWarmup {
    /// The SDSeg configs: 10 000 warm-up steps from 1e-6, then constant 1.
    pub fn sdseg() -> LinearWarmup {
        LinearWarmup::new(10_000)
    }

    /// Warm-up over `warm_up_steps` from 1e-6 to 1, then 1.
    pub fn new(warm_up_steps: u64) -> LinearWarmup {
        LinearWarmup {
            warm_up_steps,
            f_start: 1e-6,
            f_max: 1.0,
            f_min: 1.0,
            cycle_length: 1e13,
        }
    }

    /// Learning-rate multiplier for optimiser step `n` (0-based).
    pub fn factor(&self, n: u64) -> f64 {
        if n < self.warm_up_steps {
            (self.f_max - self.f_start) / self.warm_up_steps as f64 * n as f64 + self.f_start
        } else {
            let n = n as f64;
            self.f_min + (self.f_max - self.f_min) * (self.cycle_length - n) / self.cycle_length
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn warmup_matches_lambda_linear_scheduler() {
        let s = LinearWarmup::sdseg();
        assert_eq!(s.factor(0), 1e-6);
        // (1 − 1e-6)/10000·5000 + 1e-6
        assert!((s.factor(5000) - 0.5000005).abs() < 1e-12);
        assert_eq!(s.factor(10_000), 1.0);
        assert_eq!(s.factor(1_000_000), 1.0);
        let none = LinearWarmup::new(0);
        assert_eq!(none.factor(0), 1.0);
    }

    /// Two steps on f(p) = Σ p² against the PyTorch AdamW formulas written out by hand.
    #[test]
    fn adamw_matches_torch_formula() -> Result<()> {
        let dev = Device::Cpu;
        let p0 = [0.5f64, -1.5, 2.0];
        let var = Var::from_tensor(&Tensor::new(&p0, &dev)?)?;
        let group = ParamGroup {
            name: "g".into(),
            lr_scale: 2.0,
            params: vec![("w".into(), var.clone())],
        };
        let cfg = AdamWConfig::default();
        let mut opt = AdamW::new(vec![group], 0.05, cfg)?;
        // Reference.
        let lr = 0.05 * 0.5 * 2.0;
        let mut p = p0;
        let (mut m, mut v) = ([0.0; 3], [0.0; 3]);
        for step in 1..=2 {
            let loss = var.as_tensor().sqr()?.sum_all()?;
            let grads = loss.backward()?;
            opt.step(&grads, 0.5)?;
            for i in 0..3 {
                let g = 2.0 * p[i];
                p[i] *= 1.0 - lr * cfg.weight_decay;
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g;
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g * g;
                let bc1 = 1.0 - cfg.beta1.powi(step);
                let bc2 = 1.0 - cfg.beta2.powi(step);
                p[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + cfg.eps);
            }
        }
        let got = var.as_tensor().to_vec1::<f64>()?;
        for i in 0..3 {
            assert!((got[i] - p[i]).abs() < 1e-12, "{got:?} vs {p:?}");
        }
        // State round trip.
        let st = opt.state_tensors()?;
        assert_eq!(st.len(), 3);
        let mut again = AdamW::new(opt.groups().to_vec(), 0.05, cfg)?;
        again.load_state(&st)?;
        assert_eq!(again.state["w"].step, 2);
        let mut bad = st.clone();
        bad.insert("exp_avg.nope".into(), Tensor::zeros(3, DType::F64, &dev)?);
        assert!(again.load_state(&bad).is_err());
        Ok(())
    }
}
