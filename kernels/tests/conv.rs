//! Parity of `sdseg_kernels::conv::Conv2d` (the fast CPU path with each micro-kernel the CPU runs,
//! AVX-512 and/or AVX2 + FMA, candle's conv2d when none; 1×1 convs also as one gemm per image) against an f64 naive convolution and against candle's conv2d, on random
//! data for every variant the kernel distinguishes: 1×1 (one long row, in place), 3×3 stride 1
//! (padded copy / in place when unpadded), stride 2 (phase-split copy) with symmetric and the
//! LDM `Downsample`'s asymmetric padding, odd sizes, batches, channel counts that are not
//! multiples of the register tile, more taps than one tap block, strided inputs, no bias;
//! and Winograd F(4×4, 3×3) for the stride-1 3×3 convs with ≥ 16 channels each way.

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::Conv2dConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sdseg_kernels::conv::{winograd_available, Conv2d, ConvPath, CpuKernel, Padding2d};

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// y[n, o, i, j] = b[o] + Σ x_pad[n, c, i·s + kh, j·s + kw] · w[o, c, kh, kw], in f64.
fn naive(x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: usize, p: Padding2d) -> Vec<f64> {
    let (n, c, h, wd) = x.dims4().unwrap();
    let (co, _, kh, kw) = w.dims4().unwrap();
    let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
    let bv: Vec<f32> = b.map_or(vec![0.0; co], |b| b.to_vec1().unwrap());
    let oh = (h + p.top + p.bottom - kh) / s + 1;
    let ow = (wd + p.left + p.right - kw) / s + 1;
    let mut y = vec![0f64; n * co * oh * ow];
    for img in 0..n {
        for o in 0..co {
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = bv[o] as f64;
                    for ci in 0..c {
                        for a in 0..kh {
                            for bb in 0..kw {
                                let (r, q) = ((i * s + a) as isize, (j * s + bb) as isize);
                                let (r, q) = (r - p.top as isize, q - p.left as isize);
                                if r < 0 || q < 0 || r >= h as isize || q >= wd as isize {
                                    continue;
                                }
                                let xi = ((img * c + ci) * h + r as usize) * wd + q as usize;
                                let wi = ((o * c + ci) * kh + a) * kw + bb;
                                acc += xv[xi] as f64 * wv[wi] as f64;
                            }
                        }
                    }
                    y[((img * co + o) * oh + i) * ow + j] = acc;
                }
            }
        }
    }
    y
}

/// max |got − want| / max |want|.
fn rel_err(got: &Tensor, want: &[f64]) -> f64 {
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
    err / scale
}

struct Case {
    x: Vec<usize>,
    co: usize,
    k: usize,
    stride: usize,
    pad: Padding2d,
    bias: bool,
}

fn check(case: &Case, seed: u64) {
    let x = random(&case.x, seed);
    check_with(case, &x, seed);
}

fn check_with(case: &Case, x: &Tensor, seed: u64) {
    let c = case.x[1];
    let w = random(&[case.co, c, case.k, case.k], seed + 1);
    let b = case.bias.then(|| random(&[case.co], seed + 2));
    let cfg = Conv2dConfig {
        stride: case.stride,
        ..Default::default()
    };
    let conv = Conv2d::new(w.clone(), b.clone(), cfg).with_padding(case.pad);
    let want = naive(x, &w, b.as_ref(), case.stride, case.pad);
    let (h, wd) = (case.x[2], case.x[3]);
    let p = case.pad;
    let oh = (h + p.top + p.bottom - case.k) / case.stride + 1;
    let ow = (wd + p.left + p.right - case.k) / case.stride + 1;
    if (case.k == 1 && case.stride == 1 && case.pad == sym(0)) || oh * ow <= 256 {
        // Unforced 1×1 convs and convs onto small planes are one gemm per image.
        assert_eq!(conv.path_for(x), ConvPath::Matmul);
        assert_eq!(conv.cpu_kernel_for(x), None);
        check_kernel(case, &conv, x, &want, None);
    } else if winograd_takes(case, c) {
        // Unforced stride-1 3×3 convs with enough channels: Winograd F(4×4, 3×3).
        assert_eq!(conv.path_for(x), ConvPath::Winograd);
        assert_eq!(conv.cpu_kernel_for(x), None);
        check_kernel(case, &conv, x, &want, None);
    } else {
        assert_eq!(conv.cpu_kernel_for(x), CpuKernel::best());
    }
    // Every kernel this CPU runs (the default one first), or candle's conv2d when none.
    let mut kernels: Vec<Option<CpuKernel>> =
        CpuKernel::all_available().into_iter().map(Some).collect();
    if kernels.is_empty() {
        kernels.push(None);
    }
    for k in kernels {
        let conv = match k {
            Some(k) => conv.clone().with_cpu_kernel(k),
            None => conv.clone(),
        };
        assert_eq!(conv.cpu_kernel_for(x), k);
        check_kernel(case, &conv, x, &want, k);
    }
    // The training path (im2col from differentiable ops) computes the same convolution.
    let e = rel_err(&conv.forward_im2col(x).unwrap(), &want);
    assert!(
        e <= 1e-5,
        "im2col x {:?} s {} {:?}: rel err {e:e}",
        case.x,
        case.stride,
        case.pad
    );
}

/// Whether an unforced conv of `case` (output plane over 256 pixels) takes the Winograd path.
fn winograd_takes(case: &Case, c: usize) -> bool {
    winograd_available() && case.k == 3 && case.stride == 1 && c >= 16 && case.co >= 16
}

fn check_kernel(case: &Case, conv: &Conv2d, x: &Tensor, want: &[f64], k: Option<CpuKernel>) {
    let got = conv.forward(x).unwrap();
    let e = rel_err(&got, want);
    let cand = conv.forward_candle(x).unwrap();
    assert_eq!(got.dims(), cand.dims(), "shape vs candle");
    let e_cand = rel_err(&cand, want);
    let diff = (&got - &cand)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    // Winograd's transforms cost a few bits (~3e-6 at 16–64 channels, ~1e-5 at 200–512).
    let tol = if conv.path_for(x) == ConvPath::Winograd {
        3e-5
    } else {
        1e-5
    };
    assert!(
        e <= tol,
        "{k:?} x {:?} co {} k {} s {} {:?}: rel err vs f64 {e:e} (candle: {e_cand:e})",
        case.x,
        case.co,
        case.k,
        case.stride,
        case.pad
    );
    assert!(
        diff as f64 / scale <= tol,
        "{k:?} x {:?}: rel diff vs candle {:e}",
        case.x,
        diff as f64 / scale
    );
}

fn sym(p: usize) -> Padding2d {
    Padding2d::symmetric(p)
}

#[test]
fn one_by_one_odd_sizes_batches_and_channel_remainders() {
    for (i, co) in [1, 3, 8, 13, 21].into_iter().enumerate() {
        let case = Case {
            x: vec![2, 19, 13, 17],
            co,
            k: 1,
            stride: 1,
            pad: sym(0),
            bias: true,
        };
        check(&case, 10 + i as u64);
    }
}

#[test]
fn three_by_three_stride1_pad1_every_channel_remainder() {
    for co in 1..=17 {
        let case = Case {
            x: vec![2, 5, 11, 23],
            co,
            k: 3,
            stride: 1,
            pad: sym(1),
            bias: true,
        };
        check(&case, 100 + co as u64);
    }
}

#[test]
fn three_by_three_many_taps_wide_rows_no_bias() {
    // 40·9 = 360 taps: more than one tap block, so later blocks accumulate into the output.
    let case = Case {
        x: vec![1, 40, 9, 70],
        co: 19,
        k: 3,
        stride: 1,
        pad: sym(1),
        bias: false,
    };
    check(&case, 200);
}

#[test]
fn three_by_three_unpadded_in_place() {
    let case = Case {
        x: vec![3, 7, 12, 21],
        co: 10,
        k: 3,
        stride: 1,
        pad: sym(0),
        bias: true,
    };
    check(&case, 300);
}

#[test]
fn stride2_asymmetric_downsample_pad() {
    for (i, hw) in [(16, 16), (17, 23), (8, 33)].into_iter().enumerate() {
        let case = Case {
            x: vec![2, 12, hw.0, hw.1],
            co: 11,
            k: 3,
            stride: 2,
            pad: Padding2d::from_torch_pad(0, 1, 0, 1),
            bias: true,
        };
        check(&case, 400 + i as u64);
    }
}

#[test]
fn stride2_symmetric_and_uneven_padding() {
    let pads = [
        sym(1),
        sym(0),
        Padding2d {
            top: 2,
            bottom: 0,
            left: 1,
            right: 3,
        },
        Padding2d {
            top: 0,
            bottom: 1,
            left: 2,
            right: 0,
        },
    ];
    for (i, pad) in pads.into_iter().enumerate() {
        // Odd and even widths with odd and even left padding: all four deinterleave cases.
        let case = Case {
            x: vec![1, 9, 15, 14 + i % 2],
            co: 9,
            k: 3,
            stride: 2,
            pad,
            bias: i != 1,
        };
        check(&case, 500 + i as u64);
    }
}

#[test]
fn non_contiguous_inputs() {
    // Transposed H/W (unit stride along H only): goes through the padded copy.
    let base = random(&[2, 6, 17, 13], 600);
    let xt = base.transpose(2, 3).unwrap();
    assert!(!xt.is_contiguous());
    for (k, pad) in [(1, sym(0)), (3, sym(1)), (3, sym(0))] {
        let case = Case {
            x: xt.dims().to_vec(),
            co: 7,
            k,
            stride: 1,
            pad,
            bias: true,
        };
        check_with(&case, &xt, 601);
    }
    // A column window (rows of 9 inside rows of 20) and a channel window: in place, strided.
    let wide = random(&[2, 10, 11, 20], 610);
    let xn = wide.narrow(3, 4, 9).unwrap().narrow(1, 2, 6).unwrap();
    assert!(!xn.is_contiguous());
    for (k, pad, stride) in [(1, sym(0), 1), (3, sym(0), 1), (3, sym(1), 2)] {
        let case = Case {
            x: xn.dims().to_vec(),
            co: 12,
            k,
            stride,
            pad,
            bias: true,
        };
        check_with(&case, &xn, 611);
    }
}

#[test]
fn larger_layer_shapes() {
    // A cut-down LDM block (3×3, 64 channels at 40×48) and a 1×1 shortcut 64 → 32.
    check(
        &Case {
            x: vec![1, 64, 40, 48],
            co: 64,
            k: 3,
            stride: 1,
            pad: sym(1),
            bias: true,
        },
        700,
    );
    check(
        &Case {
            x: vec![2, 64, 20, 20],
            co: 32,
            k: 1,
            stride: 1,
            pad: sym(0),
            bias: true,
        },
        701,
    );
    // 1×1 with more input channels than one gemm depth block, no bias.
    check(
        &Case {
            x: vec![2, 300, 9, 11],
            co: 17,
            k: 1,
            stride: 1,
            pad: sym(0),
            bias: false,
        },
        702,
    );
}

/// Winograd F(4×4, 3×3): output sizes not in 4s, tile rows shorter and longer than 16 tiles
/// and not in 16s, every padding the LDM uses and uneven ones, output channels not in the
/// micro-kernel's 8s, more input channels than one L1 block, batches, tasks that start mid
/// tile row.
#[test]
fn winograd_three_by_three_shapes() {
    let uneven = Padding2d {
        top: 2,
        bottom: 0,
        left: 1,
        right: 2,
    };
    let cases = [
        (vec![1, 16, 17, 17], 16, sym(1), true),
        (vec![2, 24, 23, 70], 21, sym(1), true),
        (vec![1, 17, 30, 130], 40, sym(1), false),
        (vec![3, 32, 19, 21], 19, sym(0), true),
        (vec![1, 20, 18, 33], 17, uneven, true),
        (vec![1, 200, 20, 19], 24, sym(1), true),
        (vec![2, 16, 64, 64], 16, sym(1), true),
        (vec![1, 512, 17, 18], 16, sym(1), true),
    ];
    for (i, (x, co, pad, bias)) in cases.into_iter().enumerate() {
        let case = Case {
            x,
            co,
            k: 3,
            stride: 1,
            pad,
            bias,
        };
        check(&case, 800 + i as u64);
    }
}

#[test]
fn tracked_tensors_use_im2col_and_get_gradients() {
    let x = random(&[1, 4, 6, 6], 800);
    let w = Var::from_tensor(&random(&[5, 4, 3, 3], 801)).unwrap();
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    let conv = Conv2d::new(w.as_tensor().clone(), None, cfg);
    assert_eq!(conv.path_for(&x), ConvPath::Im2col);
    let y = conv.forward(&x).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let g = grads.get(w.as_tensor()).expect("weight gradient");
    assert_eq!(g.dims(), &[5, 4, 3, 3]);
    // d(Σy)/dw[o, c, a, b] = Σ over output pixels of the input under that tap.
    let want = x
        .narrow(1, 0, 1)
        .unwrap()
        .pad_with_zeros(2, 1, 1)
        .unwrap()
        .pad_with_zeros(3, 1, 1)
        .unwrap()
        .narrow(2, 0, 6)
        .unwrap()
        .narrow(3, 0, 6)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let got = g
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .get(0)
        .unwrap();
    assert!((got.to_scalar::<f32>().unwrap() - want).abs() < 1e-4);
}

#[test]
fn other_dtypes_use_candle() {
    let x = random(&[1, 3, 8, 8], 900).to_dtype(DType::F64).unwrap();
    let w = random(&[2, 3, 3, 3], 901).to_dtype(DType::F64).unwrap();
    let conv = Conv2d::new(w, None, Default::default());
    assert_eq!(conv.path_for(&x), ConvPath::Candle);
    assert_eq!(conv.forward(&x).unwrap().dims(), &[1, 2, 6, 6]);
}

#[test]
fn kernel_choice_and_forced_kernels() {
    let all = CpuKernel::all_available();
    if std::env::var_os("SDSEG_CONV_KERNEL").is_none() {
        assert_eq!(CpuKernel::best(), all.first().copied());
    }
    // Every kernel the CPU runs is listed once (the order is the per-vendor preference).
    let runnable: Vec<CpuKernel> = [CpuKernel::Avx512, CpuKernel::Avx2Fma]
        .into_iter()
        .filter(|k| k.available())
        .collect();
    assert_eq!(all.len(), runnable.len());
    assert!(runnable.iter().all(|k| all.contains(k)));
    let x = random(&[1, 3, 9, 9], 1000);
    let w = random(&[4, 3, 3, 3], 1001);
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    for k in [CpuKernel::Avx512, CpuKernel::Avx2Fma] {
        // A kernel the CPU lacks falls back to candle instead of faulting.
        let conv = Conv2d::new(w.clone(), None, cfg).with_cpu_kernel(k);
        let want = if k.available() {
            ConvPath::FastCpu
        } else {
            ConvPath::Candle
        };
        assert_eq!(conv.path_for(&x), want, "{k:?}");
        let diff = (conv.forward(&x).unwrap() - conv.forward_candle(&x).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "{k:?}: {diff}");
    }
}

/// With gradients tracked the conv takes the im2col path, and its gradients equal candle's
/// conv2d backward (input, weight and bias), for stride 1 and the stride-2 downsample padding.
/// Stride-2 sizes are chosen so that the last tap ends on the padded edge: for other sizes
/// candle 0.11's conv2d backward itself fails (its transposed conv drops the output padding,
/// "shape mismatch in add"), which the im2col path does not.
#[test]
fn im2col_training_path_gradients_match_candle() {
    for (i, (k, stride, pad, hw)) in [
        (3, 1, sym(1), (9, 10)),
        (1, 1, sym(0), (9, 10)),
        (3, 2, Padding2d::from_torch_pad(0, 1, 0, 1), (10, 12)),
        (3, 2, sym(1), (9, 11)),
    ]
    .into_iter()
    .enumerate()
    {
        let x = Var::from_tensor(&random(&[2, 5, hw.0, hw.1], 900 + i as u64)).unwrap();
        let w = Var::from_tensor(&random(&[4, 5, k, k], 910 + i as u64)).unwrap();
        let b = Var::from_tensor(&random(&[4], 920 + i as u64)).unwrap();
        let cfg = Conv2dConfig {
            stride,
            ..Default::default()
        };
        let conv =
            Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), cfg).with_padding(pad);
        assert_eq!(conv.path_for(x.as_tensor()), ConvPath::Im2col);
        let ho = (hw.0 + pad.top + pad.bottom - k) / stride + 1;
        let wo = (hw.1 + pad.left + pad.right - k) / stride + 1;
        let probe = random(&[2, 4, ho, wo], 930);
        let ours = conv.forward(x.as_tensor()).unwrap();
        let theirs = conv.forward_candle(x.as_tensor()).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        let g1 = (ours * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (theirs * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
            let a = g1.get(v.as_tensor()).unwrap();
            let want: Vec<f64> = g2
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap();
            let e = rel_err(a, &want);
            assert!(e <= 1e-5, "case {i} grad {name}: rel err {e:e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bf16 on the CPU (`--dtype bf16`) on the AMX level (forced per conv, whatever the switches):
// AMX tiles where the CPU has them, f32 elsewhere. Every level: tests/conv_levels.rs.

use sdseg_kernels::conv::{with_cpu_precision, Bf16Kernel, CpuPrecision};

/// Whether this machine runs the AMX level (CPU and OS).
fn amx_available() -> bool {
    Bf16Kernel::Amx.available()
}

fn bf16_round(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// Under `CpuPrecision::Bf16` on the AMX level a conv AMX supports computes exactly the f32
/// conv of its input and weights rounded to bf16 (f32 sums: rel err ≤ 1e-5 against f64), and
/// is not the f32 conv; on a CPU without AMX-BF16 it is the f32 conv, bit for bit.
fn check_bf16(case: &Case, x: &Tensor, seed: u64, amx_shape: bool) {
    let c = case.x[1];
    let w = random(&[case.co, c, case.k, case.k], seed + 1);
    let b = case.bias.then(|| random(&[case.co], seed + 2));
    let cfg = Conv2dConfig {
        stride: case.stride,
        ..Default::default()
    };
    let conv = Conv2d::new(w.clone(), b.clone(), cfg)
        .with_padding(case.pad)
        .with_bf16_kernel(Bf16Kernel::Amx);
    let f32_path = conv.path_for(x);
    let f32_out = conv.forward(x).unwrap();
    let (path, got) = with_cpu_precision(CpuPrecision::Bf16, || {
        (conv.path_for(x), conv.forward(x).unwrap())
    });
    // The scope ends with the closure.
    assert_eq!(conv.path_for(x), f32_path);
    let (path3, got3) = with_cpu_precision(CpuPrecision::Bf16x3, || {
        (conv.path_for(x), conv.forward(x).unwrap())
    });
    // Split bf16 runs the Winograd convs' products on AMX instead (same accuracy class).
    let winograd = f32_path == ConvPath::Winograd && case.co.is_multiple_of(16);
    if path3 == ConvPath::WinogradAmxBf16 {
        assert!(amx_available() && winograd, "x {:?}", case.x);
    } else {
        assert!(!(amx_available() && winograd), "x {:?}: {path3:?}", case.x);
        assert_eq!(path3, path);
    }
    let what = format!(
        "x {:?} co {} k {} s {} {:?}",
        case.x, case.co, case.k, case.stride, case.pad
    );
    assert_eq!(got.dims(), f32_out.dims(), "{what}");
    if amx_available() && amx_shape {
        assert_eq!(path, ConvPath::AmxBf16, "{what}");
        let want = naive(
            &bf16_round(x),
            &bf16_round(&w),
            b.as_ref(),
            case.stride,
            case.pad,
        );
        let e = rel_err(&got, &want);
        assert!(
            e <= 1e-5,
            "{what}: rel err vs the f64 conv of bf16 inputs {e:e}"
        );
        let exact = naive(x, &w, b.as_ref(), case.stride, case.pad);
        let e32 = rel_err(&got, &exact);
        assert!(
            (1e-6..2e-2).contains(&e32),
            "{what}: rel err vs the f32 conv {e32:e} (bf16 rounding expected)"
        );
        // Split bf16: all but the residual × residual products, ~16 mantissa bits (on
        // Winograd's transformed tiles: its few bits on top, as in f32).
        let e3 = rel_err(&got3, &exact);
        eprintln!("{what}: bf16 {e32:.2e}, bf16x3 {e3:.2e} ({path3:?})");
        // Winograd's output transform amplifies the dropped residual × residual products
        // ~10–30× as it does f32 rounding: ~1.3e-4 at 32–64 channels, still 15× better than
        // plain bf16.
        let (tol3, gain) = if path3 == ConvPath::WinogradAmxBf16 {
            (4e-4, 8.0)
        } else {
            (2e-5, 50.0)
        };
        assert!(
            e3 <= tol3 && e3 < e32 / gain,
            "{what}: bf16x3 rel err {e3:e} (bf16: {e32:e})"
        );
    } else {
        let d = (&got3 - &f32_out)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(
            d.to_scalar::<f32>().unwrap(),
            0.0,
            "{what}: bf16x3 fallback is f32"
        );
        assert_ne!(path, ConvPath::AmxBf16, "{what}");
        let d = (&got - &f32_out).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(
            d.to_scalar::<f32>().unwrap(),
            0.0,
            "{what}: fallback is the f32 conv"
        );
    }
}

#[test]
fn bf16_convs_every_layout_amx_takes() {
    let case = |x: &[usize], co, k, stride, pad, bias| Case {
        x: x.to_vec(),
        co,
        k,
        stride,
        pad,
        bias,
    };
    let cases = [
        // 3×3 stride 1: full 2×2 register tiles, and odd segment / channel-block counts.
        case(&[1, 64, 16, 32], 32, 3, 1, sym(1), true),
        case(&[2, 64, 3, 16], 48, 3, 1, sym(1), true),
        // Input channels that are not a multiple of 32 (zero-padded pairs), 3 as conv_in.
        case(&[1, 3, 16, 16], 16, 3, 1, sym(1), true),
        case(&[1, 40, 5, 32], 32, 3, 1, sym(1), false),
        // Stride 2: the LDM Downsample's (0, 1, 0, 1) pad and symmetric padding.
        case(
            &[1, 32, 32, 32],
            32,
            3,
            2,
            Padding2d::from_torch_pad(0, 1, 0, 1),
            true,
        ),
        case(&[2, 64, 13, 64], 16, 3, 2, sym(1), true),
        // 1×1: a plane of 64 pixels seen as rows of 16, and a wide row.
        case(&[2, 96, 8, 8], 48, 1, 1, sym(0), true),
        case(&[1, 32, 2, 48], 64, 1, 1, sym(0), false),
        // Unpadded 3×3 (the op takes it; the LDM modules pad every 3×3 conv).
        case(&[1, 32, 6, 18], 16, 3, 1, sym(0), true),
        // Rows narrower than 16 pixels: 8-, 4-, 2- and 1-pixel segments (UNet 8×8 ... 2×2
        // levels), and a 1×1 conv on a 3×5 plane (not a plane of 16s either).
        case(&[1, 64, 8, 8], 32, 3, 1, sym(1), true),
        case(&[2, 32, 4, 4], 16, 3, 1, sym(1), false),
        case(
            &[1, 32, 4, 4],
            32,
            3,
            2,
            Padding2d::from_torch_pad(0, 1, 0, 1),
            true,
        ),
        case(&[1, 32, 3, 5], 16, 1, 1, sym(0), true),
        case(&[1, 32, 3, 5], 16, 3, 1, sym(1), true),
        // Winograd tiles under split bf16: an odd channel count (a half-empty pair), channels
        // past one 32-channel tile, uneven padding, a batch.
        case(&[1, 17, 18, 20], 16, 3, 1, sym(1), true),
        case(
            &[2, 40, 17, 33],
            32,
            3,
            1,
            Padding2d {
                top: 0,
                bottom: 2,
                left: 1,
                right: 0,
            },
            false,
        ),
    ];
    for (i, c) in cases.iter().enumerate() {
        let x = random(&c.x, 100 + i as u64);
        check_bf16(c, &x, 100 + i as u64, true);
    }
}

#[test]
fn bf16_shapes_amx_does_not_take_run_in_f32() {
    let cases = [
        // Output channels not in 16s: 3 (conv_out), 8 and 40.
        (vec![1, 32, 16, 16], 3, 3, sym(1)),
        (vec![1, 32, 8, 8], 8, 1, sym(0)),
        (vec![2, 16, 4, 16], 40, 3, sym(1)),
        // A Winograd shape with output channels not in 16s: f32 Winograd under either bf16.
        (vec![1, 16, 20, 20], 40, 3, sym(1)),
    ];
    for (i, (x, co, k, pad)) in cases.into_iter().enumerate() {
        let c = Case {
            x,
            co,
            k,
            stride: 1,
            pad,
            bias: true,
        };
        let xt = random(&c.x, 200 + i as u64);
        check_bf16(&c, &xt, 200 + i as u64, false);
    }
}

#[test]
fn bf16_non_contiguous_input() {
    // A transposed view: the AMX path copies it contiguous first.
    let x = random(&[1, 32, 32, 16], 300).transpose(2, 3).unwrap();
    let c = Case {
        x: vec![1, 32, 16, 32],
        co: 32,
        k: 3,
        stride: 1,
        pad: sym(1),
        bias: true,
    };
    check_bf16(&c, &x, 300, true);
}
