//! Softmax attention over channels-first tensors, fused on the CPU (issue 7, item 2).
//!
//! Both LDM attention blocks (the UNet's `AttentionBlock` and the VAE's `AttnBlock`) compute,
//! per batch row (× head), with `q`, `k`, `v` of shape `[d, T]`:
//!
//! ```text
//! w[t, s] = softmax_s(scale · Σ_c q[c, t] k[c, s])      a[c, t] = Σ_s w[t, s] v[c, s]
//! ```
//!
//! candle materialises `w` for every row at once (8 × 1024 × 1024 f32 = 32 MB per UNet block
//! at 32×32), zero-fills it, and makes three more passes for the softmax. [`attention`] runs
//! blocks of 64 queries instead: their scores (64 × T, in L2), an in-place softmax with a
//! vectorised `exp`, and the product with `v`, straight into the output; rayon over
//! (row, query block). Anything else (CUDA, f16/bf16, autograd) takes the candle ops.

use crate::SendPtr;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `a = v · softmax(scale · qᵀk)ᵀ` for `q`, `k`, `v` of shape `[N, d, T]` (any strides): the
/// fused CPU op for f32 CPU tensors that track no gradients, candle ops otherwise (softmax in
/// f32 there too).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if fused_applies(q, k, v) {
        let [q, k, v] = [q, k, v].map(rows_unit_stride);
        let (q, k, v) = (q?, k?, v?);
        return q.apply_op3_no_bwd(&k, &v, &FusedAttention { scale });
    }
    attention_reference(q, k, v, scale)
}

/// Whether [`attention`] runs the fused CPU op for these tensors.
pub fn fused_applies(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    matches!(q.device(), Device::Cpu)
        && [q, k, v]
            .iter()
            .all(|t| t.rank() == 3 && t.dtype() == DType::F32 && !t.track_op())
}

/// The same with candle ops: the scores of every row at once, softmax in f32.
pub fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (q.transpose(1, 2)?.matmul(k)? * scale)?;
    let in_dtype = scores.dtype();
    let w = softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(in_dtype)?;
    v.matmul(&w.transpose(1, 2)?)
}

/// Softmax over the last dim: candle-nn's fused kernel, which has no backward, unless the
/// input tracks gradients (training), where the differentiable composition runs. Without this
/// split, training would silently get no gradient into an attention block's q and k.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, candle_core::D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// `t` itself when its last dim has unit stride (narrowed head views do), else a copy.
fn rows_unit_stride(t: &Tensor) -> Result<Tensor> {
    if t.rank() == 3 && t.stride()[2] == 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

struct FusedAttention {
    scale: f64,
}

/// Queries per task: a 64 × T score block (256 KB at T = 1024) stays in L2.
const QUERY_BLOCK: usize = 64;

/// `[N, d, T]` view: start offset, row stride (per N), channel stride (per d); unit stride in T.
#[derive(Clone, Copy)]
struct View {
    start: usize,
    n: usize,
    c: usize,
}

fn view(l: &Layout, dims: (usize, usize, usize)) -> Result<View> {
    if l.dims() != [dims.0, dims.1, dims.2] || l.stride()[2] != 1 {
        candle_core::bail!(
            "attention: expected [{}, {}, {}] with unit stride in T, got {:?} strides {:?}",
            dims.0,
            dims.1,
            dims.2,
            l.dims(),
            l.stride()
        );
    }
    Ok(View {
        start: l.start_offset(),
        n: l.stride()[0],
        c: l.stride()[1],
    })
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "sdseg-fused-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, d, t) = ql.shape().dims3()?;
        let (qv, kv, vv) = (
            view(ql, (n, d, t))?,
            view(kl, (n, d, t))?,
            view(vl, (n, d, t))?,
        );
        let (q, k, v) = (
            q.as_slice::<f32>()?,
            k.as_slice::<f32>()?,
            v.as_slice::<f32>()?,
        );
        let mut out = vec![0f32; n * d * t];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), Shape::from((n, d, t))));
        }
        let blocks = t.div_ceil(QUERY_BLOCK);
        let scale = self.scale as f32;
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..n * blocks).into_par_iter().for_each(|task| {
            let (row, blk) = (task / blocks, task % blocks);
            let t0 = blk * QUERY_BLOCK;
            let m = QUERY_BLOCK.min(t - t0);
            SCORES.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < QUERY_BLOCK * t {
                    s.resize(QUERY_BLOCK * t, 0.0);
                }
                let op = out_ptr;
                // SAFETY: every pointer stays inside its buffer: q/k/v views checked against
                // their layouts above; the scores block holds m × t floats; the output block
                // (row, all c, t0..t0 + m) belongs to this task alone.
                unsafe {
                    let qp = q.as_ptr().add(qv.start + row * qv.n + t0);
                    let kp = k.as_ptr().add(kv.start + row * kv.n);
                    let vp = v.as_ptr().add(vv.start + row * vv.n);
                    // S[i, j] = scale · Σ_c q[c, t0 + i] k[c, j]: lhs (i, c) at q[c·C + i].
                    gemm::gemm(
                        m,
                        t,
                        d,
                        s.as_mut_ptr(),
                        1,
                        t as isize,
                        false,
                        qp,
                        qv.c as isize,
                        1,
                        kp,
                        1,
                        kv.c as isize,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    for r in s[..m * t].chunks_exact_mut(t) {
                        softmax_in_place(r);
                    }
                    // a[c, t0 + i] = Σ_j v[c, j] S[i, j]: rhs (j, i) at S[i·t + j].
                    gemm::gemm(
                        d,
                        m,
                        t,
                        op.get().add(row * d * t + t0),
                        1,
                        t as isize,
                        false,
                        vp,
                        1,
                        vv.c as isize,
                        s.as_ptr(),
                        t as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        });
        Ok((CpuStorage::F32(out), Shape::from((n, d, t))))
    }
}

thread_local! {
    /// Per-thread score block (reused across calls).
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `r ← softmax(r)`: max, `exp(x − max)`, sum, scale.
fn softmax_in_place(r: &mut [f32]) {
    let max = r.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let sum = exp_shifted(r, max);
    let inv = 1.0 / sum;
    r.iter_mut().for_each(|x| *x *= inv);
}

/// `r[i] ← exp(r[i] − shift)` for `r[i] ≤ shift`, returning the sum (AVX2 + FMA when the CPU
/// has them, the same code for the compiler to vectorise).
fn exp_shifted(r: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { exp_shifted_avx2(r, shift) };
        }
    }
    exp_shifted_generic(r, shift)
}

/// [`exp_shifted_generic`] compiled for AVX2 + FMA (callers check the CPU has them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_shifted_avx2(r: &mut [f32], shift: f32) -> f32 {
    exp_shifted_generic(r, shift)
}

#[inline(always)]
fn exp_shifted_generic(r: &mut [f32], shift: f32) -> f32 {
    // Eight partial sums: a vectorisable reduction.
    let mut acc = [0f32; 8];
    let mut chunks = r.chunks_exact_mut(8);
    for c in &mut chunks {
        for (x, a) in c.iter_mut().zip(acc.iter_mut()) {
            *x = exp_le0(*x - shift);
            *a += *x;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_le0(*x - shift);
        sum += *x;
    }
    sum
}

/// `exp(x)` for `x ≤ 0` (0 below −87.3), within ~2 ulp: `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`,
/// `e^r` by its degree-7 Taylor polynomial, times `2^n` built in the exponent bits.
#[inline(always)]
fn exp_le0(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let xc = x.max(-87.3);
    let n = (xc * LOG2E).round_ties_even();
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let y = p * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        let s = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn fused_matches_candle_ops() {
        // T a multiple of the query block and not; heads as narrowed views of one qkv tensor
        // (the UNet's legacy order), and plain contiguous tensors (the VAE).
        for &(n, d, t) in &[
            (2usize, 24usize, 256usize),
            (3, 8, 100),
            (1, 64, 64),
            (2, 5, 1),
        ] {
            let qkv = random(&[n, 3 * d, t], (n * d * t) as u64);
            let q = qkv.narrow(1, 0, d).unwrap();
            let k = qkv.narrow(1, d, d).unwrap();
            let v = qkv.narrow(1, 2 * d, d).unwrap();
            assert!(fused_applies(&q, &k, &v));
            let scale = 1.0 / (d as f64).sqrt();
            let got = attention(&q, &k, &v, scale).unwrap();
            let want = attention_reference(&q, &k, &v, scale).unwrap();
            assert_eq!(got.dims(), &[n, d, t]);
            let e = max_rel(&got, &want);
            assert!(e < 1e-5, "[{n}, {d}, {t}]: rel err {e:e}");
            let (qc, kc, vc) = (
                q.contiguous().unwrap(),
                k.contiguous().unwrap(),
                v.contiguous().unwrap(),
            );
            let e = max_rel(&attention(&qc, &kc, &vc, scale).unwrap(), &want);
            assert!(e < 1e-5, "[{n}, {d}, {t}] contiguous: rel err {e:e}");
        }
    }

    #[test]
    fn tracked_tensors_take_candle_ops_and_get_gradients() {
        // Gradients reach q and k through the softmax (candle-nn's fused softmax has none).
        let q = candle_core::Var::from_tensor(&random(&[1, 4, 8], 1)).unwrap();
        let k = candle_core::Var::from_tensor(&random(&[1, 4, 8], 2)).unwrap();
        let v = random(&[1, 4, 8], 3);
        assert!(!fused_applies(q.as_tensor(), k.as_tensor(), &v));
        let a = attention(q.as_tensor(), k.as_tensor(), &v, 0.5).unwrap();
        // A weighted sum: the plain sum's gradient through a softmax is zero.
        let wsum = (a * random(&[1, 4, 8], 4)).unwrap().sum_all().unwrap();
        let grads = wsum.backward().unwrap();
        for (name, t) in [("q", q.as_tensor()), ("k", k.as_tensor())] {
            let g = grads
                .get(t)
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 1e-6, "{name}: zero gradient");
        }
    }

    #[test]
    fn exp_matches_std_within_2_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let got = exp_le0(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_le0(-100.0), 0.0);
        assert_eq!(exp_le0(0.0), 1.0);
    }
}
