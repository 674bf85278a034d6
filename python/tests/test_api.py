"""The API: reading, volumes from arrays, the nibabel round trip, defaults, model info."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import sdseg_volume as sv
from conftest import DEMO_CT, DEMO_LABELS, run_cli


def test_read_volume_gives_the_hu_volume_import_writes(cli, demo_volume, tmp_path):
    import nibabel as nib

    v = demo_volume
    assert v.hu.dtype == np.float32
    assert v.hu.shape == v.shape
    assert v.provenance["source"] == "dicom"
    assert len(v.provenance["files"]) == v.shape[2]
    assert v.affine.shape == (4, 4)
    assert np.allclose(v.spacing, np.linalg.norm(v.affine[:3, :3], axis=0))
    # `sdseg-volume import` writes the volume the pipeline sees: the same voxels and grid.
    out = tmp_path / "demo.nii.gz"
    run_cli(cli, "import", DEMO_CT, "--out", out)
    img = nib.load(str(out))
    assert np.array_equal(np.asarray(img.dataobj, dtype=np.float32), v.hu)
    assert np.allclose(img.affine, v.affine, atol=1e-4)


def test_hu_is_a_read_only_view_without_copy(demo_volume):
    a = demo_volume.hu
    b = demo_volume.hu
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        a.setflags(write=True)
    # Both views share the volume's own buffer.
    assert np.shares_memory(a, b)
    assert a.base is not None


def test_volume_from_an_array_copies_once_and_keeps_the_grid():
    hu = np.asfortranarray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    affine = np.diag([0.5, 0.75, 2.0, 1.0])
    v = sv.Volume(hu, affine)
    assert v.shape == (4, 5, 6)
    assert v.hu.dtype == np.float32
    assert np.array_equal(v.hu, hu.astype(np.float32))
    assert v.hu.flags.f_contiguous
    assert not np.shares_memory(v.hu, hu)
    assert v.spacing == (0.5, 0.75, 2.0)
    assert v.orientation == "RAS"
    assert v.provenance["source"] == "array"
    with pytest.raises(sv.InputError, match="3D"):
        sv.Volume(np.zeros((3, 3)), affine)
    with pytest.raises(sv.InputError, match="4x4"):
        sv.Volume(hu, np.eye(3))
    with pytest.raises(sv.InputError, match="singular"):
        sv.Volume(hu, np.zeros((4, 4)))


def test_nibabel_round_trip(demo_volume, tmp_path):
    import nibabel as nib

    path = tmp_path / "rt.nii.gz"
    nib.save(demo_volume.to_nibabel(), str(path))
    back = sv.read_volume(path)
    assert np.array_equal(back.hu, demo_volume.hu)
    assert np.allclose(back.affine, demo_volume.affine, atol=1e-4)
    assert back.provenance["source"] == "nifti"


def test_segmentation_to_nibabel_and_save_agree(demo_model, demo_volume, tmp_path):
    import nibabel as nib

    seg = demo_model.segment(demo_volume, progress=False)
    assert seg.labels.dtype == np.uint8
    assert seg.labels.shape == demo_volume.shape
    assert np.array_equal(seg.affine, demo_volume.affine)
    img = seg.to_nibabel()
    assert np.array_equal(np.asarray(img.dataobj), seg.labels)
    seg.save(tmp_path / "s.nii.gz")
    saved = nib.load(str(tmp_path / "s.nii.gz"))
    assert np.array_equal(np.asarray(saved.dataobj), seg.labels)
    assert np.allclose(saved.affine, seg.affine, atol=1e-4)
    # Labels are handed over, writable and owned by NumPy.
    assert seg.labels.flags.writeable


def test_segment_accepts_a_path_or_an_array(demo_model, demo_volume):
    a = demo_model.segment(demo_volume, progress=False)
    b = demo_model.segment(DEMO_CT, progress=False)
    c = demo_model.segment(np.array(demo_volume.hu), demo_volume.affine, progress=False)
    assert a.case_id == b.case_id == "demo-ct"
    assert c.case_id == "volume"
    assert np.array_equal(a.labels, b.labels)
    # Shared noise: the case id does not matter, the voxels and grid are the same.
    assert np.array_equal(a.labels, c.labels)
    with pytest.raises(sv.InputError, match="affine"):
        demo_model.segment(np.array(demo_volume.hu), progress=False)


def test_model_info_labels_and_statistics(demo_model, demo_volume):
    info = demo_model.info
    assert info["kind"] == "sdseg" and info["demo_model"] is True
    assert info["slice_size"] == 64
    assert demo_model.label_names[0] == "background"
    seg = demo_model.segment(demo_volume, progress=False)
    stats = {s["label"]: s for s in seg.statistics}
    assert stats[1]["voxels"] == int((seg.labels == 1).sum())
    assert seg.label_names == demo_model.label_names
    assert seg.seconds["wall"] > 0
    assert "Segmentation(" in repr(seg) and "Volume(" in repr(demo_volume)


def test_python_defaults_are_the_cli_defaults():
    d = sv.cli_defaults()
    for fn in (sv.Model.__init__, sv.run):
        params = inspect.signature(fn).parameters
        for name, p in params.items():
            if name not in d:
                continue
            want = d[name]
            if name == "device":
                want = "cpu" if want is None else want
            assert p.default == want, f"{fn.__qualname__}({name}={p.default!r}): the CLI's default is {want!r}"
    # Every option of `run` is there.
    missing = set(d) - set(inspect.signature(sv.run).parameters)
    assert not missing, missing


def test_progress_callback_sees_every_slice(demo_volume):
    model = sv.Model(quiet=True, batch_size=5)
    calls = []
    model.segment(demo_volume, progress=lambda case, done, total: calls.append((case, done, total)))
    n = demo_volume.shape[2]
    assert calls[0] == ("demo-ct", 0, n)
    assert calls[-1] == ("demo-ct", n, n)
    dones = [d for _, d, _ in calls]
    assert dones == sorted(dones)


def test_uncertainty_needs_samples(demo_model, demo_volume):
    with pytest.raises(sv.InputError, match="samples"):
        demo_model.segment(demo_volume, uncertainty=True, progress=False)


def test_evaluate_arrays_spacing_and_affine_agree(demo_model, demo_volume):
    import nibabel as nib

    seg = demo_model.segment(demo_volume, progress=False)
    gt = nib.load(str(DEMO_LABELS))
    by_image = sv.evaluate(seg, gt, pipeline="demo")
    by_affine = sv.evaluate(seg.labels, np.asarray(gt.dataobj), gt.affine, pipeline="demo")
    assert by_image["summary"] == by_affine["summary"]
    dice = by_image["cases"][0]["labels"][0]["dice"]
    assert 0.8 < dice <= 1.0
    same = sv.evaluate(seg.labels, seg.labels, demo_volume.spacing)
    assert all(l["dice"] == 1.0 for l in same["cases"][0]["labels"])
    with pytest.raises(sv.InputError, match="integer"):
        sv.evaluate(seg.labels + 0.5, seg.labels, demo_volume.spacing)
    with pytest.raises(sv.InputError, match="spacing_or_affine"):
        sv.evaluate(seg.labels, seg.labels)
