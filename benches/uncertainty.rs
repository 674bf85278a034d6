//! `cargo bench --bench uncertainty`: what `run --samples K --uncertainty` costs and whether it
//! helps, on held-out demo phantoms with the bundled demo model (trained on phantom seeds
//! 0–199; seeds 2000–2004 are its test set, pipelines/demo.toml).
//!
//! For K = 1, 2, 4, 8 (the release binary, one process per K, the same five cases):
//! - model time per slice (from the run report) and its ratio to K separate single-draw runs;
//! - Dice of the K-draw mean against the phantom's labels, and against the single draw;
//! - AUROC of the uncertainty map as a score for the voxels the K-draw mask gets wrong.
//!
//! Timings only mean something on a quiet machine (no build, no other benchmark).
//! `SDSEG_BENCH_CASES=N` changes the number of phantoms (default 5).

use std::path::Path;
use std::process::Command;

use sdseg_volume::metrics::uncertainty::auroc;

const BIN: &str = env!("CARGO_BIN_EXE_sdseg-volume");

fn sdseg(args: &[&str]) {
    let o = Command::new(BIN)
        .args(args)
        .output()
        .expect("running sdseg-volume");
    assert!(
        o.status.success(),
        "sdseg-volume {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn voxels(p: &Path) -> Vec<f32> {
    let v = sdseg_volume::io::read_volume(p, &Default::default()).expect("reading an output");
    // Fortran order on both sides: the same grid, the same order.
    v.data().t().iter().copied().collect()
}

fn dice(a: &[bool], b: &[bool]) -> f64 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count() as f64;
    let total = (a.iter().filter(|&&x| x).count() + b.iter().filter(|&&x| x).count()) as f64;
    if total == 0.0 {
        1.0
    } else {
        2.0 * inter / total
    }
}

fn main() {
    let n: usize = std::env::var("SDSEG_BENCH_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let tmp = tempfile::tempdir().expect("temp folder");
    let root = tmp.path();
    let data_dir = root.join("data-dir");
    std::env::set_var("SDSEG_DATA_DIR", &data_dir);
    let ph = root.join("phantoms");
    let mut cases = Vec::new();
    for seed in 2000..2000 + n {
        let id = format!("case{seed}");
        let out = ph.join(&id);
        let gt = root.join(format!("gt/{id}.nii.gz"));
        std::fs::create_dir_all(gt.parent().unwrap()).unwrap();
        sdseg(&[
            "--quiet",
            "phantom",
            "--seed",
            &seed.to_string(),
            "--out",
            out.to_str().unwrap(),
            "--labels",
            gt.to_str().unwrap(),
        ]);
        cases.push((id, out, gt));
    }
    let inputs: Vec<&str> = cases.iter().map(|c| c.1.to_str().unwrap()).collect();
    let ks = [1usize, 2, 4, 8];
    let mut model_s = Vec::new();
    for &k in &ks {
        let out = root.join(format!("k{k}"));
        let report = root.join(format!("k{k}.json"));
        let mut args = vec!["run", "--quiet"];
        args.extend(&inputs);
        let ks = k.to_string();
        let u = root.join(format!("u{k}"));
        args.extend([
            "--out",
            out.to_str().unwrap(),
            "--samples",
            &ks,
            "--report",
            report.to_str().unwrap(),
        ]);
        if k > 1 {
            args.extend(["--uncertainty", u.to_str().unwrap()]);
        }
        sdseg(&args);
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let slices = r["totals"]["slices"].as_f64().unwrap();
        model_s.push(r["totals"]["seconds"]["model"].as_f64().unwrap() / slices);
    }
    println!(
        "\n## run --samples K on {n} held-out demo phantoms (seeds 2000-{}), model time per slice\n",
        2000 + n - 1
    );
    println!("| K | model ms/slice | vs one draw | vs K separate runs |");
    println!("|---|---|---|---|");
    for (k, s) in ks.iter().zip(&model_s) {
        println!(
            "| {k} | {:.2} | {:.2}x | {:.2} |",
            1e3 * s,
            s / model_s[0],
            s / (*k as f64 * model_s[0])
        );
    }
    println!("\n## Quality per case (binary: the union of the phantom organs)\n");
    println!("| case | Dice K=1 | Dice K=8 | Dice K=8 vs K=1 | AUROC K=2 | AUROC K=4 | AUROC K=8 | wrong voxels K=8 |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut means = [0f64; 6];
    for (id, _, gt) in &cases {
        let file = format!("{id}.nii.gz");
        let truth: Vec<bool> = voxels(gt).iter().map(|&v| v > 0.0).collect();
        let mask = |k: usize| -> Vec<bool> {
            voxels(&root.join(format!("k{k}/{file}")))
                .iter()
                .map(|&v| v > 0.0)
                .collect()
        };
        let (m1, m8) = (mask(1), mask(8));
        let mut row = vec![dice(&m1, &truth), dice(&m8, &truth), dice(&m8, &m1)];
        let mut wrong8 = 0;
        for k in [2, 4, 8] {
            let mk = mask(k);
            let wrong: Vec<bool> = mk.iter().zip(&truth).map(|(a, b)| a != b).collect();
            if k == 8 {
                wrong8 = wrong.iter().filter(|&&w| w).count();
            }
            let u = voxels(&root.join(format!("u{k}/{file}")));
            row.push(auroc(&u, &wrong).unwrap_or(f64::NAN));
        }
        for (m, v) in means.iter_mut().zip(&row) {
            *m += v / n as f64;
        }
        println!(
            "| {id} | {:.4} | {:.4} | {:.4} | {:.3} | {:.3} | {:.3} | {wrong8} |",
            row[0], row[1], row[2], row[3], row[4], row[5]
        );
    }
    println!(
        "| mean | {:.4} | {:.4} | {:.4} | {:.3} | {:.3} | {:.3} | |",
        means[0], means[1], means[2], means[3], means[4], means[5]
    );

    // The paper's stability figures (`stability`: PSNR/SSIM of the soft maps of N seeds) are
    // defined on 256×256 maps; the demo model works at 64×64 and `stability` refuses it. The
    // agreement between the K-draw mean and the single draw above (Dice K=8 vs K=1) is the
    // same question asked of the masks.
}
