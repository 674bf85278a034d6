#!/usr/bin/env python3
"""Reads an RTSTRUCT back onto its source series with tools other than ours and compares each
ROI with the label volume it was written from.

    rtstruct.py SERIES_DIR RTSTRUCT CASE_JSON

Driven by tests/it/rtstruct.rs. CASE_JSON holds `labels` (a file of uint16 little-endian
labels, C order, shape `shape` = [columns, rows, slices] in the writer's slice order), the
source image of each slice (`images`: SOPInstanceUID and 1-based frame number or null, in
the same order) and the ROIs (`rois`: name and label value).

Two readers:

* rt-utils (`RTStructBuilder.create_from(series, rtstruct)`, `get_roi_mask_by_name`): its
  masks are [row, column, slice] in its own slice order (ascending along the normal); each of
  its slices is matched to ours by SOPInstanceUID. rt-utils reads single-frame series only
  (it takes each file as one slice); for other sources its error is reported instead.
* pydicom and a small even-odd rasteriser written here: every contour is placed on the slice
  its ContourImageSequence names, with that image's own ImagePositionPatient,
  ImageOrientationPatient and PixelSpacing as pydicom reads them from the source files
  (per-frame functional groups for multi-frame files); its vertices must lie in that plane
  (1e-3 mm) and, rounded to the pixel grid, within 0.4 pixel of a pixel centre. The
  contours of one ROI on one slice are filled together with the even-odd rule, plus the
  pixels the edges pass through (what cv2.fillPoly does).

Prints one JSON object: per ROI the label's voxel count, rt-utils' Dice (or null), the own
reader's Dice and whether it is exact, and rt-utils' error when it failed.
"""

import json
import sys

import numpy as np
import pydicom


def dice(a, b):
    a = a.astype(bool)
    b = b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def source_geometry(series_dir):
    """(SOPInstanceUID, frame or None) -> (ipp, row_dir, col_dir, [row spacing, col spacing])."""
    import os

    geometry = {}
    for root, _, files in os.walk(series_dir):
        for f in files:
            try:
                ds = pydicom.dcmread(os.path.join(root, f), stop_before_pixels=True)
            except Exception:
                continue
            if "PerFrameFunctionalGroupsSequence" in ds:
                shared = ds.SharedFunctionalGroupsSequence[0]
                for n, frame in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):

                    def group(name):
                        return frame[name][0] if name in frame else shared[name][0]

                    iop = np.array(group("PlaneOrientationSequence").ImageOrientationPatient, float)
                    ipp = np.array(group("PlanePositionSequence").ImagePositionPatient, float)
                    spacing = [float(v) for v in group("PixelMeasuresSequence").PixelSpacing]
                    geometry[(ds.SOPInstanceUID, n)] = (ipp, iop[:3], iop[3:], spacing)
            elif "ImagePositionPatient" in ds:
                iop = np.array(ds.ImageOrientationPatient, float)
                geometry[(ds.SOPInstanceUID, None)] = (
                    np.array(ds.ImagePositionPatient, float),
                    iop[:3],
                    iop[3:],
                    [float(v) for v in ds.PixelSpacing],
                )
    return geometry


def fill_even_odd(polygons, rows, columns):
    """Even-odd fill of integer polygons [(column, row), ...] plus the pixels on their edges."""
    out = np.zeros((rows, columns), bool)
    edges = []
    for p in polygons:
        n = len(p)
        for i in range(n):
            edges.append((p[i], p[(i + 1) % n]))
    for r in range(rows):
        xs = []
        for (x0, y0), (x1, y1) in edges:
            if y0 == y1:
                continue
            if y0 > y1:
                x0, y0, x1, y1 = x1, y1, x0, y0
            if y0 <= r < y1:
                xs.append(x0 + (r - y0) * (x1 - x0) / (y1 - y0))
        xs.sort()
        for a, b in zip(xs[0::2], xs[1::2]):
            lo = max(int(np.ceil(a)), 0)
            hi = min(int(np.floor(b)), columns - 1)
            if hi >= lo:
                out[r, lo : hi + 1] = True
    for (x0, y0), (x1, y1) in edges:
        steps = max(abs(x1 - x0), abs(y1 - y0))
        for s in range(steps + 1):
            t = s / steps if steps else 0.0
            c = int(round(x0 + t * (x1 - x0)))
            r = int(round(y0 + t * (y1 - y0)))
            out[r, c] = True
    return out


def own_reader(rt, geometry, case, rois, rows, columns):
    """Masks [row, column, k] per ROI number, from pydicom and fill_even_odd."""
    slice_of = {
        (img["uid"], img["frame"]): k for k, img in enumerate(case["images"])
    }
    n_slices = len(case["images"])
    masks = {}
    for roi_contour in rt.ROIContourSequence:
        polygons = {}
        for c in roi_contour.get("ContourSequence", []):
            assert c.ContourGeometricType == "CLOSED_PLANAR", c.ContourGeometricType
            ref = c.ContourImageSequence[0]
            frame = int(ref.ReferencedFrameNumber) if "ReferencedFrameNumber" in ref else None
            key = (ref.ReferencedSOPInstanceUID, frame)
            k = slice_of[key]
            ipp, row_dir, col_dir, (row_spacing, col_spacing) = geometry[key]
            pts = np.array(c.ContourData, float).reshape(-1, 3)
            assert len(pts) == int(c.NumberOfContourPoints)
            d = pts - ipp
            normal = np.cross(row_dir, col_dir)
            off_plane = np.abs(d @ normal).max()
            assert off_plane < 1e-3, f"contour {off_plane} mm off its slice plane"
            pix = np.stack([d @ row_dir / col_spacing, d @ col_dir / row_spacing], axis=1)
            rounded = np.rint(pix)
            assert np.abs(pix - rounded).max() < 0.4, "vertex far from every pixel centre"
            polygons.setdefault(k, []).append([tuple(int(v) for v in p) for p in rounded])
        mask = np.zeros((rows, columns, n_slices), bool)
        for k, polys in polygons.items():
            mask[:, :, k] = fill_even_odd(polys, rows, columns)
        masks[int(roi_contour.ReferencedROINumber)] = mask
    return masks


def main():
    series_dir, rtstruct_path, case_path = sys.argv[1:4]
    case = json.load(open(case_path))
    columns, rows, n_slices = case["shape"]
    labels = np.fromfile(case["labels"], dtype="<u2").reshape(columns, rows, n_slices)
    rt = pydicom.dcmread(rtstruct_path)
    number_of = {r.ROIName: int(r.ROINumber) for r in rt.StructureSetROISequence}
    own = own_reader(rt, source_geometry(series_dir), case, case["rois"], rows, columns)

    rt_utils_error = None
    try:
        from rt_utils import RTStructBuilder

        rt_utils = RTStructBuilder.create_from(
            dicom_series_path=series_dir, rt_struct_path=rtstruct_path
        )
        k_of = {img["uid"]: k for k, img in enumerate(case["images"])}
        order = [k_of[s.SOPInstanceUID] for s in rt_utils.series_data]
    except Exception as e:  # noqa: BLE001 - reported, the Rust side decides
        rt_utils_error = f"{type(e).__name__}: {e}"

    result = {"rt_utils_error": rt_utils_error, "rois": []}
    for roi in case["rois"]:
        expected = np.transpose(labels == roi["label"], (1, 0, 2))  # [row, column, k]
        entry = {
            "name": roi["name"],
            "label": roi["label"],
            "voxels": int(expected.sum()),
            "dice_rt_utils": None,
        }
        if rt_utils_error is None:
            try:
                m = rt_utils.get_roi_mask_by_name(roi["name"])
                entry["dice_rt_utils"] = dice(m, expected[:, :, order])
            except Exception as e:  # noqa: BLE001
                entry["rt_utils_roi_error"] = f"{type(e).__name__}: {e}"
        mine = own[number_of[roi["name"]]]
        entry["dice_own"] = dice(mine, expected)
        entry["exact_own"] = bool((mine == expected).all())
        result["rois"].append(entry)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
