"""The binding against the CLI binary: the same labels voxel for voxel (and the same NIfTI bytes),
the same uncertainty maps, the same `run` files and the same `eval --out x.json` report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sdseg_volume as sv
from conftest import DEMO_CT, DEMO_LABELS, FIXTURES, nifti_bytes, run_cli, write_phantom


def load(path):
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def test_demo_series_labels_equal_the_cli(cli, demo_model, demo_volume, tmp_path):
    run_cli(cli, "run", DEMO_CT, "--out", tmp_path / "cli.nii.gz", "--quiet")
    seg = demo_model.segment(demo_volume, progress=False)
    cli_labels = load(tmp_path / "cli.nii.gz")
    assert cli_labels.dtype == seg.labels.dtype
    assert np.array_equal(cli_labels, seg.labels)
    assert (seg.labels > 0).sum() > 1000  # a real segmentation, not an empty one
    seg.save(tmp_path / "py.nii.gz")
    assert nifti_bytes(tmp_path / "py.nii.gz") == nifti_bytes(tmp_path / "cli.nii.gz")


def test_samples_and_uncertainty_equal_the_cli(cli, demo_volume, tmp_path):
    run_cli(
        cli, "run", DEMO_CT, "--out", tmp_path / "cli.nii.gz", "--quiet",
        "--samples", "3", "--seed", "7", "--noise", "per-slice", "--batch-size", "5",
        "--uncertainty", tmp_path / "u.nii.gz",
    )
    model = sv.Model(samples=3, seed=7, noise="per-slice", batch_size=5, quiet=True)
    seg = model.segment(demo_volume, uncertainty=True, progress=False)
    assert np.array_equal(load(tmp_path / "cli.nii.gz"), seg.labels)
    u = load(tmp_path / "u.nii.gz")
    assert u.dtype == np.float32 and seg.uncertainty.dtype == np.float32
    assert np.array_equal(u, seg.uncertainty)
    assert seg.uncertainty.max() > 0


def test_run_writes_the_cli_files(cli, tmp_path):
    phantom = tmp_path / "in" / "ph1.nii.gz"
    phantom.parent.mkdir()
    write_phantom(phantom, shape=(40, 36, 4))
    run_cli(cli, "run", DEMO_CT, phantom, "--out", tmp_path / "cli", "--quiet", "--postprocess", "default")
    with pytest.warns(UserWarning, match="DEMO MODEL"):  # ph1 is not a demo phantom
        records = sv.run([DEMO_CT, phantom], tmp_path / "py", quiet=True, postprocess="default", progress=False)
    assert [r["case"] for r in records] == ["demo-ct", "ph1"]
    assert all(r["status"] == "written" for r in records)
    for case in ("demo-ct", "ph1"):
        assert nifti_bytes(tmp_path / "py" / f"{case}.nii.gz") == nifti_bytes(tmp_path / "cli" / f"{case}.nii.gz")
    # The label sidecars too.
    cli_files = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert cli_files == sorted(p.name for p in (tmp_path / "py").iterdir())
    # Resume: a second call skips both.
    again = sv.run([DEMO_CT, phantom], tmp_path / "py", quiet=True, progress=False)
    assert [r["status"] for r in again] == ["skipped", "skipped"]


def test_fixture_model_labels_equal_the_cli(cli, tmp_path):
    """The tiny official-layout checkpoint of testdata/fixtures (a Lightning .ckpt with
    config.json beside it), at 256x256 slices (pipeline btcv), on a small NIfTI phantom."""
    weights = FIXTURES / "tiny-binary" / "checkpoint.ckpt"
    phantom = tmp_path / "ph.nii.gz"
    write_phantom(phantom)
    run_cli(
        cli, "run", phantom, "--out", tmp_path / "cli.nii.gz", "--quiet",
        "--weights", weights, "--pipeline", "btcv", "--seed", "5", "--batch-size", "2",
    )
    model = sv.Model(weights=weights, pipeline="btcv", seed=5, batch_size=2, quiet=True)
    assert model.info["kind"] == "sdseg" and model.info["slice_size"] == 256
    seg = model.segment(sv.read_volume(phantom), progress=False)
    assert np.array_equal(load(tmp_path / "cli.nii.gz"), seg.labels)
    seg.save(tmp_path / "py.nii.gz")
    assert nifti_bytes(tmp_path / "py.nii.gz") == nifti_bytes(tmp_path / "cli.nii.gz")


def test_multiclass_fixture_model_labels_equal_the_cli(cli, tmp_path):
    """The tiny multi-class checkpoint (4 classes: the UNet and decoder run once per class, the
    label is the arg-max) through a 4-class pipeline file, CLI against Python."""
    fixture = FIXTURES / "tiny-multiclass"
    pipeline = tmp_path / "four.toml"
    pipeline.write_text(
        'name = "four"\n'
        'description = "The tiny multi-class fixture at 256x256 (test only)."\n'
        "[window]\nhu_min = -125.0\nhu_max = 275.0\n"
        '[normalise]\nmode = "minmax"\neps = 0.0\n'
        '[slicing]\nframe = "native"\nsize = 256\nresize = "bilinear"\n'
        '[labels.classes]\n0 = "background"\n1 = "one"\n2 = "two"\n3 = "three"\n'
        f'[model]\npreset = "{(fixture / "config.json").as_posix()}"\nnum_classes = 4\n'
    )
    phantom = tmp_path / "ph.nii.gz"
    write_phantom(phantom)
    weights = fixture / "checkpoint.ckpt"
    run_cli(
        cli, "run", phantom, "--out", tmp_path / "cli.nii.gz", "--quiet", "--weights", weights,
        "--pipeline", pipeline, "--seed", "5", "--batch-size", "2",
    )
    model = sv.Model(weights=weights, pipeline=str(pipeline), seed=5, batch_size=2, quiet=True)
    seg = model.segment(sv.read_volume(phantom), progress=False)
    cli_labels = load(tmp_path / "cli.nii.gz")
    assert len(np.unique(cli_labels)) > 2, "the fixture gives more than one class"
    assert np.array_equal(cli_labels, seg.labels)
    seg.save(tmp_path / "py.nii.gz")
    assert nifti_bytes(tmp_path / "py.nii.gz") == nifti_bytes(tmp_path / "cli.nii.gz")


def test_evaluate_equals_eval_json(cli, demo_model, demo_volume, tmp_path):
    pred = tmp_path / "pred.nii.gz"
    demo_model.segment(demo_volume, progress=False).save(pred)
    for extra, kwargs in [
        ([], {}),
        (["--protocol", "sdseg", "--hd95", "pooled", "--nsd-tolerance", "2"],
         {"protocol": "sdseg", "hd95": "pooled", "nsd_tolerance": 2}),
        (["--postprocess", "default", "--labels", "1"], {"postprocess": "default", "labels": [1]}),
    ]:
        out = tmp_path / "x.json"
        run_cli(cli, "eval", "--pred", pred, "--gt", DEMO_LABELS, "--pipeline", "demo",
                "--out", out, "--quiet", *extra)
        want = json.loads(out.read_text())
        # Files: the same report, field for field.
        got = sv.evaluate(pred, DEMO_LABELS, pipeline="demo", **kwargs)
        assert got == want, extra
        # Arrays: the same numbers; only the prediction's name differs.
        seg = demo_model.segment(demo_volume, progress=False)
        got = sv.evaluate(seg, DEMO_LABELS, pipeline="demo", **kwargs)
        for report in (got, got.get("postprocessing", {}).get("without")):
            if report is not None:
                assert report["cases"][0]["pred"] == "<array>"
                report["cases"][0]["pred"] = str(pred)
        assert got == want, extra


def test_run_html_writes_the_review_page_the_cli_writes(cli, tmp_path):
    """``run(html=..., gt=...)`` is ``run --html --gt``: the page's case table and scores."""
    run_cli(cli, "run", DEMO_CT, "--out", tmp_path / "cli", "--quiet",
            "--html", tmp_path / "cli.html", "--gt", DEMO_LABELS, "--html-ct-size", "64")
    sv.run(DEMO_CT, tmp_path / "py", quiet=True, progress=False,
           html=tmp_path / "py.html", gt=DEMO_LABELS, html_ct_size=64)

    def index(page):
        html = page.read_text()
        start = html.index('<script type="application/json" id="review-index">')
        start = html.index(">", start) + 1
        return json.loads(html[start:html.index("</script>", start)])

    cli_index, py_index = index(tmp_path / "cli.html"), index(tmp_path / "py.html")
    assert cli_index["scores"] == py_index["scores"]
    assert len(cli_index["cases"]) == len(py_index["cases"]) == 1
    for a, b in zip(cli_index["cases"], py_index["cases"]):
        assert (a["case"], a["mean_dice"], a["view"]["layers"]) == (b["case"], b["mean_dice"], b["view"]["layers"])
        assert b["mean_dice"] > 0.9
    assert "--html" in py_index["runs"][0]["command"]
