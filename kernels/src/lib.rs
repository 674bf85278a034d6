//! sdseg-kernels: the compute kernels of sdseg-volume, as candle ops on candle tensors.
//!
//! - [`conv`]: the one 2-D convolution every layer of the model runs ([`conv::Conv2d`]), with
//!   its CPU paths (direct AVX-512 / AVX2 + FMA micro-kernels, `gemm`, Winograd F(4×4, 3×3),
//!   bf16 on AMX and on AVX512-BF16, im2col for training), CPU detection and the
//!   `SDSEG_CONV_KERNEL`, `SDSEG_WINOGRAD`, `SDSEG_AMX`, `SDSEG_AVX512BF16` switches;
//! - [`ops`]: fused GroupNorm (+ scale-shift) (+ SiLU);
//! - [`attention`]: fused softmax attention over channels-first tensors;
//! - [`latent`]: SDSeg's latent estimation, on the CPU and (feature `cuda`) with the NVRTC
//!   kernel in `cuda/latent_estimate.cu`.
//!
//! The crate knows nothing of checkpoints or networks: layers that load weights (and spell
//! checkpoint keys) live in the application crate and call these ops. The project's `unsafe`
//! code lives here (SIMD intrinsics, AMX inline assembly, raw output pointers shared by rayon
//! tasks, the CUDA launch; the application denies `unsafe` but for memory-mapping a
//! checkpoint): every `unsafe fn` states its contract under `# Safety`, every `unsafe` block
//! why the contract holds there (`// SAFETY:`).

#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

pub mod attention;
pub mod conv;
pub mod latent;
pub mod ops;

/// A raw pointer into an output buffer, shared by rayon tasks that each write their own
/// disjoint part of it while its owner keeps it alive (the CPU conv ops in `conv/`,
/// [`attention`]). The one raw-pointer wrapper of the crate: every dereference is an `unsafe`
/// block of its own that states which part the task owns.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: moving a pointer to another thread is harmless by itself; each dereference is unsafe
// and argues that the buffer outlives the tasks and that no two tasks write the same element.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as for `Send`: sharing the pointer value gives no access without an unsafe
// dereference, whose own contract covers disjointness and lifetime.
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    // A method, not the field, so closures capture the whole (Sync) struct.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}
