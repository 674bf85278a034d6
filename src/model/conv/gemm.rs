//! 1×1 convolutions (stride 1, no padding) as one matrix product per image (issue 7, item 1):
//! `y[n] = W [O, C] · x[n] [C, H·W] + b`, with the `gemm` crate (what candle's `matmul` runs on
//! the CPU), the bias written into the output first and accumulated onto (`read_dst`), so no
//! separate broadcast-add pass.
//!
//! A 1×1 conv is a plain GEMM with a long, contiguous right-hand side; `gemm`'s packed,
//! cache-blocked kernel beats the direct kernel of `cpu.rs` there (which streams the whole
//! plane through a few output channels at a time).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape};

/// The op: `apply_op2_no_bwd(x, w)` or `apply_op3_no_bwd(x, w, b)` for contiguous f32 `x`
/// [N, C, H, W], `w` [O, C, 1, 1] (any strides), `b` [O].
#[derive(Clone, Copy, Debug)]
pub(super) struct Pointwise;

impl Pointwise {
    fn run(
        &self,
        x: &[f32],
        xl: &Layout,
        w: &[f32],
        wl: &Layout,
        b: Option<(&[f32], &Layout)>,
    ) -> Result<(Vec<f32>, Shape)> {
        let Some((x0, x1)) = xl.contiguous_offsets() else {
            candle_core::bail!("conv2d 1x1: expects a contiguous input");
        };
        let x = &x[x0..x1];
        let (n, c, h, wd) = xl.shape().dims4()?;
        let (o, ci, kh, kw) = wl.shape().dims4()?;
        if ci != c || kh != 1 || kw != 1 {
            candle_core::bail!(
                "conv2d 1x1: input has {c} channels, weight is {:?}",
                wl.dims()
            );
        }
        let p = h * wd;
        let out_shape = Shape::from((n, o, h, wd));
        let mut y = vec![0f32; n * o * p];
        if y.is_empty() {
            return Ok((y, out_shape));
        }
        let read_dst = match b {
            None => false,
            Some((b, bl)) => {
                if bl.dims() != [o] {
                    candle_core::bail!("conv2d: bias shape {:?}, expected [{o}]", bl.shape());
                }
                let (b0, bs) = (bl.start_offset(), bl.stride()[0]);
                for (r, row) in y.chunks_exact_mut(p).enumerate() {
                    row.fill(b[b0 + (r % o) * bs]);
                }
                true
            }
        };
        let ws = wl.stride();
        let w = &w[wl.start_offset()..];
        let threads = rayon::current_num_threads();
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        if c == 0 {
            return Ok((y, out_shape));
        }
        for (yi, xi) in y.chunks_exact_mut(o * p).zip(x.chunks_exact(c * p)) {
            // SAFETY: dst is [o, p] row-major inside `yi`, lhs [o, c] with the weight's strides
            // inside `w` (its layout spans every (o, c)), rhs [c, p] row-major inside `xi`.
            unsafe {
                gemm::gemm(
                    o,
                    p,
                    c,
                    yi.as_mut_ptr(),
                    1,
                    p as isize,
                    read_dst,
                    w.as_ptr(),
                    ws[1] as isize,
                    ws[0] as isize,
                    xi.as_ptr(),
                    1,
                    p as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
        Ok((y, out_shape))
    }
}

impl CustomOp2 for Pointwise {
    fn name(&self) -> &'static str {
        "sdseg-conv1x1-gemm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = self.run(x.as_slice()?, xl, w.as_slice()?, wl, None)?;
        Ok((CpuStorage::F32(y), shape))
    }
}

impl CustomOp3 for Pointwise {
    fn name(&self) -> &'static str {
        "sdseg-conv1x1-gemm-bias"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = (b.as_slice()?, bl);
        let (y, shape) = self.run(x.as_slice()?, xl, w.as_slice()?, wl, Some(b))?;
        Ok((CpuStorage::F32(y), shape))
    }
}
