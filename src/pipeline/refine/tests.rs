use super::*;
use ndarray::{Array3, ShapeBuilder};

fn count(a: &Array3<u16>, v: u16) -> usize {
    a.iter().filter(|&&x| x == v).count()
}

fn plan(entries: &[(u16, LabelSteps)]) -> RefinePlan {
    RefinePlan {
        labels: entries.iter().copied().collect(),
        ..RefinePlan::none()
    }
}

const LCC: LabelSteps = LabelSteps {
    largest_component: true,
    min_component_ml: None,
    fill_holes: false,
};

const HOLES: LabelSteps = LabelSteps {
    largest_component: false,
    min_component_ml: None,
    fill_holes: true,
};

fn min_ml(m: f64) -> LabelSteps {
    LabelSteps {
        min_component_ml: Some(m),
        ..LabelSteps::default()
    }
}

/// Label 1: a 3×3×3 cube and a 2×2×2 cube, apart. Label 2: a 1×1×1 island and a 2×2×1 block.
/// Each label has a hole in slice k = 6 (a ring around one background voxel).
fn volume() -> Array3<u16> {
    let mut a = Array3::<u16>::zeros((12, 12, 10));
    a.slice_mut(s![1..4, 1..4, 1..4]).fill(1);
    a.slice_mut(s![8..10, 8..10, 1..3]).fill(1);
    a[[6, 1, 8]] = 2;
    a.slice_mut(s![6..8, 6..8, 8..9]).fill(2);
    // A ring of label 1 in slice 6 with a background hole and a label-2 voxel inside.
    a.slice_mut(s![0..5, 0..5, 6]).fill(1);
    a[[2, 2, 6]] = 0;
    a[[2, 3, 6]] = 2;
    a
}

#[test]
fn largest_component_keeps_only_the_biggest_and_leaves_other_labels() {
    let mut a = Array3::<u16>::zeros((12, 12, 10));
    a.slice_mut(s![1..4, 1..4, 1..4]).fill(1);
    a.slice_mut(s![8..10, 8..10, 1..3]).fill(1);
    a[[6, 1, 8]] = 2;
    a.slice_mut(s![6..8, 6..8, 8..9]).fill(2);
    let before = a.clone();
    let summary = plan(&[(1, LCC)]).apply(&mut a, 1.0).unwrap();
    assert_eq!(count(&a, 1), 27);
    assert_eq!(a.slice(s![8..10, 8..10, 1..3]).sum(), 0);
    // Label 2 (no steps) untouched, voxel for voxel.
    assert_eq!(a.mapv(|v| v == 2), before.mapv(|v| v == 2));
    assert_eq!(
        summary.labels,
        vec![LabelEffect {
            label: 1,
            components: 2,
            components_removed: 1,
            voxels_removed: 8,
            voxels_filled: 0,
        }]
    );
    // Ties: the component whose first voxel comes first in C order stays, in any layout.
    let mut t = Array3::<u16>::zeros((5, 5, 5));
    t[[0, 0, 0]] = 3;
    t[[4, 4, 4]] = 3;
    t[[4, 0, 4]] = 3;
    t[[3, 0, 3]] = 3;
    t[[0, 4, 4]] = 3;
    t[[1, 3, 3]] = 3;
    let mut f = Array3::<u16>::zeros((5, 5, 5).f());
    f.assign(&t);
    plan(&[(3, LCC)]).apply(&mut t, 1.0).unwrap();
    plan(&[(3, LCC)]).apply(&mut f, 1.0).unwrap();
    assert_eq!(t[[0, 4, 4]], 3);
    assert_eq!(count(&t, 3), 2);
    assert_eq!(f, t);
}

#[test]
fn small_components_are_removed_below_the_volume_and_kept_at_it() {
    // Components of 4 and 3 voxels; 0.125 ml per voxel: 0.5 ml and 0.375 ml.
    let mut a = Array3::<u16>::zeros((10, 10, 10));
    a.slice_mut(s![0..2, 0..2, 0..1]).fill(1);
    a.slice_mut(s![5..8, 5..6, 5..6]).fill(1);
    let mut b = a.clone();
    let s = plan(&[(1, min_ml(0.5))]).apply(&mut b, 0.125).unwrap();
    assert_eq!(count(&b, 1), 4, "0.5 ml kept, 0.375 ml removed");
    assert_eq!(s.labels[0].components_removed, 1);
    let mut b = a.clone();
    plan(&[(1, min_ml(0.5 + 1e-6))])
        .apply(&mut b, 0.125)
        .unwrap();
    assert_eq!(count(&b, 1), 0, "just above 0.5 ml: both removed");
    let mut b = a.clone();
    plan(&[(1, min_ml(0.375))]).apply(&mut b, 0.125).unwrap();
    assert_eq!(count(&b, 1), 7);
    // A voxel size whose product with the count rounds up: 10 × 0.0016 ml against 0.016 ml.
    assert_eq!(min_voxels(0.016, 0.0016), 10);
    assert_eq!(min_voxels(0.3, 0.1), 3);
    assert_eq!(min_voxels(0.31, 0.1), 4);
    // Below the minimum and then the largest: nothing survives.
    let mut b = a.clone();
    let steps = LabelSteps {
        largest_component: true,
        min_component_ml: Some(1.0),
        fill_holes: false,
    };
    plan(&[(1, steps)]).apply(&mut b, 0.125).unwrap();
    assert_eq!(count(&b, 1), 0);
    // Removal by volume needs a voxel size.
    let e = plan(&[(1, min_ml(0.5))]).apply(&mut a.clone(), 0.0);
    assert!(matches!(e, Err(RefineError::VoxelSize { .. })), "{e:?}");
    // ...but the largest component does not.
    plan(&[(1, LCC)]).apply(&mut a, f64::NAN).unwrap();
}

#[test]
fn holes_are_filled_per_slice_with_background_only() {
    let mut a = volume();
    let before = a.clone();
    let s = plan(&[(1, HOLES)]).apply(&mut a, 1.0).unwrap();
    assert_eq!(s.labels[0].voxels_filled, 1);
    assert_eq!(a[[2, 2, 6]], 1, "the background of the hole");
    assert_eq!(
        a[[2, 3, 6]],
        2,
        "another label inside the hole keeps its voxel"
    );
    let changed = ndarray::Zip::from(&a)
        .and(&before)
        .fold(0, |n, x, y| n + usize::from(x != y));
    assert_eq!(changed, 1);
    // A hole open to the border: the ring touches the border but its inside reaches it
    // through a gap in the ring.
    let mut b = Array3::<u16>::zeros((5, 5, 1));
    b.slice_mut(s![0..3, 0..3, 0]).fill(1);
    b[[1, 1, 0]] = 0;
    b[[0, 1, 0]] = 0;
    let s = plan(&[(1, HOLES)]).apply(&mut b, 1.0).unwrap();
    assert_eq!(s.labels[0].voxels_filled, 0);
    assert_eq!(b[[1, 1, 0]], 0);
    // A hole along another axis (in the i-k plane) is not a slice hole...
    let mut c = Array3::<u16>::zeros((5, 1, 5));
    c.slice_mut(s![1..4, 0, 1..4]).fill(1);
    c[[2, 0, 2]] = 0;
    plan(&[(1, HOLES)]).apply(&mut c, 1.0).unwrap();
    assert_eq!(c[[2, 0, 2]], 0);
    // ...unless the volume is seen in a frame whose third axis is j.
    let s = plan(&[(1, HOLES)])
        .apply_view(c.view_mut().permuted_axes([0, 2, 1]), 1.0)
        .unwrap();
    assert_eq!(s.labels[0].voxels_filled, 1);
    assert_eq!(c[[2, 0, 2]], 1);
}

#[test]
fn holes_of_kept_components_only_and_in_blocks_near_the_border() {
    // The ring touches the volume border at i = 0, j = 0: the block cannot be widened there.
    let mut a = Array3::<u16>::zeros((6, 6, 3));
    a.slice_mut(s![0..3, 0..3, 0]).fill(1);
    a[[1, 1, 0]] = 0;
    // A second, smaller component two slices away, removed by the largest step before filling.
    a[[5, 5, 2]] = 1;
    let steps = LabelSteps {
        largest_component: true,
        min_component_ml: None,
        fill_holes: true,
    };
    let s = plan(&[(1, steps)]).apply(&mut a, 1.0).unwrap();
    assert_eq!(a[[1, 1, 0]], 1);
    assert_eq!(a[[5, 5, 2]], 0);
    assert_eq!(
        s.labels[0],
        LabelEffect {
            label: 1,
            components: 2,
            components_removed: 1,
            voxels_removed: 1,
            voxels_filled: 1,
        }
    );
}

#[test]
fn default_plan_applies_to_every_label_and_no_plan_changes_nothing() {
    let mut a = volume();
    let before = a.clone();
    assert!(RefinePlan::none()
        .apply(&mut a, 1.0)
        .unwrap()
        .labels
        .is_empty());
    assert_eq!(a, before);
    let s = RefinePlan::default_plan().apply(&mut a, 1.0).unwrap();
    let labels: Vec<u16> = s.labels.iter().map(|e| e.label).collect();
    assert_eq!(labels, [1, 2]);
    // Label 1: the cube (27) is larger than the ring (23), so the 2-cube and the ring go; label
    // 2: the 2×2 block stays, the island and the voxel in the ring go.
    assert_eq!(count(&a, 1), 27);
    assert_eq!(count(&a, 2), 4);
    assert_eq!(a[[2, 3, 6]], 0);
    // Labels without an entry and no `other_labels` are left alone.
    let mut b = before.clone();
    plan(&[(2, LCC)]).apply(&mut b, 1.0).unwrap();
    assert_eq!(b.mapv(|v| v == 1), before.mapv(|v| v == 1));
}

#[test]
fn plan_json_round_trips_and_is_checked() {
    let p = RefinePlan {
        labels: [(1, LabelSteps::LARGEST_AND_HOLES), (7, min_ml(0.25))]
            .into_iter()
            .collect(),
        other_labels: Some(HOLES),
        ..RefinePlan::none()
    };
    let text = p.to_json_string();
    assert!(text.contains("\"version\": 1"), "{text}");
    assert!(text.contains("\"7\""), "{text}");
    assert_eq!(RefinePlan::from_json(&text).unwrap(), p);
    let d = RefinePlan::default_plan();
    assert_eq!(RefinePlan::from_json(&d.to_json_string()).unwrap(), d);
    assert_eq!(RefinePlan::from_spec("default").unwrap(), d);
    // A report that carries a plan.
    let report = format!(
        "{{\"other\": 1, \"postprocessing\": {{\"plan\": {}}}}}",
        text
    );
    assert_eq!(RefinePlan::from_json(&report).unwrap(), p);
    // Defaults for missing steps.
    let short =
        RefinePlan::from_json(r#"{"version": 1, "labels": {"3": {"fill_holes": true}}}"#).unwrap();
    assert_eq!(short, plan(&[(3, HOLES)]));
    for (bad, why) in [
        (r#"{"version": 2}"#, "version 2"),
        (
            r#"{"version": 1, "labels": {"1": {"fill": true}}}"#,
            "unknown field",
        ),
        (
            r#"{"version": 1, "labels": {"1": {"min_component_ml": -1}}}"#,
            "min_component_ml -1",
        ),
        (r#"{"labels": {}}"#, "version"),
        (r#"{"postprocessing": {"plan": null}}"#, "no \"plan\""),
        ("[1, 2", "EOF"),
    ] {
        let e = RefinePlan::from_json(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("pp.json");
    std::fs::write(&path, "{}").unwrap();
    let e = RefinePlan::load(&path).unwrap_err().to_string();
    assert!(e.contains("pp.json: not a post-processing plan"), "{e}");
    assert!(matches!(
        RefinePlan::from_spec(d.path().join("none.json").to_str().unwrap()),
        Err(RefineError::PlanRead { .. })
    ));
    assert_eq!(
        p.describe(),
        "label 1: largest component, holes filled per slice; label 7: components below 0.25 ml \
         removed; other labels: holes filled per slice"
    );
    assert_eq!(
        d_describe(),
        "every label: largest component, holes filled per slice"
    );
}

fn d_describe() -> String {
    RefinePlan::default_plan().describe()
}

#[test]
fn the_chooser_keeps_steps_only_where_they_raise_mean_dice() {
    // Label 1: the prediction has a spurious island and a one-voxel hole; the truth has
    // neither. Label 2: the truth has two blobs and the prediction finds both (the largest
    // component would lose one). Label 3: absent everywhere.
    let mut chooser = PlanChooser::new(&[1, 2, 3]);
    for shift in 0..3 {
        let mut gt = Array3::<u16>::zeros((20, 20, 8));
        gt.slice_mut(s![2..8, 2..8, 1..6]).fill(1);
        gt.slice_mut(s![12..15, 2..5, 1..4]).fill(2);
        gt.slice_mut(s![12..15, 12..15, 1..4]).fill(2);
        let mut pred = gt.clone();
        pred.slice_mut(s![16 + shift..18 + shift, 8..10, 5..7])
            .fill(1);
        pred[[4, 4, 3]] = 0;
        chooser.add_case(pred.view(), gt.view(), 0.001).unwrap();
    }
    assert_eq!(chooser.cases(), 3);
    let c = chooser.choose();
    let l1 = c.plan.labels[&1];
    assert!(l1.largest_component && l1.fill_holes, "{l1:?}");
    assert_eq!(c.plan.labels[&2], LabelSteps::default());
    assert_eq!(c.plan.labels[&3], LabelSteps::default());
    let e1 = &c.labels[0];
    assert_eq!(e1.cases_scored, 3);
    assert!(e1.dice_largest_component.unwrap() > e1.dice_without.unwrap());
    assert_eq!(e1.dice_chosen, Some(1.0));
    let e2 = &c.labels[1];
    assert_eq!(e2.dice_without, Some(1.0));
    assert!(e2.dice_largest_component.unwrap() < 1.0);
    assert_eq!(
        c.labels[2].dice_without, None,
        "undefined: both empty everywhere"
    );
    // The 8-voxel island is 0.008 ml: removal below 0.01 ml also removes it, but the largest
    // component is preferred on a tie.
    let m = &e1.dice_min_component;
    assert_eq!(m[1].min_component_ml, 0.01);
    assert_eq!(m[1].dice, e1.dice_largest_component);
    assert_eq!(m[0].dice, e1.dice_without, "0.001 ml removes nothing");
    // The chosen plan does what was scored.
    let mut gt = Array3::<u16>::zeros((20, 20, 8));
    gt.slice_mut(s![2..8, 2..8, 1..6]).fill(1);
    let mut pred = gt.clone();
    pred.slice_mut(s![16..18, 8..10, 5..7]).fill(1);
    pred[[4, 4, 3]] = 0;
    c.plan.apply(&mut pred, 0.001).unwrap();
    assert_eq!(pred, gt);
}
