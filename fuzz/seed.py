#!/usr/bin/env python3
"""Fill fuzz/corpus/<target>/ with seed inputs (see fuzz/README.md).

Sources: testdata/ (DICOM series, the demo NIfTI, the demo model), pipelines/*.toml, the
DICOM and NIfTI test files shipped inside the pydicom and nibabel packages (when installed
for this interpreter; they are found without being imported), phantoms written by
`sdseg-volume phantom` (when a built binary is found: $SDSEG_BIN, target/release or
target/debug), and small NIfTI files and checkpoints generated here with the standard
library only (struct, gzip, zipfile, pickle).

    fuzz/seed.py [--clean] [--max-len BYTES]

Seeds are written under content-derived names; existing files are kept (so a corpus grown
by earlier runs survives), unless --clean. Every seed is at most --max-len bytes (default
1 MiB, the -max_len the fuzz scripts use); larger sources are skipped.
"""

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
TARGETS = ["nifti", "dicom_file", "dicom_series", "checkpoint", "pipeline_toml"]
# Must equal sdseg_volume::fuzzing::SERIES_SEPARATOR / MAX_SERIES_FILES.
SERIES_SEPARATOR = b"--sdseg-fuzz-next-file--"
MAX_SERIES_FILES = 6


class Corpus:
    def __init__(self, max_len):
        self.max_len = max_len
        self.counts = {t: 0 for t in TARGETS}
        self.skipped = 0

    def add(self, target, label, data):
        if len(data) > self.max_len:
            self.skipped += 1
            return
        d = FUZZ / "corpus" / target
        d.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]
        name = f"seed-{safe}-{hashlib.sha1(data).hexdigest()[:12]}"
        (d / name).write_bytes(data)
        self.counts[target] += 1


def package_dir(name):
    """Folder of an installed package, without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def series_seeds(c, label, files):
    """A series folder: runs of 2, 3 and MAX_SERIES_FILES consecutive files, joined."""
    files = sorted(files)
    for k in (2, 3, MAX_SERIES_FILES):
        if len(files) >= k:
            c.add("dicom_series", f"{label}-{k}", SERIES_SEPARATOR.join(f.read_bytes() for f in files[:k]))
    if files:
        c.add("dicom_file", f"{label}-{files[0].name}", files[0].read_bytes())


def zip_of(files, prefix="study/ct/"):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.writestr(prefix + f.name, f.read_bytes())
        z.writestr("study/README.txt", b"not dicom")
    return buf.getvalue()


# --- DICOM --------------------------------------------------------------------------------


def dicom_seeds(c):
    series_dirs = [ROOT / "testdata" / "demo-ct"]
    series_dirs += sorted(p for p in (ROOT / "testdata" / "dicom-syntaxes").iterdir() if p.is_dir())
    for d in series_dirs:
        files = sorted(d.glob("*.dcm"))
        series_seeds(c, d.name, files)
    demo = sorted((ROOT / "testdata" / "demo-ct").glob("*.dcm"))
    c.add("dicom_file", "demo-ct-zip", zip_of(demo[:3]))

    # pydicom's and nibabel's test files: single files, and as one-file / mixed "series".
    singles = []
    pyd = package_dir("pydicom")
    if pyd:
        singles += sorted((pyd / "data" / "test_files").glob("*.dcm"))
        singles += sorted((pyd / "data" / "test_files" / "dicomdirtests").rglob("*"))
    nib = package_dir("nibabel")
    if nib:
        singles += sorted((nib / "nicom" / "tests" / "data").glob("*.dcm"))
        singles += sorted((nib / "tests" / "data").glob("*.dcm"))
        for gz in sorted((nib / "nicom" / "tests" / "data").glob("*.dcm.gz")):
            data = gzip.decompress(gz.read_bytes())
            c.add("dicom_file", gz.name, data)
            c.add("dicom_series", gz.name, data)
    singles = [f for f in singles if f.is_file()]
    for f in singles:
        data = f.read_bytes()
        c.add("dicom_file", f"{f.parent.name}-{f.name}", data)
        c.add("dicom_series", f"{f.parent.name}-{f.name}", data)
    if not pyd:
        print("seed.py: pydicom is not installed for this interpreter; its test files are skipped", file=sys.stderr)
    if not nib:
        print("seed.py: nibabel is not installed for this interpreter; its test files are skipped", file=sys.stderr)


def find_binary():
    env = os.environ.get("SDSEG_BIN")
    if env and Path(env).is_file():
        return Path(env)
    for p in (ROOT / "target" / "release" / "sdseg-volume", ROOT / "target" / "debug" / "sdseg-volume"):
        if p.is_file():
            return p
    return None


def phantom_seeds(c):
    """Tiny phantoms in every syntax `phantom` writes, per slice and multi-frame; NIfTI too."""
    exe = find_binary()
    if exe is None:
        print("seed.py: no sdseg-volume binary (build it or set SDSEG_BIN); phantom seeds skipped", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def phantom(name, *args):
            out = tmp / name
            r = subprocess.run(
                [str(exe), "--quiet", "phantom", "--out", str(out), "--size", "12x10x4", "--noise", "0", *args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if r.returncode != 0:
                print(f"seed.py: phantom {' '.join(args)} failed: {r.stderr.decode(errors='replace').strip()}", file=sys.stderr)
                return []
            return sorted(p for p in out.rglob("*") if p.is_file())

        for syntax in ("explicit", "implicit", "big-endian", "deflated", "rle", "jpeg-baseline"):
            files = phantom(f"s-{syntax}", "--syntax", syntax)
            series_seeds(c, f"phantom-{syntax}", files)
            for f in phantom(f"m-{syntax}", "--syntax", syntax, "--multiframe"):
                c.add("dicom_file", f"phantom-mf-{syntax}", f.read_bytes())
                c.add("dicom_series", f"phantom-mf-{syntax}", f.read_bytes())
        files = phantom("s-zip")
        if files:
            c.add("dicom_file", "phantom-zip", zip_of(files))
        for f in phantom("nii", "--format", "nifti"):
            c.add("nifti", f"phantom-{f.name}", f.read_bytes())


# --- NIfTI --------------------------------------------------------------------------------

# NIfTI-1 datatype code → (struct format char, bytes)
DTYPES = {2: ("B", 1), 4: ("h", 2), 8: ("i", 4), 16: ("f", 4), 64: ("d", 8), 256: ("b", 1), 512: ("H", 2), 768: ("I", 4)}


def nifti1(dims, datatype, endian="<", slope=0.0, inter=0.0, qform=1, sform=1, pixdim=(1.0, 0.8, 0.8, 2.5), vox_offset=352.0, values=None, magic=b"n+1\0"):
    """A single-file NIfTI-1 image (.nii): header, 4-byte extension flag, voxels."""
    fmt, size = DTYPES[datatype]
    n = 1
    for d in dims:
        n *= d
    dim = [len(dims)] + list(dims) + [1] * (7 - len(dims))
    pd = [1.0] + list(pixdim) + [1.0] * (7 - len(pixdim))
    h = bytearray(348)
    e = endian
    struct.pack_into(e + "i", h, 0, 348)
    struct.pack_into(e + "8h", h, 40, *dim)
    struct.pack_into(e + "hh", h, 70, datatype, size * 8)
    struct.pack_into(e + "8f", h, 76, *pd)
    struct.pack_into(e + "f", h, 108, vox_offset)
    struct.pack_into(e + "ff", h, 112, slope, inter)
    struct.pack_into(e + "B", h, 123, 10)  # xyzt_units: mm, s
    struct.pack_into(e + "hh", h, 252, qform, sform)
    # qform: a 90° rotation about z (b=0, c=0, d=√½), offsets.
    struct.pack_into(e + "6f", h, 256, 0.0, 0.0, 0.70710678, -10.0, 20.0, 30.0)
    # sform rows: an oblique-ish affine.
    struct.pack_into(e + "4f", h, 280, -0.8, 0.0, 0.0, 90.0)
    struct.pack_into(e + "4f", h, 296, 0.0, 0.8, 0.1, -120.0)
    struct.pack_into(e + "4f", h, 312, 0.0, 0.0, 2.5, -60.0)
    h[344:348] = magic
    if values is None:
        values = [(i * 7) % 50 for i in range(n)]
    body = struct.pack(e + fmt * n, *values)
    pad = b"\0" * (int(vox_offset) - 348)
    return bytes(h) + pad + body


def nifti_seeds(c):
    c.add("nifti", "demo-ct-labels", (ROOT / "testdata" / "demo-ct-labels.nii.gz").read_bytes())
    nib = package_dir("nibabel")
    if nib:
        data = nib / "tests" / "data"
        for f in sorted(list(data.glob("*.nii")) + list(data.glob("*.nii.gz"))):
            c.add("nifti", f"nibabel-{f.name}", f.read_bytes())
    for dt in DTYPES:
        c.add("nifti", f"gen-dt{dt}", nifti1((4, 3, 2), dt))
        c.add("nifti", f"gen-dt{dt}-gz", gzip.compress(nifti1((4, 3, 2), dt), mtime=0))
    c.add("nifti", "gen-be-i16", nifti1((4, 3, 2), 4, endian=">"))
    c.add("nifti", "gen-scaled", nifti1((4, 3, 2), 4, slope=0.5, inter=-1024.0))
    c.add("nifti", "gen-qform-only", nifti1((4, 3, 2), 16, sform=0))
    c.add("nifti", "gen-no-xform", nifti1((4, 3, 2), 2, qform=0, sform=0))
    c.add("nifti", "gen-4d", nifti1((4, 3, 2, 2), 4))
    c.add("nifti", "gen-nan", nifti1((2, 2, 1), 16, values=[float("nan"), float("inf"), -1.5, 3.0]))
    c.add("nifti", "gen-offset", nifti1((4, 3, 2), 512, vox_offset=400.0))


# --- Checkpoints --------------------------------------------------------------------------


def checkpoint_seeds(c):
    # A few real key names and values from the demo model (the smallest tensors).
    st = (ROOT / "testdata" / "demo-model" / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", st[:8])[0]
    header = json.loads(st[8 : 8 + n])
    body = st[8 + n :]
    tensors = sorted(
        ((v["data_offsets"][1] - v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__"),
    )[:16]
    picked = {}
    for _, k in tensors:
        v = header[k]
        a, b = v["data_offsets"]
        picked[k] = (v["dtype"], v["shape"], body[a:b])
    c.add("checkpoint", "demo-model-subset", safetensors(picked, {"format": "pt", "source": "demo-model"}))
    c.add(
        "checkpoint",
        "gen-dtypes",
        safetensors(
            {
                "f16": ("F16", [2, 2], struct.pack("<4e", 1.0, -2.0, 0.5, 65504.0)),
                "bf16": ("BF16", [3], b"\x80\x3f\x00\x40\x00\xc0"),
                "f64": ("F64", [1, 2], struct.pack("<2d", 1.5, -0.25)),
                "i64": ("I64", [], struct.pack("<q", 7)),
                "u8": ("U8", [4], b"\x00\x01\xfe\xff"),
                "empty": ("F32", [0, 3], b""),
            },
            None,
        ),
    )
    for name, data in torch_zip_seeds(picked):
        c.add("checkpoint", name, data)


def safetensors(tensors, metadata):
    header = {}
    body = b""
    for k, (dtype, shape, data) in tensors.items():
        header[k] = {"dtype": dtype, "shape": shape, "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


class _Global:
    """A GLOBAL `module.name` reference, as torch's classes and functions are pickled."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class _Storage:
    """A storage record, pickled as torch does: BINPERSID of ("storage", cls, key, ...)."""

    def __init__(self, cls, key, numel):
        self.cls, self.key, self.numel = cls, key, numel


class _Reduce:
    """`fn(*args)`, pickled as fn, args tuple, REDUCE."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args


def _torch_pickle(obj):
    """The protocol-2 opcode stream torch.save writes for `obj`, without torch."""
    out = io.BytesIO()
    w = out.write

    def setitems(d):
        if d:
            w(pickle.MARK)
            for k, v in d.items():
                save(k)
                save(v)
            w(pickle.SETITEMS)

    def save(o):
        if isinstance(o, _Global):
            w(pickle.GLOBAL + f"{o.module}\n{o.name}\n".encode())
        elif isinstance(o, _Reduce):
            save(o.fn)
            save(tuple(o.args))
            w(pickle.REDUCE)
        elif isinstance(o, _Storage):
            save(("storage", o.cls, o.key, "cpu", o.numel))
            w(pickle.BINPERSID)
        elif isinstance(o, tuple):
            w(pickle.MARK)
            for x in o:
                save(x)
            w(pickle.TUPLE)
        elif isinstance(o, list):
            w(pickle.EMPTY_LIST)
            if o:
                w(pickle.MARK)
                for x in o:
                    save(x)
                w(pickle.APPENDS)
        elif isinstance(o, OrderedDict):
            save(_Reduce(_Global("collections", "OrderedDict"), ()))
            setitems(o)
        elif isinstance(o, dict):
            w(pickle.EMPTY_DICT)
            setitems(o)
        else:
            # Scalars and strings: the standard pickler's opcodes, without PROTO and STOP
            # (fast mode: no memo entries that could clash with ours).
            sub = io.BytesIO()
            p = pickle.Pickler(sub, protocol=2)
            p.fast = True
            p.dump(o)
            w(sub.getvalue()[2:-1])

    w(pickle.PROTO + b"\x02")
    save(obj)
    w(pickle.STOP)
    return out.getvalue()


STORAGE = {"F32": "FloatStorage", "F16": "HalfStorage", "BF16": "BFloat16Storage", "F64": "DoubleStorage", "I64": "LongStorage", "I32": "IntStorage", "U8": "ByteStorage"}


def _tensor(key, storage_cls, numel, offset, shape, stride, wrap=None):
    rebuild = _Reduce(
        _Global("torch._utils", "_rebuild_tensor_v2"),
        (_Storage(_Global("torch", storage_cls), key, numel), offset, tuple(shape), tuple(stride), False, OrderedDict()),
    )
    if wrap == "parameter":
        return _Reduce(_Global("torch._utils", "_rebuild_parameter"), (rebuild, True, OrderedDict()))
    return rebuild


def _contiguous_stride(shape):
    stride, s = [], 1
    for d in reversed(shape):
        stride.append(s)
        s *= d
    return list(reversed(stride))


def torch_zip(obj, storages, root="archive"):
    """A torch.save zip: <root>/data.pkl, <root>/data/<key>, version, byteorder (stored)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", _torch_pickle(obj))
        z.writestr(f"{root}/byteorder", b"little")
        for key, data in storages.items():
            z.writestr(f"{root}/data/{key}", data)
        z.writestr(f"{root}/version", b"3\n")
    return buf.getvalue()


def torch_zip_seeds(picked):
    state = OrderedDict()
    storages = {}
    for i, (k, (dtype, shape, data)) in enumerate(picked.items()):
        if dtype not in STORAGE:
            continue
        es = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1}[dtype]
        key = str(i)
        storages[key] = data
        state[k] = _tensor(key, STORAGE[dtype], len(data) // es, 0, shape, _contiguous_stride(shape), wrap="parameter" if i % 3 == 0 else None)
    # A transposed (non-contiguous) 2×3 view and an offset view into a shared storage.
    storages["t"] = struct.pack("<6f", 0, 3, 1, 4, 2, 5)
    state["transposed"] = _tensor("t", "FloatStorage", 6, 0, [2, 3], [1, 2])
    state["offset_view"] = _tensor("t", "FloatStorage", 6, 2, [2], [1])
    state["half"] = _tensor("h", "HalfStorage", 2, 0, [2], [1])
    storages["h"] = struct.pack("<2e", 1.0, -3.5)
    state["_metadata"] = {"": {"version": 1}}
    lightning = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": state,
        "callbacks": {},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}],
        "lr_schedulers": [],
        "hyper_parameters": {"scale_factor": 0.18215, "use_ema": True},
    }
    yield "lightning-ckpt", torch_zip(lightning, storages, root="archive")
    yield "state-dict-pt", torch_zip(state, storages, root="model")
    yield "ckpt-no-state-dict-tensors", torch_zip({"state_dict": {"a": 1, "b": "x"}}, {}, root="archive")


# --- Pipelines ----------------------------------------------------------------------------


def pipeline_seeds(c):
    for f in sorted((ROOT / "pipelines").glob("*.toml")):
        c.add("pipeline_toml", f.name, f.read_bytes())
    c.add(
        "pipeline_toml",
        "gen-minimal",
        b'name = "x"\n[window]\nhu_min = -1.0\nhu_max = 1.0\n[normalise]\nmode = "minmax"\neps = 1e-8\n'
        b'[slicing]\nframe = "RAS"\nsize = 8\nresize = "nearest"\n[labels.classes]\n0 = "bg"\n1 = "fg"\n'
        b'[labels.remap]\nassign = [[2, 1], [3, 0]]\n[model]\npreset = "sdseg-binary"\nnum_classes = 2\n',
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clean", action="store_true", help="empty fuzz/corpus/<target>/ first")
    ap.add_argument("--max-len", type=int, default=1 << 20)
    args = ap.parse_args()
    if args.clean:
        for t in TARGETS:
            shutil.rmtree(FUZZ / "corpus" / t, ignore_errors=True)
    c = Corpus(args.max_len)
    dicom_seeds(c)
    phantom_seeds(c)
    nifti_seeds(c)
    checkpoint_seeds(c)
    pipeline_seeds(c)
    for t in TARGETS:
        total = len(list((FUZZ / "corpus" / t).glob("*")))
        print(f"seed.py: {t}: {c.counts[t]} seeds written, {total} files in fuzz/corpus/{t}")
    if c.skipped:
        print(f"seed.py: {c.skipped} sources over {args.max_len} bytes skipped")


if __name__ == "__main__":
    main()
