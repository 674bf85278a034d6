"""The Pythonic layer over ``sdseg_volume._native``: signatures with the CLI's defaults, input
conversions, and the optional tqdm bar. Everything that reads, segments, writes or scores runs
in the native module (the sdseg-volume library, with the GIL released)."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _native
from ._native import Segmentation, Volume
from .errors import InputError

PathLike = Union[str, "os.PathLike[str]"]
#: ``progress(case, done, total)``: ``done`` of ``total`` slices of case ``case`` are finished.
Progress = Callable[[str, int, int], Any]

__all__ = ["Model", "run", "evaluate", "cli_defaults"]


def cli_defaults() -> Dict[str, Any]:
    """The defaults of ``sdseg-volume run``'s options as the CLI parses them (``device`` None
    means the CPU). :class:`Model` and :func:`run` have the same defaults."""
    return _native.cli_defaults()


def _progress_callback(progress: Union[None, bool, Progress]) -> Optional[Progress]:
    """The callback to pass on: the caller's, none (``False``), or, by default, a tqdm bar per
    case when tqdm is installed (else none)."""
    if progress is False:
        return None
    if progress is not None and progress is not True:
        if not callable(progress):
            raise TypeError(f"progress: expected a callable, True, False or None, got {progress!r}")
        return progress
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    bars: Dict[str, Any] = {}

    def show(case: str, done: int, total: int) -> None:
        bar = bars.get(case)
        if bar is None:
            bar = bars[case] = tqdm(total=total, desc=case, unit="slice", leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return show


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, bytes, os.PathLike))


class Model:
    """A segmentation model, loaded once (as ``sdseg-volume run`` loads it) and reused for any
    number of volumes.

    The options and their defaults are ``run``'s (``sdseg-volume run --help``):

    Args:
        weights: an official Lightning ``.ckpt`` or a ``.safetensors``. Default: the
            pipeline's; for ``demo``, the demo model bundled in the package (a toy trained on
            synthetic phantoms, **not a medical model**; a ``UserWarning`` is issued for any
            input that is not such a phantom).
        model_config: a JSON config file or a preset name (``sdseg-binary``, ``sdseg-cls9``,
            ``sdseg-cls14``, ``sdseg-demo``). Default: ``<weights>.json`` or ``config.json``
            beside the weights, else the pipeline's preset.
        pipeline: a built-in pipeline (``demo``, ``btcv``, ``sts3d``) or a pipeline TOML file,
            optionally with a variant (``btcv:cls9``).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (CUDA needs a build with the ``cuda``
            feature).
        dtype: ``"f32"``, ``"bf16"``, ``"bf16-fast"`` or ``"f16"``.
        batch_size: slices per model batch (results do not depend on it); ``None``: the
            CLI's default (CPU: half the threads, 4 to 32; CUDA: 8).
        samples: noise draws per slice (K); the label comes from their mean. ``samples >= 2``
            makes the uncertainty map available (``segment(..., uncertainty=True)``).
        seed: seed of the noise latents; the same seed gives bit-identical outputs.
        noise: ``"shared"`` (one draw for every slice: the official evaluation) or
            ``"per-slice"`` (a draw per case id and slice).
        ema: use the EMA copy of the UNet weights (``False``: ``--no-ema``).
        resize: resize of the soft maps back to the native slice size: ``"bilinear"`` or
            ``"nearest"``.
        postprocess: 3D post-processing of the labels: ``"default"`` or a plan JSON file
            (``--postprocess``). Default: none (the paper's protocol).
        series, allow_gaps, allow_tilt: how paths given to :meth:`segment` are read (as
            :func:`read_volume`).
        quiet: no ``model config: ...`` line on stderr.

    Raises:
        InputError: a bad option or model file (the CLI's message).
    """

    def __init__(
        self,
        weights: Optional[PathLike] = None,
        model_config: Optional[PathLike] = None,
        pipeline: str = "demo",
        device: str = "cpu",
        dtype: str = "f32",
        batch_size: Optional[int] = None,
        samples: int = 1,
        seed: int = 0,
        noise: str = "shared",
        ema: bool = True,
        resize: str = "bilinear",
        postprocess: Optional[PathLike] = None,
        series: Optional[str] = None,
        allow_gaps: bool = False,
        allow_tilt: bool = False,
        quiet: bool = False,
        _test_segmenter: Optional[str] = None,
    ) -> None:
        self._native = _native.Model(
            {
                "weights": weights,
                "model_config": None if model_config is None else os.fspath(model_config),
                "pipeline": os.fspath(pipeline),
                "device": device,
                "dtype": dtype,
                "batch_size": batch_size,
                "samples": samples,
                "seed": seed,
                "noise": noise,
                "ema": ema,
                "resize": resize,
                "postprocess": None if postprocess is None else os.fspath(postprocess),
                "series": series,
                "allow_gaps": allow_gaps,
                "allow_tilt": allow_tilt,
                "quiet": quiet,
                # Developer: the threshold test double instead of the model
                # (`threshold[:K[:MS]]`, `run --test-segmenter`).
                "test_segmenter": _test_segmenter,
            }
        )

    def segment(
        self,
        volume: Union[Volume, PathLike, np.ndarray],
        affine: Optional[Any] = None,
        *,
        case_id: Optional[str] = None,
        uncertainty: bool = False,
        progress: Union[None, bool, Progress] = None,
    ) -> Segmentation:
        """Segment one volume; the labels equal those ``sdseg-volume run`` writes for the same
        input and options.

        Args:
            volume: a :class:`Volume` (from :func:`read_volume`: no copy), a path (read as
                ``run`` reads it), or an HU array indexed ``[i, j, k]`` with its ``affine``
                (copied once into a :class:`Volume`, as float32).
            affine: the 4x4 voxel-to-RAS affine of an array input (mm).
            case_id: the case id (it seeds ``noise="per-slice"``). Default: ``run``'s for the
                same path (the file name without extension), ``"volume"`` for arrays.
            uncertainty: also return the per-voxel uncertainty of the ``samples`` draws (needs
                ``samples >= 2``), as ``run --uncertainty`` writes it.
            progress: ``progress(case, done, total)``, called from a worker thread as slices
                finish; ``None`` (default): a tqdm bar if tqdm is installed; ``False``: none.

        Returns:
            A :class:`Segmentation`: ``labels`` (uint8, or uint16 past 255 labels; on the
            input grid, handed over from Rust without a copy but for the uint8 narrowing),
            ``affine``, ``label_names``, ``uncertainty`` (float32, no copy), ``statistics``;
            ``save(path)`` writes ``run``'s NIfTI file.

        The GIL is released while the volume is read and segmented: other Python threads run
        meanwhile (one volume at a time per model; use several models for parallel work).
        Ctrl+C takes effect when the call returns.

        Raises:
            InputError: bad input (the CLI's message, naming the file).
            InternalError: a failure of ours.
        """
        if isinstance(volume, Volume):
            if affine is not None:
                raise InputError("affine: give it with an array, not with a Volume (it has one)")
        elif _is_path(volume):
            if affine is not None:
                raise InputError("affine: give it with an array, not with a path")
            volume = os.fspath(volume)
        else:
            if affine is None:
                raise InputError("affine: an array input needs its 4x4 voxel-to-RAS affine")
            volume = Volume(volume, affine)
        return self._native.segment(
            volume,
            case_id=case_id,
            uncertainty=uncertainty,
            progress=_progress_callback(progress),
        )

    __call__ = segment

    @property
    def info(self) -> Dict[str, Any]:
        """What was loaded, as ``run --report`` records it (``kind``, ``config_source``,
        ``config``, ``weights``, ``ema``, ``num_classes``, ``slice_size``, ``demo_model``)."""
        return self._native.info

    @property
    def label_names(self) -> Dict[int, str]:
        """Label id -> name for every class the model predicts (0 is background)."""
        return dict(self._native.label_names)

    @property
    def settings(self) -> Dict[str, Any]:
        """The settings the model runs with (pipeline, device, dtype, seed, noise, ...)."""
        return self._native.settings

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"Model(pipeline={s['pipeline']!r}, weights={self.info.get('weights')!r}, "
            f"device={s['device']!r}, dtype={s['dtype']!r}, samples={s['samples']})"
        )


def run(
    inputs: Union[PathLike, Sequence[PathLike]],
    out: PathLike,
    *,
    manifest: Optional[PathLike] = None,
    shard: Optional[str] = None,
    weights: Optional[PathLike] = None,
    model_config: Optional[PathLike] = None,
    pipeline: str = "demo",
    device: str = "cpu",
    dtype: str = "f32",
    batch_size: Optional[int] = None,
    samples: int = 1,
    seed: int = 0,
    noise: str = "shared",
    ema: bool = True,
    resize: str = "bilinear",
    series: Optional[str] = None,
    allow_gaps: bool = False,
    allow_tilt: bool = False,
    name: Optional[str] = None,
    format: str = "nifti",
    empty_segments: bool = False,
    overwrite: bool = False,
    report: Optional[PathLike] = None,
    preview: Optional[PathLike] = None,
    uncertainty: Optional[PathLike] = None,
    postprocess: Optional[PathLike] = None,
    statistics: bool = False,
    html: Optional[PathLike] = None,
    gt: Optional[PathLike] = None,
    html_ct_size: int = 256,
    quiet: bool = False,
    progress: Union[None, bool, Progress] = None,
) -> List[Dict[str, Any]]:
    """``sdseg-volume run INPUTS --out OUT [options]`` as a call: the same files, bit for bit.

    Every option is the flag of the same name (``batch_size`` is ``--batch-size``, ``ema=False``
    is ``--no-ema``), with the same default and meaning: see ``sdseg-volume run --help`` and
    :class:`Model`. Outputs that exist are skipped (resume) unless ``overwrite=True``.
    ``html``: the run's review page (``--html``; ``gt``: ground truth scored on it,
    ``html_ct_size``: the CT's in-plane size on it).
    Progress lines go to stderr as with the CLI (``quiet=True``: none); ``progress`` is as for
    :meth:`Model.segment`.

    Returns:
        One dict per case, the case's ``--json`` line: ``case``, ``input``, ``output``,
        ``outputs``, ``status`` (``written`` or ``skipped``), ``shape``, ``spacing_mm``,
        ``slices``, ``seconds``, ``labels`` (statistics), ``warnings``, ...

    Raises:
        InputError: bad input or options (the CLI's exit code 2), also when the only case
            failed on its input.
        PartialFailure: several cases, some failed (exit code 3); ``.cases`` has every record.
        InternalError: a failure of ours (exit code 1).
    """
    if _is_path(inputs):
        inputs = [inputs]
    opts = {
        "manifest": manifest,
        "shard": shard,
        "weights": weights,
        "model_config": None if model_config is None else os.fspath(model_config),
        "pipeline": os.fspath(pipeline),
        "device": device,
        "dtype": dtype,
        "batch_size": batch_size,
        "samples": samples,
        "seed": seed,
        "noise": noise,
        "ema": ema,
        "resize": resize,
        "series": series,
        "allow_gaps": allow_gaps,
        "allow_tilt": allow_tilt,
        "name": name,
        "format": format,
        "empty_segments": empty_segments,
        "overwrite": overwrite,
        "report": report,
        "preview": None if preview is None else os.fspath(preview),
        "uncertainty": None if uncertainty is None else os.fspath(uncertainty),
        "html": None if html is None else os.fspath(html),
        "gt": None if gt is None else os.fspath(gt),
        "html_ct_size": html_ct_size,
        "postprocess": None if postprocess is None else os.fspath(postprocess),
        "statistics": statistics,
        "quiet": quiet,
    }
    return _native.run(
        [os.fspath(p) for p in inputs], os.fspath(out), opts, progress=_progress_callback(progress)
    )


def _affine_of(what: str, spacing_or_affine: Any) -> np.ndarray:
    if spacing_or_affine is None:
        raise InputError(
            f"{what}: an array needs spacing_or_affine (3 voxel sizes in mm, or a 4x4 affine)"
        )
    a = np.asarray(spacing_or_affine, dtype=np.float64)
    if a.shape == (3,):
        return np.diag([a[0], a[1], a[2], 1.0])
    if a.shape == (4, 4):
        return a
    raise InputError(
        f"spacing_or_affine: expected 3 voxel sizes (mm) or a 4x4 affine, got shape {a.shape}"
    )


def _labels_u16(what: str, labels: Any) -> np.ndarray:
    """Labels as the uint16 array scoring takes: integers 0..65535 (as ``eval`` requires of a
    NIfTI file). A copy unless they already are uint16."""
    a = np.asarray(labels)
    if a.ndim != 3:
        raise InputError(f"{what}: expected a 3D label array [i, j, k], got shape {a.shape}")
    if a.dtype == np.uint16:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint16)
    if np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating):
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise InputError(
                f"{what}: label values must lie in 0..65535 (found {a.min()}..{a.max()})"
            )
        if np.issubdtype(a.dtype, np.floating):
            if not np.array_equal(a, np.round(a)):
                raise InputError(f"{what}: label values must be integers (found non-integer values)")
        return a.astype(np.uint16)
    raise InputError(f"{what}: expected an integer label array, got dtype {a.dtype}")


def _side(what: str, x: Any, spacing_or_affine: Any) -> Any:
    if _is_path(x):
        return os.fspath(x)
    if isinstance(x, Segmentation):
        return (_labels_u16(what, x.labels), x.affine)
    if hasattr(x, "affine") and hasattr(x, "dataobj"):  # a nibabel image
        return (_labels_u16(what, np.asanyarray(x.dataobj)), np.asarray(x.affine))
    return (_labels_u16(what, x), _affine_of(what, spacing_or_affine))


def evaluate(
    pred: Any,
    gt: Any,
    spacing_or_affine: Any = None,
    *,
    labels: Optional[Sequence[int]] = None,
    protocol: str = "nnunet",
    hd95: str = "symmetric",
    nsd_tolerance: float = 1.0,
    pipeline: Optional[str] = None,
    postprocess: Optional[PathLike] = None,
    case: Optional[str] = None,
) -> Dict[str, Any]:
    """Score a prediction against ground truth: ``sdseg-volume eval``, returning the report
    ``eval --out report.json`` writes (same field names, same numbers; undefined values are
    ``None``): ``protocol``, ``definitions``, ``cases[].labels[]`` (``label``, ``name``,
    ``dice``, ``iou``, ``hd95_mm``, ``assd_mm``, ``nsd``, ``tp``, ``fp``, ``fn``, ``n_pred``,
    ``n_gt``), ``summary``.

    Args:
        pred, gt: label volumes: integer arrays ``[i, j, k]`` (copied to uint16), a
            :class:`Segmentation` or a nibabel image (their own affine), or NIfTI paths; two
            folders are paired by case id as ``eval`` pairs them.
        spacing_or_affine: the grid of array inputs: 3 voxel sizes in mm or a 4x4 affine.
            Prediction and ground truth must be on the same grid (shape and affine).
        labels: score exactly these labels (after the pipeline's remapping); default: the
            pipeline's, else every non-zero label present.
        protocol: ``"nnunet"`` (NaN when TP+FP+FN = 0; native resolution), ``"sdseg"`` (the
            official code, at 256x256 in-plane) or ``"monai"``.
        hd95: ``"symmetric"`` or ``"pooled"`` (medpy's).
        nsd_tolerance: normalised surface Dice tolerance in mm.
        pipeline: label remapping and classes of a pipeline (``"btcv"``, ``"btcv:cls9"``,
            ``"demo"``, a TOML file).
        postprocess: score after 3D post-processing (``"default"`` or a plan file), with the
            scores without it under ``"postprocessing"``.
        case: the case name of array inputs (default: the ground-truth file's case id, else
            ``"case"``).

    The GIL is released while scoring.
    """
    opts = {
        "labels": None if labels is None else [int(v) for v in labels],
        "protocol": protocol,
        "hd95": hd95,
        "nsd_tolerance": float(nsd_tolerance),
        "pipeline": pipeline,
        "postprocess": None if postprocess is None else os.fspath(postprocess),
        "case": case,
    }
    return _native.evaluate(
        _side("pred", pred, spacing_or_affine), _side("gt", gt, spacing_or_affine), opts
    )
