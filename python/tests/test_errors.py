"""Errors: the exception class follows the CLI's exit code, the message is the CLI's."""

from __future__ import annotations

import numpy as np
import pytest

import sdseg_volume as sv
from conftest import DEMO_CT, run_cli


def cli_error(cli, *args):
    p = run_cli(cli, *args, check=False)
    assert p.stderr.strip().splitlines()[-1].startswith("error: "), p.stderr
    return p.returncode, p.stderr.strip().splitlines()[-1][len("error: "):]


def test_hierarchy():
    assert issubclass(sv.InputError, sv.SdsegError) and issubclass(sv.InputError, ValueError)
    assert issubclass(sv.InternalError, sv.SdsegError) and issubclass(sv.InternalError, RuntimeError)
    assert issubclass(sv.PartialFailure, sv.SdsegError)
    assert (sv.InputError.exit_code, sv.InternalError.exit_code, sv.PartialFailure.exit_code) == (2, 1, 3)


def test_missing_input_is_an_input_error_with_the_cli_message(cli, tmp_path):
    missing = tmp_path / "nope"
    code, message = cli_error(cli, "run", missing, "--out", tmp_path / "o.nii.gz", "--quiet")
    assert code == 2
    with pytest.raises(sv.InputError) as e:
        sv.run(missing, tmp_path / "o.nii.gz", quiet=True, progress=False)
    assert str(e.value) == message
    with pytest.raises(ValueError, match=str(missing)):
        sv.read_volume(missing)


def test_a_bad_file_is_named_as_the_cli_names_it(cli, tmp_path):
    bad = tmp_path / "ct.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not really gzip" * 4)
    code, message = cli_error(cli, "import", bad, "--out", tmp_path / "x.nii.gz", "--quiet")
    assert code == 2
    with pytest.raises(sv.InputError) as e:
        sv.read_volume(bad)
    assert e.value.exit_code == code
    assert str(e.value) in message and str(bad) in str(e.value)


def test_bad_options_are_input_errors(tmp_path):
    with pytest.raises(sv.InputError, match="dtype"):
        sv.Model(dtype="f64", quiet=True)
    with pytest.raises(sv.InputError, match="no such file"):
        sv.Model(weights=tmp_path / "missing.safetensors", quiet=True)
    with pytest.raises(sv.InputError, match="batch-size"):
        sv.Model(batch_size=0, quiet=True)
    with pytest.raises(sv.InputError, match="pipeline"):
        sv.Model(pipeline="nope", quiet=True)
    with pytest.raises(sv.InputError, match="protocol"):
        sv.evaluate(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 2), np.uint8), (1, 1, 1), protocol="x")


def test_grid_mismatch_in_evaluate_is_an_input_error():
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(sv.InputError, match="differ in shape"):
        sv.evaluate(a, np.zeros((4, 4, 5), np.uint8), (1, 1, 1))


def test_partial_failure_carries_every_case(tmp_path):
    good = DEMO_CT
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    with pytest.raises(sv.PartialFailure) as e:
        sv.run([good, bad], tmp_path / "out", quiet=True, progress=False)
    statuses = {c["case"]: c["status"] for c in e.value.cases}
    assert statuses == {"demo-ct": "written", "broken": "failed"}
    assert (tmp_path / "out" / "demo-ct.nii.gz").is_file()


def test_callback_exception_is_raised_after_the_call(demo_volume):
    model = sv.Model(quiet=True)

    def boom(case, done, total):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        model.segment(demo_volume, progress=boom)
    # The model is still usable.
    assert model.segment(demo_volume, progress=False).labels.any()


def test_demo_model_warns_on_a_non_phantom(tmp_path):
    import nibabel as nib

    from conftest import write_phantom

    path = tmp_path / "real.nii.gz"
    write_phantom(path)  # not tagged as a demo phantom
    model = sv.Model(quiet=True)
    with pytest.warns(UserWarning, match="DEMO MODEL"):
        seg = model.segment(path, progress=False)
    assert any("DEMO MODEL" in w for w in seg.warnings)
    assert nib is not None
