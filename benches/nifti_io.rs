//! NIfTI read and write times for a CT-sized volume (512×512×300 int16, CT-like content:
//! air outside an elliptic body with noisy soft tissue, lungs and a spine).
//!
//! `cargo bench --bench nifti_io [-- --reps N] [--nz N]`: writes and reads `.nii.gz` and `.nii`
//! (HU as int16, labels as uint8) `N` times (default 3) in a temporary folder and prints the
//! medians. Wall-clock times: on a shared machine, compare runs taken back to back.

use ndarray::{Array3, ShapeBuilder};
use sdseg_volume::io::nifti::{read_labels, read_nifti, write_labels, write_volume, VolumeDtype};
use sdseg_volume::{Affine, Provenance, Volume};
use std::time::Instant;

fn phantom(nz: usize) -> Volume {
    let (nx, ny) = (512usize, 512usize);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut noise = move || {
        // xorshift64*, then a sum of 4 uniforms ≈ normal (σ ≈ 15 HU)
        let mut s = 0.0f32;
        for _ in 0..4 {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            s += (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
        }
        ((s - 2.0) * 26.0).round()
    };
    let mut data = Array3::<f32>::zeros((nx, ny, nz).f());
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let (x, y) = (i as f32 - 256.0, j as f32 - 256.0);
                let body = (x / 200.0).powi(2) + (y / 150.0).powi(2) < 1.0;
                let lung = ((x.abs() - 80.0) / 60.0).powi(2) + (y / 80.0).powi(2) < 1.0;
                let spine = (x / 20.0).powi(2) + ((y + 100.0) / 20.0).powi(2) < 1.0;
                data[[i, j, k]] = if !body {
                    -1024.0
                } else if spine {
                    700.0 + noise()
                } else if lung {
                    -820.0 + noise()
                } else {
                    40.0 + noise()
                };
            }
        }
    }
    let mut affine = Affine::from_spacing([0.7, 0.7, 1.25]);
    affine.0[0][0] = -0.7;
    affine.0[1][1] = -0.7;
    let mut p = Provenance::synthetic();
    p.integral_i16 = true;
    Volume::new(data, affine, p).expect("valid phantom")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let out = f();
    (t.elapsed().as_secs_f64(), out)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let reps = opt("--reps", 3).max(1);
    let nz = opt("--nz", 300).max(1);
    let vol = phantom(nz);
    let labels = vol.data().mapv(|v| match v {
        v if v > 300.0 => 2u16,
        v if v > -500.0 => 1,
        _ => 0,
    });
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "nifti_io: 512x512x{nz}, {reps} reps, {} rayon threads",
        rayon::current_num_threads()
    );
    for ext in ["nii.gz", "nii"] {
        let hu = dir.path().join(format!("hu.{ext}"));
        let lab = dir.path().join(format!("labels.{ext}"));
        let mut t = [vec![], vec![], vec![], vec![]];
        for _ in 0..reps {
            let (s, r) = time(|| write_volume(&hu, &vol, VolumeDtype::I16));
            r.expect("write HU");
            t[0].push(s);
            let (s, r) = time(|| read_nifti(&hu));
            assert_eq!(r.expect("read HU").data(), vol.data());
            t[1].push(s);
            let (s, r) = time(|| write_labels(&lab, &labels, &vol));
            r.expect("write labels");
            t[2].push(s);
            let (s, r) = time(|| read_labels(&lab));
            assert_eq!(r.expect("read labels").0, labels);
            t[3].push(s);
        }
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) >> 20;
        let [wh, rh, wl, rl] = t.map(median);
        println!(
            "  .{ext:<6} HU int16 write {wh:6.2} s  read {rh:6.2} s  ({} MiB) | labels uint8 write {wl:6.2} s  read {rl:6.2} s  ({} MiB)",
            size(&hu),
            size(&lab)
        );
    }
}
