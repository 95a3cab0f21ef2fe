"""Device selection shared by every command (``--device auto|cpu|cuda|cuda:N``).

Usage::

    from cuts3d.devices import resolve_device, DeviceError
    device = resolve_device("auto")          # cuda:0 when a GPU is visible, else cpu
    device = resolve_device("cuda", local_rank=3)  # cuda:3 (one process per GPU under torchrun)
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The requested device does not exist here; the message names the device and the fix."""


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for ``spec``.

    Args:
        spec: "auto" (a GPU when one is visible, else the CPU), "cpu", "cuda" (GPU ``local_rank``) or "cuda:N".
        local_rank: the process's GPU under torchrun, used by "auto" and plain "cuda".

    Raises:
        DeviceError: unknown spec, CUDA asked for without a visible GPU, or a GPU index that does not exist.
    """
    spec = str(spec).strip().lower()
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec}: no CUDA GPU is visible on this machine; use --device cpu (or auto)")
        index = local_rank if spec == "cuda" else spec.split(":", 1)[1]
        try:
            index = int(index)
        except ValueError:
            raise DeviceError(f"--device {spec}: not a GPU index; use cuda, cuda:N, cpu or auto") from None
        if not 0 <= index < torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0..."
                              f"cuda:{torch.cuda.device_count() - 1}); pick one of them or use --device auto")
        return torch.device(f"cuda:{index}")
    raise DeviceError(f"--device {spec!r}: unknown device; use auto, cpu, cuda or cuda:N")
