//! Convolution layers from a checkpoint: the tensors under a `VarBuilder` prefix, run by
//! [`sdseg_kernels::conv::Conv2d`] (which picks the fast CPU path; see that crate).

use candle_core::Result;
use candle_nn::{Conv2dConfig, VarBuilder};
use sdseg_kernels::conv::Conv2d;

/// Build a conv with a bias from `vb` (keys `weight` [out, in, k, k] and `bias` [out]).
pub fn conv2d(
    in_c: usize,
    out_c: usize,
    k: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let weight = vb.get((out_c, in_c / config.groups, k, k), "weight")?;
    let bias = vb.get(out_c, "bias")?;
    Ok(Conv2d::new(weight, Some(bias), config))
}
