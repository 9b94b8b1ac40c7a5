"""Make the torch/torchvision reference arrays that tests/test_kernels.py compares kernels with.

Run with an environment that has torch and torchvision (not a graphfix dependency), from the
repository root:  python tests/data/kernels/make_fixtures.py
Everything is float64 and seeded, so the files are reproducible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

HERE = Path(__file__).resolve().parent
MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")


def grid_sample_fixture(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """torch.nn.functional.grid_sample on grids reaching well outside [-1, 1]."""
    arrays = {
        "x4": rng.standard_normal((2, 3, 5, 7)),
        "grid4": rng.uniform(-1.8, 1.8, (2, 6, 4, 2)),
        "x5": rng.standard_normal((2, 2, 3, 4, 5)),
        "grid5": rng.uniform(-1.8, 1.8, (2, 3, 4, 2, 3)),
    }
    for rank in (4, 5):
        x, grid = torch.from_numpy(arrays[f"x{rank}"]), torch.from_numpy(arrays[f"grid{rank}"])
        for mode in MODES[:2] if rank == 5 else MODES:
            for padding in PADDINGS:
                for align in (False, True):
                    y = F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align)
                    arrays[f"y{rank}_{mode}_{padding}_{int(align)}"] = y.numpy()
    return arrays


def roi_align_fixture(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """torchvision.ops.roi_align (avg) and a max-of-interpolated-points reference.

    The max reference samples every point with roi_align(output=(oh*g, ow*g), sampling_ratio=1)
    (one point at the centre of each fine bin is exactly the point grid of a g x g sampling)
    and max-pools g x g blocks: mmcv's max mode.
    """
    x = rng.standard_normal((2, 3, 12, 14))
    corners = rng.uniform(-4, 30, (24, 2, 2))
    corners.sort(axis=1)
    rois = np.concatenate([rng.integers(0, 2, (24, 1)), corners[:, 0], corners[:, 1]], axis=1)
    rois[:4, 3:] = rois[:4, 1:3] + rng.uniform(0, 1.5, (4, 2))  # tiny ROIs: the size clamp matters
    arrays = {"x": x, "rois": rois}
    xt, rt = torch.from_numpy(x), torch.from_numpy(rois)
    for aligned in (False, True):
        for ratio in (0, 1, 2, 3):
            y = torchvision.ops.roi_align(xt, rt, (3, 4), spatial_scale=0.5, sampling_ratio=ratio, aligned=aligned)
            arrays[f"avg_{int(aligned)}_{ratio}"] = y.numpy()
        for ratio in (1, 2, 3):
            fine = torchvision.ops.roi_align(xt, rt, (3 * ratio, 4 * ratio), spatial_scale=0.5, sampling_ratio=1,
                                             aligned=aligned)
            blocks = fine.reshape(24, 3, 3, ratio, 4, ratio)
            arrays[f"max_{int(aligned)}_{ratio}"] = blocks.amax(dim=(3, 5)).numpy()
    return arrays


def msda_fixture(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """mmcv's multi_scale_deformable_attn_pytorch formulation (grid_sample per level)."""
    shapes = np.array([[6, 8], [3, 4], [2, 2]])
    starts = np.concatenate([[0], np.cumsum(shapes.prod(1))[:-1]])
    n, heads, depth, queries, points = 2, 3, 4, 5, 2
    value = rng.standard_normal((n, int(shapes.prod(1).sum()), heads, depth))
    locations = rng.uniform(-0.15, 1.15, (n, queries, heads, len(shapes), points, 2))
    weights = rng.uniform(0, 1, (n, queries, heads, len(shapes), points))
    v = torch.from_numpy(value)
    grids = 2 * torch.from_numpy(locations) - 1
    per_level = []
    for level, (h, w) in enumerate(shapes):
        rows = v[:, starts[level]:starts[level] + h * w]  # [N, HW, M, D]
        image = rows.flatten(2).transpose(1, 2).reshape(n * heads, depth, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [N*M, Lq, P, 2]
        per_level.append(F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    sampled = torch.stack(per_level, dim=-2).flatten(-2)  # [N*M, D, Lq, L*P]
    attention = torch.from_numpy(weights).transpose(1, 2).reshape(n * heads, 1, queries, -1)
    output = (sampled * attention).sum(-1).view(n, heads * depth, queries).transpose(1, 2)
    return {
        "value": value, "spatial_shapes": shapes, "level_start_index": starts,
        "sampling_locations": locations, "attention_weights": weights, "output": output.numpy(),
    }


def main() -> None:
    torch.set_default_dtype(torch.float64)
    for name, make in (("grid_sample", grid_sample_fixture), ("roi_align", roi_align_fixture), ("msda", msda_fixture)):
        arrays = make(np.random.default_rng(20261122))
        np.savez_compressed(HERE / f"{name}.npz", torch_version=np.array(torch.__version__),
                            torchvision_version=np.array(torchvision.__version__), **arrays)
        print(name, sorted(arrays)[:3], "...", f"{(HERE / f'{name}.npz').stat().st_size} bytes")


if __name__ == "__main__":
    main()
