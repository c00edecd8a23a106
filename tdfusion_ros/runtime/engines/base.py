"""The engine interface every backend implements: named float32 numpy arrays in and out.

An engine runs one ONNX graph (fusion, detector or segmenter). The node only ever sees this
interface, so the same code runs ONNX Runtime on a laptop and TensorRT on a Jetson. Inputs are
checked against the graph's declared shapes before they reach a backend, because a backend's own
message for a wrong shape (a TensorRT binding error, an ORT "Got invalid dimensions") does not
say which input was wrong or what was expected. No torch here: this is the runtime path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Dim = int | str | None


class EngineError(RuntimeError):
    """An engine that cannot be created or run, with what to do about it in the message."""


class BackendUnavailableError(EngineError):
    """The requested backend cannot run on this machine (library or GPU missing)."""


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: fixed dims are ints, dynamic dims a name (or None)."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} ({dims}) {self.dtype}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def check_feeds(inputs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray],
                graph: str = "graph") -> dict[str, np.ndarray]:
    """Validate names, dtypes and shapes; return C-contiguous arrays keyed by input name.

    A named dynamic dim (e.g. ``height``) must take one value across all inputs, so an
    infrared and a visible plane of different sizes are refused here, not deep in a backend.
    """
    expected = {spec.name for spec in inputs}
    missing = sorted(expected - set(feeds))
    unexpected = sorted(set(feeds) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unexpected:
            parts.append(f"unexpected {unexpected}")
        wanted = "; ".join(spec.describe() for spec in inputs)
        raise EngineError(f"{graph}: wrong inputs ({', '.join(parts)}); it takes {wanted}")
    bound: dict[str, tuple[int, str]] = {}
    checked: dict[str, np.ndarray] = {}
    for spec in inputs:
        array = feeds[spec.name]
        if not isinstance(array, np.ndarray):
            raise EngineError(f"{graph}: input '{spec.name}' must be a numpy array, "
                              f"got {type(array).__name__}")
        if array.dtype != np.dtype(spec.dtype):
            raise EngineError(f"{graph}: input '{spec.name}' is {array.dtype}, expected "
                              f"{spec.dtype} (convert with .astype(np.{spec.dtype}))")
        if array.ndim != len(spec.shape):
            raise EngineError(f"{graph}: input '{spec.name}' has shape {array.shape} (rank "
                              f"{array.ndim}); expected rank {len(spec.shape)}: "
                              f"{spec.describe()}")
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
            if isinstance(want, int) and want >= 0 and want != got:
                raise EngineError(f"{graph}: input '{spec.name}' has shape {array.shape}; "
                                  f"axis {axis} must be {want}: {spec.describe()}")
            if got == 0:
                raise EngineError(f"{graph}: input '{spec.name}' is empty {array.shape}")
            if isinstance(want, str):
                if want in bound and bound[want][0] != got:
                    other_value, other_name = bound[want]
                    raise EngineError(
                        f"{graph}: '{want}' is {got} for input '{spec.name}' but "
                        f"{other_value} for '{other_name}' (shapes {array.shape}); the inputs "
                        "must have the same size")
                bound.setdefault(want, (got, spec.name))
        checked[spec.name] = np.ascontiguousarray(array)
    return checked


@dataclass
class Engine(ABC):
    """One loaded graph on one backend.

    ``backend`` and ``device`` say what actually runs (never what was asked for);
    ``selection`` records how ``auto`` arrived there.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backend: str = ""
    device: str = ""
    precision: str = "fp32"
    selection: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    closed: bool = False

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on validated inputs; returns every output by name."""
        return self._run(check_feeds(self.inputs, feeds, self.name))

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Backend-specific execution on already validated, contiguous inputs."""

    def close(self) -> None:
        """Release backend resources (GPU memory, sessions); the engine is unusable after."""
        self.closed = True

    def describe(self) -> str:
        text = f"{self.name}: {self.backend} on {self.device}, {self.precision}"
        extra = ", ".join(f"{k}={v}" for k, v in self.details.items())
        return f"{text} ({extra})" if extra else text

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
