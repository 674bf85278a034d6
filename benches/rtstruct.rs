//! RTSTRUCT writing time and size for a CT-sized label volume: the abdomen phantom's organ
//! labels (spleen, kidneys, liver, aorta) at 512×512×N (default 200) on a synthetic axial
//! series reference (no source files are needed to write).
//!
//! `cargo bench --bench rtstruct [-- --reps N] [--nz N]`: traces the contours
//! (`contour::volume_contours`) and writes the file (`write_rtstruct`, which traces again)
//! `N` times (default 3) and prints the medians, the file size and the contour and point
//! counts. Wall-clock times: on a shared machine, compare runs taken back to back.

use sdseg_volume::io::derived::contour::volume_contours;
use sdseg_volume::io::derived::rtstruct::write_rtstruct;
use sdseg_volume::io::derived::{Code, DerivedRequest, Producer, SegmentSpec, Timestamp};
use sdseg_volume::phantom::{abdomen_phantom, PhantomParams};
use sdseg_volume::volume::{SeriesReference, SourceSlice};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    let nz = opt("--nz", 200).max(1);
    let ph = abdomen_phantom(&PhantomParams::new([512, 512, nz]), 1);
    let spacing = ph.volume.spacing();
    let reference = SeriesReference {
        patient_study: vec![],
        study_instance_uid: Some("2.25.1".into()),
        series_instance_uid: Some("2.25.2".into()),
        frame_of_reference_uids: vec![Some("2.25.3".into()); nz],
        slices: (0..nz)
            .map(|k| SourceSlice {
                sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.2".into()),
                sop_instance_uid: Some(format!("2.25.4{k}")),
                frame_number: None,
                position: [-180.0, -180.0, -120.0 + k as f64 * spacing[2]],
            })
            .collect(),
        rows: 512,
        columns: 512,
        image_orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        pixel_spacing: [spacing[1], spacing[0]],
        slice_thickness: Some(spacing[2]),
        slice_spacing: spacing[2],
    };
    let code = Code::new("SCT", "91723000", "Anatomical Structure");
    let segments: Vec<SegmentSpec> = ph
        .label_names
        .iter()
        .map(|(label, name)| SegmentSpec {
            label: *label,
            name: name.clone(),
            color: [200, 100, 50],
            category: code.clone(),
            property_type: code.clone(),
            modifier: None,
        })
        .collect();
    let producer = Producer {
        manufacturer: "sdseg-volume".into(),
        software_version: env!("CARGO_PKG_VERSION").into(),
        algorithm_name: "bench".into(),
        algorithm_version: "0".into(),
    };
    let req = DerivedRequest {
        labels: ph.labels.view(),
        reference: &reference,
        segments: &segments,
        producer: &producer,
        series_description: "bench".into(),
        series_number: 1,
        created: Timestamp { unix_seconds: 0 },
    };
    let labels: Vec<u16> = segments.iter().map(|s| s.label).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("bench.rtstruct.dcm");
    println!(
        "rtstruct: 512x512x{nz}, {} ROIs, {reps} reps, {} rayon threads",
        segments.len(),
        rayon::current_num_threads()
    );
    let (mut trace, mut write) = (vec![], vec![]);
    let mut counts = (0, 0);
    for _ in 0..reps {
        let t = Instant::now();
        let contours = volume_contours(ph.labels.view(), &labels);
        trace.push(t.elapsed().as_secs_f64());
        let all = contours.iter().flatten().flatten();
        counts = (
            all.clone().count(),
            all.map(|c| c.points.len()).sum::<usize>(),
        );
        let t = Instant::now();
        write_rtstruct(&out, &req).expect("write the RTSTRUCT");
        write.push(t.elapsed().as_secs_f64());
    }
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "  trace {:.3} s | trace + write {:.3} s | {:.1} MiB | {} contours, {} points",
        median(trace),
        median(write),
        size as f64 / (1 << 20) as f64,
        counts.0,
        counts.1
    );
}
