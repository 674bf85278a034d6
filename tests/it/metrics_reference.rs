//! Cross-check against independent implementations: medpy (`dc`, `jc`, `hd95`, `assd` with
//! `voxelspacing`) and, for the symmetric HD95 and NSD, a few lines of numpy on scipy's
//! `distance_transform_edt` (MONAI's recipe). Random blob pairs are generated here, written
//! as raw bytes + a JSON description, and scored by the interpreter of `support::python`.
//!
//! Tolerances: Dice/IoU 1e-6 (absolute) as required; HD95/ASSD/NSD also 1e-6 (absolute, mm):
//! the definitions are identical (same 6-connected boundary, exact EDT, numpy's linear
//! percentile), so the only differences are floating-point summation order (~1e-13).
//!
//! A missing numpy/scipy/medpy fails the test unless `SDSEG_ALLOW_MISSING_TOOLS=1`.

use ndarray::Array3;
use rand::{Rng, SeedableRng};
use sdseg_volume::metrics::{evaluate_masks, Hd95Mode, MetricOptions, Protocol};
use std::process::Command;

use crate::support::python::require_python;
use crate::support::tempdir;

const SCRIPT: &str = r#"
import json, sys
import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure
from medpy.metric.binary import dc, jc, hd95, assd

def border(m):
    return m ^ binary_erosion(m, structure=generate_binary_structure(3, 1), iterations=1)

root = sys.argv[1]
cases = json.load(open(root + "/cases.json"))
out = []
for c in cases:
    shape, sp, tol = tuple(c["shape"]), c["spacing"], c["tolerance"]
    p = np.fromfile(root + "/" + c["name"] + "_pred.raw", dtype=np.uint8).reshape(shape).astype(bool)
    g = np.fromfile(root + "/" + c["name"] + "_gt.raw", dtype=np.uint8).reshape(shape).astype(bool)
    bp, bg = border(p), border(g)
    d_pg = distance_transform_edt(~bg, sampling=sp)[bp]
    d_gp = distance_transform_edt(~bp, sampling=sp)[bg]
    out.append({
        "name": c["name"],
        "dice": dc(p, g),
        "iou": jc(p, g),
        "hd95_pooled": hd95(p, g, voxelspacing=sp),
        "assd": assd(p, g, voxelspacing=sp),
        "hd95_symmetric": max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)),
        "nsd": float((np.sum(d_pg <= tol) + np.sum(d_gp <= tol)) / (len(d_pg) + len(d_gp))),
    })
print(json.dumps(out))
"#;

/// A union of 1–3 random ellipsoids, sometimes cut by the array border.
fn blob(rng: &mut impl Rng, dim: (usize, usize, usize)) -> Array3<bool> {
    let n = rng.random_range(1..=3);
    let shapes: Vec<([f64; 3], [f64; 3])> = (0..n)
        .map(|_| {
            let c = [
                rng.random_range(0.0..dim.0 as f64),
                rng.random_range(0.0..dim.1 as f64),
                rng.random_range(0.0..dim.2 as f64),
            ];
            let r = [0, 1, 2].map(|_| rng.random_range(1.5..9.0));
            (c, r)
        })
        .collect();
    Array3::from_shape_fn(dim, |(i, j, k)| {
        let x = [i as f64, j as f64, k as f64];
        shapes
            .iter()
            .any(|(c, r)| (0..3).map(|d| ((x[d] - c[d]) / r[d]).powi(2)).sum::<f64>() <= 1.0)
    })
}

struct Case {
    name: String,
    pred: Array3<bool>,
    gt: Array3<bool>,
    spacing: [f64; 3],
    tolerance: f64,
}

fn cases() -> Vec<Case> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
    let mut out = Vec::new();
    while out.len() < 24 {
        let dim = (
            rng.random_range(10..48),
            rng.random_range(10..48),
            rng.random_range(4..30),
        );
        let spacing = [0, 1, 2].map(|_| (rng.random_range(0.3..3.5f64) * 100.0).round() / 100.0);
        let gt = blob(&mut rng, dim);
        // Half the pairs: an independent blob; the other half: the gt with noise flipped in.
        let pred = if out.len() % 2 == 0 {
            blob(&mut rng, dim)
        } else {
            gt.mapv(|v| if rng.random::<f64>() < 0.08 { !v } else { v })
        };
        if !pred.iter().any(|&b| b) || !gt.iter().any(|&b| b) {
            continue;
        }
        out.push(Case {
            name: format!("c{:02}", out.len()),
            pred,
            gt,
            spacing,
            tolerance: rng.random_range(0.5..4.0),
        });
    }
    out
}

#[test]
fn agrees_with_medpy_and_scipy() {
    let Some(python) = require_python(&["numpy", "scipy", "medpy.metric.binary"]) else {
        return;
    };
    let dir = tempdir();
    let cases = cases();
    let mut desc = Vec::new();
    for c in &cases {
        let raw = |a: &Array3<bool>| a.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>();
        std::fs::write(
            dir.path().join(format!("{}_pred.raw", c.name)),
            raw(&c.pred),
        )
        .unwrap();
        std::fs::write(dir.path().join(format!("{}_gt.raw", c.name)), raw(&c.gt)).unwrap();
        let (a, b, d) = c.gt.dim();
        desc.push(serde_json::json!({
            "name": c.name, "shape": [a, b, d], "spacing": c.spacing, "tolerance": c.tolerance,
        }));
    }
    std::fs::write(
        dir.path().join("cases.json"),
        serde_json::to_vec(&desc).unwrap(),
    )
    .unwrap();
    let out = Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(dir.path())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "reference script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(refs.len(), cases.len());

    let mut worst = [0f64; 6];
    for (c, r) in cases.iter().zip(&refs) {
        let get = |k: &str| r[k].as_f64().unwrap();
        let score = |mode| {
            let o = MetricOptions {
                protocol: Protocol::Nnunet,
                hd95: mode,
                nsd_tolerance_mm: c.tolerance,
            };
            evaluate_masks(c.pred.view(), c.gt.view(), c.spacing, &o).unwrap()
        };
        let sym = score(Hd95Mode::Symmetric);
        let pooled = score(Hd95Mode::Pooled);
        let pairs = [
            (sym.dice, get("dice")),
            (sym.iou, get("iou")),
            (pooled.hd95_mm, get("hd95_pooled")),
            (sym.assd_mm, get("assd")),
            (sym.hd95_mm, get("hd95_symmetric")),
            (sym.nsd, get("nsd")),
        ];
        for (w, (ours, theirs)) in worst.iter_mut().zip(pairs) {
            let diff = (ours - theirs).abs();
            *w = w.max(diff);
            assert!(
                diff <= 1e-6,
                "{}: ours {ours} vs reference {theirs} ({:?})",
                c.name,
                pairs
            );
        }
    }
    eprintln!(
        "max |ours - reference| over {} pairs: dice {:.1e}, iou {:.1e}, hd95 pooled {:.1e}, \
         assd {:.1e}, hd95 symmetric {:.1e}, nsd {:.1e}",
        cases.len(),
        worst[0],
        worst[1],
        worst[2],
        worst[3],
        worst[4],
        worst[5]
    );
}
