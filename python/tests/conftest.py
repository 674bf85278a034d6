"""Shared fixtures: the repository's test data, the CLI binary the results are compared with,
and small volumes.

The CLI binary: ``$SDSEG_BIN`` (CI sets it to the shipped release binary), else
``target/shipped/sdseg-volume`` or ``target/release/sdseg-volume`` of this checkout. Without
one, the comparisons fail, unless ``SDSEG_ALLOW_MISSING_TOOLS=1`` (then they skip), as the
Rust tests treat their tools.
"""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_CT = REPO / "testdata" / "demo-ct"
DEMO_LABELS = REPO / "testdata" / "demo-ct-labels.nii.gz"
FIXTURES = REPO / "testdata" / "fixtures"


@pytest.fixture(autouse=True, scope="session")
def _data_dir(tmp_path_factory):
    """The demo model unpacks into $SDSEG_DATA_DIR: a private one, for the binding and the
    binary alike (unless the caller chose one)."""
    if not os.environ.get("SDSEG_DATA_DIR"):
        os.environ["SDSEG_DATA_DIR"] = str(tmp_path_factory.mktemp("sdseg-data"))
    yield


@pytest.fixture(scope="session")
def cli() -> Path:
    env = os.environ.get("SDSEG_BIN")
    candidates = [Path(env)] if env else [
        REPO / "target" / "shipped" / "sdseg-volume",
        REPO / "target" / "release" / "sdseg-volume",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    message = f"no sdseg-volume binary (looked for {', '.join(map(str, candidates))}; set SDSEG_BIN)"
    if os.environ.get("SDSEG_ALLOW_MISSING_TOOLS") == "1" and not env:
        pytest.skip(message)
    pytest.fail(message)


def run_cli(cli: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [str(cli), *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    if check and p.returncode != 0:
        raise AssertionError(f"sdseg-volume {' '.join(map(str, args))}: exit {p.returncode}\n{p.stderr}")
    return p


def nifti_bytes(path: Path) -> bytes:
    """The NIfTI file's bytes (decompressed for .nii.gz): header and voxels."""
    data = Path(path).read_bytes()
    return gzip.decompress(data) if str(path).endswith(".gz") else data


@pytest.fixture(scope="session")
def demo_volume():
    import sdseg_volume as sv

    return sv.read_volume(DEMO_CT)


@pytest.fixture(scope="session")
def demo_model():
    import sdseg_volume as sv

    return sv.Model(quiet=True)


def write_phantom(path: Path, shape=(48, 40, 3), seed=2) -> None:
    """A small NIfTI volume with an ellipse of soft tissue in air-ish noise (LPS-flipped axes:
    a non-trivial affine)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    inside = ((i - shape[0] / 2) / (shape[0] / 3)) ** 2 + ((j - shape[1] / 2) / (shape[1] / 3)) ** 2 < 1
    hu = np.where(inside[..., None], 40.0, -900.0) + rng.normal(0, 20, shape)
    hu[inside.nonzero()[0][:5], inside.nonzero()[1][:5], :] = 300.0
    affine = np.array(
        [[-0.9, 0, 0, 20.0], [0, -0.9, 0, 15.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]]
    )
    img = nib.Nifti1Image(hu.astype(np.int16), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))
