//! The SDSeg network in candle, mirroring the LDM module tree so that `VarBuilder` paths
//! spell the official checkpoint keys. `model` never opens files except in `checkpoint`.

pub mod attention;
pub mod bench;
pub mod checkpoint;
pub mod cond;
pub mod config;
pub mod conv;
pub mod device;
pub mod latent;
pub mod norm;
pub mod ops;
pub mod schedule;
pub mod sdseg;
pub mod unet;
pub mod vae;

/// A raw output pointer shared by rayon tasks that each write their own disjoint part of the
/// buffer while its owner keeps it alive (the CPU ops in `conv/amx.rs`, `attention.rs`).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: see the type's contract: disjoint writes, buffer outlives the tasks.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    // A method, not the field, so closures capture the whole (Sync) struct.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}
