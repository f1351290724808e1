"""The core's request and response types: plain, typed, and independent of any transport.

Tensors are numpy arrays, versions are ints, deadlines are ``time.monotonic()`` seconds. A transport
decodes its wire format into these and encodes these back; nothing here knows HTTP or gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.contract import Preprocessing
from service.core.signature import ModelSignature, TensorSpec
from service.telemetry.metrics import VersionStats


@dataclass(slots=True)  # not frozen: built on every request, and frozen costs a microsecond each
class InferRequest:
    """One inference request for a model version.

    ``inputs`` holds one array per model input, rows first (UINT8 is accepted for FP32 inputs);
    ``outputs`` names the outputs wanted (None: all, in signature order); ``id`` is echoed.
    ``timeout`` is how long, in seconds from now, the client's answer stays useful (Triton's
    ``parameters.timeout``; None: the configured ``SERVE_DEFAULT_TIMEOUT_S``); ``deadline`` is a
    ``time.monotonic()`` time that caps it (a gRPC deadline; None: no cap). The core turns the two into
    one deadline (:meth:`~service.core.ModelCall.infer`), nowhere else.
    ``binary`` names the outputs the client wants as raw bytes (the HTTP binary tensor extension; gRPC
    always answers raw); the core carries it to the encoder untouched.
    ``checked`` says the transport has already checked ``inputs`` and ``outputs`` against
    ``call.signature`` of the :class:`~service.core.ModelCall` it decoded for, with
    :class:`~service.core.signature.RequestCheck` as every decoder does: the core then skips the same checks.
    Leave it False otherwise.
    """

    inputs: Mapping[str, np.ndarray]
    id: str | None = None
    outputs: Sequence[str] | None = None
    deadline: float | None = None
    checked: bool = False
    timeout: float | None = None
    binary: frozenset[str] = frozenset()


@dataclass(slots=True)
class InferResponse:
    """The outputs of one request: ``outputs[name]`` for each spec in ``specs`` (signature order), the
    outputs asked for and only those (selected once, by the core); ``binary`` as the request's."""

    model: str
    version: int
    id: str | None
    outputs: dict[str, np.ndarray]
    specs: tuple[TensorSpec, ...]
    binary: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ClassifyRequest:
    """Encoded images (PNG or JPEG bytes) to classify, computed as one request of ``len(images)`` rows.

    Each image is prepared as the model's ``preprocessing`` entry declares; the ``top_k`` most likely
    classes of each come back, in order, with the model's input rows when ``return_input``.
    ``filenames`` (as many as ``images``, or None) name the images in the results and in error messages.
    """

    images: Sequence[bytes]
    top_k: int = 3
    return_input: bool = False
    deadline: float | None = None
    filenames: Sequence[str | None] | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    """One class of a classification, with its probability."""

    class_id: int
    label: str
    probability: float


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    """The ``top_k`` classes for one image, most likely first; ``input`` is the model's ``(H, W, C)``
    input for it when the request asked for it (``return_input``)."""

    predictions: tuple[Prediction, ...]
    filename: str | None = None
    input: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class ClassifyResponse:
    """One :class:`ClassifyResult` per image of the request, in its order."""

    model: str
    version: int
    results: tuple[ClassifyResult, ...]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a served model version is: the V2 model metadata, plus what the service adds to it.

    ``versions`` are every served version of the model; ``version`` is the one described.
    """

    name: str
    version: int
    versions: tuple[int, ...]
    platform: str
    signature: ModelSignature
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    provider: str
    max_batch_size: int
    #: Whether the server takes feedback (corrected labels) for it.
    feedback: bool = False


@dataclass(frozen=True, slots=True)
class FeedbackReceipt:
    """A stored feedback item: its id, the version that read the image, the label given and its answer."""

    id: str
    model: str
    version: int
    label: str
    predicted: str


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """Server metadata: name, version and the protocol extensions served."""

    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VersionStatistics:
    """Triton-style statistics of one served version (``stats`` is live; read it, never change it)."""

    name: str
    version: int
    stats: VersionStats


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    """One version found in the repository, and whether it serves (``READY``) or why not."""

    name: str
    version: int
    state: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ExplainRequest:
    """Explain one image: ``image`` (PNG or JPEG bytes, prepared as ``/classify`` prepares them) or
    ``input`` (the model input itself, ``(H, W, C)``), exactly one of them.

    ``method`` is ``occlusion`` (``patch``, ``stride``: None picks defaults) or ``rise`` (``masks``,
    ``grid``, ``seed``); ``label`` (a label of the model, or a class index) picks the class explained,
    None the top-1. See :mod:`service.core.attribution`.
    """

    image: bytes | None = None
    input: np.ndarray | None = None
    method: str = "occlusion"
    patch: int | None = None
    stride: int | None = None
    masks: int = 1000
    grid: int = 7
    seed: int = 0
    label: str | None = None
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    """Which pixels made the score of class ``class_id``: ``attribution`` ``(H, W)`` in the model's input
    coordinates (the class's score drop when the pixel is hidden), for ``input`` ``(H, W, C)``.

    ``parameters`` say how the rows were made, ``rows`` how many the model computed (the input's
    included), ``milliseconds`` how long the whole explanation took.
    """

    model: str
    version: int
    class_id: int
    label: str
    score: float
    method: str
    attribution: np.ndarray
    input: np.ndarray
    preprocessing: Preprocessing
    parameters: Mapping[str, int | float]
    rows: int
    milliseconds: float
