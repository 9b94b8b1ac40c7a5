"""Export kornia's LightGlue matcher (tiny config, random weights, nothing downloaded).

Writes samples/kornia_lightglue.onnx (+ .npz), opset 17, dynamic number of keypoints per image.

`kornia.feature.LightGlue(features=None, ...)` builds the model from `default_conf` plus the
keyword arguments and loads no weights (with `weights=None` it does not read a local file either).
Tiny config: descriptor_dim = input_dim = 32, 2 heads, 3 layers.  Adaptive depth (early stopping,
`depth_confidence`) and adaptive width (point pruning, `width_confidence`) are switched off with -1:
both decide in Python from the data (`if self.check_if_stop(...): break`, `torch.where(prunemask)`
followed by `index_select`), so a traced graph would freeze the decisions taken for the example
inputs.  `flash=False`; on CPU the self-attention uses `F.scaled_dot_product_attention` either way.

The exported function is LightGlue.forward on {"image0": {"keypoints", "descriptors", "image_size"},
"image1": {...}} with a fixed image size; it returns log_assignment (B x M+1 x N+1), matches0/1 and
matching_scores0/1 (the per-pair lists `matches` / `scores` are left out: they are built with
boolean indexing in a Python loop over the batch).

Ops of interest: the cross-attention block is written with einsum, with spaces in the equations
("bhid, bhjd -> bhij", "bhij, bhjd -> bhid", "bhji, bhjd -> bhid"), the match assignment with
"bmd,bnd->bmn"; the self-attention block is exported from scaled_dot_product_attention (MatMul).

Run from the repo root:  /work/export-venv/bin/python samples/scripts/export_kornia_lightglue.py
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnx  # noqa: E402
import torch  # noqa: E402

import _common  # noqa: E402

NAME = "kornia_lightglue"
OPSET = 17
IMAGE_W, IMAGE_H = 64, 48
DIM = 32
CONF = {
    "input_dim": DIM,
    "descriptor_dim": DIM,
    "n_layers": 3,
    "num_heads": 2,
    "flash": False,
    "mp": False,
    "depth_confidence": -1,  # no early stopping
    "width_confidence": -1,  # no point pruning
    "filter_threshold": 0.1,
    "weights": None,
}
M0, N1 = 24, 20  # keypoints in the npz

IN_NAMES = ["keypoints0", "descriptors0", "keypoints1", "descriptors1"]
OUT_NAMES = ["log_assignment", "matches0", "matches1", "matching_scores0", "matching_scores1"]
DYNAMIC = {
    "keypoints0": {1: "num_keypoints0"}, "descriptors0": {1: "num_keypoints0"},
    "keypoints1": {1: "num_keypoints1"}, "descriptors1": {1: "num_keypoints1"},
    "log_assignment": {1: "num_keypoints0_plus_1", 2: "num_keypoints1_plus_1"},
    "matches0": {1: "num_keypoints0"}, "matching_scores0": {1: "num_keypoints0"},
    "matches1": {1: "num_keypoints1"}, "matching_scores1": {1: "num_keypoints1"},
}


class Matcher(torch.nn.Module):
    """Tensor-in / tensor-out wrapper of LightGlue.forward with a fixed image size (W, H)."""

    def __init__(self, lightglue):
        super().__init__()
        self.lightglue = lightglue
        self.register_buffer("image_size", torch.tensor([[IMAGE_W, IMAGE_H]], dtype=torch.float32))

    def forward(self, keypoints0, descriptors0, keypoints1, descriptors1):
        out = self.lightglue({
            "image0": {"keypoints": keypoints0, "descriptors": descriptors0, "image_size": self.image_size},
            "image1": {"keypoints": keypoints1, "descriptors": descriptors1, "image_size": self.image_size},
        })
        return tuple(out[k] for k in OUT_NAMES)


def build():
    from kornia.feature import LightGlue

    _common.seed_all(0)
    lg = LightGlue(features=None, **CONF)
    # A trained LightGlue gives peaked assignments; with PyTorch's default init the residual
    # updates swamp the descriptors and the dual softmax stays flat, so nothing matches.  Keep the
    # residual updates small, make the last layer's final projection a scaled rotation and its
    # matchability high.
    with torch.no_grad():
        for layer in lg.transformers:
            for block in (layer.self_attn, layer.cross_attn):
                block.ffn[-1].weight.mul_(0.1)
                block.ffn[-1].bias.mul_(0.1)
        torch.nn.init.orthogonal_(lg.log_assignment[-1].final_proj.weight, gain=6.0)
        lg.log_assignment[-1].matchability.bias.fill_(3.0)  # most points matchable
    # Random weights leave kornia's LightGlue in training mode (see its docstring); we want eval.
    return Matcher(lg).eval()


def make_inputs(m, n, seed):
    """Image 1 sees a jittered subset of image 0's keypoints with noisy copies of their descriptors."""
    g = torch.Generator().manual_seed(seed)
    wh = torch.tensor([IMAGE_W - 1.0, IMAGE_H - 1.0])
    kp0 = torch.rand(1, m, 2, generator=g) * wh
    de0 = torch.nn.functional.normalize(torch.randn(1, m, DIM, generator=g), dim=-1)
    perm = torch.randperm(m, generator=g)[:n]
    kp1 = torch.minimum((kp0[:, perm] + torch.randn(1, n, 2, generator=g)).clamp(min=0.0), wh)
    de1 = torch.nn.functional.normalize(de0[:, perm] + 0.3 * torch.randn(1, n, DIM, generator=g), dim=-1)
    return {"keypoints0": kp0, "descriptors0": de0, "keypoints1": kp1, "descriptors1": de1}


def fix_repeat_interleave_symbolic():
    """Work around a TorchScript-exporter bug hit by LightGlue's positional encoding.

    `LearnableFourierPositionalEncoding` ends with `emb.repeat_interleave(2, dim=-1)` on a rank-5
    tensor.  The exporter's symbolic (symbolic_opset13.repeat_interleave) reads `dim` as the very
    tensor held by the graph's `prim::Constant -1` and normalises it in place (`dim += rank`), and
    that constant is shared (constant pooling) with every other `-1` of the trace: afterwards
    `sim.transpose(-2, -1)` in CrossBlock asks for dims (-2, 4) of a rank-4 tensor and the export
    dies with `IndexError: list index out of range` in symbolic_opset9.transpose (and the
    `torch.where(valid0, m0, -1)` of filter_matches would write 4 instead of -1).
    Re-register the same symbolic (public torch.onnx.register_custom_op_symbolic) so that it gets
    a private copy of `dim`; the exported ops are unchanged.
    """
    from torch.onnx._internal.torchscript_exporter import symbolic_helper, symbolic_opset13

    def repeat_interleave(g, self, repeats, dim=None, output_size=None):
        if dim is not None and not symbolic_helper._is_none(dim) and symbolic_helper._is_constant(dim):
            dim = g.op("Constant", value_t=torch.tensor(symbolic_helper._get_const(dim, "i", "dim")))
        return symbolic_opset13.repeat_interleave(g, self, repeats, dim, output_size)

    torch.onnx.register_custom_op_symbolic("aten::repeat_interleave", repeat_interleave, OPSET)


def main():
    import kornia

    print("kornia", kornia.__version__)
    model = build()
    inputs = make_inputs(M0, N1, seed=1)
    args = tuple(inputs[k] for k in IN_NAMES)
    onnx_path = _common.path(NAME + ".onnx")
    with torch.no_grad():
        outs = model(*args)
        fix_repeat_interleave_symbolic()
        torch.onnx.export(model, args, onnx_path, input_names=IN_NAMES, output_names=OUT_NAMES,
                          dynamic_axes=DYNAMIC, opset_version=OPSET, do_constant_folding=True,
                          dynamo=False)
    torch_out = {k: v.numpy() for k, v in zip(OUT_NAMES, outs)}
    print("torch matches0:", torch_out["matches0"].tolist())
    _common.save_npz(NAME, {k: v.numpy() for k, v in inputs.items()}, torch_out)

    m = onnx.load(onnx_path)
    onnx.checker.check_model(m, full_check=True)
    _common.describe(onnx_path, interesting=("Einsum", "CumSum"))
    equations = sorted({_common.attrs(n)["equation"].decode() for n in _common.iter_nodes(m.graph)
                        if n.op_type == "Einsum"})
    print("Einsum equations:", equations)
    assert equations, "expected Einsum nodes"

    _common.ort_check(onnx_path, {k: v.numpy() for k, v in inputs.items()}, torch_out)
    other = make_inputs(29, 17, seed=2)  # the keypoint axes really are dynamic
    with torch.no_grad():
        ref = model(*(other[k] for k in IN_NAMES))
    print("at M=29, N=17:")
    _common.ort_check(onnx_path, {k: v.numpy() for k, v in other.items()},
                      {k: v.numpy() for k, v in zip(OUT_NAMES, ref)})


if __name__ == "__main__":
    main()
