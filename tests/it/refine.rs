//! `pipeline::refine` (3D post-processing) against scipy: connected components against
//! `scipy.ndimage.label` with the full 3×3×3 structure (26-connectivity), and per-slice hole
//! filling against `scipy.ndimage.binary_fill_holes`, on random volumes.

use ndarray::{Array3, Axis, ShapeBuilder};
use sdseg_volume::pipeline::refine::{Components, LabelSteps, RefinePlan};
use std::path::Path;

use crate::support::python::{require_python, run_python};
use crate::support::tempdir;

/// xorshift64: reproducible volumes without a dependency.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) % n
    }
}

/// Random labels 0..=`values` with roughly `percent` % foreground, C order.
fn random_labels(
    rng: &mut Rng,
    shape: (usize, usize, usize),
    percent: u64,
    values: u64,
) -> Array3<u16> {
    Array3::from_shape_fn(shape, |_| {
        if rng.below(100) < percent {
            1 + rng.below(values) as u16
        } else {
            0
        }
    })
}

fn write_u16(path: &Path, a: &Array3<u16>) {
    let bytes: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn read_i32(path: &Path, shape: (usize, usize, usize)) -> Array3<i32> {
    let v: Vec<i32> = std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Array3::from_shape_vec(shape, v).unwrap()
}

const SHAPES: [(usize, usize, usize); 4] = [(17, 23, 9), (40, 31, 12), (1, 50, 7), (64, 64, 3)];

#[test]
fn components_match_scipy_label() {
    let Some(py) = require_python(&["scipy"]) else {
        return;
    };
    let dir = tempdir();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut cases = Vec::new();
    for (n, &shape) in SHAPES.iter().enumerate() {
        for (m, percent) in [15u64, 35, 55].into_iter().enumerate() {
            let a = random_labels(&mut rng, shape, percent, 1);
            write_u16(&dir.path().join(format!("in{n}_{m}.raw")), &a);
            cases.push((n, m, shape, a));
        }
    }
    let mut script = String::from("import numpy as np\nfrom scipy.ndimage import label\n");
    for (n, m, (x, y, z), _) in &cases {
        script.push_str(&format!(
            "a = np.fromfile('in{n}_{m}.raw', '<u2').reshape({x}, {y}, {z})\n\
             lab, _ = label(a > 0, structure=np.ones((3, 3, 3)))\n\
             lab.astype('<i4').tofile('out{n}_{m}.raw')\n"
        ));
    }
    run_python(&py, &script, dir.path());
    for (n, m, shape, a) in &cases {
        let want = read_i32(&dir.path().join(format!("out{n}_{m}.raw")), *shape);
        // The same numbering as scipy (C-order scan of first voxels), in either memory order.
        let ours = Components::new(a.view())
            .unwrap()
            .to_array()
            .mapv(|v| v as i32);
        assert_eq!(ours, want, "case {n}/{m} (C order)");
        let mut f = Array3::<u16>::zeros(shape.f());
        f.assign(a);
        let ours = Components::new(f.view())
            .unwrap()
            .to_array()
            .mapv(|v| v as i32);
        assert_eq!(ours, want, "case {n}/{m} (Fortran order)");
    }
}

#[test]
fn hole_filling_matches_scipy_binary_fill_holes_per_slice() {
    let Some(py) = require_python(&["scipy"]) else {
        return;
    };
    let dir = tempdir();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut cases = Vec::new();
    for (n, &shape) in SHAPES.iter().enumerate() {
        // Dense foreground has many holes; two labels exercise "background only".
        for (m, (percent, values)) in [(60u64, 1u64), (75, 1), (80, 2)].into_iter().enumerate() {
            let a = random_labels(&mut rng, shape, percent, values);
            write_u16(&dir.path().join(format!("in{n}_{m}.raw")), &a);
            cases.push((n, m, shape, a));
        }
    }
    let mut script =
        String::from("import numpy as np\nfrom scipy.ndimage import binary_fill_holes\n");
    for (n, m, (x, y, z), _) in &cases {
        script.push_str(&format!(
            "a = np.fromfile('in{n}_{m}.raw', '<u2').reshape({x}, {y}, {z}).astype(np.int32)\n\
             for v in (1, 2):\n\
             \x20   for k in range({z}):\n\
             \x20       s = a[:, :, k]\n\
             \x20       s[binary_fill_holes(s == v) & (s == 0)] = v\n\
             a.astype('<i4').tofile('out{n}_{m}.raw')\n"
        ));
    }
    run_python(&py, &script, dir.path());
    let plan = RefinePlan {
        other_labels: Some(LabelSteps {
            fill_holes: true,
            ..LabelSteps::default()
        }),
        ..RefinePlan::none()
    };
    let mut filled = 0;
    for (n, m, shape, a) in &cases {
        let want = read_i32(&dir.path().join(format!("out{n}_{m}.raw")), *shape);
        let mut ours = a.clone();
        let s = plan.apply(&mut ours, 1.0).unwrap();
        filled += s.labels.iter().map(|e| e.voxels_filled).sum::<u64>();
        for k in 0..shape.2 {
            assert_eq!(
                ours.index_axis(Axis(2), k).mapv(i32::from),
                want.index_axis(Axis(2), k),
                "case {n}/{m}, slice {k}"
            );
        }
    }
    assert!(
        filled > 50,
        "the random volumes have holes to fill ({filled})"
    );
}

/// `run --postprocess default` on a volume whose thresholded mask has a big body, a spurious
/// island and a hole: the island goes, the hole is filled, the statistics count what is
/// written, the report names the plan; without the flag nothing changes; a bad plan exits 2.
#[test]
fn run_postprocess_keeps_the_largest_component_and_fills_holes() {
    use crate::support::run_util::*;
    let d = tempdir();
    // btcv window [-125, 275] HU: foreground (> 75 HU after normalising) where HU is high.
    let mut hu = Array3::<i16>::from_elem((40, 40, 6), -1000);
    for k in 0..6 {
        for i in 5..30 {
            for j in 5..30 {
                hu[[i, j, k]] = 250;
            }
        }
        for i in 15..18 {
            for j in 15..18 {
                hu[[i, j, k]] = -1000; // a hole in every slice
            }
        }
        hu[[36, 36, k]] = 250; // an island
    }
    let input = d.path().join("ct.nii.gz");
    write_nifti(&input, &hu, diag([1.0, 1.0, 2.0]));
    let base = [
        "run",
        "--quiet",
        "--test-segmenter",
        "threshold",
        "--pipeline",
        "btcv",
        input.to_str().unwrap(),
    ];
    let o = run(d.path(), &[&base[..], &["--out", "plain.nii.gz"]].concat());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run(
        d.path(),
        &[
            &base[..],
            &[
                "--out",
                "post.nii.gz",
                "--postprocess",
                "default",
                "--report",
                "r.json",
            ],
        ]
        .concat(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let read = |name: &str| {
        sdseg_volume::io::read_volume(&d.path().join(name), &Default::default())
            .unwrap()
            .data()
            .clone()
    };
    let (plain, post) = (read("plain.nii.gz"), read("post.nii.gz"));
    assert_eq!(
        plain[[36, 36, 2]],
        1.0,
        "the threshold model sees the island"
    );
    assert_eq!(plain[[16, 16, 2]], 0.0, "and the hole");
    assert_eq!(post[[36, 36, 2]], 0.0, "the island is gone");
    assert_eq!(post[[16, 16, 2]], 1.0, "the hole is filled");
    let fg = post.iter().filter(|&&v| v > 0.0).count() as u64;
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(
        r["cases"][0]["labels"][0]["voxels"].as_u64(),
        Some(fg),
        "{r}"
    );
    assert!(
        r["settings"]["postprocess"].is_string(),
        "{}",
        r["settings"]
    );
    std::fs::write(d.path().join("bad.json"), "{ not json").unwrap();
    let o = run(
        d.path(),
        &[
            &base[..],
            &["--out", "x.nii.gz", "--postprocess", "bad.json"],
        ]
        .concat(),
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("bad.json"), "{}", stderr(&o));
}
