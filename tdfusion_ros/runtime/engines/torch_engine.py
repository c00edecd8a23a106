"""Development backend: the PyTorch module a graph was exported from, behind the same interface.

For comparing an exported graph with its source and for running checkpoints before export.
torch is imported only when this engine is built, so the runtime path never loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tdfusion_ros.runtime.engines.base import (
    BackendUnavailableError,
    Engine,
    EngineError,
    TensorSpec,
)


class TorchEngine(Engine):
    """Runs ``module(*inputs)`` in inference mode; inputs and outputs follow ``inputs``/``outputs``.

    ``device``: "cpu", "cuda" or "auto"; ``half`` runs the module in float16 on CUDA.
    """

    def __init__(self, module: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 *, device: str = "cpu", half: bool = False, name: str = "torch") -> None:
        try:
            import torch
        except ImportError as err:
            raise BackendUnavailableError("backend 'torch' unavailable: PyTorch is not installed "
                                     "(it is a development backend; use 'onnxruntime')") from err
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "backend 'torch' on CUDA unavailable: PyTorch sees no GPU")
        if half and not device.startswith("cuda"):
            raise EngineError("half precision with the torch backend needs device='cuda'")
        self._torch = torch
        self._dtype = torch.float16 if half else torch.float32
        self._module = module.to(device=device, dtype=self._dtype).eval()
        super().__init__(name=name, inputs=tuple(inputs), outputs=tuple(outputs),
                         backend="torch", device=device, precision="fp16" if half else "fp32",
                         details={"torch": torch.__version__})

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(feeds[spec.name]).to(self.device, self._dtype)
                for spec in self.inputs]
        try:
            with torch.inference_mode():
                result = self._module(*args)
        except torch.cuda.OutOfMemoryError as err:
            raise EngineError(f"{self.name}: GPU out of memory in the torch backend; use a "
                              "smaller input or run on the CPU") from err
        values = result if isinstance(result, (tuple, list)) else (result,)
        if len(values) != len(self.outputs):
            raise EngineError(f"{self.name}: module returned {len(values)} outputs, expected "
                              f"{len(self.outputs)}")
        return {spec.name: value.float().cpu().numpy()
                for spec, value in zip(self.outputs, values)}
