//! Helpers for the `run` integration tests: synthetic NIfTI inputs written with the nifti
//! crate (independent of our writer), and the real binary run in a temp folder.

use std::path::{Path, PathBuf};
use std::process::Output;

use ndarray::Array3;

/// A CT-like phantom: a bright ball (soft tissue + contrast) in a darker ramp, so the
/// threshold test model gives non-trivial labels; `seed` shifts the ball.
pub fn phantom(shape: [usize; 3], seed: usize) -> Array3<i16> {
    let c = [
        shape[0] as f32 * (0.4 + 0.05 * (seed % 4) as f32),
        shape[1] as f32 * 0.5,
        shape[2] as f32 * 0.5,
    ];
    let r = shape[0].min(shape[1]) as f32 / 3.0;
    Array3::from_shape_fn(shape, |(i, j, k)| {
        let d = ((i as f32 - c[0]).powi(2)
            + (j as f32 - c[1]).powi(2)
            + (3.0 * (k as f32 - c[2])).powi(2))
        .sqrt();
        if d < r {
            (150 + (i * 3 + j) % 50) as i16
        } else {
            (-300 + (j * 2) as i32) as i16
        }
    })
}

/// Write `data` as NIfTI-1 with sform (code 1) = `affine` (rows of the 3×4 part).
pub fn write_nifti(path: &Path, data: &Array3<i16>, affine: [[f32; 4]; 3]) {
    let mut h = nifti::NiftiHeader::default();
    let s = data.shape();
    h.dim = [3, s[0] as u16, s[1] as u16, s[2] as u16, 1, 1, 1, 1];
    let sp = |c: usize| (0..3).map(|r| affine[r][c].powi(2)).sum::<f32>().sqrt();
    h.pixdim = [1.0, sp(0), sp(1), sp(2), 1.0, 1.0, 1.0, 1.0];
    h.sform_code = 1;
    h.qform_code = 0;
    h.srow_x = affine[0];
    h.srow_y = affine[1];
    h.srow_z = affine[2];
    h.xyzt_units = 2;
    nifti::writer::WriterOptions::new(path)
        .reference_header(&h)
        .write_nifti(data)
        .expect("writing test NIfTI");
}

pub fn diag(sp: [f32; 3]) -> [[f32; 4]; 3] {
    [
        [sp[0], 0.0, 0.0, -100.0],
        [0.0, sp[1], 0.0, 50.0],
        [0.0, 0.0, sp[2], 10.0],
    ]
}

/// Write `n` small cases `case{i}.nii.gz` into `dir` with varied shapes and affines.
pub fn dataset(dir: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let p = dir.join(format!("case{i}.nii.gz"));
            let shape = [40 + 7 * (i % 3), 36 + 5 * (i % 2), 6 + i % 4];
            let mut aff = diag([0.8, 0.8, 2.5]);
            if i % 2 == 1 {
                aff[0][0] = -0.7; // L
                aff[1][1] = -0.7; // P
            }
            write_nifti(&p, &phantom(shape, i), aff);
            p
        })
        .collect()
}

pub fn run(dir: &Path, args: &[&str]) -> Output {
    run_env(dir, args, &[])
}

pub fn run_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = super::bin();
    cmd.current_dir(dir).args(args);
    for k in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_STEP",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running sdseg-volume")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Files (relative path → bytes) of the `.nii.gz` outputs under `dir`.
pub fn outputs(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut m = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return m;
    };
    for e in entries {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".nii.gz") && !name.starts_with('.') {
            m.insert(name, std::fs::read(&p).unwrap());
        }
    }
    m
}
