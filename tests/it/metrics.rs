//! Hand-computable metric cases: cubes with known overlap and known surface distances,
//! parallel planes at anisotropic spacing, and every empty-label case under every protocol.

use ndarray::{s, Array3};
use sdseg_volume::metrics::protocol::resampled_spacing;
use sdseg_volume::metrics::{
    evaluate, evaluate_masks, Hd95Mode, LabelMetrics, MetricOptions, MetricsError, Protocol,
    SurfaceDistances,
};
use sdseg_volume::pipeline::resize_labels_nearest;

fn opts(protocol: Protocol, hd95: Hd95Mode, tol: f64) -> MetricOptions {
    MetricOptions {
        protocol,
        hd95,
        nsd_tolerance_mm: tol,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

#[test]
fn shifted_cubes_have_known_overlap() {
    // 4×4×4 cubes, the prediction shifted by 2 voxels along axis 0: TP = 2·4·4.
    let mut gt = Array3::from_elem((12, 8, 8), false);
    let mut pred = gt.clone();
    gt.slice_mut(s![2..6, 2..6, 2..6]).fill(true);
    pred.slice_mut(s![4..8, 2..6, 2..6]).fill(true);
    let m = evaluate_masks(pred.view(), gt.view(), [1.0; 3], &MetricOptions::default()).unwrap();
    assert_eq!((m.counts.tp, m.counts.fp, m.counts.fn_), (32, 32, 32));
    assert_eq!((m.counts.n_pred(), m.counts.n_gt()), (64, 64));
    assert_eq!(m.dice, 0.5);
    assert!(close(m.iou, 1.0 / 3.0));
}

/// Concentric cubes, the prediction one voxel smaller on every side (isotropic 1 mm):
/// every prediction boundary voxel is 1 mm from the gt shell; gt shell voxels are 1 mm
/// (384 face voxels), √2 mm (96 edge voxels) or √3 mm (8 corners) from the prediction shell.
#[test]
fn concentric_cubes_have_known_surface_distances() {
    let mut gt = Array3::from_elem((20, 20, 20), false);
    let mut pred = gt.clone();
    gt.slice_mut(s![5..15, 5..15, 5..15]).fill(true);
    pred.slice_mut(s![6..14, 6..14, 6..14]).fill(true);

    let sd = SurfaceDistances::compute(pred.view(), gt.view(), [1.0; 3]);
    assert_eq!(sd.pred_to_gt.len(), 512 - 216);
    assert!(sd.pred_to_gt.iter().all(|&d| d == 1.0));
    assert_eq!(sd.gt_to_pred.len(), 1000 - 512);
    let count = |v: f64| sd.gt_to_pred.iter().filter(|&&d| close(d, v)).count();
    assert_eq!(
        (count(1.0), count(2f64.sqrt()), count(3f64.sqrt())),
        (384, 96, 8)
    );

    let sym = evaluate_masks(
        pred.view(),
        gt.view(),
        [1.0; 3],
        &opts(Protocol::Nnunet, Hd95Mode::Symmetric, 1.0),
    )
    .unwrap();
    // gt→pred: 488 values, numpy index 0.95·487 = 462.65 falls among the √2 values.
    assert!(close(sym.hd95_mm, 2f64.sqrt()));
    let assd = (296.0 + 384.0 + 96.0 * 2f64.sqrt() + 8.0 * 3f64.sqrt()) / 784.0;
    assert!(close(sym.assd_mm, assd));
    assert!(close(sym.nsd, 680.0 / 784.0));
    assert!(close(sym.dice, 1024.0 / 1512.0));
    assert!(close(sym.iou, 512.0 / 1000.0));

    let pooled = evaluate_masks(
        pred.view(),
        gt.view(),
        [1.0; 3],
        &opts(Protocol::Nnunet, Hd95Mode::Pooled, 1.5),
    )
    .unwrap();
    // 784 pooled values (680 ones, 96 √2, 8 √3): index 743.85 is among the √2 values.
    assert!(close(pooled.hd95_mm, 2f64.sqrt()));
    assert!(close(pooled.nsd, 776.0 / 784.0));
}

/// Two one-voxel-thick planes k voxels apart along an axis with spacing 2.5 mm: every
/// surface distance is exactly k·2.5, whatever the other spacings.
#[test]
fn parallel_planes_at_anisotropic_spacing() {
    for axis in 0..3 {
        for k in [1usize, 3] {
            let mut spacing = [0.7, 1.3, 0.9];
            spacing[axis] = 2.5;
            let mut gt = Array3::from_elem((10, 11, 12), false);
            let mut pred = gt.clone();
            gt.index_axis_mut(ndarray::Axis(axis), 2).fill(true);
            pred.index_axis_mut(ndarray::Axis(axis), 2 + k).fill(true);
            for mode in [Hd95Mode::Symmetric, Hd95Mode::Pooled] {
                let want = k as f64 * 2.5;
                let m = evaluate_masks(
                    pred.view(),
                    gt.view(),
                    spacing,
                    &opts(Protocol::Nnunet, mode, 2.5),
                )
                .unwrap();
                assert_eq!(m.hd95_mm, want, "axis {axis} k {k} {mode}");
                assert_eq!(m.assd_mm, want);
                assert_eq!(m.nsd, if k == 1 { 1.0 } else { 0.0 });
                assert_eq!(m.dice, 0.0);
            }
        }
    }
}

#[test]
fn identical_masks_score_perfectly() {
    let gt = Array3::from_shape_fn((15, 16, 17), |(i, j, k)| {
        let (x, y, z) = (i as f64 - 7.0, j as f64 - 8.0, k as f64 - 8.0);
        x * x + y * y + z * z <= 36.0
    });
    for p in [Protocol::Nnunet, Protocol::Monai] {
        let m = evaluate_masks(
            gt.view(),
            gt.view(),
            [0.8, 0.8, 2.5],
            &opts(p, Hd95Mode::Symmetric, 0.0),
        )
        .unwrap();
        assert_eq!(
            (m.dice, m.iou, m.hd95_mm, m.assd_mm, m.nsd),
            (1.0, 1.0, 0.0, 0.0, 1.0)
        );
    }
    // The official code's 1e-10 keeps Dice a hair below 1.
    let m = evaluate_masks(
        gt.view(),
        gt.view(),
        [1.0; 3],
        &opts(Protocol::Sdseg, Hd95Mode::Symmetric, 1.0),
    )
    .unwrap();
    let n = m.counts.tp as f64;
    assert_eq!(m.dice, 2.0 * n / (2.0 * n + 1e-10));
    assert_eq!(m.iou, n / (n + 1e-10));
}

fn one(pred_empty: bool, gt_empty: bool, protocol: Protocol) -> LabelMetrics {
    let mut gt = Array3::from_elem((6, 6, 6), false);
    let mut pred = gt.clone();
    if !gt_empty {
        gt.slice_mut(s![1..4, 1..4, 1..4]).fill(true);
    }
    if !pred_empty {
        pred.slice_mut(s![2..5, 2..5, 2..5]).fill(true);
    }
    evaluate_masks(
        pred.view(),
        gt.view(),
        [1.0; 3],
        &opts(protocol, Hd95Mode::Symmetric, 1.0),
    )
    .unwrap()
}

/// (dice, iou, hd95, assd, nsd) with None = NaN.
type Row = (
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

fn row(m: &LabelMetrics) -> Row {
    let o = |v: f64| (!v.is_nan()).then_some(v);
    (o(m.dice), o(m.iou), o(m.hd95_mm), o(m.assd_mm), o(m.nsd))
}

#[test]
fn every_empty_case_under_every_protocol() {
    let inf = Some(f64::INFINITY);
    let cases: [(Protocol, bool, bool, Row); 9] = [
        // both empty
        (
            Protocol::Sdseg,
            true,
            true,
            (Some(0.0), Some(0.0), None, None, None),
        ),
        (Protocol::Nnunet, true, true, (None, None, None, None, None)),
        (Protocol::Monai, true, true, (None, None, None, None, None)),
        // false positive on an empty ground truth
        (
            Protocol::Sdseg,
            false,
            true,
            (Some(1.0), Some(0.0), None, None, Some(0.0)),
        ),
        (
            Protocol::Nnunet,
            false,
            true,
            (Some(0.0), Some(0.0), None, None, Some(0.0)),
        ),
        (
            Protocol::Monai,
            false,
            true,
            (None, None, inf, inf, Some(0.0)),
        ),
        // missed structure
        (
            Protocol::Sdseg,
            true,
            false,
            (Some(0.0), Some(0.0), None, None, Some(0.0)),
        ),
        (
            Protocol::Nnunet,
            true,
            false,
            (Some(0.0), Some(0.0), None, None, Some(0.0)),
        ),
        (
            Protocol::Monai,
            true,
            false,
            (Some(0.0), Some(0.0), inf, inf, Some(0.0)),
        ),
    ];
    for (p, pe, ge, want) in cases {
        let m = one(pe, ge, p);
        assert_eq!(row(&m), want, "{p}: pred empty {pe}, gt empty {ge}");
        assert_eq!(m.counts.n_pred() == 0, pe);
        assert_eq!(m.counts.n_gt() == 0, ge);
    }
    // Both non-empty: all protocols agree up to sdseg's 1e-10 (27 vs 27 voxels, 8 shared).
    for p in [Protocol::Sdseg, Protocol::Nnunet, Protocol::Monai] {
        let m = one(false, false, p);
        assert!((m.dice - 16.0 / 54.0).abs() < 1e-9, "{p}");
        assert!((m.iou - 8.0 / 46.0).abs() < 1e-9, "{p}");
        assert!(m.hd95_mm.is_finite() && m.assd_mm.is_finite() && m.nsd > 0.0);
    }
    // An absent label scores like "both empty" without touching the voxels.
    for p in [Protocol::Sdseg, Protocol::Nnunet, Protocol::Monai] {
        assert_eq!(row(&LabelMetrics::absent(3, p)), row(&one(true, true, p)));
    }
}

#[test]
fn multi_label_volumes_score_each_label() {
    let mut gt = Array3::<u16>::zeros((10, 10, 10));
    let mut pred = gt.clone();
    gt.slice_mut(s![0..4, .., ..]).fill(1);
    gt.slice_mut(s![5..9, .., ..]).fill(2);
    pred.slice_mut(s![0..4, .., ..]).fill(1);
    pred.slice_mut(s![6..9, .., ..]).fill(2);
    pred.slice_mut(s![9.., .., ..]).fill(7); // not listed: background for every listed label
    let m = evaluate(
        pred.view(),
        gt.view(),
        [1.0; 3],
        &[1, 2, 5],
        &MetricOptions::default(),
    )
    .unwrap();
    assert_eq!(m.iter().map(|x| x.label).collect::<Vec<_>>(), vec![1, 2, 5]);
    assert_eq!(m[0].dice, 1.0);
    assert_eq!(
        (m[1].counts.tp, m[1].counts.fp, m[1].counts.fn_),
        (300, 0, 100)
    );
    assert!(close(m[1].dice, 600.0 / 700.0));
    assert!(m[2].dice.is_nan()); // label 5 absent from both (nnunet)
}

/// Cropping to the label's bounding box must not change anything: compare with surface
/// distances on the full arrays, for blobs touching the array border too.
#[test]
fn crop_to_bounding_box_is_exact() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for _ in 0..5 {
        let dim = (
            rng.random_range(8..20),
            rng.random_range(8..20),
            rng.random_range(5..15),
        );
        let blob = |rng: &mut rand_chacha::ChaCha8Rng| {
            let c = [
                rng.random_range(0.0..dim.0 as f64),
                rng.random_range(0.0..dim.1 as f64),
                rng.random_range(0.0..dim.2 as f64),
            ];
            let r: f64 = rng.random_range(2.0..6.0);
            Array3::from_shape_fn(dim, |(i, j, k)| {
                let d = [i as f64 - c[0], j as f64 - c[1], k as f64 - c[2]];
                d.iter().map(|x| x * x).sum::<f64>() <= r * r
            })
        };
        let (p, g) = (blob(&mut rng), blob(&mut rng));
        if !p.iter().any(|&b| b) || !g.iter().any(|&b| b) {
            continue;
        }
        let spacing = [0.6, 1.1, 2.7];
        let full = SurfaceDistances::compute(p.view(), g.view(), spacing);
        let o = opts(Protocol::Nnunet, Hd95Mode::Symmetric, 2.0);
        let m = evaluate_masks(p.view(), g.view(), spacing, &o).unwrap();
        assert_eq!(m.hd95_mm.to_bits(), full.hd95_symmetric().to_bits());
        assert_eq!(m.nsd, full.nsd(2.0));
        assert!(close(m.assd_mm, full.assd()));
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let a = Array3::<u16>::zeros((3, 3, 3));
    let b = Array3::<u16>::zeros((3, 3, 4));
    let o = MetricOptions::default();
    assert!(matches!(
        evaluate(a.view(), b.view(), [1.0; 3], &[1], &o),
        Err(MetricsError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        evaluate(a.view(), a.view(), [1.0, 0.0, 1.0], &[1], &o),
        Err(MetricsError::BadSpacing(_))
    ));
    let o = opts(Protocol::Nnunet, Hd95Mode::Symmetric, f64::NAN);
    assert!(matches!(
        evaluate(a.view(), a.view(), [1.0; 3], &[1], &o),
        Err(MetricsError::BadTolerance(_))
    ));
}

#[test]
fn sdseg_grid_keeps_the_field_of_view() {
    let a = Array3::<u16>::from_shape_fn((512, 512, 3), |(i, j, _)| u16::from(i >= 256 && j < 128));
    let r = resize_labels_nearest(&a, [256, 256]);
    assert_eq!(r.dim(), (256, 256, 3));
    // Half the rows, a quarter of the columns survive, as in the input.
    assert_eq!(r.iter().filter(|&&v| v == 1).count(), 128 * 64 * 3);
    assert_eq!(
        resampled_spacing([0.8, 0.7, 2.5], [512, 512, 3], [256, 256]),
        [1.6, 1.4, 2.5]
    );
}
