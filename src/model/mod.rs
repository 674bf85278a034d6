//! The SDSeg network in candle, mirroring the LDM module tree so that `VarBuilder` paths
//! spell the official checkpoint keys. `model` never opens files except in `checkpoint`.

pub mod attention;
pub mod bench;
pub mod checkpoint;
pub mod cond;
pub mod config;
pub mod conv;
pub mod latent;
pub mod norm;
pub mod ops;
pub mod schedule;
pub mod sdseg;
pub mod unet;
pub mod vae;
