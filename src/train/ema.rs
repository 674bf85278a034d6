//! Exponential moving average of the UNet, `ldm/modules/ema.py::LitEma`.
//!
//! After every optimiser step (`on_train_batch_end`):
//!
//! ```text
//! num_updates += 1
//! decay = min(decay, (1 + num_updates) / (10 + num_updates))
//! shadow ← shadow − (1 − decay)·(shadow − param)
//! ```
//!
//! in float32, as the official buffers are. Shadows are kept under their model key
//! (`model.diffusion_model.…`); [`crate::model::checkpoint::ema_name`] gives the stored name
//! (`model_ema.` + the key below `model.` with every dot removed).

use candle_core::{DType, Result, Tensor, Var};

/// Default `LitEma` decay.
pub const EMA_DECAY: f32 = 0.9999;

#[derive(Debug, Clone)]
pub struct Ema {
    decay: f32,
    num_updates: i32,
    /// (model key, shadow)
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// Shadows start as copies of the parameters (`LitEma.__init__`).
    pub fn new(params: &[(String, Var)], decay: f32) -> Result<Ema> {
        let shadow = params
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?.detach())))
            .collect::<Result<_>>()?;
        Ok(Ema {
            decay,
            num_updates: 0,
            shadow,
        })
    }

    /// Restore shadows and counters (from a checkpoint). Every parameter needs a shadow of
    /// its shape.
    pub fn restore(
        params: &[(String, Var)],
        decay: f32,
        num_updates: i32,
        mut get: impl FnMut(&str) -> Option<Tensor>,
    ) -> Result<Ema> {
        let mut shadow = Vec::with_capacity(params.len());
        for (k, v) in params {
            let t = get(k).ok_or_else(|| {
                candle_core::Error::Msg(format!("EMA shadow of {k} is missing from the checkpoint"))
            })?;
            if t.dims() != v.dims() {
                candle_core::bail!(
                    "EMA shadow of {k} has shape {:?}, the parameter {:?}",
                    t.dims(),
                    v.dims()
                );
            }
            shadow.push((k.clone(), t.to_dtype(v.dtype())?.to_device(v.device())?));
        }
        Ok(Ema {
            decay,
            num_updates,
            shadow,
        })
    }

    pub fn decay(&self) -> f32 {
        self.decay
    }

    pub fn num_updates(&self) -> i32 {
        self.num_updates
    }

    /// The decay the next update will use.
    pub fn next_decay(&self) -> f32 {
        let n = (self.num_updates + 1) as f32;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// `LitEma.forward(model)`: `params` in the same order as at construction.
    pub fn update(&mut self, params: &[(String, Var)]) -> Result<()> {
        if params.len() != self.shadow.len() {
            candle_core::bail!(
                "EMA over {} parameters updated with {}",
                self.shadow.len(),
                params.len()
            );
        }
        let decay = self.next_decay();
        self.num_updates += 1;
        let one_minus = 1.0f32 - decay;
        for ((k, s), (pk, p)) in self.shadow.iter_mut().zip(params) {
            if k != pk {
                candle_core::bail!("EMA parameter order changed: {k} vs {pk}");
            }
            let p = p.as_tensor().detach().to_dtype(s.dtype())?;
            let diff = (&*s - &p)?;
            let step = if s.dtype() == DType::F32 {
                diff.affine(one_minus as f64, 0.0)?
            } else {
                (diff * one_minus as f64)?
            };
            *s = (&*s - step)?;
        }
        Ok(())
    }

    /// (model key, shadow) pairs.
    pub fn shadows(&self) -> &[(String, Tensor)] {
        &self.shadow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn warm_up_rule_and_update() -> Result<()> {
        let dev = Device::Cpu;
        let v = Var::from_tensor(&Tensor::new(&[1f32, 2.0], &dev)?)?;
        let params = vec![("model.diffusion_model.w".to_string(), v.clone())];
        let mut ema = Ema::new(&params, EMA_DECAY)?;
        assert_eq!(ema.next_decay(), 2.0 / 11.0);
        v.set(&Tensor::new(&[3f32, 2.0], &dev)?)?;
        ema.update(&params)?;
        // shadow = 1 − (1 − 2/11)·(1 − 3) = 1 + 2·9/11
        let s = ema.shadows()[0].1.to_vec1::<f32>()?;
        assert!((s[0] - (1.0 + 18.0 / 11.0)).abs() < 1e-6, "{s:?}");
        assert_eq!(s[1], 2.0);
        assert_eq!(ema.num_updates(), 1);
        // Late in training the cap 0.9999 applies.
        let late = Ema::restore(&params, EMA_DECAY, 1_000_000, |_| {
            Some(Tensor::new(&[0f32, 0.0], &dev).unwrap())
        })?;
        assert_eq!(late.next_decay(), EMA_DECAY);
        Ok(())
    }
}
