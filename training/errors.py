"""The training pipeline's errors, each with the process exit code the command line uses for it.

::

    TrainingError            exit 1  something failed that the user could not have prevented
    ├── UsageError           exit 2  a bad option value or model name
    │   └── UnsupportedModel exit 2  a model to import that the service cannot serve as it is
    ├── DataError            exit 2  data files missing (and no download) or unreadable, a bad image folder
    │   ├── IdxFormatError   exit 2  an IDX file with a wrong magic number or truncated
    │   └── UnreadableImage  exit 2  an image file that cannot be decoded (fatal only with --strict)
    ├── ExportError          exit 1  conversion to ONNX failed, or the parity gate refused the export
    ├── PublishError         exit 1  the repository cannot be written
    └── PromotionRefused     exit 3  the new model is worse than the newest published version

The command line prints ``str(error)`` as one line on stderr and exits with ``exit_code``; no traceback.
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base of every error the pipeline raises on purpose."""

    exit_code = 1


class UsageError(TrainingError):
    """An option value or model name the pipeline refuses."""

    exit_code = 2


class UnsupportedModel(UsageError):
    """A model offered for import has a signature the service cannot serve; the message says what it
    supports."""


class DataError(TrainingError):
    """The data set cannot be found (locally or by download) or cannot be read."""

    exit_code = 2


class IdxFormatError(DataError):
    """A file is not a well-formed IDX file: wrong magic number, truncated, or trailing bytes."""


class UnreadableImage(DataError):
    """An image file that is not a PNG or JPEG, is corrupt, or has more pixels than the limit."""


class ExportError(TrainingError):
    """The ONNX export failed or disagrees with the Keras model; nothing was published."""


class PublishError(TrainingError):
    """Writing the new version to the repository failed; no version directory was left behind."""


class PromotionRefused(TrainingError):
    """The new model's test accuracy regresses too far below the newest published version."""

    exit_code = 3
