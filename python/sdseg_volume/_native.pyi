# Type stub of the native module (python/src/*.rs). The public names are re-exported by
# sdseg_volume; Model, run and evaluate are used through the wrappers in sdseg_volume/_api.py.

import os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

_Path = Union[str, "os.PathLike[str]"]
_Progress = Callable[[str, int, int], Any]

class Volume:
    """A CT volume: HU voxels ``[i, j, k]``, the voxel-to-RAS affine, its provenance."""

    def __init__(self, hu: npt.ArrayLike, affine: npt.ArrayLike) -> None:
        """A volume from an HU array ``[i, j, k]`` (copied once, as float32) and a 4x4 affine."""
    @property
    def hu(self) -> npt.NDArray[np.float32]:
        """HU voxels, float32 ``[i, j, k]``: a read-only view of the volume's array (no copy)."""
    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """The 4x4 voxel-to-RAS affine (mm)."""
    @property
    def spacing(self) -> Tuple[float, float, float]:
        """Voxel size along i, j, k (mm)."""
    @property
    def shape(self) -> Tuple[int, int, int]: ...
    @property
    def orientation(self) -> str:
        """Axis codes of the affine (nibabel's ``aff2axcodes``), e.g. ``"LPS"``."""
    @property
    def provenance(self) -> Dict[str, Any]:
        """``source`` (``dicom``/``nifti``/``array``), ``path``, ``stored_type``; for DICOM
        ``series_instance_uid``, ``series_description``, ``modality``, ``transfer_syntax``,
        ``files``."""
    @property
    def warnings(self) -> List[str]:
        """What the reader noticed but accepted."""
    def to_nibabel(self) -> Any:
        """A ``nibabel.Nifti1Image`` of the HU voxels on this affine (needs nibabel)."""

class Segmentation:
    """The labels of one volume on its grid, as ``sdseg-volume run`` writes them."""

    @property
    def labels(self) -> npt.NDArray[Union[np.uint8, np.uint16]]:
        """Label per voxel ``[i, j, k]`` (uint8; uint16 past 255)."""
    @property
    def uncertainty(self) -> Optional[npt.NDArray[np.float32]]:
        """Per-voxel uncertainty of the draws (``uncertainty=True``, ``samples >= 2``)."""
    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """The input's 4x4 voxel-to-RAS affine."""
    @property
    def case_id(self) -> str: ...
    @property
    def label_names(self) -> Dict[int, str]:
        """Label id -> name (0 is background)."""
    @property
    def statistics(self) -> List[Dict[str, Any]]:
        """Per label: ``label``, ``name``, ``voxels``, ``volume_ml``, ``mean_hu``, ..."""
    @property
    def warnings(self) -> List[str]: ...
    @property
    def seconds(self) -> Dict[str, float]:
        """Busy seconds per stage (read, prepare, model, postprocess, write, wall)."""
    def save(self, path: _Path) -> None:
        """Write the labels as ``run`` writes them (NIfTI, the input's grid and header codes)."""
    def to_nibabel(self) -> Any:
        """A ``nibabel.Nifti1Image`` of the labels on the input's affine (needs nibabel)."""

class Model:
    def __init__(self, options: Dict[str, Any]) -> None: ...
    def segment(
        self,
        input: Union[Volume, _Path],
        case_id: Optional[str] = None,
        uncertainty: bool = False,
        progress: Optional[_Progress] = None,
    ) -> Segmentation: ...
    @property
    def info(self) -> Dict[str, Any]: ...
    @property
    def label_names(self) -> List[Tuple[int, str]]: ...
    @property
    def settings(self) -> Dict[str, Any]: ...

def read_volume(
    path: _Path,
    series: Optional[str] = None,
    allow_gaps: bool = False,
    allow_tilt: bool = False,
) -> Volume:
    """Read a DICOM series folder, multi-frame DICOM file, zip or NIfTI file as ``run`` does."""

def run(
    inputs: List[str],
    out: str,
    options: Dict[str, Any],
    progress: Optional[_Progress] = None,
) -> List[Dict[str, Any]]: ...
def evaluate(pred: Any, gt: Any, options: Dict[str, Any]) -> Dict[str, Any]: ...
def cli_defaults() -> Dict[str, Any]: ...
