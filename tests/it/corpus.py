#!/usr/bin/env python3
"""Real-world corpus: every DICOM and NIfTI test file shipped in the pydicom and nibabel
packages, and series assembled from them, through `sdseg-volume import` (the shipped binary).

    corpus.py BINARY WORKDIR [--only SUBSTRING] [--timeout 60] [--rss-limit-mib 1024]

Driven by tests/it/corpus.rs. Every input is classified:

    CORRECT     exit 0 and the output NIfTI equals the reference read (below)
    REFUSED     exit 2; the reason (stderr) is recorded and listed, grouped, at the end
    WRONG       exit 0 but shape / voxels / affine differ from the reference, or exit 0 where
                nothing can be read (not an image, a colour image, a truncated slice file)
    CRASH       killed by a signal, or an exit code other than 0 and 2 (a panic is 101)
    HANG        still running after --timeout seconds (killed)
    RSS         peak resident memory above --rss-limit-mib (os.wait4's ru_maxrss); a process is
                killed as soon as it passes the limit (its real peak is then higher)
    UNVERIFIED  exit 0 but there is no reference (pydicom cannot decode the input, or it is
                not a regular stack); listed, not a failure

The script exits 1 when any input is WRONG, CRASH, HANG or RSS, else 0. It also lists the
refusals of inputs that pydicom reads as a regular stack (decoder or geometry gaps: legitimate
or not, a reviewer judges), and checks once that the comparison catches a wrong voxel, a
reversed slice order and a shifted affine. The binary is copied into WORKDIR first, so a
rebuild during the run cannot mix two binaries. Peak RSS is os.wait4's ru_maxrss of a child
spawned by a small helper process (~10 MiB: below any run of the tool), not by this
interpreter, whose own memory ru_maxrss would otherwise include.

References
----------
* NIfTI input: nibabel `img.get_fdata()` (trailing size-1 dimensions dropped) and `img.affine`
  (to 1e-6).
* DICOM input: pydicom `ds.pixel_array` (the pylibjpeg plugins decode compressed syntaxes)
  × RescaleSlope + RescaleIntercept per frame, laid out [column, row, slice], slices sorted by
  ImagePositionPatient projected on the normal row × column of ImageOrientationPatient. The
  affine is dcm2niix's: IPP of the first slice + i·Δc·row + j·Δr·col + k·Δs·n (Δs the mean
  spacing along n), x and y negated (LPS → RAS); compared to 1e-4 mm.
* Voxel tolerance: float32 rounding (1e-6 relative) plus, for lossy syntaxes, a number of
  stored units × |slope| (LOSSY_UNITS): decoders of the same lossy stream may round the
  inverse transform differently. Anything beyond that is WRONG.

Inputs
------
1. `file`: each file as is (NIfTI, DICOM, and everything else: text, MINC, PAR/REC, MGH…,
   which must be refused with exit 2). `.gz` files that hold DICOM are also gunzipped into the
   work folder and used like the shipped files.
2. `file --series`: each multi-frame DICOM file again with `--series <its UID>`, so that the
   CT-only choice policy does not hide what the decoder does.
3. `folder`: each shipped folder that holds DICOM files (scanned recursively by the tool);
   when the tool reads one, `inspect --json` names the series it chose and that series is the
   reference. `folder --series`: in folders without subfolders, each series of >= 2 image
   frames, requested with `--series`.
4. Assembled series from every single-frame DICOM image that pydicom decodes. The copies keep
   the PixelData bytes, the transfer syntax and the byte order exactly (header elements only
   are edited; the copies are checked after writing); each gets a new SOPInstanceUID,
   ImagePositionPatient stepped 2.5 mm along the normal, RescaleIntercept + 10·k (so that a
   wrong slice order or a per-slice rescale mistake shows), InstanceNumber and file names in
   the reverse of the position order. ImageOrientationPatient [1,0,0,0,1,0], PixelSpacing
   [1,1] and ImagePositionPatient [0,0,0] are added when missing (noted). Read with
   `--series UID` (the CT-only choice would refuse MR/OT/... by policy).
   - `series3`: three copies in a folder.
   - `orig+2`: the original file (byte-for-byte) and two copies.
   - `zip`: the `series3` folder zipped (one per pixel format and syntax).
   - `trunc`: `series3` with the last slice's file cut inside its pixel data (one per pixel
     format and syntax). The tool must refuse it, naming the file: exit 0 is WRONG (a slice
     silently dropped or read short).
   - `cut-stream` (compressed syntaxes, one per pixel format and syntax): `series3` with the
     last slice's codestream cut in half and encapsulated again, so the file itself is
     well-formed; the decoder must report an error (exit 2), not panic or return a partial
     image (exit 0 is WRONG).
   Colour images (SamplesPerPixel 3) and PALETTE COLOR get `series3` only; they must be
   refused (exit 0 is WRONG).
"""

import json
import os
import signal
import sys
import time


# === Running the binary =======================================================
#
# ru_maxrss of a child counts the memory of the process it was exec'd from: spawned straight
# from this interpreter (numpy, pydicom: ~170 MiB) every run would read ~170 MiB. So a helper
# forked before the heavy imports (~10 MiB) spawns the binary and waits for it with wait4.


def _vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _spawn_and_wait(req):
    """Run one command: exit code (negative: signal), peak RSS (KiB), seconds, kill reason.
    Killed after req["timeout"] s, or once its RSS passes req["rss_kill_kib"]."""
    env = {k: v for k, v in os.environ.items() if k != "RUST_BACKTRACE"}
    wr = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    t0 = time.monotonic()
    pid = os.posix_spawn(
        req["argv"][0],
        req["argv"],
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, req["stdout"], wr, 0o644),
            (os.POSIX_SPAWN_OPEN, 2, req["stderr"], wr, 0o644),
        ],
    )
    killed, hwm, nap = None, 0, 0.001
    while True:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            break
        hwm = max(hwm, _vm_hwm_kib(pid))
        if killed is None and time.monotonic() - t0 > req["timeout"]:
            killed = "timeout"
            os.kill(pid, signal.SIGKILL)
        elif killed is None and hwm > req["rss_kill_kib"]:
            killed = "rss"
            os.kill(pid, signal.SIGKILL)
        time.sleep(nap)
        nap = min(nap * 1.5, 0.02)
    maxrss_kib = ru.ru_maxrss // 1024 if sys.platform == "darwin" else ru.ru_maxrss  # bytes there
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "rss_kib": max(maxrss_kib, hwm),
        "secs": time.monotonic() - t0,
        "killed": killed,
    }


def _start_spawner():
    req_r, req_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(req_w)
        os.close(res_r)
        try:
            with os.fdopen(req_r) as rq, os.fdopen(res_w, "w") as rs:
                for line in rq:
                    rs.write(json.dumps(_spawn_and_wait(json.loads(line))) + "\n")
                    rs.flush()
        finally:
            os._exit(0)
    os.close(req_r)
    os.close(res_w)
    return pid, os.fdopen(req_w, "w"), os.fdopen(res_r)


SPAWNER = _start_spawner() if __name__ == "__main__" else None

import argparse  # noqa: E402
import collections  # noqa: E402
import gzip  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

warnings.simplefilter("ignore")

import nibabel as nib  # noqa: E402
import pydicom  # noqa: E402
from pydicom import config as dcm_config  # noqa: E402
from pydicom.dataset import FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate, generate_fragmented_frames  # noqa: E402
from pydicom.filereader import read_dataset  # noqa: E402
from pydicom.uid import UID, generate_uid  # noqa: E402
from pydicom.valuerep import format_number_as_ds  # noqa: E402

dcm_config.settings.reading_validation_mode = dcm_config.IGNORE
dcm_config.settings.writing_validation_mode = dcm_config.IGNORE

FAILING = ("WRONG", "CRASH", "HANG", "RSS")
OUTCOMES = ("CORRECT", "REFUSED", "UNVERIFIED") + FAILING

# Stored units by which two decoders of the same lossy stream may differ (per sample).
LOSSY_UNITS = {
    "1.2.840.10008.1.2.4.50": 1,  # JPEG Baseline: IDCT rounding (libjpeg family: <= 1)
    "1.2.840.10008.1.2.4.51": 1,  # JPEG Extended (12-bit): same
    "1.2.840.10008.1.2.4.91": 1,  # JPEG 2000 (lossy allowed): inverse DWT rounding
    "1.2.840.10008.1.2.4.203": 1,  # HTJ2K (lossy allowed)
    # JPEG-LS near-lossless (.81) is exactly specified: decoders agree bit for bit.
}
STEP_MM = 2.5
# pydicom's decoders for the compressed syntaxes: libjpeg for JPEG (baseline, extended,
# lossless) and JPEG-LS, OpenJPEG for JPEG 2000, and the faster RLE plugin (pydicom also has
# its own RLE decoder). pyjpegls, when installed, is pydicom's first choice for JPEG-LS.
PLUGIN_MODULES = {
    "pylibjpeg": "pylibjpeg",
    "pylibjpeg-libjpeg": "libjpeg",
    "pylibjpeg-openjpeg": "openjpeg",
    "pylibjpeg-rle": "rle",
}


class NoReference(Exception):
    """pydicom / nibabel cannot give a reference for this input."""


class Result:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def run_tool(binary, args, logdir, timeout, rss_kill_kib):
    """Run the binary through the spawner; stdout and stderr land in logdir."""
    logdir.mkdir(parents=True, exist_ok=True)
    out_p, err_p = logdir / "stdout", logdir / "stderr"
    _, req, res = SPAWNER
    req.write(json.dumps({
        "argv": [str(binary)] + [str(a) for a in args],
        "stdout": str(out_p),
        "stderr": str(err_p),
        "timeout": timeout,
        "rss_kill_kib": rss_kill_kib,
    }) + "\n")
    req.flush()
    line = res.readline()
    if not line:
        raise RuntimeError("the spawner process died (its traceback is above)")
    r = json.loads(line)
    return Result(
        stderr=err_p.read_text(errors="replace"),
        stdout=out_p.read_text(errors="replace"),
        **r,
    )


# === DICOM helpers ============================================================


def read_dicom(path):
    """pydicom dataset or None. A file without the "DICM" preamble is tried as a bare data set
    (explicit VR LE, implicit VR LE, explicit VR BE), kept only when it looks like DICOM (a SOP
    class or pixel data); it is marked `_bare` and given a file meta header in memory (not
    written to copies) so that pydicom can decode its pixel data."""
    try:
        return pydicom.dcmread(str(path))
    except Exception:
        pass
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    for implicit, little, uid in (
        (False, True, pydicom.uid.ExplicitVRLittleEndian),
        (True, True, pydicom.uid.ImplicitVRLittleEndian),
        (False, False, pydicom.uid.ExplicitVRBigEndian),
    ):
        try:
            ds = read_dataset(io.BytesIO(raw), implicit, little)
            if "SOPClassUID" not in ds and "PixelData" not in ds:
                continue
            ds.set_original_encoding(implicit, little)
        except Exception:
            continue
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = uid
        ds._bare = True
        return ds
    return None


def floats(v, n):
    """n finite floats from a DICOM value, else None (what the tool accepts)."""
    if v is None:
        return None
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        v = [v]
    try:
        vals = [float(x) for x in v]
    except (TypeError, ValueError):
        return None
    if len(vals) != n or not all(np.isfinite(vals)):
        return None
    return vals


def scalar(v, default):
    if v is None or v == "":
        return default
    try:
        x = float(v)
    except (TypeError, ValueError):
        return default
    return x


def first_item(ds, kw):
    try:
        s = ds.get(kw)
    except Exception:
        return None
    if s is None or len(s) == 0:
        return None
    return s[0]


def transfer_syntax(ds):
    if getattr(ds, "_bare", False):
        return None
    fm = getattr(ds, "file_meta", None)
    uid = fm.get("TransferSyntaxUID") if fm is not None else None
    return str(uid) if uid else None


def syntax_label(uid):
    if uid is None:
        return "(no file meta)"
    try:
        name = UID(uid).name
    except Exception:
        name = "?"
    return f"{uid} {name}" if name and name != uid else f"{uid} (unknown)"


def n_frames(ds):
    v = ds.get("NumberOfFrames", 1)
    try:
        return max(1, int(v))
    except (TypeError, ValueError):
        return 1


def is_image(ds):
    return "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds


def frame_info(ds, f):
    """Geometry and rescale of frame f: top level, then shared, then per-frame groups."""
    g = {
        "ipp": floats(ds.get("ImagePositionPatient"), 3),
        "iop": floats(ds.get("ImageOrientationPatient"), 6),
        "ps": floats(ds.get("PixelSpacing"), 2),
        "slope": scalar(ds.get("RescaleSlope"), 1.0),
        "inter": scalar(ds.get("RescaleIntercept"), 0.0),
    }
    groups = [first_item(ds, "SharedFunctionalGroupsSequence")]
    pf = ds.get("PerFrameFunctionalGroupsSequence")
    if pf is not None and f < len(pf):
        groups.append(pf[f])
    for grp in groups:
        if grp is None:
            continue
        item = first_item(grp, "PlanePositionSequence")
        if item is not None and floats(item.get("ImagePositionPatient"), 3):
            g["ipp"] = floats(item.get("ImagePositionPatient"), 3)
        item = first_item(grp, "PlaneOrientationSequence")
        if item is not None and floats(item.get("ImageOrientationPatient"), 6):
            g["iop"] = floats(item.get("ImageOrientationPatient"), 6)
        item = first_item(grp, "PixelMeasuresSequence")
        if item is not None and floats(item.get("PixelSpacing"), 2):
            g["ps"] = floats(item.get("PixelSpacing"), 2)
        item = first_item(grp, "PixelValueTransformationSequence")
        if item is not None:
            g["slope"] = scalar(item.get("RescaleSlope"), g["slope"])
            g["inter"] = scalar(item.get("RescaleIntercept"), g["inter"])
    return g


def normal_of(iop):
    row, col = np.array(iop[:3]), np.array(iop[3:])
    n = np.cross(row, col)
    return n / np.linalg.norm(n)


class Reference:
    def __init__(self, values, affine, tol_abs, tol_rel=1e-6, affine_tol=1e-4, note=""):
        self.values = values
        self.affine = affine
        self.tol_abs = tol_abs
        self.tol_rel = tol_rel
        self.affine_tol = affine_tol
        self.note = note


def dicom_reference(members):
    """Reference volume of one series: members = [(path, dataset)]."""
    frames = []
    syntaxes = set()
    for path, ds in members:
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        if spp != 1:
            raise NoReference(f"{path.name}: SamplesPerPixel {spp}")
        try:
            arr = np.asarray(ds.pixel_array)
        except Exception as e:
            raise NoReference(f"{path.name}: pydicom cannot decode: {str(e).splitlines()[0][:160]}")
        nf = n_frames(ds)
        rows, cols = int(ds.Rows), int(ds.Columns)
        arr = arr.reshape(nf, rows, cols)
        syntaxes.add(transfer_syntax(ds))
        offsets = None
        gfov = ds.get("GridFrameOffsetVector")
        if nf > 1 and gfov is not None and ds.get("PerFrameFunctionalGroupsSequence") is None:
            offsets = floats(gfov, nf)
        for f in range(nf):
            g = frame_info(ds, f)
            if g["ipp"] is None or g["iop"] is None:
                raise NoReference(f"{path.name}: no ImagePositionPatient/ImageOrientationPatient")
            if offsets is not None:
                g["ipp"] = list(np.array(g["ipp"]) + offsets[f] * normal_of(g["iop"]))
            frames.append((g, arr[f], path.name))
    iop = frames[0][0]["iop"]
    n = normal_of(iop)
    frames.sort(key=lambda fr: float(np.dot(fr[0]["ipp"], n)))
    proj = [float(np.dot(fr[0]["ipp"], n)) for fr in frames]
    # Only a regular stack has a reference volume (what the tool does with others is policy).
    for g, a, name in frames:
        if np.max(np.abs(np.array(g["iop"]) - np.array(iop))) > 1e-4:
            raise NoReference(f"not one stack: {name} has another ImageOrientationPatient")
        if a.shape != frames[0][1].shape:
            raise NoReference(f"not one stack: {name} has another image size")
    steps = np.diff(proj)
    uneven = len(steps) and steps.max() - steps.min() > 0.01 * max(np.median(steps), 1.0)
    if len(steps) and (steps.min() < 1e-3 or uneven):
        raise NoReference("not a regular stack: duplicate positions or non-uniform spacing")
    slabs = [fr[1].astype(np.float64) * fr[0]["slope"] + fr[0]["inter"] for fr in frames]
    values = np.stack(slabs, axis=0).transpose(2, 1, 0)  # [column, row, slice]
    ps = frames[0][0]["ps"] or [1.0, 1.0]
    ds_mm = (proj[-1] - proj[0]) / (len(proj) - 1) if len(proj) > 1 else 1.0
    row, col = np.array(iop[:3]), np.array(iop[3:])
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    aff = np.eye(4)
    aff[:3, 0] = row * ps[1]
    aff[:3, 1] = col * ps[0]
    aff[:3, 2] = n * ds_mm
    aff[:3, 3] = frames[0][0]["ipp"]
    aff[:2, :] *= -1.0
    units = max(LOSSY_UNITS.get(s or "", 0) for s in syntaxes)
    slope = max(abs(fr[0]["slope"]) for fr in frames)
    note = f"lossy tolerance {units} stored unit(s)" if units else ""
    return Reference(values, aff, tol_abs=units * slope + 1e-6, note=note)


def nifti_reference(path):
    try:
        img = nib.load(str(path))
    except Exception as e:
        raise NoReference(f"nibabel cannot load it: {e}")
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        for klass in (nib.Nifti1Image, nib.Nifti2Image):
            try:
                img = klass.from_filename(str(path))
                break
            except Exception:
                continue
        else:
            raise NoReference(f"nibabel reads it as {type(img).__name__}, not a NIfTI image")
    data = np.asarray(img.get_fdata())
    shape = list(data.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    while len(shape) < 3:
        shape.append(1)
    return Reference(data.reshape(shape), np.asarray(img.affine), tol_abs=1e-6, affine_tol=1e-6)


def compare(out_path, ref):
    """(ok, detail) of the tool's output against a reference."""
    try:
        img = nib.load(str(out_path))
        out = np.asarray(img.get_fdata())
    except Exception as e:
        return False, f"output unreadable by nibabel: {e}"
    if out.shape != ref.values.shape:
        return False, f"shape {out.shape}, reference {ref.values.shape}"
    tol = ref.tol_abs + ref.tol_rel * np.abs(ref.values)
    with np.errstate(invalid="ignore"):
        both_nan = np.isnan(out) & np.isnan(ref.values)
        diff = np.where(both_nan | (out == ref.values), 0.0, np.abs(out - ref.values))
        diff = np.where(np.isnan(diff), np.inf, diff)
    bad = diff > tol
    shape_s = "x".join(map(str, out.shape))
    if bad.any():
        idx = np.unravel_index(np.argmax(np.where(bad, diff, -1.0)), diff.shape)
        return False, (
            f"{int(bad.sum())} of {bad.size} voxels differ; max |diff| {float(diff[idx]):g} at "
            f"[i,j,k]={list(map(int, idx))}: output {float(out[idx]):g}, reference "
            f"{float(ref.values[idx]):g} (shape {shape_s})"
        )
    detail = f"{shape_s}, max |diff| {float(diff.max()) if diff.size else 0.0:g}"
    if ref.tol_abs >= 1 and diff.size and diff.max() > 0:
        detail += f" ({int((diff > 1e-3).sum())} of {diff.size} voxels differ)"
    if ref.affine is not None:
        ad = float(np.max(np.abs(np.asarray(img.affine) - ref.affine)))
        if not ad <= ref.affine_tol:
            return False, (
                f"affine differs by {ad:g} (> {ref.affine_tol:g}); output "
                f"{np.round(img.affine, 4).tolist()}, reference {np.round(ref.affine, 4).tolist()}"
            )
        detail += f", affine max |diff| {ad:.1e}"
    if ref.note:
        detail += f" ({ref.note})"
    return True, detail


# === The corpus ===============================================================


class Case:
    """One run of `import`."""

    def __init__(self, label, kind, path, syntax, series=None, expect=None, reference=None):
        self.label = label
        self.kind = kind
        self.path = Path(path)
        self.syntax = syntax
        self.series = series
        # None: compare with `reference()` on exit 0; else the reason exit 0 is WRONG.
        self.expect_refusal = expect
        self.reference = reference  # callable -> Reference (raises NoReference)
        self.notes = []


class Corpus:
    def __init__(self, work):
        self.work = work
        self.cases = []
        self.skipped_assembly = []  # (label, why)
        self.roots = {}
        self.data_roots = []

    # -- discovery ----------------------------------------------------------------

    def discover(self):
        pyd = Path(pydicom.__file__).parent / "data"
        nibd = Path(nib.__file__).parent
        self.roots = {"pydicom": pyd, "nibabel": nibd}
        self.data_roots = [pyd, nibd / "tests" / "data", nibd / "nicom" / "tests" / "data"]
        files = []  # (label, path)
        for p in sorted((pyd / "test_files").rglob("*")):
            if p.is_file():
                files.append((f"pydicom:{p.relative_to(pyd)}", p))
        for p in sorted(pyd.rglob("*")):
            if not p.is_file() or (pyd / "test_files") in p.parents:
                continue
            if p.suffix in (".py", ".pyc") or "__pycache__" in p.parts:
                continue
            if read_dicom(p) is not None:
                files.append((f"pydicom:{p.relative_to(pyd)}", p))
        try:
            from pydicom.data.data_manager import external_data_sources

            for name, src in external_data_sources().items():
                for dtype in ("DATASET", "PALETTE"):
                    try:
                        paths = src.get_paths("**/*", dtype)
                    except Exception:
                        continue
                    for p in sorted(map(Path, paths)):
                        if p.is_file():
                            files.append((f"{name}:{p.name}", p))
        except Exception:
            pass
        for sub in ("tests/data", "nicom/tests/data"):
            for p in sorted((nibd / sub).rglob("*")):
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                    files.append((f"nibabel:{p.relative_to(nibd)}", p))
        # .gz files holding DICOM (not .nii.gz): gunzipped copies join the corpus.
        gz_dir = self.work / "gunzipped"
        derived = []
        for label, p in files:
            if p.name.endswith(".gz") and not p.name.endswith(".nii.gz"):
                try:
                    raw = gzip.decompress(p.read_bytes())
                except Exception:
                    continue
                target = gz_dir / label.replace(":", "_").replace("/", "_")[: -len(".gz")]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(raw)
                if read_dicom(target) is not None:
                    derived.append((f"{label} (gunzipped)", target))
                else:
                    target.unlink()
        return files + derived

    # -- cases ----------------------------------------------------------------------

    def build(self, files):
        datasets = {}
        for label, p in files:
            datasets[label] = read_dicom(p)
        classes_done = set()
        for label, p in files:
            ds = datasets[label]
            self.add_file_case(label, p, ds)
            if ds is not None and is_image(ds) and n_frames(ds) > 1 and ds.get("SeriesInstanceUID"):
                c = Case(
                    f"{label} --series",
                    "file --series",
                    p,
                    syntax_label(transfer_syntax(ds)),
                    series=str(ds.SeriesInstanceUID),
                )
                self.set_dicom_expectation(c, [(p, ds)])
                self.cases.append(c)
        self.add_folders(files, datasets)
        for label, p in files:
            ds = datasets[label]
            if ds is None or not is_image(ds):
                continue
            if n_frames(ds) > 1:
                continue
            self.assemble(label, p, ds, classes_done)

    def add_file_case(self, label, p, ds):
        name = p.name.lower()
        if name.endswith(".nii") or name.endswith(".nii.gz"):
            c = Case(label, "file", p, "NIfTI", reference=lambda p=p: nifti_reference(p))
            try:
                with (gzip.open(p) if name.endswith(".gz") else open(p, "rb")) as f:
                    head = f.read(4)
                sizeof_hdr = {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
                kind = "NIfTI-1" if 348 in sizeof_hdr else "NIfTI?"
                c.syntax = "NIfTI-2" if 540 in sizeof_hdr else kind
            except Exception:
                c.syntax = "NIfTI?"
            self.cases.append(c)
            return
        if ds is None:
            self.cases.append(
                Case(
                    label,
                    "file",
                    p,
                    "not DICOM / not NIfTI",
                    expect="not DICOM, not a single-file NIfTI",
                )
            )
            return
        c = Case(label, "file", p, syntax_label(transfer_syntax(ds)))
        if not is_image(ds):
            c.expect_refusal = "DICOM without pixel data"
        elif n_frames(ds) <= 1:
            c.expect_refusal = "a single-frame file is one slice, not a volume"
        else:
            self.set_dicom_expectation(c, [(p, ds)])
        self.cases.append(c)

    def set_dicom_expectation(self, c, members):
        colour = [
            m
            for m in members
            if int(m[1].get("SamplesPerPixel", 1) or 1) != 1
            or str(m[1].get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR"
        ]
        if colour:
            ds = colour[0][1]
            c.expect_refusal = (
                f"colour image ({ds.get('PhotometricInterpretation')}, "
                f"SamplesPerPixel {ds.get('SamplesPerPixel')})"
            )
        else:
            c.reference = lambda members=members: dicom_reference(members)

    def add_folders(self, files, datasets):
        by_dir = collections.defaultdict(list)
        for label, p in files:
            ds = datasets[label]
            # Only the packages' own folders (not the gunzipped copies, not pydicom-data).
            if ds is None or not any(r in p.parents for r in self.data_roots):
                continue
            # Every folder from the file's own up to its package's data folder.
            for parent in p.parents:
                by_dir[parent].append((label, p, ds))
                if parent in self.data_roots:
                    break
        for d in sorted(by_dir):
            members = by_dir[d]
            if not any(is_image(ds) for _, _, ds in members):
                continue
            pyd = self.roots["pydicom"]
            pkg = "pydicom" if d == pyd or pyd in d.parents else "nibabel"
            rel = d.relative_to(self.roots[pkg])
            name = f"{pkg}:{rel}/"
            if str(rel) == ".":
                name = f"{pkg}:{d.name}/ (the whole data folder)"
            c = Case(name, "folder", d, "folder")
            c.reference = None  # decided after the run, from `inspect --json`
            self.cases.append(c)
            # Leaf folders: each series of >= 2 image frames, requested with --series.
            if any(x.is_dir() and x.name != "__pycache__" for x in d.iterdir()):
                continue
            series = collections.defaultdict(list)
            for label, p, ds in members:
                if p.parent == d and is_image(ds) and ds.get("SeriesInstanceUID"):
                    series[str(ds.SeriesInstanceUID)].append((p, ds))
            for uid, mem in sorted(series.items()):
                if sum(n_frames(ds) for _, ds in mem) < 2:
                    continue
                syn = {transfer_syntax(ds) for _, ds in mem}
                c = Case(
                    f"{name} --series {uid}",
                    "folder --series",
                    d,
                    syntax_label(syn.pop()) if len(syn) == 1 else "mixed syntaxes",
                    series=uid,
                )
                self.set_dicom_expectation(c, mem)
                self.cases.append(c)

    # -- assembled series ---------------------------------------------------------

    def assemble(self, label, p, ds, classes_done):
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        try:
            orig_pixels = np.asarray(ds.pixel_array)
        except Exception as e:
            why = f"pydicom cannot decode: {str(e).splitlines()[0][:120]}"
            self.skipped_assembly.append((label, why))
            return
        colour = spp != 1 or str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR"
        ts = transfer_syntax(ds)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", label)[-80:]
        base = self.work / "series" / slug
        notes = []
        try:
            s3 = self.write_copies(p, ds, base / "series3", [0, 1, 2], notes, orig_pixels)
        except Exception as e:
            first = str(e).splitlines()[0][:160] if str(e) else ""
            why = f"pydicom cannot write copies: {type(e).__name__}: {first}"
            self.skipped_assembly.append((label, why))
            return
        uid = s3["uid"]
        syn = syntax_label(ts)

        def add(variant, path, files, expect=None):
            c = Case(f"{label} [{variant}]", f"assembled {variant}", path, syn, series=uid)
            c.notes = list(notes)
            if expect:
                c.expect_refusal = expect
            else:
                members = [(f, read_dicom(f)) for f in files]
                self.set_dicom_expectation(c, members)
            self.cases.append(c)
            return c

        add("series3", base / "series3", s3["files"])
        if colour:
            return
        # The original plus two copies (same series only if the original has a UID).
        o2 = self.write_copies(p, ds, base / "orig+2", [1, 2], [], orig_pixels, keep_original=True)
        c = add("orig+2", base / "orig+2", o2["files"])
        if not o2["uid"]:
            c.series = None
            c.notes.append("original has no SeriesInstanceUID: read without --series")
        key = (ts, ds.get("BitsAllocated"), ds.get("PixelRepresentation"), ds.get("BitsStored"))
        if key in classes_done:
            return
        classes_done.add(key)
        zpath = base / "series3.zip"
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted((base / "series3").iterdir()):
                z.write(f, f"series/{f.name}")
        add("zip", zpath, s3["files"])
        # The last slice (along the normal) cut inside its pixel data.
        tr = self.write_copies(p, ds, base / "trunc", [0, 1, 2], [], orig_pixels)
        last = tr["by_k"][2]
        raw = last.read_bytes()
        # Half of the pixel data (which ends the file) is cut; a deflated file is cut in half.
        cut = len(raw) - max(2, min(len(ds.PixelData), len(raw)) // 2)
        last.write_bytes(raw[:cut])
        c = add(
            "trunc",
            base / "trunc",
            tr["files"],
            expect=f"slice file {last.name} is truncated ({cut} of {len(raw)} bytes)",
        )
        c.truncated = last
        if ts and UID(ts).is_encapsulated:
            self.add_cut_stream(p, ds, base / "cut-stream", orig_pixels, add)

    def add_cut_stream(self, p, ds, folder, orig_pixels, add):
        """`series3` with the last slice's compressed stream cut in half, re-encapsulated: a
        well-formed file whose codestream ends early. Exit 0 is WRONG, a panic is a CRASH."""
        cs = self.write_copies(p, ds, folder, [0, 1, 2], [], orig_pixels)
        last = cs["by_k"][2]
        d = read_dicom(last)
        frames = list(generate_fragmented_frames(d.PixelData, number_of_frames=1))
        stream = b"".join(frames[0])
        half = stream[: len(stream) // 2]
        half += b"\0" * (len(half) % 2)
        d.PixelData = encapsulate([half])
        d.save_as(str(last), enforce_file_format=False)
        c = add(
            "cut-stream",
            folder,
            cs["files"],
            expect=f"slice file {last.name} holds half of its compressed stream "
            f"({len(half)} of {len(stream)} bytes)",
        )
        c.truncated = last

    def write_copies(self, src, ds0, folder, ks, notes, orig_pixels, keep_original=False):
        """Copies of `src` at steps ks along the normal. Returns files, by_k, uid."""
        folder.mkdir(parents=True, exist_ok=True)
        ts = transfer_syntax(ds0)
        files, by_k = [], {}
        series_uid = str(ds0.get("SeriesInstanceUID") or "")
        if not series_uid and not keep_original:
            series_uid = str(generate_uid(entropy_srcs=[str(src), "series"]))
            notes.append("SeriesInstanceUID added")
        if keep_original:
            dst = folder / src.name
            shutil.copyfile(src, dst)
            files.append(dst)
        for k in ks:
            ds = read_dicom(src)
            g0 = frame_info(ds, 0)
            pf = first_item(ds, "PerFrameFunctionalGroupsSequence")
            shared = first_item(ds, "SharedFunctionalGroupsSequence")
            if g0["iop"] is None:
                ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
                if k == ks[0]:
                    notes.append("ImageOrientationPatient [1,0,0,0,1,0] added")
            if g0["ps"] is None:
                ds.PixelSpacing = ["1", "1"]
                if k == ks[0]:
                    notes.append("PixelSpacing [1,1] added")
            if g0["ipp"] is None and k == ks[0]:
                notes.append("ImagePositionPatient [0,0,0] added")
            iop = g0["iop"] or [1.0, 0, 0, 0, 1.0, 0]
            ipp0 = np.array(g0["ipp"] or [0.0, 0.0, 0.0])
            pos = [format_number_as_ds(float(x)) for x in ipp0 + k * STEP_MM * normal_of(iop)]
            holder = first_item(pf, "PlanePositionSequence") if pf is not None else None
            if holder is not None and floats(holder.get("ImagePositionPatient"), 3):
                holder.ImagePositionPatient = pos
            else:
                ds.ImagePositionPatient = pos
            # Per-slice intercept, where the tool (and the reference) read it.
            inter = format_number_as_ds(float(g0["inter"] + 10 * k))
            pvt = None
            for grp in (pf, shared):
                item = first_item(grp, "PixelValueTransformationSequence") if grp else None
                if item is not None:
                    pvt = item
                    break
            if pvt is not None:
                pvt.RescaleIntercept = inter
            else:
                ds.RescaleIntercept = inter
                if "RescaleSlope" not in ds:
                    ds.RescaleSlope = "1"
            sop = generate_uid(entropy_srcs=[str(src), str(folder.name), str(k)])
            ds.SOPInstanceUID = sop
            meta = getattr(ds, "file_meta", None)
            if meta is not None and "MediaStorageSOPInstanceUID" in meta:
                ds.file_meta.MediaStorageSOPInstanceUID = sop
            if series_uid:
                ds.SeriesInstanceUID = series_uid
            ds.InstanceNumber = str(10 - k)
            dst = folder / f"{9 - k:02d}_copy.dcm"
            if getattr(ds, "_bare", False):
                # As the original: no preamble, no file meta, the same encoding.
                del ds.file_meta
                implicit, little = ds0.original_encoding
                ds.save_as(
                    str(dst), implicit_vr=implicit, little_endian=little, enforce_file_format=False
                )
            else:
                ds.save_as(str(dst), enforce_file_format=False)
            # The copy must keep the syntax, byte order and pixel bytes exactly.
            back = read_dicom(dst)
            assert back is not None, f"{dst}: pydicom cannot read the copy back"
            assert transfer_syntax(back) == ts, f"{dst}: syntax {transfer_syntax(back)} != {ts}"
            assert back.original_encoding == ds0.original_encoding, f"{dst}: encoding changed"
            assert bytes(back.PixelData) == bytes(ds0.PixelData), f"{dst}: PixelData changed"
            same = np.array_equal(np.asarray(back.pixel_array), orig_pixels)
            assert same, f"{dst}: pixels differ"
            files.append(dst)
            by_k[k] = dst
        return {"files": files, "by_k": by_k, "uid": series_uid}


# === Classification ===========================================================


def shorten(text, corpus):
    for name, root in corpus.roots.items():
        text = text.replace(str(root), f"${name.upper()}")
    return text.replace(str(corpus.work), "$WORK")


def error_line(stderr):
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith("error"):
            return ln
    return lines[-1] if lines else "(no message)"


def reason_group(msg):
    """A message with paths, UIDs and numbers blanked: refusals that share it group."""
    m = re.sub(r"\$[A-Z]+[^\s:,;()]*", "<path>", msg)
    m = re.sub(r"/[^\s:,;()]+", "<path>", m)
    m = re.sub(r"\b\d+(\.\d+){3,}\b", "<uid>", m)
    m = re.sub(r"-?\d+(\.\d+)?", "#", m)
    return m[:200]


def classify(case, corpus, binary, args, idx):
    logdir = corpus.work / "runs" / f"{idx:04d}"
    out = logdir / "out.nii.gz"
    cmd = ["import", str(case.path), "--out", str(out)]
    if case.series:
        cmd += ["--series", case.series]
    r = run_tool(binary, cmd, logdir, args.timeout, args.rss_limit_mib * 1024)
    rss_mib = r.rss_kib / 1024.0
    err = shorten(error_line(r.stderr), corpus) if r.stderr.strip() else ""
    res = {
        "label": case.label,
        "kind": case.kind,
        "syntax": case.syntax,
        "rc": r.rc,
        "rss_mib": round(rss_mib, 1),
        "secs": round(r.secs, 3),
        "notes": case.notes,
    }
    over = rss_mib > args.rss_limit_mib
    if r.killed == "timeout":
        outcome, reason = "HANG", f"killed after {args.timeout} s"
    elif r.killed == "rss":
        outcome = "RSS"
        reason = (
            f"killed at {rss_mib:.0f} MiB (limit {args.rss_limit_mib:.0f} MiB); "
            "the peak would be higher"
        )
    elif r.rc < 0 or r.rc not in (0, 2):
        if r.rc < 0:
            try:
                sig = f"signal {signal.Signals(-r.rc).name}"
            except ValueError:
                sig = f"signal {-r.rc}"
        else:
            sig = f"exit {r.rc}"
        tail = shorten(" | ".join(r.stderr.strip().splitlines()[-3:]), corpus)
        outcome, reason = "CRASH", f"{sig}: {tail[:400]}"
    elif over:
        outcome = "RSS"
        reason = f"peak {rss_mib:.0f} MiB > {args.rss_limit_mib:.0f} MiB (exit {r.rc}: {err[:200]})"
    elif r.rc == 2:
        outcome = "REFUSED"
        named = str(case.path) in r.stderr
        reason = err + ("" if named else "  [message names no input path]")
        res["names_input"] = named
        if getattr(case, "truncated", None) is not None and case.truncated.name not in r.stderr:
            reason += "  [does not name the truncated file]"
        dicom_ref = case.reference is not None and not case.syntax.startswith("NIfTI")
        if dicom_ref and not case.expect_refusal and "not CT" not in err:
            try:
                case.reference()
                res["pydicom_reads"] = True
            except NoReference:
                pass
    elif case.expect_refusal:
        outcome = "WRONG"
        shape = ""
        try:
            shape = " as " + "x".join(map(str, nib.load(str(out)).shape))
        except Exception:
            pass
        reason = f"exit 0{shape}, but nothing can be read: {case.expect_refusal}"
    else:
        try:
            if case.kind == "folder":
                ref = folder_reference(case, binary, args, logdir)
            elif case.reference is None:
                raise NoReference("no reference reader for this input")
            else:
                ref = case.reference()
        except NoReference as e:
            outcome, reason = "UNVERIFIED", f"exit 0; no reference: {e}"
        else:
            ok, detail = compare(out, ref)
            outcome, reason = ("CORRECT" if ok else "WRONG"), detail
    res["outcome"] = outcome
    res["reason"] = reason
    return res


def folder_reference(case, binary, args, logdir):
    """For a folder read without --series: the series `inspect --json` says it chose."""
    args_ = ["inspect", str(case.path), "--json"]
    r = run_tool(binary, args_, logdir / "inspect", args.timeout, args.rss_limit_mib * 1024)
    try:
        chosen = json.loads(r.stdout)["scan"]["chosen"]
    except Exception:
        raise NoReference("inspect --json names no chosen series")
    members = []
    for p in sorted(case.path.rglob("*")):
        if p.is_file():
            ds = read_dicom(p)
            if ds is not None and is_image(ds) and str(ds.get("SeriesInstanceUID", "")) == chosen:
                members.append((p, ds))
    syntaxes = sorted({syntax_label(transfer_syntax(d)) for _, d in members})
    case.syntax = ", ".join(syntaxes) or "folder"
    if not members:
        raise NoReference(f"pydicom finds no image of the chosen series {chosen}")
    return dicom_reference(members)


def self_check(case, out):
    """The comparison must catch a wrong voxel, a wrong slice order and a shifted affine."""
    ref = case.reference()
    img = nib.load(str(out))
    data = np.asarray(img.get_fdata())
    probe = out.parent / "self-check.nii.gz"

    def caught(d, aff):
        nib.save(nib.Nifti1Image(d.astype(np.float32), aff), str(probe))
        return not compare(probe, ref)[0]

    one = data.copy()
    one[0, 0, 0] += 2 * ref.tol_abs + 1 + 1e-5 * abs(one[0, 0, 0])
    shifted = img.affine.copy()
    shifted[0, 3] += 2e-4
    checks = {
        "one voxel off": caught(one, img.affine),
        "slices reversed": caught(data[:, :, ::-1], img.affine),
        "affine shifted 2e-4 mm": caught(data, shifted),
        "unchanged output accepted": not caught(data, img.affine),
    }
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        print(f"comparator self-check on {case.label} FAILED: {', '.join(failed)}", flush=True)
        sys.exit(1)
    print(f"comparator self-check on {case.label}: ok ({', '.join(checks)})", flush=True)


# === Report ===================================================================


def report(results, corpus, elapsed):
    print()
    print("=" * 100)
    counts = collections.Counter(r["outcome"] for r in results)
    tally = ", ".join(f"{o} {counts[o]}" for o in OUTCOMES if counts[o])
    print(f"{len(results)} inputs in {elapsed:.1f} s: {tally}")
    print()
    by_syn = collections.defaultdict(collections.Counter)
    for r in results:
        by_syn[r["syntax"]][r["outcome"]] += 1
    cols = [o for o in OUTCOMES if counts[o]]
    w = max(len(s) for s in by_syn) + 2
    print("transfer syntax".ljust(w) + "".join(o.rjust(11) for o in cols))
    for syn in sorted(by_syn):
        print(syn.ljust(w) + "".join(str(by_syn[syn][o] or "").rjust(11) for o in cols))
    print()
    print("Lossy tolerances (stored units per sample): " + ", ".join(
        f"{syntax_label(u)}: {n}" for u, n in LOSSY_UNITS.items()) + "; every other syntax: exact")
    print()
    refused = collections.defaultdict(list)
    for r in results:
        if r["outcome"] == "REFUSED":
            refused[reason_group(r["reason"])].append(r)
    n_refused = sum(len(v) for v in refused.values())
    print(f"REFUSED reasons ({n_refused} inputs, {len(refused)} kinds):")
    for rs in sorted(refused.values(), key=len, reverse=True):
        print(f"  {len(rs):4d} x {rs[0]['reason'][:300]}")
        for r in rs[:6]:
            print(f"           - {r['label']}")
        if len(rs) > 6:
            print(f"           - ... and {len(rs) - 6} more")
    if corpus.skipped_assembly:
        print()
        print("Single-frame images not assembled into series (pydicom cannot decode them "
              "or write copies):")
        for label, why in corpus.skipped_assembly:
            print(f"  {label}: {why}")
    gaps = [r for r in results if r.get("pydicom_reads")]
    if gaps:
        print()
        print(f"REFUSED although pydicom (with its plugins) reads them as a regular stack "
              f"({len(gaps)}):")
        for r in gaps:
            print(f"  {r['label']}  ({r['syntax']}): {r['reason'][:300]}")
    fails = [r for r in results if r["outcome"] in FAILING]
    unver = [r for r in results if r["outcome"] == "UNVERIFIED"]
    if unver:
        print()
        print(f"UNVERIFIED ({len(unver)}):")
        for r in unver:
            print(f"  {r['label']}: {r['reason']}")
    print()
    if fails:
        print(f"FAILURES ({len(fails)}):")
        for r in fails:
            notes = f" [{'; '.join(r['notes'])}]" if r["notes"] else ""
            print(f"  {r['outcome']:7} exit {r['rc']:>4} {r['rss_mib']:8.1f} MiB  {r['label']}  "
                  f"({r['syntax']}){notes}")
            print(f"          {r['reason']}")
    else:
        print("no WRONG, CRASH, HANG or RSS")


def check_plugins():
    import importlib.util

    missing = [pkg for pkg, mod in PLUGIN_MODULES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        msg = (f"pydicom decoder plugins missing: {', '.join(missing)}; compressed files are then "
               "not assembled into series (`.ci/run python_venv` installs them)")
        if os.environ.get("SDSEG_ALLOW_MISSING_TOOLS") != "1":
            print(f"ERROR: {msg}; SDSEG_ALLOW_MISSING_TOOLS=1 runs without them", flush=True)
            sys.exit(1)
        print(f"NOTICE: {msg}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("work")
    ap.add_argument("--only", help="run the inputs whose label contains this")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--rss-limit-mib", type=float, default=1024.0)
    args = ap.parse_args()
    t0 = time.monotonic()
    work = Path(args.work).resolve()
    if work.exists() and any(work.iterdir()):
        sys.exit(f"{work} is not empty; give a new or empty work folder")
    work.mkdir(parents=True, exist_ok=True)
    check_plugins()
    # A private copy: a rebuild of the target folder during the run cannot mix two binaries.
    binary = work / "sdseg-volume"
    shutil.copy2(args.binary, binary)
    args.binary = str(binary)
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(sys.argv[1])))
    print(f"binary {args.binary} (copy of {Path(sys.argv[1]).resolve()}, modified {built}); "
          f"pydicom {pydicom.__version__}, nibabel {nib.__version__}, numpy {np.__version__}",
          flush=True)
    corpus = Corpus(work)
    files = corpus.discover()
    corpus.build(files)
    cases = [c for c in corpus.cases if not args.only or args.only in c.label]
    setup = time.monotonic() - t0
    print(f"{len(files)} shipped files; {len(cases)} inputs (setup {setup:.1f} s)", flush=True)
    print(f"{'OUTCOME':10} {'exit':>4} {'RSS MiB':>8} {'secs':>6}  input  (syntax) | reason",
          flush=True)
    results = []
    checked = False
    for i, c in enumerate(cases):
        try:
            r = classify(c, corpus, args.binary, args, i)
        except Exception:
            print(f"driver error on {c.label}:\n{traceback.format_exc()}", flush=True)
            raise
        results.append(r)
        if not checked and r["outcome"] == "CORRECT" and c.kind == "assembled series3":
            self_check(c, corpus.work / "runs" / f"{i:04d}" / "out.nii.gz")
            checked = True
        notes = f" [{'; '.join(r['notes'])}]" if r["notes"] else ""
        print(f"{r['outcome']:10} {r['rc']:>4} {r['rss_mib']:8.1f} {r['secs']:6.2f}  {r['label']}  "
              f"({r['syntax']}){notes} | {r['reason']}", flush=True)
    if not checked and any(c.kind == "assembled series3" for c in cases):
        print("comparator self-check: no assembled series was read correctly, so it did not run",
              flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    report(results, corpus, time.monotonic() - t0)
    pid, req, _ = SPAWNER
    req.close()
    os.waitpid(pid, 0)
    sys.exit(1 if any(r["outcome"] in FAILING for r in results) else 0)


if __name__ == "__main__":
    main()
