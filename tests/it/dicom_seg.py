#!/usr/bin/env python3
"""Reads a DICOM-SEG with a tool nobody here wrote and compares it, voxel for voxel, with the
label volume it was made from. Driven by tests/it/dicom_seg.rs.

    dicom_seg.py highdicom   SEG SOURCE LABELS.nii.gz SEGMENTS_JSON
    dicom_seg.py pydicom-seg SEG SOURCE LABELS.nii.gz SEGMENTS_JSON

SOURCE is the source series (a folder of single-frame files or one multi-frame file);
SEGMENTS_JSON maps each SegmentNumber to the label value it stands for ({"1": 6, ...}).
Prints one JSON object; the Rust test asserts on it.

Everything is placed by geometry, never by array order:

* the source series is read with pydicom: every frame's ImagePositionPatient,
  ImageOrientationPatient and PixelSpacing (per-frame or shared functional groups for an
  enhanced multi-frame file) give each source pixel's point in patient coordinates (LPS, mm);
* the expected label at that point comes from the NIfTI: nibabel (highdicom mode) or
  SimpleITK (pydicom-seg mode; its environment has no nibabel) maps the point to a voxel
  index through the file's affine (RAS, so x and y are negated); the index must be integral;
* the SEG's value at that point comes from the reader under test:
  - highdicom: `segread`, then `get_volume(segment_numbers=[n])` per segment and once for all
    segments combined, each a `highdicom.Volume` whose affine maps voxel indices to LPS; and,
    by reference instead of geometry, `get_pixels_by_source_instance` (single-frame source) or
    `get_pixels_by_source_frame` (multi-frame source) for every source frame;
  - pydicom-seg: `SegmentReader` per segment and `MultiClassReader` for all segments, whose
    results give origin, spacing and direction (the SimpleITK convention).

Output: {"reader": ..., "frames": NumberOfFrames, "source_frames": N, "segments":
{"<n>": {"expected": voxels, "read": voxels, "mismatched": voxels}}, "combined_mismatched":
voxels, "by_reference_mismatched": voxels (highdicom), "index_error": max distance of a mapped
index from an integer}.
"""

import json
import os
import sys

import numpy as np
import pydicom


def source_frames(source):
    """(SOPInstanceUID, frame number or None, LPS points [rows, columns, 3]) of every image
    frame of the source series."""
    if os.path.isfile(source):
        files = [source]
    else:
        files = sorted(
            os.path.join(d, f) for d, _, names in os.walk(source) for f in names
        )
    out = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if "Rows" not in ds:
            continue
        rows, cols = int(ds.Rows), int(ds.Columns)
        if "PerFrameFunctionalGroupsSequence" in ds:
            shared = ds.SharedFunctionalGroupsSequence[0]
            for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
                group = lambda name: (fg if name in fg else shared)[name][0]
                ipp = group("PlanePositionSequence").ImagePositionPatient
                iop = group("PlaneOrientationSequence").ImageOrientationPatient
                sp = group("PixelMeasuresSequence").PixelSpacing
                out.append((ds.SOPInstanceUID, i + 1, points(ipp, iop, sp, rows, cols)))
        else:
            out.append(
                (
                    ds.SOPInstanceUID,
                    None,
                    points(
                        ds.ImagePositionPatient,
                        ds.ImageOrientationPatient,
                        ds.PixelSpacing,
                        rows,
                        cols,
                    ),
                )
            )
    return out


def points(ipp, iop, spacing, rows, cols):
    """LPS point of every pixel: IPP + c·Δc·row direction + r·Δr·column direction."""
    ipp = np.array([float(v) for v in ipp])
    iop = np.array([float(v) for v in iop])
    dr, dc = float(spacing[0]), float(spacing[1])
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return (
        ipp[None, None, :]
        + (c * dc)[..., None] * iop[None, None, :3]
        + (r * dr)[..., None] * iop[None, None, 3:]
    )


class Sampler:
    """Values of an array at LPS points through an index ← point map; 0 outside."""

    def __init__(self, array, point_to_index):
        self.array = array
        self.point_to_index = point_to_index
        self.index_error = 0.0

    def __call__(self, pts):
        idx = self.point_to_index(pts.reshape(-1, 3))
        rounded = np.rint(idx)
        if idx.size:
            self.index_error = max(self.index_error, float(np.abs(idx - rounded).max()))
        rounded = rounded.astype(np.int64)
        inside = np.all((rounded >= 0) & (rounded < np.array(self.array.shape)), axis=1)
        out = np.zeros(len(rounded), dtype=np.int64)
        ri = rounded[inside]
        out[inside] = self.array[tuple(ri.T)]
        return out.reshape(pts.shape[:-1]), bool(inside.all())


def affine_sampler(array, affine_lps):
    inv = np.linalg.inv(affine_lps)
    return Sampler(array, lambda p: (inv[:3, :3] @ p.T).T + inv[:3, 3])


def nibabel_labels(path):
    import nibabel

    img = nibabel.load(path)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    data = np.asanyarray(img.dataobj)
    return affine_sampler(data.reshape(data.shape[:3]), ras_to_lps @ img.affine)


def sitk_sampler(image_array_zyx, origin, spacing, direction):
    """A sampler over SimpleITK's (z, y, x) array: index (x, y, z) = (D·S)⁻¹ (p − origin)."""
    m = np.array(direction, dtype=float).reshape(3, 3) @ np.diag(np.array(spacing, float))
    inv = np.linalg.inv(m)
    origin = np.array(origin, dtype=float)
    arr = np.transpose(image_array_zyx, (2, 1, 0))  # → (x, y, z)
    return Sampler(arr, lambda p: (inv @ (p - origin).T).T)


def sitk_labels(path):
    import SimpleITK as sitk

    img = sitk.ReadImage(path)
    return sitk_sampler(
        sitk.GetArrayFromImage(img), img.GetOrigin(), img.GetSpacing(), img.GetDirection()
    )


def compare(frames, expected, read, segments):
    """Per segment: voxels expected, voxels read, voxels that differ; and the same for the
    combined map (segment numbers)."""
    result = {str(n): {"expected": 0, "read": 0, "mismatched": 0} for n in segments}
    combined = 0
    all_inside = True
    for _, _, pts in frames:
        want, inside = expected(pts)
        all_inside &= inside
        want_map = np.zeros(want.shape, dtype=np.int64)
        for n, label in segments.items():
            want_map[want == label] = n
        for n, label in segments.items():
            got, _ = read["segment"][n](pts)
            w = want == label
            g = got != 0
            r = result[str(n)]
            r["expected"] += int(w.sum())
            r["read"] += int(g.sum())
            r["mismatched"] += int((w != g).sum())
        got_map, _ = read["combined"](pts)
        combined += int((got_map != want_map).sum())
    return result, combined, all_inside


def run_highdicom(seg_path, frames, expected, segments):
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    read = {"segment": {}}
    for n in segments:
        vol = seg.get_volume(segment_numbers=[n], combine_segments=True)
        read["segment"][n] = affine_sampler(vol.array, vol.affine)
    vol = seg.get_volume(combine_segments=True)
    read["combined"] = affine_sampler(vol.array, vol.affine)
    per_segment, combined, inside = compare(frames, expected, read, segments)

    # By reference (SourceImageSequence), not geometry: each source frame's mask.
    by_reference = 0
    for uid, frame_number, pts in frames:
        if frame_number is None:
            got = seg.get_pixels_by_source_instance(
                [uid], combine_segments=True, assert_missing_frames_are_empty=True
            )[0]
        else:
            got = seg.get_pixels_by_source_frame(
                uid,
                [frame_number],
                combine_segments=True,
                assert_missing_frames_are_empty=True,
            )[0]
        want, _ = expected(pts)
        want_map = np.zeros(want.shape, dtype=np.int64)
        for n, label in segments.items():
            want_map[want == label] = n
        by_reference += int((got.astype(np.int64) != want_map).sum())
    samplers = list(read["segment"].values()) + [read["combined"]]
    return {
        "reader": "highdicom " + hd.__version__,
        "frames": int(seg.NumberOfFrames),
        "segments": per_segment,
        "combined_mismatched": combined,
        "by_reference_mismatched": by_reference,
        "labels_cover_source": inside,
        "index_error": max([expected.index_error] + [s.index_error for s in samplers]),
    }


def run_pydicom_seg(seg_path, frames, expected, segments):
    import pydicom_seg

    ds = pydicom.dcmread(seg_path)
    per = pydicom_seg.SegmentReader().read(ds)
    read = {"segment": {}}
    for n in segments:
        read["segment"][n] = sitk_sampler(
            per.segment_data(n), per.origin, per.spacing, per.direction
        )
    multi = pydicom_seg.MultiClassReader().read(ds)
    read["combined"] = sitk_sampler(multi.data, multi.origin, multi.spacing, multi.direction)
    per_segment, combined, inside = compare(frames, expected, read, segments)
    samplers = list(read["segment"].values()) + [read["combined"]]
    return {
        "reader": "pydicom-seg " + getattr(pydicom_seg, "__version__", "?"),
        "frames": int(ds.NumberOfFrames),
        "segments": per_segment,
        "combined_mismatched": combined,
        "labels_cover_source": inside,
        "index_error": max([expected.index_error] + [s.index_error for s in samplers]),
    }


def main():
    mode, seg_path, source, labels, segments_json = sys.argv[1:6]
    segments = {int(k): int(v) for k, v in json.loads(segments_json).items()}
    frames = source_frames(source)
    if mode == "highdicom":
        out = run_highdicom(seg_path, frames, nibabel_labels(labels), segments)
    elif mode == "pydicom-seg":
        out = run_pydicom_seg(seg_path, frames, sitk_labels(labels), segments)
    else:
        sys.exit(f"unknown mode {mode}")
    out["source_frames"] = len(frames)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
