"""The few CUDA driver calls the TensorRT backend needs, through ctypes and ``libcuda.so.1``.

Why not torch, pycuda or cuda-python: the runtime path must not import torch, and the driver
library is the one CUDA piece present on every machine with an NVIDIA driver (a Jetson, a
desktop, a container with the GPU mounted), with a C ABI that has been stable for a decade.
TensorRT's runtime API calls share the device's primary context, which is the one used here.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from tdfusion_ros.runtime.engines.base import BackendUnavailableError, EngineError

CUDA_SUCCESS = 0
CUDA_ERROR_OUT_OF_MEMORY = 2
CUDA_ERROR_NO_DEVICE = 100
ATTRIBUTE_CC_MAJOR = 75
ATTRIBUTE_CC_MINOR = 76

_lib: ctypes.CDLL | None = None


class GpuOutOfMemoryError(EngineError):
    """A GPU allocation failed for lack of memory."""


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            _lib = ctypes.CDLL("libcuda.so.1")
        except OSError as err:
            raise BackendUnavailableError(
                "no CUDA GPU: the NVIDIA driver library libcuda.so.1 is not installed or not "
                "visible to this process") from err
    return _lib


def _error_text(code: int) -> str:
    lib = _load()
    text = ctypes.c_char_p()
    if lib.cuGetErrorString(code, ctypes.byref(text)) == CUDA_SUCCESS and text.value:
        return text.value.decode()
    return f"CUDA error {code}"


def _check(code: int, what: str) -> None:
    if code == CUDA_SUCCESS:
        return
    if code == CUDA_ERROR_OUT_OF_MEMORY:
        raise GpuOutOfMemoryError(f"GPU out of memory during {what}: free GPU memory held by other "
                              "processes, use a smaller input, or run on the CPU")
    raise EngineError(f"CUDA driver call {what} failed: {_error_text(code)} ({code})")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_memory: int
    compute_capability: tuple[int, int]


def _init() -> ctypes.CDLL:
    lib = _load()
    code = lib.cuInit(0)
    if code == CUDA_ERROR_NO_DEVICE:
        raise BackendUnavailableError("no CUDA GPU: the NVIDIA driver is installed but reports no "
                                 "device")
    if code != CUDA_SUCCESS:
        raise BackendUnavailableError(f"no usable CUDA GPU: cuInit failed with {_error_text(code)}")
    return lib


def list_gpus() -> list[GpuInfo]:
    """Every CUDA device the driver reports; raises BackendUnavailableError when there is none."""
    lib = _init()
    count = ctypes.c_int()
    _check(lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
    if count.value == 0:
        raise BackendUnavailableError("no CUDA GPU: the NVIDIA driver reports 0 devices")
    gpus = []
    for index in range(count.value):
        device = ctypes.c_int()
        _check(lib.cuDeviceGet(ctypes.byref(device), index), "cuDeviceGet")
        name = ctypes.create_string_buffer(256)
        _check(lib.cuDeviceGetName(name, 256, device), "cuDeviceGetName")
        total = ctypes.c_size_t()
        _check(lib.cuDeviceTotalMem_v2(ctypes.byref(total), device), "cuDeviceTotalMem")
        major, minor = ctypes.c_int(), ctypes.c_int()
        _check(lib.cuDeviceGetAttribute(ctypes.byref(major), ATTRIBUTE_CC_MAJOR, device),
               "cuDeviceGetAttribute")
        _check(lib.cuDeviceGetAttribute(ctypes.byref(minor), ATTRIBUTE_CC_MINOR, device),
               "cuDeviceGetAttribute")
        gpus.append(GpuInfo(index, name.value.decode(), total.value, (major.value, minor.value)))
    return gpus


def probe_gpu(index: int = 0) -> tuple[GpuInfo | None, str]:
    """(the GPU, "") or (None, why there is none): never raises, for backend selection."""
    try:
        gpus = list_gpus()
    except EngineError as err:
        return None, str(err)
    if index >= len(gpus):
        return None, f"no CUDA GPU with index {index} (found {len(gpus)})"
    return gpus[index], ""


class CudaContext:
    """The primary context of one device, made current on the calling thread, and a stream."""

    def __init__(self, index: int = 0) -> None:
        self._lib = _init()
        self._device = ctypes.c_int()
        _check(self._lib.cuDeviceGet(ctypes.byref(self._device), index), "cuDeviceGet")
        self._context = ctypes.c_void_p()
        _check(self._lib.cuDevicePrimaryCtxRetain(ctypes.byref(self._context), self._device),
               "cuDevicePrimaryCtxRetain")
        self.make_current()
        self._stream = ctypes.c_void_p()
        _check(self._lib.cuStreamCreate(ctypes.byref(self._stream), 0), "cuStreamCreate")
        self._buffers: list[int] = []

    @property
    def stream(self) -> int:
        return int(self._stream.value or 0)

    def make_current(self) -> None:
        _check(self._lib.cuCtxSetCurrent(self._context), "cuCtxSetCurrent")

    def memory_info(self) -> tuple[int, int]:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        _check(self._lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)),
               "cuMemGetInfo")
        return free.value, total.value

    def alloc(self, nbytes: int) -> int:
        pointer = ctypes.c_uint64()
        _check(self._lib.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(max(nbytes, 1))),
               f"cuMemAlloc of {nbytes} bytes")
        self._buffers.append(pointer.value)
        return pointer.value

    def free(self, pointer: int) -> None:
        if pointer in self._buffers:
            self._buffers.remove(pointer)
            _check(self._lib.cuMemFree_v2(ctypes.c_uint64(pointer)), "cuMemFree")

    def to_device(self, pointer: int, host: ctypes.c_void_p | int, nbytes: int) -> None:
        _check(self._lib.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(pointer), ctypes.c_void_p(host),
                                              ctypes.c_size_t(nbytes), self._stream),
               "cuMemcpyHtoDAsync")

    def to_host(self, host: ctypes.c_void_p | int, pointer: int, nbytes: int) -> None:
        _check(self._lib.cuMemcpyDtoHAsync_v2(ctypes.c_void_p(host), ctypes.c_uint64(pointer),
                                              ctypes.c_size_t(nbytes), self._stream),
               "cuMemcpyDtoHAsync")

    def synchronize(self) -> None:
        _check(self._lib.cuStreamSynchronize(self._stream), "cuStreamSynchronize")

    def close(self) -> None:
        if self._lib is None:
            return
        self.make_current()
        for pointer in list(self._buffers):
            self.free(pointer)
        if self._stream.value:
            self._lib.cuStreamDestroy_v2(self._stream)
            self._stream = ctypes.c_void_p()
        self._lib.cuDevicePrimaryCtxRelease_v2(self._device)
        self._lib = None  # type: ignore[assignment]
