//! The SDSeg network in candle, mirroring the LDM module tree so that `VarBuilder` paths
//! spell the official checkpoint keys. `model` never opens files except in `checkpoint`. The
//! compute kernels the layers run (convolutions, fused GroupNorm and attention, the latent
//! estimate) are the `sdseg_kernels` crate (kernels/).

pub mod bench;
pub mod checkpoint;
pub mod cond;
pub mod config;
pub mod conv;
pub mod device;
pub mod norm;
pub mod schedule;
pub mod sdseg;
pub mod unet;
pub mod vae;
