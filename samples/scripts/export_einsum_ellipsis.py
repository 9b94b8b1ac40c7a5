"""Export a tiny RoFormer-style encoder whose einsums use ellipsis and broadcasting (random weights).

Writes samples/einsum_ellipsis.onnx (+ .npz), opset 17, dynamic batch and sequence length.

Architecture: rotary position embedding (RoFormer, Su et al. 2021) from lucidrains'
`rotary-embedding-torch` package (MIT; the rotary of BS-RoFormer / Mel-RoFormer), used as in
BS-RoFormer's attention: `RotaryEmbedding(dim=dim_head)` and `rotate_queries_or_keys(q)` /
`(k)` on (b, h, n, d) queries and keys.  The attention itself is written with ellipsis einsums as in
Flamingo's Perceiver Resampler (lucidrains' flamingo-pytorch; transformers' Idefics perceiver has
the same lines).  Pre-norm, 2 layers, model dim 32, 2 heads of 16, GELU MLP.

Einsums (torch's equations, exported verbatim, spaces included):
  * `'..., f -> ... f'` in RotaryEmbedding.forward: positions (n,) times inverse frequencies (f,):
    the ellipsis covers every axis of the first operand and the second operand has none, i.e. an
    outer product by ellipsis broadcasting;
  * `'... i d, ... j d -> ... i j'` and `'... i j, ... j d -> ... i d'`: attention with the
    ellipsis standing for (batch, heads).
`cache_if_possible=False`: with the default cache, the first eager call fills a buffer and every
later call (the trace included) returns a slice of it, so the graph would have no Einsum and a
frozen sequence length.  `rotate_queries_or_keys` also concatenates the empty slices
`t[..., :0]` and `t[..., dim_head:]` around the rotated part (the rotary covers the whole head).

Run from the repo root:  /work/export-venv/bin/python samples/scripts/export_einsum_ellipsis.py
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnx  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import _common  # noqa: E402

NAME = "einsum_ellipsis"
OPSET = 17
DIM, HEADS, DIM_HEAD, DEPTH = 32, 2, 16, 2
EXPECTED_EQUATIONS = {"..., f -> ... f", "... i d, ... j d -> ... i j", "... i j, ... j d -> ... i d"}


class RotaryAttention(nn.Module):
    def __init__(self, dim, heads, dim_head, rotary):
        super().__init__()
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.rotary = rotary

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # b h n d
        q = self.rotary.rotate_queries_or_keys(q)
        k = self.rotary.rotate_queries_or_keys(k)
        sim = torch.einsum("... i d, ... j d -> ... i j", q * self.scale, k)
        attn = sim.softmax(dim=-1)
        out = torch.einsum("... i j, ... j d -> ... i d", attn, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(),
                                 nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


class RoFormerEncoder(nn.Module):
    def __init__(self, dim=DIM, depth=DEPTH, heads=HEADS, dim_head=DIM_HEAD):
        super().__init__()
        from rotary_embedding_torch import RotaryEmbedding

        rotary = RotaryEmbedding(dim=dim_head, cache_if_possible=False)  # shared by all layers
        self.layers = nn.ModuleList(
            nn.ModuleList([RotaryAttention(dim, heads, dim_head, rotary), FeedForward(dim)])
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return self.norm(x)


def main():
    import rotary_embedding_torch  # noqa: F401 - fail early if missing

    _common.seed_all(0)
    model = RoFormerEncoder().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, DIM, generator=gen)
    onnx_path = _common.path(NAME + ".onnx")
    with torch.no_grad():
        y = model(x)
        torch.onnx.export(model, (x,), onnx_path, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    _common.save_npz(NAME, {"x": x.numpy()}, {"y": y.numpy()})

    m = onnx.load(onnx_path)
    onnx.checker.check_model(m, full_check=True)
    _common.describe(onnx_path, interesting=("Einsum",))
    equations = {_common.attrs(n)["equation"].decode() for n in _common.iter_nodes(m.graph)
                 if n.op_type == "Einsum"}
    print("Einsum equations:", sorted(equations))
    assert equations == EXPECTED_EQUATIONS, equations

    _common.ort_check(onnx_path, {"x": x.numpy()}, {"y": y.numpy()})
    x2 = torch.randn(3, 7, DIM, generator=gen)  # batch and sequence really are dynamic
    with torch.no_grad():
        y2 = model(x2)
    print("at 3x7:")
    _common.ort_check(onnx_path, {"x": x2.numpy()}, {"y": y2.numpy()})


if __name__ == "__main__":
    main()
