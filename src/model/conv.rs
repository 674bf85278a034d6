//! `Conv2d` of our own: the one convolution every layer of the model uses, so the fast CPU
//! path (issue 7) can be swapped in without the model code changing shape.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Conv2d {
        Conv2d {
            weight,
            bias,
            config,
        }
    }
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }
}

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

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let y = x.conv2d(&self.weight, c.padding, c.stride, c.dilation, c.groups)?;
        match &self.bias {
            None => Ok(y),
            Some(b) => {
                let b = b.reshape((1, b.dim(0)?, 1, 1))?;
                y.broadcast_add(&b)
            }
        }
    }
}
