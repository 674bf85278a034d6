//! Pipeline files, preprocessing and postprocessing: hand-computed numbers, scipy parity for
//! the in-plane zoom and for the whole official BTCV/STS-3D test preprocessing, and the
//! prepare → fake model → postprocess round trip on native and reoriented frames.

use ndarray::{Array2, Array3, Axis};
use sdseg_volume::error::{exit_code_for, ExitCode};
use sdseg_volume::pipeline::resize::{zoom_linear, zoom_linear_f64, zoom_nearest, Edge};
use sdseg_volume::pipeline::{
    binary_slice_to_native, remap_labels, resize_labels_nearest, to_model_input, LabelSlices,
    Normalise, Pipeline, PipelineError, Reassembler, ResizeBack, SliceFrame, SliceSource,
};
use sdseg_volume::{Affine, Provenance, Volume};
use std::path::Path;

use crate::support::python::{require_python, run_python};
use crate::support::{fixture, tempdir, TINY_BINARY};

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// Deterministic pseudo-random numbers (xorshift), so no extra dev-dependency is needed.
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn volume(data: Array3<f32>, affine: Affine) -> Volume {
    Volume::new(data, affine, Provenance::synthetic()).unwrap()
}

/// A pipeline identical to `base` but with other `[slicing]` values.
fn with_slicing(base: &str, frame: &str, size: usize) -> Pipeline {
    let mut p = Pipeline::load(base).unwrap();
    p.slicing.frame = if frame == "native" {
        SliceFrame::Native
    } else {
        SliceFrame::Oriented(frame.parse().unwrap())
    };
    p.slicing.size = size;
    p
}

fn write_f64(path: &Path, values: impl Iterator<Item = f64>) {
    let bytes: Vec<u8> = values.flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn read_f64(path: &Path) -> Vec<f64> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// pipeline files
// ---------------------------------------------------------------------------------------------

#[test]
fn builtin_btcv_has_the_official_values() {
    let p = Pipeline::load("btcv").unwrap();
    assert_eq!(p.name, "btcv");
    assert_eq!((p.window.hu_min, p.window.hu_max), (-125.0, 275.0));
    assert_eq!(p.normalise, Normalise::MinMax { eps: 0.0 });
    assert_eq!(p.slicing.frame, SliceFrame::Native);
    assert_eq!(p.slicing.size, 256);
    assert_eq!(p.model.preset, "sdseg-binary");
    assert_eq!(p.num_classes(), 2);
    assert_eq!(p.labels.foreground, vec![1]);
    assert_eq!(p.labels.source.len(), 13);
    // transfer_to_9 then > 0: the 8 TransUNet organs are foreground.
    assert_eq!(
        p.labels.remap.lut(13),
        vec![0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 0]
    );
    let test: Vec<&str> = p.splits.test.iter().map(String::as_str).collect();
    assert_eq!(
        test,
        [
            "0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036",
            "0038"
        ]
    );
    assert_eq!(p.splits.train.len(), 18);
    // Test + train = the 30 labelled BTCV volumes 0001-0010 and 0021-0040.
    let mut all: Vec<u32> = p
        .splits
        .test
        .iter()
        .chain(&p.splits.train)
        .map(|s| s.parse().unwrap())
        .collect();
    all.sort_unstable();
    let want: Vec<u32> = (1..=10).chain(21..=40).collect();
    assert_eq!(all, want);
    assert!(!p.train.hflip);
    assert!(p.summary().contains("[-125, 275]"));
}

#[test]
fn btcv_variants_training_normalisation_and_multiclass() {
    let p = Pipeline::load("btcv").unwrap();
    let names: Vec<&str> = p.variants().map(|(n, _)| n).collect();
    assert_eq!(names, ["cls14", "cls9", "official-train"]);

    let t = p.with_variant("official-train").unwrap();
    assert_eq!(t.variant.as_deref(), Some("official-train"));
    assert_eq!((t.window.hu_min, t.window.hu_max), (-175.0, 250.0));
    assert_eq!(
        t.normalise,
        Normalise::Fixed {
            offset: -125.0,
            scale: 400.0
        }
    );
    assert_eq!(t.labels, p.labels, "normalisation variant keeps the labels");

    let c9 = p.with_variant("cls9").unwrap();
    assert_eq!(
        (c9.model.preset.as_str(), c9.num_classes()),
        ("sdseg-cls9", 9)
    );
    assert_eq!(
        c9.labels.remap.lut(13),
        vec![0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0]
    );
    assert_eq!(c9.labels.class_name(5), Some("liver"));
    assert_eq!(c9.labels.foreground, (1..9).collect::<Vec<u16>>());
    assert_eq!(c9.window, p.window, "task variant keeps the test window");

    let c14 = p.with_variant("cls14").unwrap();
    assert_eq!(c14.num_classes(), 14);
    assert!(c14.labels.remap.is_identity());

    let e = p.with_variant("cls3").unwrap_err();
    assert!(matches!(e, PipelineError::UnknownVariant { .. }));
    assert!(e.to_string().contains("official-train"), "{e}");
}

#[test]
fn builtin_sts3d_has_the_official_values() {
    let p = Pipeline::load("sts3d").unwrap();
    assert_eq!((p.window.hu_min, p.window.hu_max), (-100.0, 1100.0));
    assert_eq!(p.normalise, Normalise::MinMax { eps: 1e-8 });
    assert_eq!(p.splits.test, ["Teeth_0010", "Teeth_0011", "Teeth_0012"]);
    let train: Vec<String> = (1..=9).map(|i| format!("Teeth_{i:04}")).collect();
    assert_eq!(p.splits.train, train);
    assert!(p.train.hflip);
    assert!(p.train.skip_constant_slices);
    assert_eq!(p.train.min_object_size, Some(64));
    assert!(p.labels.remap.is_identity());
    assert_eq!(p.num_classes(), 2);
}

#[test]
fn pipeline_files_load_by_path_and_resolve_weights() {
    let dir = tempdir();
    let text = include_str!("../../pipelines/sts3d.toml").replace(
        "num_classes = 2",
        "num_classes = 2\nweights = \"models/teeth.safetensors\"",
    );
    let path = dir.path().join("mine.toml");
    std::fs::write(&path, text).unwrap();
    let p = Pipeline::load(path.to_str().unwrap()).unwrap();
    assert_eq!(
        p.default_weights(),
        Some(dir.path().join("models/teeth.safetensors").as_path())
    );
    // Built-in default weights (none today) would resolve against the source pipelines/.
    assert!(Pipeline::load("btcv").unwrap().default_weights().is_none());

    let e = Pipeline::load("no-such-pipeline").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("btcv") && msg.contains("sts3d"), "{msg}");
    let e = Pipeline::load(dir.path().join("missing.toml").to_str().unwrap()).unwrap_err();
    assert!(matches!(e, PipelineError::Read { .. }), "{e}");
    assert!(e.to_string().contains("missing.toml"));
}

/// Parse the BTCV file with one edit and return the error message.
fn btcv_error(from: &str, to: &str) -> (PipelineError, String) {
    let dir = tempdir();
    let text = include_str!("../../pipelines/btcv.toml");
    assert!(text.contains(from), "test edit '{from}' not found");
    let path = dir.path().join("edited.toml");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    let e = Pipeline::from_file(&path).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("edited.toml"),
        "error must name the file: {msg}"
    );
    // Every pipeline error is bad input: exit code 2.
    let code = exit_code_for(&sdseg_volume::error::classified(PipelineError::Parse {
        origin: sdseg_volume::pipeline::Origin::Inline,
        message: String::new(),
    }));
    assert_eq!(code, ExitCode::BadInput);
    (e, msg)
}

#[test]
fn pipeline_errors_name_the_field() {
    let (e, m) = btcv_error("hu_min = -125.0", "hu_mni = -125.0");
    assert!(matches!(e, PipelineError::Parse { .. }));
    assert!(m.contains("hu_mni"), "{m}");
    let (_, m) = btcv_error("hu_min = -125.0", "");
    assert!(m.contains("hu_min"), "{m}");
    let (_, m) = btcv_error("hu_min = -125.0", "hu_min = \"low\"");
    assert!(m.contains("line"), "{m}");
    let (_, m) = btcv_error("mode = \"minmax\"", "mode = \"zscore\"");
    assert!(m.contains("zscore"), "{m}");
    let (_, m) = btcv_error("eps = 0.0", "eps = 0.0\nscale = 2.0");
    assert!(m.contains("scale"), "{m}");
    let (e, m) = btcv_error("hu_max = 275.0", "hu_max = -200.0");
    assert!(matches!(e, PipelineError::Invalid { .. }));
    assert!(m.contains("window.hu_min"), "{m}");
    let (_, m) = btcv_error("frame = \"native\"", "frame = \"RAX\"");
    assert!(m.contains("slicing.frame"), "{m}");
    let (_, m) = btcv_error("size = 256", "size = 250");
    assert!(m.contains("slicing.size"), "{m}");
    let (_, m) = btcv_error("1 = \"abdominal organs (union of 8)\"", "");
    assert!(m.contains("labels.classes"), "{m}");
    let (_, m) = btcv_error("binarise = true", "binarise = false");
    assert!(m.contains("labels.remap") && m.contains("maps to"), "{m}");
    let (_, m) = btcv_error("num_classes = 2\n", "num_classes = 3\n");
    assert!(m.contains("model.num_classes"), "{m}");
    let (_, m) = btcv_error("\"0005\", ", "\"0004\", ");
    assert!(m.contains("splits.train") && m.contains("0004"), "{m}");
    let (_, m) = btcv_error("scale = 400.0", "scale = 0.0");
    assert!(m.contains("variants.official-train.normalise.scale"), "{m}");
    let (_, m) = btcv_error("[train]", "[training]");
    assert!(m.contains("training"), "{m}");
}

// ---------------------------------------------------------------------------------------------
// preprocessing numbers by hand
// ---------------------------------------------------------------------------------------------

#[test]
fn window_and_minmax_by_hand() {
    // 8×8×2 volume (no resize at size 8). BTCV: clip to [-125, 275], min-max over the volume.
    let mut d = Array3::<f32>::from_elem((8, 8, 2), 75.0);
    d[[0, 0, 0]] = -1000.0; // clipped to -125 → -1
    d[[0, 1, 0]] = 175.0; // (175+125)/400*2-1 = 0.5
    d[[7, 7, 1]] = 3000.0; // clipped to 275 → 1
    d[[3, 4, 1]] = -25.0; // (100/400)*2-1 = -0.5
    let v = volume(d, Affine::IDENTITY);
    let p = with_slicing("btcv", "native", 8);
    let src = SliceSource::new(&v, &p);
    assert_eq!(src.n_slices(), 2);
    let s0 = src.prepare_slice(0);
    let s1 = src.prepare_slice(1);
    assert_eq!(s0[[0, 0]], -1.0);
    assert_eq!(s0[[0, 1]], 0.5);
    assert_eq!(s0[[5, 5]], 0.0);
    assert_eq!(s1[[7, 7]], 1.0);
    assert_eq!(s1[[3, 4]], -0.5);

    // A volume inside the window: min-max uses the volume's own range, not the window's.
    let mut d = Array3::<f32>::from_elem((8, 8, 1), 0.0);
    d[[1, 1, 0]] = 100.0;
    d[[2, 2, 0]] = 50.0;
    let v = volume(d, Affine::IDENTITY);
    let s = SliceSource::new(&v, &p).prepare_slice(0);
    assert_eq!((s[[0, 0]], s[[1, 1]], s[[2, 2]]), (-1.0, 1.0, 0.0));

    // STS-3D: (x - min) / (max - min + 1e-8) * 2 - 1 with window [-100, 1100].
    let p = with_slicing("sts3d", "native", 8);
    let mut d = Array3::<f32>::from_elem((8, 8, 1), -500.0);
    d[[0, 0, 0]] = 2000.0;
    d[[1, 0, 0]] = 500.0;
    let v = volume(d, Affine::IDENTITY);
    let src = SliceSource::new(&v, &p);
    let s = src.prepare_slice(0);
    let want = |x: f64| ((((x + 100.0) / (1200.0 + 1e-8)) * 2.0) - 1.0) as f32;
    assert_eq!(s[[0, 0]], want(1100.0));
    assert_eq!(s[[1, 0]], want(500.0));
    assert_eq!(s[[5, 5]], -1.0);

    // The official BTCV training map: [-175, 250], ((x + 125) / 400)*2 - 1, not clamped.
    let t = Pipeline::load("btcv")
        .unwrap()
        .with_variant("official-train")
        .unwrap();
    let mut t = t;
    t.slicing.size = 8;
    let mut d = Array3::<f32>::from_elem((8, 8, 1), -1000.0);
    d[[0, 0, 0]] = 1000.0;
    d[[0, 1, 0]] = 75.0;
    let v = volume(d, Affine::IDENTITY);
    let s = SliceSource::new(&v, &t).prepare_slice(0);
    assert_eq!((s[[1, 1]], s[[0, 0]], s[[0, 1]]), (-1.25, 0.875, 0.0));
}

#[test]
fn model_input_is_nchw_with_replicated_channels() {
    let d = Array3::from_shape_fn((20, 12, 3), |(i, j, k)| (i * 7 + j * 3 + k * 50) as f32);
    let v = volume(d, Affine::IDENTITY);
    let p = with_slicing("btcv", "native", 16);
    let src = SliceSource::new(&v, &p);
    let batch = src.model_input(1..3);
    assert_eq!(batch.len(), 2 * 3 * 16 * 16);
    let plane = 16 * 16;
    for (b, k) in (1..3).enumerate() {
        let s = src.prepare_slice(k);
        assert_eq!(s.dim(), (16, 16));
        let want: Vec<f32> = s.iter().copied().collect();
        for c in 0..3 {
            let off = (b * 3 + c) * plane;
            assert_eq!(&batch[off..off + plane], &want[..], "batch {b} channel {c}");
        }
    }
    let slices = src.prepare_slices(1..3);
    let views: Vec<_> = slices.iter().map(|s| s.view()).collect();
    assert_eq!(to_model_input(&views), batch);
    // H = axis i, W = axis j: a value that grows along i grows down the rows.
    let s = src.prepare_slice(0);
    assert!(s[[15, 0]] > s[[0, 0]] && s[[0, 15]] > s[[0, 0]]);
    assert!(s[[15, 0]] - s[[0, 0]] > s[[0, 15]] - s[[0, 0]]);
}

// ---------------------------------------------------------------------------------------------
// scipy parity
// ---------------------------------------------------------------------------------------------

/// Our zoom against `scipy.ndimage.zoom` called exactly as the official `get_dice_loop` calls
/// it: a float64 array (1, X, Y, Z), zoom (1, out/X, out/Y, 1), order 1 and order 0.
#[test]
fn zoom_matches_scipy() {
    let Some(py) = require_python(&["scipy"]) else {
        return;
    };
    let dir = tempdir();
    // (X, Y) → (out_x, out_y); Z = 2 slices each.
    let cases: &[([usize; 2], [usize; 2])] = &[
        ([512, 512], [256, 256]),
        ([300, 200], [256, 256]),
        ([100, 100], [256, 256]),
        ([256, 256], [256, 256]),
        ([97, 333], [256, 256]),
        ([256, 256], [12, 14]), // scipy writes 0 on the last row/column here
        ([256, 256], [512, 300]),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut max_diff = 0f64;
    for (n, &([x, y], [ox, oy])) in cases.iter().enumerate() {
        let z = 2;
        let img = Array3::from_shape_fn((x, y, z), |_| (rng.next_f64() * 2.0 - 1.0) as f32);
        let lab = Array3::from_shape_fn((x, y, z), |_| (rng.next_f64() * 14.0) as u16);
        write_f64(
            &dir.path().join(format!("img{n}.raw")),
            img.iter().map(|&v| v as f64),
        );
        write_f64(
            &dir.path().join(format!("lab{n}.raw")),
            lab.iter().map(|&v| v as f64),
        );
        let script = format!(
            "import numpy as np\nfrom scipy.ndimage import zoom\n\
             img = np.fromfile('img{n}.raw', '<f8').reshape(1, {x}, {y}, {z})\n\
             lab = np.fromfile('lab{n}.raw', '<f8').reshape(1, {x}, {y}, {z})\n\
             a = zoom(img, (1, {ox}/{x}, {oy}/{y}, 1), order=1)\n\
             b = zoom(lab, (1, {ox}/{x}, {oy}/{y}, 1), order=0)\n\
             assert a.shape == (1, {ox}, {oy}, {z}), a.shape\n\
             a.astype('<f8').tofile('out_img{n}.raw')\n\
             b.astype('<f8').tofile('out_lab{n}.raw')\n"
        );
        run_python(&py, &script, dir.path());
        let want_img = Array3::from_shape_vec(
            (ox, oy, z),
            read_f64(&dir.path().join(format!("out_img{n}.raw"))),
        )
        .unwrap();
        let want_lab = Array3::from_shape_vec(
            (ox, oy, z),
            read_f64(&dir.path().join(format!("out_lab{n}.raw"))),
        )
        .unwrap();
        for k in 0..z {
            let ours = zoom_linear(img.index_axis(Axis(2), k), [ox, oy], Edge::Scipy);
            for (a, b) in ours.iter().zip(want_img.index_axis(Axis(2), k).iter()) {
                max_diff = max_diff.max((*a as f64 - b).abs());
            }
            // In f64 the arithmetic is scipy's, term for term: bit-identical.
            let x64 = img.index_axis(Axis(2), k).mapv(f64::from);
            let ours64 = zoom_linear_f64(x64.view(), [ox, oy], Edge::Scipy);
            assert_eq!(
                ours64,
                want_img.index_axis(Axis(2), k),
                "order 1 in f64, case {x}x{y} -> {ox}x{oy}"
            );
            let ours = zoom_nearest(lab.index_axis(Axis(2), k), [ox, oy], Edge::Scipy);
            let theirs = want_lab.index_axis(Axis(2), k).mapv(|v| v as u16);
            assert_eq!(ours, theirs, "order 0, case {x}x{y} -> {ox}x{oy}");
        }
        let ours = resize_labels_nearest(&lab, [ox, oy]);
        assert_eq!(
            ours,
            want_lab.mapv(|v| v as u16),
            "resize_labels_nearest, case {x}x{y} -> {ox}x{oy}"
        );
        assert!(
            max_diff < 1e-5,
            "order 1, case {x}x{y} -> {ox}x{oy}: max |diff| {max_diff}"
        );
    }
    eprintln!("zoom order 1 vs scipy: max |diff| = {max_diff:e} (f32 output)");
}

/// The whole official test-time preprocessing (clip, per-volume min-max, ×2−1, zoom of the
/// 4D array, `image[:, :, idx]`) in numpy/scipy against `SliceSource`.
#[test]
fn preprocessing_matches_official_numpy() {
    let Some(py) = require_python(&["scipy"]) else {
        return;
    };
    let dir = tempdir();
    let mut rng = Rng(42);
    let (x, y, z) = (300usize, 200usize, 3usize);
    // Integer HU, like nibabel's get_fdata of an int16 BTCV file.
    let d = Array3::from_shape_fn((x, y, z), |_| {
        (rng.next_f64() * 1600.0 - 1000.0).round() as f32
    });
    write_f64(&dir.path().join("vol.raw"), d.iter().map(|&v| v as f64));
    let v = volume(d, Affine::from_spacing([0.8, 0.8, 3.0]));
    for (name, script) in [
        (
            "btcv",
            "image[image < -125] = -125; image[image > 275] = 275\n\
             image = (image - image.min()) / (image.max() - image.min()); image = image*2 - 1\n",
        ),
        (
            "sts3d",
            "image = np.clip(image, -100, 1100)\n\
             image = (image - image.min()) / (image.max() - image.min() + 1e-8); image = image*2 - 1\n",
        ),
    ] {
        let full = format!(
            "import numpy as np\nfrom scipy.ndimage import zoom\n\
             image = np.fromfile('vol.raw', '<f8').reshape({x}, {y}, {z})\n{script}\
             image = zoom(image[None], (1, 256/{x}, 256/{y}, 1), order=1)[0]\n\
             np.stack([image[:, :, i] for i in range({z})]).astype('<f4').tofile('out.raw')\n"
        );
        run_python(&py, &full, dir.path());
        let bytes = std::fs::read(dir.path().join("out.raw")).unwrap();
        let want: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let p = Pipeline::load(name).unwrap();
        let src = SliceSource::new(&v, &p);
        let ours = src.prepare_all();
        assert_eq!(ours.dim(), (z, 256, 256));
        let max = ours
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max <= 1e-6, "{name}: max |ours - official| = {max}");
        eprintln!("{name}: preprocessing vs official numpy/scipy: max |diff| = {max:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// round trip
// ---------------------------------------------------------------------------------------------

/// Block phantom on a grid whose axes are permuted and flipped relative to RAS.
fn phantom(shape: [usize; 3]) -> (Array3<f32>, Array3<u16>) {
    let hu = Array3::from_shape_fn(shape, |(i, j, k)| {
        let organ = (5..20).contains(&i) && (3..11).contains(&j) && k >= 1 && k + 1 < shape[2];
        let ball = {
            let (a, b) = (i as f32 - 28.0, j as f32 - 20.0);
            a * a + b * b < 30.0
        };
        if organ || ball {
            200.0
        } else {
            -600.0
        }
    });
    let truth = hu.mapv(|v| u16::from(v > 0.0));
    (hu, truth)
}

/// The fake model: probability = (normalised image + 1) / 2 (organ 1, background 0).
fn fake_model(slice: &Array2<f32>) -> Array2<f32> {
    slice.mapv(|v| (v + 1.0) / 2.0)
}

fn round_trip(v: &Volume, p: &Pipeline, resize: ResizeBack) -> (Array3<u16>, [usize; 3]) {
    let src = SliceSource::new(v, p);
    let g = src.geometry().clone();
    let mut r = Reassembler::new(&g);
    for k in 0..src.n_slices() {
        let prob = fake_model(&src.prepare_slice(k));
        let lab = binary_slice_to_native(prob.view(), &g, resize).unwrap();
        r.insert(k, lab.view()).unwrap();
    }
    (r.finish().unwrap(), g.frame_shape())
}

#[test]
fn prepare_model_postprocess_round_trip() {
    let shape = [40, 30, 6];
    let (hu, truth) = phantom(shape);
    // Axis 0 → −S (I), axis 1 → +R, axis 2 → −A (P): "IRP", far from RAS and LPS.
    let aff = Affine([
        [0.0, 0.9, 0.0, -10.0],
        [0.0, 0.0, -2.5, 40.0],
        [-0.7, 0.0, 0.0, 90.0],
        [0.0, 0.0, 0.0, 1.0],
    ]);
    let v = volume(hu, aff);
    assert_eq!(v.axcodes().to_string(), "IRP");

    for frame in ["native", "RAS", "LPS"] {
        let p = with_slicing("btcv", frame, 256);
        for resize in [ResizeBack::Bilinear, ResizeBack::Nearest] {
            let (labels, frame_shape) = round_trip(&v, &p, resize);
            assert_eq!(
                labels.shape(),
                &shape,
                "{frame}: label volume has the input shape"
            );
            if frame != "native" {
                assert_ne!(
                    frame_shape, shape,
                    "{frame}: slicing happened in another frame"
                );
            }
            assert_eq!(
                labels, truth,
                "{frame} / {resize}: labels back on the input grid"
            );
        }
    }
    // In RAS the slice axis is S, i.e. input axis 0: 40 slices of 30 × 6.
    let p = with_slicing("btcv", "RAS", 256);
    let g = SliceSource::new(&v, &p).geometry().clone();
    assert_eq!((g.native_size, g.n_slices), ([30, 6], 40));
    assert_eq!(g.input_shape(), shape);
}

#[test]
fn label_slices_remap_and_zoom_like_scipy_order0() {
    let shape = [50, 40, 4];
    let labels = Array3::from_shape_fn(shape, |(i, j, k)| ((i / 5 + j / 7 + k) % 14) as u16);
    let mut aff = Affine::from_spacing([0.7, 0.7, 3.0]);
    aff.0[0][0] = -0.7;
    let v = volume(labels.mapv(f32::from), aff);
    let p = with_slicing("btcv", "RAS", 256);
    let src = SliceSource::new(&v, &p);
    let g = src.geometry();
    let ls = LabelSlices::new(&labels, g, &p.labels.remap).unwrap();
    // Reference: reorient, remap, then zoom each slice with scipy semantics.
    let moved = g.reorientation.apply_array(labels.view());
    let remapped = remap_labels(&moved, &p.labels.remap);
    let zoomed = resize_labels_nearest(&remapped, [256, 256]);
    for k in 0..g.n_slices {
        assert_eq!(ls.slice(k), zoomed.index_axis(Axis(2), k), "slice {k}");
    }
    assert!(ls.slice(0).iter().all(|&v| v <= 1), "binary union");
    let bad = Array3::<u16>::zeros((50, 40, 5));
    assert!(LabelSlices::new(&bad, g, &p.labels.remap).is_err());
}

// ---------------------------------------------------------------------------------------------
// official fixture (made with the official code)
// ---------------------------------------------------------------------------------------------

fn fixture_f32(st: &safetensors::SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), v)
}

/// The fixture's `image` is each `image_hu` slice windowed to [-125, 275] and min-max
/// normalised on its own (a one-slice volume), i.e. the BTCV pipeline on a (256, 256, 1)
/// volume; its `mask` is `mask_prob > 0.5`, i.e. postprocessing at native size 256.
#[test]
fn btcv_preprocessing_and_threshold_match_the_fixture() {
    let dir = fixture(TINY_BINARY);
    let bytes = std::fs::read(dir.join("case.safetensors")).expect("fixture present");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (shape, hu) = fixture_f32(&st, "image_hu");
    let (_, image) = fixture_f32(&st, "image");
    let (_, prob) = fixture_f32(&st, "mask_prob");
    let mask = st.tensor("mask").unwrap();
    let (b, h, w) = (shape[0], shape[1], shape[2]);
    let p = Pipeline::load("btcv").unwrap();
    let plane = h * w;
    let mut max = 0f32;
    for s in 0..b {
        let d = Array3::from_shape_fn((h, w, 1), |(i, j, _)| hu[s * plane + i * w + j]);
        let v = volume(d, Affine::IDENTITY);
        let src = SliceSource::new(&v, &p);
        let ours = src.model_input(0..1);
        let theirs = &image[s * 3 * plane..(s + 1) * 3 * plane];
        for (a, b) in ours.iter().zip(theirs) {
            max = max.max((a - b).abs());
        }
        let pm = Array2::from_shape_vec((h, w), prob[s * plane..(s + 1) * plane].to_vec()).unwrap();
        let lab = binary_slice_to_native(pm.view(), src.geometry(), ResizeBack::Bilinear).unwrap();
        let want: Vec<u16> = mask.data()[s * plane..(s + 1) * plane]
            .iter()
            .map(|&m| u16::from(m))
            .collect();
        assert_eq!(
            lab.iter().copied().collect::<Vec<_>>(),
            want,
            "slice {s} mask"
        );
    }
    assert!(max <= 1e-6, "image vs fixture: max |diff| {max}");
}
