//! Latent estimation, the single reverse step of SDSeg, as one fused elementwise op:
//!
//! ```text
//! out[b, ..] = (sqrt_recip[b] · zt[b, ..] − sqrt_recipm1[b] · eps[b, ..]) · inv_scale_factor
//! ```
//!
//! with `sqrt_recip = √(1/ᾱ_t)` and `sqrt_recipm1 = √(1/ᾱ_t − 1)` taken per batch element (the
//! training loss draws a different t for each). With `inv_scale_factor = 1` it is
//! `ldm/models/diffusion/ddpm.py::DDPM.predict_start_from_noise`; with `1/scale_factor` it also
//! folds in the first step of `LatentDiffusion.decode_first_stage`.
//!
//! [`latent_estimate`] is a candle `CustomOp3` (zt, eps, coefficients [B, 2]) with
//! - a CPU path: rayon over batch elements and chunks, a plain loop the compiler vectorises on
//!   contiguous input, strided inputs gathered first; f32/f64 math in the input's precision,
//!   f16/bf16 converted to f32 and rounded once at the end;
//! - a CUDA path (feature `cuda`): `cuda/latent_estimate.cu`, compiled at run time with
//!   NVRTC for the device's compute capability and launched through cudarc;
//! - a backward pass (tensor expressions, so it runs on any device) giving gradients for zt,
//!   eps and both coefficient vectors.
//!
//! [`latent_estimate_reference`] is the same formula as plain tensor ops; tests compare the op
//! against it. Arithmetic order is the official one (two products, a difference, then the
//! scale), with no fused multiply-add on either path, so f32 results are bit-identical.

use std::borrow::Cow;
use std::ops::{Mul, Sub};

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use half::{bf16, f16};
use rayon::prelude::*;

/// Elements per rayon task on the CPU (a multiple of any SIMD width).
const CHUNK: usize = 1 << 14;

/// ẑ0 · inv_scale_factor from zt and ε̂.
///
/// - `zt`, `eps`: same shape [B, ...] and dtype (f32, f64, f16 or bf16), any layout.
/// - `sqrt_recip`, `sqrt_recipm1`: [B] (or a single value used for every element), any float
///   dtype; math is f32 (f64 for f64 inputs).
/// - Returns zt's shape and dtype. Differentiable in all four tensors.
pub fn latent_estimate(
    zt: &Tensor,
    eps: &Tensor,
    sqrt_recip: &Tensor,
    sqrt_recipm1: &Tensor,
    inv_scale_factor: f64,
) -> Result<Tensor> {
    let (coeffs, _) = prepare(zt, eps, sqrt_recip, sqrt_recipm1)?;
    let (zt, eps) = if zt.device().is_cpu() {
        (zt.clone(), eps.clone())
    } else {
        // The GPU kernel reads contiguous buffers (no-op when they already are).
        (zt.contiguous()?, eps.contiguous()?)
    };
    zt.apply_op3(&eps, &coeffs, LatentEstimate { inv_scale_factor })
}

/// The same formula as plain candle tensor ops (the specification [`latent_estimate`] is
/// tested against).
pub fn latent_estimate_reference(
    zt: &Tensor,
    eps: &Tensor,
    sqrt_recip: &Tensor,
    sqrt_recipm1: &Tensor,
    inv_scale_factor: f64,
) -> Result<Tensor> {
    let (coeffs, math) = prepare(zt, eps, sqrt_recip, sqrt_recipm1)?;
    let b = zt.dim(0)?;
    let mut bshape = vec![1usize; zt.rank()];
    bshape[0] = b;
    let a = coeffs.narrow(1, 0, 1)?.reshape(bshape.clone())?;
    let c = coeffs.narrow(1, 1, 1)?.reshape(bshape)?;
    let z = zt.to_dtype(math)?.broadcast_mul(&a)?;
    let e = eps.to_dtype(math)?.broadcast_mul(&c)?;
    let x = (z - e)?;
    let x = if inv_scale_factor == 1.0 {
        x
    } else {
        // Tensor × scalar is an affine map x·m + 0 computed in the tensor's dtype.
        (x * inv_scale_factor)?
    };
    x.to_dtype(zt.dtype())
}

/// Gather √(1/ᾱ_t) and √(1/ᾱ_t − 1) for per-element timesteps `t` [B] (u32/i64) from the
/// schedule buffers (`sqrt_recip_alphas_cumprod`, `sqrt_recipm1_alphas_cumprod`, [T]).
pub fn coefficients_at(
    sqrt_recip_alphas_cumprod: &Tensor,
    sqrt_recipm1_alphas_cumprod: &Tensor,
    t: &Tensor,
) -> Result<(Tensor, Tensor)> {
    Ok((
        sqrt_recip_alphas_cumprod.index_select(t, 0)?,
        sqrt_recipm1_alphas_cumprod.index_select(t, 0)?,
    ))
}

/// Validate shapes and dtypes; return the coefficient tensor [B, 2] in the math dtype.
fn prepare(
    zt: &Tensor,
    eps: &Tensor,
    sqrt_recip: &Tensor,
    sqrt_recipm1: &Tensor,
) -> Result<(Tensor, DType)> {
    if zt.shape() != eps.shape() {
        return Err(candle_core::Error::ShapeMismatchBinaryOp {
            lhs: zt.shape().clone(),
            rhs: eps.shape().clone(),
            op: "latent-estimate",
        }
        .bt());
    }
    if zt.dtype() != eps.dtype() {
        return Err(candle_core::Error::DTypeMismatchBinaryOp {
            lhs: zt.dtype(),
            rhs: eps.dtype(),
            op: "latent-estimate",
        }
        .bt());
    }
    let math = match zt.dtype() {
        DType::F64 => DType::F64,
        DType::F32 | DType::F16 | DType::BF16 => DType::F32,
        d => candle_core::bail!("latent-estimate: unsupported dtype {d:?} (f32, f64, f16, bf16)"),
    };
    if zt.rank() == 0 {
        candle_core::bail!("latent-estimate: zt must have a batch dimension, got a scalar");
    }
    let b = zt.dim(0)?;
    let per_batch = |name: &str, c: &Tensor| -> Result<Tensor> {
        let c = c.flatten_all()?.to_dtype(math)?;
        match c.elem_count() {
            n if n == b => Ok(c),
            1 => c.broadcast_as(b)?.contiguous(),
            n => candle_core::bail!(
                "latent-estimate: {name} has {n} values, expected one per batch element ({b})"
            ),
        }
    };
    let a = per_batch("sqrt_recip", sqrt_recip)?;
    let c = per_batch("sqrt_recipm1", sqrt_recipm1)?;
    Ok((Tensor::stack(&[a, c], 1)?, math))
}

struct LatentEstimate {
    inv_scale_factor: f64,
}

/// A contiguous view of `data` under `layout`: borrowed when it already is, else gathered.
fn contiguous<'a, T: Copy>(data: &'a [T], layout: &Layout) -> Cow<'a, [T]> {
    if let Some((o1, o2)) = layout.contiguous_offsets() {
        return Cow::Borrowed(&data[o1..o2]);
    }
    let dims = layout.dims();
    let stride = layout.stride();
    let n = layout.shape().elem_count();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Cow::Owned(out);
    }
    let rank = dims.len();
    let (inner_len, inner_stride) = (dims[rank - 1], stride[rank - 1]);
    let mut idx = vec![0usize; rank.saturating_sub(1)];
    loop {
        let base =
            layout.start_offset() + idx.iter().zip(stride).map(|(&i, &s)| i * s).sum::<usize>();
        out.extend((0..inner_len).map(|k| data[base + k * inner_stride]));
        // Odometer increment over the outer dimensions.
        let mut d = idx.len();
        loop {
            if d == 0 {
                return Cow::Owned(out);
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// The CPU kernel on contiguous slices. `M` is the math type; `to`/`from` convert elements.
fn cpu_kernel<T, M>(
    zt: &[T],
    eps: &[T],
    coeffs: &[M],
    per: usize,
    inv: M,
    to: impl Fn(T) -> M + Sync,
    from: impl Fn(M) -> T + Sync,
) -> Vec<T>
where
    T: Copy + Send + Sync + Default,
    M: Copy + Send + Sync + Mul<Output = M> + Sub<Output = M>,
{
    let mut out = vec![T::default(); zt.len()];
    if per == 0 {
        return out;
    }
    let run = |o: &mut [T], z: &[T], e: &[T], a: M, c: M| {
        for ((o, &z), &e) in o.iter_mut().zip(z).zip(e) {
            *o = from((a * to(z) - c * to(e)) * inv);
        }
    };
    out.par_chunks_mut(per)
        .zip(zt.par_chunks(per).zip(eps.par_chunks(per)))
        .enumerate()
        .for_each(|(b, (o, (z, e)))| {
            let (a, c) = (coeffs[2 * b], coeffs[2 * b + 1]);
            if per <= CHUNK {
                run(o, z, e, a, c);
            } else {
                o.par_chunks_mut(CHUNK)
                    .zip(z.par_chunks(CHUNK).zip(e.par_chunks(CHUNK)))
                    .for_each(|(o, (z, e))| run(o, z, e, a, c));
            }
        });
    out
}

impl CustomOp3 for LatentEstimate {
    fn name(&self) -> &'static str {
        "latent-estimate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = l1.shape().clone();
        let b = shape.dims().first().copied().unwrap_or(1);
        let per = shape.elem_count().checked_div(b).unwrap_or(0);
        let storage = match (s1, s2, s3) {
            (CpuStorage::F32(z), CpuStorage::F32(e), CpuStorage::F32(c)) => {
                let (z, e, c) = (contiguous(z, l1), contiguous(e, l2), contiguous(c, l3));
                let inv = self.inv_scale_factor as f32;
                CpuStorage::F32(cpu_kernel(&z, &e, &c, per, inv, |x| x, |x| x))
            }
            (CpuStorage::F64(z), CpuStorage::F64(e), CpuStorage::F64(c)) => {
                let (z, e, c) = (contiguous(z, l1), contiguous(e, l2), contiguous(c, l3));
                let inv = self.inv_scale_factor;
                CpuStorage::F64(cpu_kernel(&z, &e, &c, per, inv, |x| x, |x| x))
            }
            (CpuStorage::F16(z), CpuStorage::F16(e), CpuStorage::F32(c)) => {
                let (z, e, c) = (contiguous(z, l1), contiguous(e, l2), contiguous(c, l3));
                let inv = self.inv_scale_factor as f32;
                CpuStorage::F16(cpu_kernel(&z, &e, &c, per, inv, f16::to_f32, f16::from_f32))
            }
            (CpuStorage::BF16(z), CpuStorage::BF16(e), CpuStorage::F32(c)) => {
                let (z, e, c) = (contiguous(z, l1), contiguous(e, l2), contiguous(c, l3));
                let inv = self.inv_scale_factor as f32;
                CpuStorage::BF16(cpu_kernel(
                    &z,
                    &e,
                    &c,
                    per,
                    inv,
                    bf16::to_f32,
                    bf16::from_f32,
                ))
            }
            _ => candle_core::bail!(
                "latent-estimate: unsupported dtypes zt {:?}, eps {:?}, coefficients {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        };
        Ok((storage, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self.inv_scale_factor, s1, l1, s2, l2, s3, l3)
    }

    /// d/dzt = a·s·g, d/deps = −c·s·g, d/da[b] = s·Σ g·zt, d/dc[b] = −s·Σ g·eps
    /// (s = inv_scale_factor, sums over the elements of batch element b).
    fn bwd(
        &self,
        zt: &Tensor,
        eps: &Tensor,
        coeffs: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let s = self.inv_scale_factor;
        let math = coeffs.dtype();
        let b = zt.dim(0)?;
        let mut bshape = vec![1usize; zt.rank()];
        bshape[0] = b;
        let g = (grad.to_dtype(math)? * s)?;
        let a = coeffs.narrow(1, 0, 1)?.reshape(bshape.clone())?;
        let c = coeffs.narrow(1, 1, 1)?.reshape(bshape)?;
        let g_zt = g.broadcast_mul(&a)?.to_dtype(zt.dtype())?;
        let g_eps = g.broadcast_mul(&c)?.neg()?.to_dtype(eps.dtype())?;
        let g_a = (&g * zt.to_dtype(math)?)?.reshape((b, ()))?.sum(1)?;
        let g_c = (&g * eps.to_dtype(math)?)?
            .reshape((b, ()))?
            .sum(1)?
            .neg()?;
        let g_coeffs = Tensor::stack(&[g_a, g_c], 1)?;
        Ok((Some(g_zt), Some(g_eps), Some(g_coeffs)))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launch of `cuda/latent_estimate.cu`. The source is compiled once per process and
    //! compute capability with NVRTC (libnvrtc is already linked by candle's CUDA backend), so
    //! the build needs no nvcc for it and the PTX always matches the GPU it runs on.

    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape};

    const SOURCE: &str = include_str!("../cuda/latent_estimate.cu");
    const MODULE: &str = "sdseg_latent_estimate";
    const BLOCK: u32 = 256;

    /// PTX per (major, minor) compute capability.
    fn ptx_for(dev: &CudaDevice) -> Result<String> {
        static CACHE: OnceLock<Mutex<HashMap<(i32, i32), String>>> = OnceLock::new();
        let cc = dev
            .cuda_stream()
            .context()
            .compute_capability()
            .map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        let cache = CACHE.get_or_init(Default::default);
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ptx) = cache.get(&cc) {
            return Ok(ptx.clone());
        }
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec![format!("--gpu-architecture=compute_{}{}", cc.0, cc.1)],
            // Keep a·z − c·e unfused, as on the CPU and in PyTorch.
            fmad: Some(false),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts).map_err(|e| {
            candle_core::Error::Cuda(format!("NVRTC compiling latent_estimate.cu: {e:?}").into())
        })?;
        let ptx = ptx.to_src();
        cache.insert(cc, ptx.clone());
        Ok(ptx)
    }

    fn contiguous_start(l: &Layout, what: &str) -> Result<usize> {
        match l.contiguous_offsets() {
            Some((o1, _)) => Ok(o1),
            None => candle_core::bail!("latent-estimate (cuda): {what} must be contiguous"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn launch<T, C>(
        dev: &CudaDevice,
        name: &str,
        z: &CudaSlice<T>,
        e: &CudaSlice<T>,
        c: &CudaSlice<C>,
        offsets: (usize, usize, usize),
        n: usize,
        per: usize,
        inv: C,
    ) -> Result<CudaSlice<T>>
    where
        T: cudarc::driver::DeviceRepr,
        C: cudarc::driver::DeviceRepr,
    {
        let ptx = ptx_for(dev)?;
        let func = dev.get_or_load_custom_func(name, MODULE, &ptx)?;
        let b = n.checked_div(per).unwrap_or(0);
        let z = z.slice(offsets.0..offsets.0 + n);
        let e = e.slice(offsets.1..offsets.1 + n);
        let c = c.slice(offsets.2..offsets.2 + 2 * b);
        // SAFETY: every element of `out` is written by the kernel (grid-stride loop over n).
        let out = unsafe { dev.alloc::<T>(n)? };
        if n == 0 {
            return Ok(out);
        }
        let blocks = n.div_ceil(BLOCK as usize).min(65_535 * 8) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n64, per64) = (n as u64, per as u64);
        let mut builder = func.builder();
        builder.arg(&z);
        builder.arg(&e);
        builder.arg(&c);
        builder.arg(&out);
        builder.arg(&n64);
        builder.arg(&per64);
        builder.arg(&inv);
        // SAFETY: argument types and order match the kernel signature in latent_estimate.cu.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(out)
    }

    pub(super) fn forward(
        inv: f64,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let shape = l1.shape().clone();
        let n = shape.elem_count();
        let b = shape.dims().first().copied().unwrap_or(1);
        let per = n.checked_div(b).unwrap_or(0);
        let offs = (
            contiguous_start(l1, "zt")?,
            contiguous_start(l2, "eps")?,
            contiguous_start(l3, "coefficients")?,
        );
        let inv32 = inv as f32;
        let slice = match (&s1.slice, &s2.slice, &s3.slice) {
            (CudaStorageSlice::F32(z), CudaStorageSlice::F32(e), CudaStorageSlice::F32(c)) => {
                let out = launch(dev, "latent_estimate_f32", z, e, c, offs, n, per, inv32)?;
                CudaStorageSlice::F32(out)
            }
            (CudaStorageSlice::F64(z), CudaStorageSlice::F64(e), CudaStorageSlice::F64(c)) => {
                let out = launch(dev, "latent_estimate_f64", z, e, c, offs, n, per, inv)?;
                CudaStorageSlice::F64(out)
            }
            (CudaStorageSlice::F16(z), CudaStorageSlice::F16(e), CudaStorageSlice::F32(c)) => {
                let out = launch(dev, "latent_estimate_f16", z, e, c, offs, n, per, inv32)?;
                CudaStorageSlice::F16(out)
            }
            (CudaStorageSlice::BF16(z), CudaStorageSlice::BF16(e), CudaStorageSlice::F32(c)) => {
                let out = launch(dev, "latent_estimate_bf16", z, e, c, offs, n, per, inv32)?;
                CudaStorageSlice::BF16(out)
            }
            _ => candle_core::bail!("latent-estimate (cuda): unsupported dtype combination"),
        };
        Ok((
            CudaStorage {
                slice,
                device: dev.clone(),
            },
            shape,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn strided_gather_matches_contiguous_copy() -> Result<()> {
        let t = Tensor::arange(0f32, 120., &Device::Cpu)?.reshape((2, 3, 4, 5))?;
        let p = t.permute((0, 2, 3, 1))?.narrow(2, 1, 3)?;
        let (s, l) = p.storage_and_layout();
        let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &*s else {
            unreachable!("f32 cpu tensor")
        };
        let got = contiguous(data, l).into_owned();
        assert_eq!(got, p.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}
