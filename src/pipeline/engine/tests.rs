//! Engine tests on in-memory volumes with the threshold test segmenter.

use super::prep::Slicer;
use super::*;
use crate::geometry::AxCodes;
use crate::pipeline::config::{Normalise, Pipeline, SliceFrame};
use crate::pipeline::postprocess::ResizeBack;
use crate::pipeline::preprocess::NormStats;
use crate::pipeline::segmenter::ThresholdSegmenter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Volumes keyed by input path; writes captured in memory.
#[derive(Default)]
struct MemIo {
    volumes: HashMap<PathBuf, Volume>,
    written: Mutex<HashMap<PathBuf, (Array3<u16>, Affine)>>,
    fail_write: Option<PathBuf>,
}

impl CaseIo for MemIo {
    fn read(&self, input: &Path, _: &ReadOptions) -> anyhow::Result<Volume> {
        self.volumes.get(input).cloned().ok_or_else(|| {
            crate::error::InputError {
                path: input.into(),
                message: "no such test volume".into(),
            }
            .into()
        })
    }
    fn write_labels(&self, out: &Path, l: &Array3<u16>, like: &VolumeMeta) -> anyhow::Result<()> {
        if self.fail_write.as_deref() == Some(out) {
            anyhow::bail!("disk full (test)");
        }
        assert_eq!(like.shape, crate::volume::dim3(l));
        self.written
            .lock()
            .unwrap()
            .insert(out.into(), (l.clone(), like.affine));
        Ok(())
    }
}

/// HU pattern with structure in every direction: a ball of 200 HU in -100 HU plus a ramp.
fn phantom(shape: [usize; 3], affine: Affine) -> Volume {
    let c = shape.map(|n| n as f32 / 2.0);
    let data = Array3::from_shape_fn(shape, |(i, j, k)| {
        let d = ((i as f32 - c[0]).powi(2) + (j as f32 - c[1]).powi(2)).sqrt()
            + 4.0 * (k as f32 - c[2]).abs();
        if d < shape[0] as f32 / 3.0 {
            200.0 + i as f32
        } else {
            -100.0 + j as f32 * 0.5
        }
    });
    Volume::new(data, affine, crate::volume::Provenance::synthetic()).unwrap()
}

fn job(id: &str) -> Job {
    Job {
        case: Case::new(
            id.into(),
            PathBuf::from(format!("/in/{id}")),
            PathBuf::from(format!("/out/{id}.nii.gz")),
        ),
        preview: None,
        uncertainty: None,
    }
}

fn btcv() -> Slicer {
    Slicer::new(Pipeline::load("btcv").unwrap(), ResizeBack::Bilinear)
}

fn run_with(
    io: &MemIo,
    slicer: &Slicer,
    jobs: &[Job],
    opts: EngineOptions,
    model: &mut dyn SliceSegmenter,
) -> Vec<CaseOutcome> {
    let engine = Engine {
        slicer,
        io,
        observer: &Silent,
        options: opts,
    };
    engine.run(jobs, model)
}

/// What the threshold segmenter must give at 256² (resizes are the identity): foreground
/// where the normalised value is above 0, i.e. HU above the middle of the clipped range.
fn expected_binary(v: &Volume, slicer: &Slicer) -> Array3<u16> {
    let p = &slicer.pipeline;
    let stats = NormStats::for_volume(v.data().view(), &p.window, &p.normalise);
    v.data()
        .mapv(|x| u16::from(((stats.apply(x) as f32 + 1.0) / 2.0).clamp(0.0, 1.0) > 0.5))
}

#[test]
fn labels_match_the_pointwise_model_and_keep_the_grid() {
    let mut io = MemIo::default();
    let aff = Affine::from_spacing([0.8, 0.8, 2.5]);
    let v = phantom([256, 256, 7], aff);
    let want = expected_binary(&v, &btcv());
    io.volumes.insert("/in/a".into(), v);
    let out = run_with(
        &io,
        &btcv(),
        &[job("a")],
        EngineOptions::default(),
        &mut ThresholdSegmenter::binary(),
    );
    assert!(
        matches!(out[0].status, CaseStatus::Written),
        "{:?}",
        out[0].status
    );
    let w = io.written.lock().unwrap();
    let (labels, affine) = &w[Path::new("/out/a.nii.gz")];
    assert_eq!(affine, &aff);
    assert_eq!(labels, &want);
    let d = &out[0].details;
    assert_eq!(d.shape, Some([256, 256, 7]));
    assert_eq!(d.slices, 7);
    let fg = want.iter().filter(|&&x| x == 1).count() as u64;
    assert!(fg > 1000);
    assert_eq!(d.stats[0].voxels, fg);
    assert!((d.stats[0].volume_ml - fg as f64 * 0.8 * 0.8 * 2.5 / 1000.0).abs() < 1e-9);
}

#[test]
fn oriented_frame_writes_back_on_the_input_grid() {
    // An LPS volume sliced in the RAS frame: a pointwise model must give exactly the labels
    // of the native frame, on the stored grid.
    let mut aff = Affine::from_spacing([0.7, 0.7, 3.0]);
    aff.0[0][0] = -0.7;
    aff.0[1][1] = -0.7;
    let v = phantom([256, 256, 5], aff);
    let mut slicer = btcv();
    slicer.pipeline.slicing.frame = SliceFrame::Oriented(AxCodes::RAS);
    let want = expected_binary(&v, &slicer);
    let mut io = MemIo::default();
    io.volumes.insert("/in/a".into(), v);
    run_with(
        &io,
        &slicer,
        &[job("a")],
        EngineOptions::default(),
        &mut ThresholdSegmenter::binary(),
    );
    assert_eq!(
        io.written.lock().unwrap()[Path::new("/out/a.nii.gz")].0,
        want
    );
}

#[test]
fn outputs_do_not_depend_on_batch_size_or_company() {
    let mut io = MemIo::default();
    for (n, id) in ["a", "b", "c"].iter().enumerate() {
        io.volumes.insert(
            format!("/in/{id}").into(),
            phantom([40 + n, 33, 9 + n], Affine::from_spacing([1.0, 1.0, 2.0])),
        );
    }
    let prep = btcv();
    for noise in [NoiseMode::Shared, NoiseMode::PerSlice] {
        let mut model = ThresholdSegmenter::binary();
        model.noise_weight = 0.5; // make the noise visible in the labels
        let mut results = Vec::new();
        for (batch, jobs) in [
            (1, vec![job("a"), job("b"), job("c")]),
            (4, vec![job("c"), job("a"), job("b")]),
            (16, vec![job("b")]),
        ] {
            let opts = EngineOptions {
                batch_size: batch,
                noise,
                seed: 11,
                ..EngineOptions::default()
            };
            run_with(&io, &prep, &jobs, opts, &mut model);
            results.push(io.written.lock().unwrap().clone());
        }
        let b = Path::new("/out/b.nii.gz");
        assert_eq!(results[0][b].0, results[1][b].0, "{noise:?}: batch 1 vs 4");
        assert_eq!(
            results[0][b].0, results[2][b].0,
            "{noise:?}: alone vs with others"
        );
        let a = Path::new("/out/a.nii.gz");
        assert_eq!(results[0][a].0, results[1][a].0);
    }
    // The seed matters when the noise does.
    let mut model = ThresholdSegmenter::binary();
    model.noise_weight = 0.5;
    let mut per_seed = Vec::new();
    for seed in [1, 2] {
        let opts = EngineOptions {
            seed,
            ..EngineOptions::default()
        };
        run_with(&io, &prep, &[job("a")], opts, &mut model);
        per_seed.push(
            io.written.lock().unwrap()[Path::new("/out/a.nii.gz")]
                .0
                .clone(),
        );
    }
    assert_ne!(per_seed[0], per_seed[1]);
}

#[test]
fn failures_are_per_case() {
    let mut io = MemIo::default();
    let aff = Affine::from_spacing([1.0, 1.0, 1.0]);
    io.volumes.insert("/in/a".into(), phantom([30, 30, 4], aff));
    // Constant volume: every normalised value is -1, mean -1: the model refuses it.
    let flat = Volume::new(
        Array3::from_elem((30, 30, 6), -500.0f32),
        aff,
        crate::volume::Provenance::synthetic(),
    )
    .unwrap();
    io.volumes.insert("/in/flat".into(), flat);
    io.volumes.insert("/in/c".into(), phantom([31, 30, 5], aff));
    io.volumes.insert("/in/d".into(), phantom([31, 30, 5], aff));
    io.fail_write = Some("/out/d.nii.gz".into());
    let mut model = ThresholdSegmenter::binary();
    model.fail_on_mean = Some(-1.0);
    let jobs = [job("a"), job("missing"), job("flat"), job("c"), job("d")];
    let opts = EngineOptions {
        batch_size: 2,
        ..EngineOptions::default()
    };
    let out = run_with(&io, &btcv(), &jobs, opts, &mut model);
    let status: Vec<&str> = out
        .iter()
        .map(|o| match &o.status {
            CaseStatus::Written => "written",
            CaseStatus::Skipped => "skipped",
            CaseStatus::Failed(e) => e.stage,
        })
        .collect();
    assert_eq!(status, ["written", "read", "model", "written", "write"]);
    let CaseStatus::Failed(e) = &out[1].status else {
        unreachable!()
    };
    assert!(
        e.input_error && e.message.contains("no such test volume"),
        "{e:?}"
    );
    let CaseStatus::Failed(e) = &out[2].status else {
        unreachable!()
    };
    assert!(!e.input_error && e.message.contains("refuses"), "{e:?}");
    let w = io.written.lock().unwrap();
    assert!(w.contains_key(Path::new("/out/a.nii.gz")));
    assert!(w.contains_key(Path::new("/out/c.nii.gz")));
    assert!(!w.contains_key(Path::new("/out/flat.nii.gz")));
}

#[test]
fn multiclass_and_nearest_resize() {
    let mut io = MemIo::default();
    let v = phantom([50, 70, 3], Affine::from_spacing([1.0, 1.0, 1.0]));
    io.volumes.insert("/in/a".into(), v);
    let mut prep = btcv();
    prep.pipeline.normalise = Normalise::Fixed {
        offset: -125.0,
        scale: 400.0,
    };
    prep.resize = ResizeBack::Nearest;
    let opts = EngineOptions {
        labels: crate::pipeline::labels_sidecar::label_table(4, &[]),
        ..EngineOptions::default()
    };
    let out = run_with(
        &io,
        &prep,
        &[job("a")],
        opts,
        &mut ThresholdSegmenter::multiclass(4),
    );
    assert!(matches!(out[0].status, CaseStatus::Written));
    let w = io.written.lock().unwrap();
    let labels = &w[Path::new("/out/a.nii.gz")].0;
    assert_eq!(labels.dim(), (50, 70, 3));
    assert!(labels.iter().all(|&l| l < 4));
    let mut seen = [false; 4];
    labels.iter().for_each(|&l| seen[l as usize] = true);
    assert!(seen.iter().filter(|&&s| s).count() >= 2, "{seen:?}");
    assert_eq!(out[0].details.stats.len(), 3, "labels 1..3 reported");
}

#[test]
fn observer_sees_every_slice_and_case() {
    struct Count(AtomicUsize, AtomicUsize, AtomicUsize);
    impl Observer for Count {
        fn case_started(&self, _: &Case, _: usize) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn slices_done(&self, _: &Case, n: usize) {
            self.1.fetch_add(n, Ordering::SeqCst);
        }
        fn case_finished(&self, _: &CaseOutcome) {
            self.2.fetch_add(1, Ordering::SeqCst);
        }
    }
    let mut io = MemIo::default();
    io.volumes.insert(
        "/in/a".into(),
        phantom([20, 20, 11], Affine::from_spacing([1.0; 3])),
    );
    let count = Count(
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let prep = btcv();
    let engine = Engine {
        slicer: &prep,
        io: &io,
        observer: &count,
        options: EngineOptions {
            batch_size: 3,
            ..EngineOptions::default()
        },
    };
    engine.run(&[job("a"), job("zz")], &mut ThresholdSegmenter::binary());
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    assert_eq!(count.1.load(Ordering::SeqCst), 11);
    assert_eq!(count.2.load(Ordering::SeqCst), 2);
}

fn demo() -> Slicer {
    Slicer::new(Pipeline::load("demo").unwrap(), ResizeBack::Bilinear)
}

#[test]
fn the_slice_size_comes_from_the_pipeline() {
    // Demo: 64² slices in LPS. At the native size 64×64 the resizes are the identity, so the
    // pointwise model gives exactly the thresholded input; 96×80 goes through both resizes.
    let mut aff = Affine::from_spacing([0.8, 0.8, 2.5]);
    aff.0[0][0] = -0.8;
    aff.0[1][1] = -0.8;
    let mut io = MemIo::default();
    let v = phantom([64, 64, 5], aff);
    let slicer = demo();
    assert_eq!(slicer.model_size(), 64);
    let want = expected_binary(&v, &slicer);
    io.volumes.insert("/in/a".into(), v);
    io.volumes.insert("/in/b".into(), phantom([96, 80, 3], aff));
    let mut model = ThresholdSegmenter::binary().with_size(64);
    let out = run_with(
        &io,
        &slicer,
        &[job("a"), job("b")],
        EngineOptions::default(),
        &mut model,
    );
    for o in &out {
        assert!(matches!(o.status, CaseStatus::Written), "{:?}", o.status);
    }
    let w = io.written.lock().unwrap();
    assert_eq!(w[Path::new("/out/a.nii.gz")].0, want);
    let b = &w[Path::new("/out/b.nii.gz")].0;
    assert_eq!(b.dim(), (96, 80, 3));
    let fg = b.iter().filter(|&&x| x == 1).count();
    assert!(fg > 100 && fg < b.len() - 100, "{fg}");
}

#[test]
fn a_model_of_another_size_fails_every_case_clearly() {
    let mut io = MemIo::default();
    io.volumes.insert(
        "/in/a".into(),
        phantom([64, 64, 2], Affine::from_spacing([1.0, 1.0, 1.0])),
    );
    let out = run_with(
        &io,
        &demo(),
        &[job("a"), job("b")],
        EngineOptions::default(),
        &mut ThresholdSegmenter::binary(),
    );
    for o in &out {
        let CaseStatus::Failed(e) = &o.status else {
            panic!("{:?}", o.status)
        };
        assert!(
            e.message.contains("256×256") && e.message.contains("64×64"),
            "{e:?}"
        );
    }
    assert!(io.written.lock().unwrap().is_empty());
}

#[test]
fn the_demo_model_warns_on_inputs_that_are_not_phantoms() {
    struct Warned(Mutex<Vec<String>>);
    impl Observer for Warned {
        fn demo_input_warning(&self, case: &Case) {
            self.0.lock().unwrap().push(case.id.clone());
        }
    }
    let mut io = MemIo::default();
    let aff = Affine::from_spacing([1.0, 1.0, 1.0]);
    // A synthetic volume counts as a phantom; one that says it came from a DICOM series
    // without the phantom tag does not.
    io.volumes
        .insert("/in/ph".into(), phantom([64, 64, 2], aff));
    let real = phantom([64, 64, 2], aff);
    let (data, affine, mut prov) = real.into_parts();
    prov.source = crate::volume::Source::Dicom(crate::volume::DicomSource {
        input: "/in/ct".into(),
        series_instance_uid: "1.2.3".into(),
        series_description: Some("ABDOMEN 1.0 B30f".into()),
        modality: Some("CT".into()),
        files: vec![],
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        reference: Default::default(),
    });
    io.volumes
        .insert("/in/ct".into(), Volume::new(data, affine, prov).unwrap());
    let slicer = demo();
    for demo_model in [true, false] {
        let seen = Warned(Mutex::new(vec![]));
        let engine = Engine {
            slicer: &slicer,
            io: &io,
            observer: &seen,
            options: EngineOptions {
                demo_model,
                ..EngineOptions::default()
            },
        };
        let out = engine.run(
            &[job("ph"), job("ct")],
            &mut ThresholdSegmenter::binary().with_size(64),
        );
        let warned = seen.0.lock().unwrap().clone();
        let has = |i: usize| {
            out[i]
                .details
                .warnings
                .iter()
                .any(|w| w.contains("DEMO MODEL"))
        };
        if demo_model {
            assert_eq!(warned, ["ct"]);
            assert!(!has(0) && has(1));
        } else {
            assert!(warned.is_empty() && !has(0) && !has(1));
        }
    }
}
