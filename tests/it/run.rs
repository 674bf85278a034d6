//! `sdseg-volume run` end to end with the threshold test model (`--test-segmenter`): the
//! binary on NIfTI inputs written by the nifti crate in temp folders. The model itself is
//! covered by the model tests; this file covers cases, outputs, resume, sharding, failures,
//! reports and previews.

use std::path::Path;

use crate::support::run_util::*;
use crate::support::{fixture, tempdir, TINY_BINARY};

/// The threshold test model on the btcv pipeline (256² slices; the default pipeline is the
/// 64² demo, covered by `tests/demo_run.rs`).
const FAKE: &[&str] = &[
    "--test-segmenter",
    "threshold",
    "--quiet",
    "--pipeline",
    "btcv",
];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run"];
    v.extend_from_slice(extra);
    v.extend_from_slice(FAKE);
    v
}

fn read_labels(p: &Path) -> (nifti::NiftiHeader, Vec<u8>, [u16; 3]) {
    use nifti::{IntoNdArray, NiftiObject};
    let obj = nifti::ReaderOptions::new().read_file(p).unwrap();
    let h = obj.header().clone();
    let a = obj.into_volume().into_ndarray::<u8>().unwrap();
    let dims = [h.dim[1], h.dim[2], h.dim[3]];
    (h, a.iter().copied().collect(), dims)
}

#[test]
fn nifti_inputs_keep_shape_affine_and_get_labels() {
    let d = tempdir();
    let inputs = dataset(&d.path().join("data"), 2);
    let o = run(d.path(), &args(&["data", "--out", "out"]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for (i, input) in inputs.iter().enumerate() {
        let (hi, _, _) = read_labels(input);
        let out = d.path().join(format!("out/case{i}.nii.gz"));
        let (h, vox, dims) = read_labels(&out);
        assert_eq!(dims, [hi.dim[1], hi.dim[2], hi.dim[3]]);
        assert_eq!(
            (h.srow_x, h.srow_y, h.srow_z),
            (hi.srow_x, hi.srow_y, hi.srow_z)
        );
        assert_eq!((h.sform_code, h.qform_code), (hi.sform_code, hi.qform_code));
        assert_eq!(h.datatype, 2, "uint8 labels");
        let fg = vox.iter().filter(|&&v| v == 1).count();
        assert!(
            fg > 100 && fg < vox.len() - 100,
            "labels are not trivial: {fg}"
        );
        assert!(vox.iter().all(|&v| v <= 1));
    }
    // The label tables are beside the outputs.
    for f in ["labels.json", "labels.ctbl", "labels.itksnap.txt"] {
        assert!(d.path().join("out").join(f).is_file(), "{f}");
    }
}

#[test]
fn single_file_out_and_single_failure_exit_2() {
    let d = tempdir();
    let inputs = dataset(&d.path().join("data"), 1);
    let inp = inputs[0].to_str().unwrap();
    let o = run(d.path(), &args(&[inp, "--out", "seg/labels.nii.gz"]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(d.path().join("seg/labels.nii.gz").is_file());
    std::fs::write(d.path().join("bad.nii.gz"), b"not a nifti").unwrap();
    let o = run(d.path(), &args(&["bad.nii.gz", "--out", "bad_seg.nii.gz"]));
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("bad.nii.gz"), "{}", stderr(&o));
    assert!(!d.path().join("bad_seg.nii.gz").exists());
}

#[test]
fn resume_skips_existing_outputs_and_overwrite_redoes_them() {
    let d = tempdir();
    dataset(&d.path().join("data"), 3);
    let o = run(d.path(), &args(&["data", "--out", "out"]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let first = outputs(&d.path().join("out"));
    assert_eq!(first.len(), 3);
    let marked = d.path().join("out/case1.nii.gz");
    std::fs::write(&marked, b"stale").unwrap();
    std::fs::remove_file(d.path().join("out/case2.nii.gz")).unwrap();
    let o = run(d.path(), &args(&["data", "--out", "out", "--json"]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let status = |case: &str| {
        lines
            .iter()
            .find(|l| l["case"] == case)
            .map(|l| l["status"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(lines.len(), 3);
    assert_eq!(status("case0"), "skipped");
    assert_eq!(status("case1"), "skipped");
    assert_eq!(status("case2"), "written");
    assert_eq!(std::fs::read(&marked).unwrap(), b"stale");
    assert_eq!(
        outputs(&d.path().join("out"))["case2.nii.gz"],
        first["case2.nii.gz"]
    );
    let o = run(d.path(), &args(&["data", "--out", "out", "--overwrite"]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(outputs(&d.path().join("out")), first);
}

#[test]
fn a_failing_case_is_reported_and_the_others_are_written() {
    let d = tempdir();
    dataset(&d.path().join("data"), 2);
    std::fs::write(d.path().join("data/broken.nii.gz"), b"\x1f\x8btruncated").unwrap();
    let o = run(
        d.path(),
        &args(&["data", "--out", "out", "--report", "run.json"]),
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("broken") && err.contains("1 of 3 cases failed"),
        "{err}"
    );
    // --quiet: errors only. The failed case's line and the exit message, nothing about the
    // cases that were written, no summary.
    assert!(err.contains("FAILED (read stage)"), "{err}");
    assert!(
        !err.contains("case0") && !err.contains("case1") && !err.contains("done:"),
        "--quiet printed more than errors: {err}"
    );
    let outs = outputs(&d.path().join("out"));
    assert_eq!(
        outs.keys().collect::<Vec<_>>(),
        ["case0.nii.gz", "case1.nii.gz"]
    );
    let leftovers: Vec<_> = std::fs::read_dir(d.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("run.json")).unwrap()).unwrap();
    let broken = rep["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["case"] == "broken")
        .unwrap();
    assert_eq!(broken["status"], "failed");
    assert_eq!(broken["failed_stage"], "read");
    assert!(broken["error"].as_str().unwrap().contains("broken.nii.gz"));
    assert_eq!(rep["totals"]["failed"], 1);
    assert_eq!(rep["totals"]["written"], 2);
}

#[test]
fn shards_partition_the_cases_and_their_union_is_the_single_run() {
    let d = tempdir();
    dataset(&d.path().join("data"), 5);
    let o = run(
        d.path(),
        &args(&["data", "--out", "single", "--batch-size", "3"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let single = outputs(&d.path().join("single"));
    assert_eq!(single.len(), 5);
    let mut union = std::collections::BTreeMap::new();
    for i in 0..3 {
        let shard = format!("{i}/3");
        // Different batch size and the inputs listed file by file in reverse order.
        let mut files: Vec<String> = (0..5)
            .rev()
            .map(|c| format!("data/case{c}.nii.gz"))
            .collect();
        files.extend([
            "--out".into(),
            "sharded".into(),
            "--shard".into(),
            shard.clone(),
        ]);
        files.extend(["--batch-size".into(), "2".into()]);
        let a: Vec<&str> = files.iter().map(|s| s.as_str()).collect();
        let before = outputs(&d.path().join("sharded")).len();
        let o = run(d.path(), &args(&a));
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let after = outputs(&d.path().join("sharded"));
        assert!(
            after.len() - before == 1 || after.len() - before == 2,
            "shard {shard} wrote {} cases",
            after.len() - before
        );
        union = after;
    }
    assert_eq!(union, single, "union of shards differs from the single run");
}

#[test]
fn slurm_array_variables_select_the_shard() {
    let d = tempdir();
    dataset(&d.path().join("data"), 4);
    // --array=3-4 → task ids 3 and 4, min 3: task 4 is shard 1/2.
    let env = [
        ("SLURM_ARRAY_TASK_ID", "4"),
        ("SLURM_ARRAY_TASK_COUNT", "2"),
        ("SLURM_ARRAY_TASK_MIN", "3"),
    ];
    // Without --quiet: the shard note is information, which --quiet leaves out.
    let loud: Vec<&str> = args(&["data", "--out", "env"])
        .into_iter()
        .filter(|a| *a != "--quiet")
        .collect();
    let o = run_env(d.path(), &loud, &env);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("shard 1/2 (from Slurm array)"),
        "{}",
        stderr(&o)
    );
    let o = run(
        d.path(),
        &args(&["data", "--out", "flag", "--shard", "1/2"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let (a, b) = (
        outputs(&d.path().join("env")),
        outputs(&d.path().join("flag")),
    );
    assert_eq!(a.len(), 2);
    assert_eq!(a, b);
    // --shard wins over the environment; a task id outside the array is an error.
    let bad = [
        ("SLURM_ARRAY_TASK_ID", "7"),
        ("SLURM_ARRAY_TASK_COUNT", "2"),
    ];
    let o = run_env(d.path(), &args(&["data", "--out", "x"]), &bad);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = run_env(
        d.path(),
        &args(&["data", "--out", "x", "--shard", "0/1"]),
        &bad,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn manifest_with_outputs_and_case_ids() {
    let d = tempdir();
    dataset(&d.path().join("data"), 3);
    std::fs::write(
        d.path().join("list.csv"),
        "input,output,case\n\
         data/case0.nii.gz,first.nii.gz,A\n\
         data/case2.nii.gz,,B\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("list.txt"),
        "# one per line\ndata/case1.nii.gz\n",
    )
    .unwrap();
    let o = run(d.path(), &args(&["--manifest", "list.csv", "--out", "m"]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let names: Vec<String> = outputs(&d.path().join("m")).into_keys().collect();
    assert_eq!(names, ["B.nii.gz", "first.nii.gz"]);
    let o = run(
        d.path(),
        &args(&[
            "--manifest",
            "list.txt",
            "--out",
            "t",
            "--name",
            "{case}_seg.nii",
        ]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(d.path().join("t/case1_seg.nii").is_file());
}

#[test]
fn usage_errors_exit_2_before_any_work() {
    let d = tempdir();
    dataset(&d.path().join("data"), 2);
    std::fs::create_dir_all(d.path().join("p2")).unwrap();
    std::fs::copy(
        d.path().join("data/case0.nii.gz"),
        d.path().join("p2/case0.nii.gz"),
    )
    .unwrap();
    for (a, needle) in [
        (vec!["data", "--out", "one.nii.gz"], "dataset folder"),
        (vec!["data", "--out", "o", "--shard", "3/3"], "shard 3/3"),
        (
            vec!["data", "--out", "o", "--batch-size", "0"],
            "batch-size",
        ),
        (
            vec!["data", "p2", "--out", "o"],
            "case id 'case0' is used twice",
        ),
        (vec!["data", "--out", "o", "--name", "x.nii"], "{case}"),
        (vec!["data", "--out", "o", "--preview", "p.png"], "{case}"),
        (vec!["missing", "--out", "o"], "missing"),
        (vec!["data", "--out", "o", "--device", "cuda"], "CUDA"),
    ] {
        let o = run(d.path(), &args(&a));
        assert_eq!(code(&o), 2, "{a:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{a:?}: {}", stderr(&o));
        assert!(!d.path().join("o").exists(), "{a:?} wrote outputs");
    }
    let o = run(
        d.path(),
        &["run", "data", "--out", "o", "--weights", "nope.ckpt"],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("nope.ckpt"));
}

#[test]
fn report_records_provenance_timings_and_statistics() {
    use sha2::Digest;
    let d = tempdir();
    let inputs = dataset(&d.path().join("data"), 2);
    let o = run(
        d.path(),
        &args(&[
            "data",
            "--out",
            "out",
            "--report",
            "rep/run-{shard}.json",
            "--seed",
            "5",
            "--noise",
            "per-slice",
            "--statistics",
        ]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("volume_ml") && stdout.contains("case1"),
        "{stdout}"
    );
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("rep/run-0.json")).unwrap()).unwrap();
    assert_eq!(rep["tool"]["name"], "sdseg-volume");
    assert!(rep["tool"]["version"].is_string());
    assert_eq!(rep["model"]["kind"], "threshold");
    assert_eq!(rep["pipeline"]["name"], "btcv");
    assert_eq!(rep["settings"]["seed"], 5);
    assert_eq!(rep["settings"]["noise"], "per-slice");
    assert_eq!(rep["settings"]["device"], "cpu");
    assert_eq!(rep["settings"]["dtype"], "f32");
    let cases = rep["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for (c, input) in cases.iter().zip(&inputs) {
        let want = format!("{:x}", sha2::Sha256::digest(std::fs::read(input).unwrap()));
        assert_eq!(c["input_sha256"], want.as_str());
        assert_eq!(c["status"], "written");
        assert!(c["output"].as_str().unwrap().ends_with(".nii.gz"));
        let t = &c["seconds"];
        for k in ["read", "prepare", "model", "postprocess", "write", "wall"] {
            assert!(t[k].as_f64().unwrap() >= 0.0, "{k}");
        }
        let l = &c["labels"][0];
        assert_eq!(l["label"], 1);
        let voxels = l["voxels"].as_u64().unwrap();
        assert!(voxels > 0);
        let ml = l["volume_ml"].as_f64().unwrap();
        let voxel_ml = if c["case"] == "case1" {
            0.7 * 0.7 * 2.5
        } else {
            0.8 * 0.8 * 2.5
        } / 1000.0;
        assert!(
            (ml - voxels as f64 * voxel_ml).abs() < 1e-6 * ml.max(1.0),
            "{ml}"
        );
        let hu = l["mean_hu"].as_f64().unwrap();
        assert!(hu > 0.0 && hu < 300.0, "mean HU of the bright ball: {hu}");
        assert_eq!(c["shape"].as_array().unwrap().len(), 3);
    }
    assert_eq!(rep["totals"]["written"], 2);
    assert!(rep["totals"]["slices"].as_u64().unwrap() > 0);
}

#[test]
fn preview_png_decodes_and_shows_the_overlay() {
    let d = tempdir();
    let inputs = dataset(&d.path().join("data"), 1);
    let o = run(
        d.path(),
        &args(&[
            inputs[0].to_str().unwrap(),
            "--out",
            "seg.nii.gz",
            "--preview",
            "prev.png",
        ]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let dec = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(d.path().join("prev.png")).unwrap(),
    ));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert!(info.width > 300 && info.height > 100);
    let px = &buf[..info.buffer_size()];
    let reddish = px
        .chunks(3)
        .filter(|p| p[0] > p[1].saturating_add(40) && p[1] == p[2])
        .count();
    let grey = px
        .chunks(3)
        .filter(|p| p[0] == p[1] && p[1] == p[2] && p[0] > 0)
        .count();
    assert!(reddish > 500, "overlay pixels: {reddish}");
    assert!(grey > 500, "grey anatomy pixels: {grey}");
}

#[test]
fn slurm_script_tasks_cover_every_case_once() {
    let d = tempdir();
    dataset(&d.path().join("data"), 5);
    let o = run(d.path(), &args(&["data", "--out", "single"]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run(
        d.path(),
        &[
            "slurm-script",
            "--data",
            "data",
            "--out",
            "arr",
            "--array",
            "3",
            "--time",
            "00:10:00",
            "--cpus-per-task",
            "1",
            "--mem",
            "500M",
            "--partition",
            "debug",
            "--seed",
            "0",
            "--test-segmenter",
            "threshold",
            "--pipeline",
            "btcv",
            "--report",
            "rep/r-{shard}.json",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    for line in [
        "#!/bin/bash\n",
        "#SBATCH --array=0-2\n",
        "#SBATCH --time=00:10:00\n",
        "#SBATCH --cpus-per-task=1\n",
        "#SBATCH --mem=500M\n",
        "#SBATCH --partition=debug\n",
        "--shard \"${SLURM_ARRAY_TASK_ID}/3\"",
        "--quiet run",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let logs = d.path().join("arr/logs");
    assert!(text.contains(&format!(
        "--output={}/sdseg_%A_%a.log",
        logs.canonicalize().unwrap().display()
    )));
    assert!(!text.contains("--gres"), "no GPU asked for");
    let script = d.path().join("job.sh");
    std::fs::write(&script, &text).unwrap();
    // Run the tasks as Slurm would (its environment, another working directory).
    for t in 0..3 {
        let o = std::process::Command::new("bash")
            .arg(&script)
            .current_dir("/")
            .env("SLURM_ARRAY_TASK_ID", t.to_string())
            .env("SLURM_CPUS_PER_TASK", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "task {t}: {}", stderr(&o));
        assert!(d.path().join(format!("rep/r-{t}.json")).is_file());
    }
    assert_eq!(
        outputs(&d.path().join("arr")),
        outputs(&d.path().join("single"))
    );
    // Reports must not collide across tasks.
    let o = run(
        d.path(),
        &[
            "slurm-script",
            "--data",
            "data",
            "--out",
            "arr",
            "--array",
            "3",
            "--test-segmenter",
            "threshold",
            "--report",
            "r.json",
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = run(
        d.path(),
        &[
            "slurm-script",
            "--data",
            "data",
            "--out",
            "arr",
            "--array",
            "3",
            "--test-segmenter",
            "threshold",
            "--time",
            "2h",
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

/// Issue 3, `run` end to end: the tiny fixture checkpoint on a synthetic phantom gives labels on
/// the input grid that equal what `trace` gives for the same prepared slices and noise (after
/// the pipeline's resize back), and the same bytes for every batch size.
#[test]
fn run_with_the_tiny_fixture_equals_trace_and_ignores_batch_size() {
    use sdseg_volume::pipeline::{binary_slice_to_native, Pipeline, ResizeBack, SliceSource};
    let fixture = fixture(TINY_BINARY);
    let weights = fixture.join("checkpoint.safetensors");
    let w = weights.to_str().unwrap();
    let d = tempdir();
    std::fs::create_dir_all(d.path().join("ph")).unwrap();
    let input = d.path().join("ph/phantom.nii.gz");
    write_nifti(&input, &phantom([48, 40, 3], 2), diag([0.9, 0.9, 3.0]));
    for b in ["1", "3"] {
        let out = format!("seg{b}.nii.gz");
        let o = run(
            d.path(),
            &[
                "run",
                "ph/phantom.nii.gz",
                "--out",
                &out,
                "--weights",
                w,
                "--pipeline",
                "btcv",
                "--batch-size",
                b,
                "--seed",
                "5",
                "--quiet",
                "--report",
                &format!("r{b}.json"),
            ],
        );
        assert_eq!(code(&o), 0, "batch {b}: {}", stderr(&o));
    }
    let seg1 = std::fs::read(d.path().join("seg1.nii.gz")).unwrap();
    assert_eq!(
        seg1,
        std::fs::read(d.path().join("seg3.nii.gz")).unwrap(),
        "batch 1 vs 3"
    );
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("r3.json")).unwrap()).unwrap();
    assert_eq!(rep["model"]["kind"], "sdseg");
    assert!(rep["model"]["config_source"]
        .as_str()
        .unwrap()
        .contains("config.json"));
    assert_eq!(rep["model"]["weights_sha256"].as_str().unwrap().len(), 64);

    // The same slices through `trace`: image from the pipeline's preprocessing, the shared noise.
    let volume = sdseg_volume::io::nifti::read_nifti(&input).unwrap();
    let pipeline = Pipeline::load("btcv").unwrap();
    let src = SliceSource::new(&volume, &pipeline);
    let dev = candle_core::Device::Cpu;
    let image =
        candle_core::Tensor::from_vec(src.model_input(0..3), (3, 3, 256, 256), &dev).unwrap();
    let noise = sdseg_volume::model::sdseg::standard_normal(5, 0, 4 * 32 * 32);
    let noise = candle_core::Tensor::from_vec(noise, (1, 4, 32, 32), &dev).unwrap();
    let tensors = std::collections::HashMap::from([
        ("image".to_string(), image),
        ("noise".to_string(), noise),
    ]);
    candle_core::safetensors::save(&tensors, d.path().join("in.safetensors")).unwrap();
    let o = run(
        d.path(),
        &[
            "trace",
            "--weights",
            w,
            "--input",
            "in.safetensors",
            "--out",
            "tr.safetensors",
            "-q",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let tr = candle_core::safetensors::load(d.path().join("tr.safetensors"), &dev).unwrap();
    let prob = tr["mask_prob"].to_vec3::<f32>().unwrap();
    let (labels, affine, _) =
        sdseg_volume::io::nifti::read_labels(&d.path().join("seg3.nii.gz")).unwrap();
    assert_eq!(labels.shape(), volume.data().shape());
    assert!(affine.max_abs_diff(volume.affine()) < 1e-5);
    let mut fg = 0;
    for (k, p) in prob.iter().enumerate() {
        let p = ndarray::Array2::from_shape_fn((256, 256), |(i, j)| p[i][j]);
        let want = binary_slice_to_native(p.view(), src.geometry(), ResizeBack::Bilinear).unwrap();
        let got = labels.index_axis(ndarray::Axis(2), k);
        assert_eq!(got, want.view(), "slice {k} differs from trace");
        fg += want.iter().filter(|&&v| v == 1).count();
    }
    assert!(fg > 0 && fg < 48 * 40 * 3, "trivial labels: {fg}");
}

/// Issue 18, item 1: every `--dtype` the CPU cannot compute as asked runs the f32 path bit for
/// bit and says so once. `f16` always falls back on the CPU; `bf16` and `bf16-fast` fall back
/// where no bf16 kernel level runs (here forced with the switches a user has:
/// `SDSEG_AMX=0 SDSEG_AVX512BF16=0`).
#[test]
fn dtypes_the_cpu_cannot_compute_run_the_f32_path_bit_for_bit() {
    let weights = fixture(TINY_BINARY).join("checkpoint.safetensors");
    let w = weights.to_str().unwrap();
    let d = tempdir();
    std::fs::create_dir_all(d.path().join("ph")).unwrap();
    write_nifti(
        &d.path().join("ph/phantom.nii.gz"),
        &phantom([48, 40, 3], 4),
        diag([0.9, 0.9, 3.0]),
    );
    let off = [("SDSEG_AMX", "0"), ("SDSEG_AVX512BF16", "0")];
    let mut labels = Vec::new();
    for dtype in ["f32", "f16", "bf16", "bf16-fast"] {
        let out = format!("seg-{dtype}.nii.gz");
        let report = format!("r-{dtype}.json");
        let o = run_env(
            d.path(),
            &[
                "run",
                "ph/phantom.nii.gz",
                "--out",
                &out,
                "--weights",
                w,
                "--pipeline",
                "btcv",
                "--dtype",
                dtype,
                "--seed",
                "3",
                "--quiet",
                "--report",
                &report,
            ],
            &off,
        );
        let err = stderr(&o);
        assert_eq!(code(&o), 0, "{dtype}: {err}");
        let warnings = err.matches("warning: --dtype").count();
        assert_eq!(warnings, usize::from(dtype != "f32"), "{dtype}: {err}");
        if dtype == "f16" {
            assert!(err.contains("running in f32"), "{err}");
            let rep: serde_json::Value =
                serde_json::from_slice(&std::fs::read(d.path().join(&report)).unwrap()).unwrap();
            assert_eq!(rep["settings"]["dtype"], "f32", "the report says what ran");
        }
        labels.push((dtype, read_labels(&d.path().join(&out)).1));
    }
    let (_, f32_labels) = &labels[0];
    assert!(
        f32_labels.iter().any(|&v| v != 0),
        "the fixture labels something"
    );
    for (dtype, l) in &labels[1..] {
        assert!(l == f32_labels, "--dtype {dtype} differs from the f32 run");
    }
}
