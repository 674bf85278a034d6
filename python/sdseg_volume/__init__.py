"""sdseg_volume: segment CT volumes with SDSeg (Stable Diffusion Segmentation) from Python.

The readers, model, metrics and runs of the ``sdseg-volume`` CLI, with NumPy arrays in and out
and results bit-identical to the CLI (the same Rust library runs underneath, with the GIL
released)::

    import sdseg_volume as sv

    vol = sv.read_volume("testdata/demo-ct")        # DICOM folder, NIfTI, zip: as `run` reads
    model = sv.Model()                              # `run`'s defaults: the bundled demo model
    seg = model.segment(vol)                        # labels on the input grid (uint8 [i, j, k])
    seg.save("labels.nii.gz")                       # the file `sdseg-volume run` writes
    scores = sv.evaluate(seg, "testdata/demo-ct-labels.nii.gz", pipeline="demo")

* :func:`read_volume` -> :class:`Volume` (``hu``: float32 ``[i, j, k]`` as in the NIfTI file,
  a read-only view without copy; ``affine``, ``spacing``, ``provenance``, ``warnings``,
  ``to_nibabel()``).
* :class:`Model` (``weights``, ``model_config``, ``pipeline``, ``device``, ``dtype``,
  ``batch_size``, ``samples``, ``seed``, ...: ``run``'s options and defaults), whose
  :meth:`Model.segment` takes a :class:`Volume`, a path or an array + affine and returns a
  :class:`Segmentation` (``labels``, ``affine``, ``label_names``, ``uncertainty``,
  ``statistics``, ``save()``, ``to_nibabel()``).
* :func:`run`: ``sdseg-volume run`` file to file, for a list of inputs.
* :func:`evaluate`: ``sdseg-volume eval``'s scores as the dict ``eval --out x.json`` writes.
* Errors: :class:`SdsegError` > :class:`InputError` (also ``ValueError``),
  :class:`InternalError`, :class:`PartialFailure`, with the CLI's messages.

Copies: reading makes none (``Volume.hu`` views the reader's array); segmenting a
:class:`Volume` makes none; an array input is copied once into a :class:`Volume`; labels come
back without a copy but for the narrowing to uint8; ``evaluate`` copies label arrays to uint16
(scoring remaps them in place).
"""

from __future__ import annotations

from ._api import Model, cli_defaults, evaluate, run
from ._native import Segmentation, Volume, __version__, read_volume
from .errors import InputError, InternalError, PartialFailure, SdsegError

__all__ = [
    "read_volume",
    "Volume",
    "Model",
    "Segmentation",
    "run",
    "evaluate",
    "cli_defaults",
    "SdsegError",
    "InputError",
    "InternalError",
    "PartialFailure",
    "__version__",
]
