"""Reference kernels of custom and TensorRT plugin ops (registry)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Kernel = Callable[[Sequence["np.ndarray | None"], Mapping[str, Any]], list[np.ndarray]]

_KERNELS: dict[tuple[str, str], Kernel] = {}


def find_kernel(domain: str, op_type: str) -> Kernel | None:
    return _KERNELS.get((domain, op_type)) or _KERNELS.get(("*", op_type))


def known_ops() -> list[tuple[str, str]]:
    return sorted(_KERNELS)
