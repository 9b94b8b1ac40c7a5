"""Reference kernels of custom and TensorRT plugin ops (registry)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from graphfix.kernels import grid_sample, msda, nms, roi_align

__all__ = ["Kernel", "find_kernel", "known_ops"]

Kernel = Callable[[Sequence["np.ndarray | None"], Mapping[str, Any]], list[np.ndarray]]

# onnxruntime cannot run mmcv/mmdeploy custom ops nor TensorRT plugin nodes, so the executor
# runs these numpy kernels for them. A kernel takes the node's inputs in order (None for an
# omitted optional input) and its attributes as python values, and returns its outputs in order.
# TensorRT finds plugins by op_type alone and ignores the ONNX domain, so plugin kernels
# (`*_TRT`) match any domain ("*"); mmdeploy ops match the domains mmdeploy and mmcv, which
# mmdeploy's symbolics both emit (mmcv::MMCVRoiAlign, mmdeploy::grid_sampler and, for PPLNN,
# mmcv::grid_sampler; mmdeploy/mmcv/ops/*.py).
_KERNELS: dict[tuple[str, str], Kernel] = {
    ("*", "EfficientNMS_TRT"): nms.efficient_nms_trt_kernel,
    ("*", "ROIAlign_TRT"): roi_align.trt_roi_align_kernel,
    ("*", "MultiscaleDeformableAttnPlugin_TRT"): msda.trt_msda_kernel,
    ("mmdeploy", "grid_sampler"): grid_sample.mmdeploy_grid_sampler_kernel,
    ("mmcv", "grid_sampler"): grid_sample.mmdeploy_grid_sampler_kernel,
    ("mmdeploy", "MMCVRoiAlign"): roi_align.mmcv_roi_align_kernel,
    ("mmcv", "MMCVRoiAlign"): roi_align.mmcv_roi_align_kernel,
    ("mmdeploy", "MMCVMultiScaleDeformableAttention"): msda.mmcv_msda_kernel,
    ("mmcv", "MMCVMultiScaleDeformableAttention"): msda.mmcv_msda_kernel,
}


def find_kernel(domain: str, op_type: str) -> Kernel | None:
    """The reference kernel of a custom or plugin op.

    Args:
        domain: The node's domain ("" and "ai.onnx" are the default domain).
        op_type: The node's op_type.

    Returns:
        The kernel registered for (domain, op_type), else the domain-independent one for
        op_type (TensorRT plugins), else None.
    """
    return _KERNELS.get((domain, op_type)) or _KERNELS.get(("*", op_type))


def known_ops() -> list[tuple[str, str]]:
    """Every registered (domain, op_type), sorted; domain "*" means any domain.

    Returns:
        The registry's keys.
    """
    return sorted(_KERNELS)
