"""The exceptions sdseg_volume raises.

Every error is an :class:`SdsegError` carrying the message the CLI prints for the same problem
(``sdseg-volume ...`` prints ``error: <message>``) and the CLI's exit code for it:

* :class:`InputError` (exit code 2): the input or an option is wrong (a file that does not
  exist, a DICOM series with gaps, a pipeline that does not fit the model, labels that are
  not integers...). Also a :class:`ValueError`.
* :class:`InternalError` (exit code 1): a failure of ours or of the machine (out of memory, a
  write that failed, a bug). Also a :class:`RuntimeError`.
* :class:`PartialFailure` (exit code 3): :func:`sdseg_volume.run` over several cases finished
  with some of them failed; ``.cases`` holds every case's record (``status``, ``error``).
"""

from __future__ import annotations

__all__ = ["SdsegError", "InputError", "InternalError", "PartialFailure"]


class SdsegError(Exception):
    """Base class of every error raised by sdseg_volume."""

    #: The exit code ``sdseg-volume`` gives the same error.
    exit_code: int = 1


class InputError(SdsegError, ValueError):
    """Bad input or a bad option (the CLI's exit code 2)."""

    exit_code = 2


class InternalError(SdsegError, RuntimeError):
    """An internal error (the CLI's exit code 1)."""

    exit_code = 1


class PartialFailure(SdsegError):
    """Some cases of a multi-case :func:`sdseg_volume.run` failed; the others were written
    (the CLI's exit code 3). ``cases``: one record per case, as ``run`` returns them."""

    exit_code = 3
    cases: list = []
