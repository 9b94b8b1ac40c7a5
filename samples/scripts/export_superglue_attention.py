"""Export the original SuperGlue matcher architecture (plain torch, tiny, random weights).

Writes samples/superglue_attention.onnx (+ .npz), opset 12, dynamic number of keypoints per image.

This is the matcher of Sarlin et al., "SuperGlue: Learning Feature Matching with Graph Neural
Networks" (CVPR 2020), laid out as in Magic Leap's reference implementation, re-written here:

  * keypoint encoder: an MLP of Conv1d(k=1) + BatchNorm + ReLU over (x, y, score) of the keypoints
    normalised by the (fixed) image size, added to the descriptors;
  * attentional GNN of alternating self / cross layers; the multi-head attention is written with
    einsum, as in the original code:
        scores = torch.einsum('bdhn,bdhm->bhnm', query, key) / dim ** .5
        prob   = softmax(scores, dim=-1)
        out    = torch.einsum('bhnm,bdhm->bdhn', prob, value)
  * final projection and the score matrix `torch.einsum('bdn,bdm->bnm', mdesc0, mdesc1)`;
  * log-space Sinkhorn with a learned dustbin score;
  * mutual nearest neighbours, with `arange_like(x, dim) = x.new_ones(x.shape[dim]).cumsum(0) - 1`
    (-> ONNX CumSum on int64).

Ops of interest: 3 distinct Einsum equations (two per attention layer and one for the score matrix),
CumSum, ReduceLogSumExp.  TensorRT 7.2/8.0 have no Einsum at all.
The reference code returns early for an image without keypoints; that shortcut is left out here
(under tracing it would be a constant Python branch).

Run from the repo root:  /work/export-venv/bin/python samples/scripts/export_superglue_attention.py
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnx  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import _common  # noqa: E402

NAME = "superglue_attention"
OPSET = 12  # the first opset with Einsum

CONFIG = {
    "descriptor_dim": 32,
    "keypoint_encoder": [8, 16],
    "gnn_layers": ["self", "cross", "self", "cross"],
    "num_heads": 4,
    "sinkhorn_iterations": 10,
    "match_threshold": 0.2,
    "image_size": (48, 64),  # (H, W), fixed
}
N0, N1 = 24, 20  # keypoints in the npz


def pointwise_mlp(widths, batch_norm=True):
    """Conv1d(k=1) stack; BatchNorm + ReLU after every layer but the last."""
    mods = []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        mods.append(nn.Conv1d(cin, cout, kernel_size=1, bias=True))
        if i < len(widths) - 2:
            if batch_norm:
                mods.append(nn.BatchNorm1d(cout))
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def normalize_keypoints(kpts, height, width):
    """Pixel (x, y) -> centred coordinates scaled by 0.7 * max(H, W)."""
    size = kpts.new_tensor([float(width), float(height)])
    center = size / 2
    scale = size.max() * 0.7
    return (kpts - center) / scale


class KeypointEncoder(nn.Module):
    def __init__(self, hidden, dim):
        super().__init__()
        self.mlp = pointwise_mlp([3] + list(hidden) + [dim])
        nn.init.constant_(self.mlp[-1].bias, 0.0)

    def forward(self, kpts, scores):
        x = torch.cat([kpts.transpose(1, 2), scores.unsqueeze(1)], dim=1)  # B x 3 x N
        return self.mlp(x)


def multi_head_attention(query, key, value):
    """query B x d x h x N, key/value B x d x h x M -> B x d x h x N (einsum form of the paper)."""
    dim = query.shape[1]
    logits = torch.einsum("bdhn,bdhm->bhnm", query, key) / dim ** 0.5
    prob = torch.softmax(logits, dim=-1)
    return torch.einsum("bhnm,bdhm->bdhn", prob, value)


class MultiHeadAttention(nn.Module):
    def __init__(self, heads, model_dim):
        super().__init__()
        assert model_dim % heads == 0
        self.heads = heads
        self.head_dim = model_dim // heads
        self.q_proj, self.k_proj, self.v_proj, self.out = (
            nn.Conv1d(model_dim, model_dim, kernel_size=1) for _ in range(4))

    def forward(self, x, source):
        b = x.shape[0]
        # channel c = i * heads + h: head_dim-major split, as in the paper's code
        q = self.q_proj(x).view(b, self.head_dim, self.heads, -1)
        k = self.k_proj(source).view(b, self.head_dim, self.heads, -1)
        v = self.v_proj(source).view(b, self.head_dim, self.heads, -1)
        msg = multi_head_attention(q, k, v)
        return self.out(msg.contiguous().view(b, self.head_dim * self.heads, -1))


class PropagationLayer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attention = MultiHeadAttention(heads, dim)
        self.update = pointwise_mlp([2 * dim, 2 * dim, dim])
        nn.init.constant_(self.update[-1].bias, 0.0)

    def forward(self, x, source):
        return self.update(torch.cat([x, self.attention(x, source)], dim=1))


class AttentionalGNN(nn.Module):
    def __init__(self, dim, kinds, heads):
        super().__init__()
        self.kinds = list(kinds)
        self.layers = nn.ModuleList(PropagationLayer(dim, heads) for _ in self.kinds)

    def forward(self, d0, d1):
        for kind, layer in zip(self.kinds, self.layers):
            s0, s1 = (d1, d0) if kind == "cross" else (d0, d1)
            d0, d1 = d0 + layer(d0, s0), d1 + layer(d1, s1)
        return d0, d1


def sinkhorn_log(couplings, log_mu, log_nu, iters):
    u = torch.zeros_like(log_mu)
    v = torch.zeros_like(log_nu)
    for _ in range(iters):
        u = log_mu - torch.logsumexp(couplings + v.unsqueeze(1), dim=2)
        v = log_nu - torch.logsumexp(couplings + u.unsqueeze(2), dim=1)
    return couplings + u.unsqueeze(2) + v.unsqueeze(1)


def optimal_transport_with_dustbin(scores, alpha, iters):
    """Append a dustbin row/column of score `alpha`, solve entropic OT in log space."""
    b, m, n = scores.shape
    one = scores.new_tensor(1)
    ms, ns = (m * one).to(scores), (n * one).to(scores)
    col = alpha.expand(b, m, 1)
    row = alpha.expand(b, 1, n)
    corner = alpha.expand(b, 1, 1)
    couplings = torch.cat([torch.cat([scores, col], -1), torch.cat([row, corner], -1)], 1)
    norm = -(ms + ns).log()
    log_mu = torch.cat([norm.expand(m), ns.log()[None] + norm])[None].expand(b, -1)
    log_nu = torch.cat([norm.expand(n), ms.log()[None] + norm])[None].expand(b, -1)
    return sinkhorn_log(couplings, log_mu, log_nu, iters) - norm


def arange_like(x, dim: int):
    return x.new_ones(x.shape[dim]).cumsum(0) - 1  # traceable arange -> CumSum


class SuperGlue(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        d = cfg["descriptor_dim"]
        self.kenc = KeypointEncoder(cfg["keypoint_encoder"], d)
        self.gnn = AttentionalGNN(d, cfg["gnn_layers"], cfg["num_heads"])
        self.final_proj = nn.Conv1d(d, d, kernel_size=1, bias=True)
        self.register_parameter("bin_score", nn.Parameter(torch.tensor(1.0)))

    def forward(self, keypoints0, scores0, descriptors0, keypoints1, scores1, descriptors1):
        h, w = self.cfg["image_size"]
        k0 = normalize_keypoints(keypoints0, h, w)
        k1 = normalize_keypoints(keypoints1, h, w)
        d0 = descriptors0 + self.kenc(k0, scores0)
        d1 = descriptors1 + self.kenc(k1, scores1)
        d0, d1 = self.gnn(d0, d1)
        md0, md1 = self.final_proj(d0), self.final_proj(d1)
        scores = torch.einsum("bdn,bdm->bnm", md0, md1) / self.cfg["descriptor_dim"] ** 0.5
        scores = optimal_transport_with_dustbin(scores, self.bin_score, self.cfg["sinkhorn_iterations"])

        inner = scores[:, :-1, :-1]
        best0, best1 = inner.max(2), inner.max(1)
        idx0, idx1 = best0.indices, best1.indices
        mutual0 = arange_like(idx0, 1)[None] == idx1.gather(1, idx0)
        mutual1 = arange_like(idx1, 1)[None] == idx0.gather(1, idx1)
        zero = scores.new_tensor(0)
        mscores0 = torch.where(mutual0, best0.values.exp(), zero)
        mscores1 = torch.where(mutual1, mscores0.gather(1, idx1), zero)
        valid0 = mutual0 & (mscores0 > self.cfg["match_threshold"])
        valid1 = mutual1 & valid0.gather(1, idx1)
        matches0 = torch.where(valid0, idx0, idx0.new_tensor(-1))
        matches1 = torch.where(valid1, idx1, idx1.new_tensor(-1))
        return matches0, matches1, mscores0, mscores1


def build():
    _common.seed_all(0)
    model = SuperGlue(CONFIG).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
        # A trained SuperGlue gives peaked assignments; with PyTorch's default init the GNN
        # residuals swamp the descriptors and every Sinkhorn row stays flat, so nothing matches.
        # Keep the residual updates small and make the final projection a scaled rotation.
        for layer in model.gnn.layers:
            layer.update[-1].weight.mul_(0.1)
        nn.init.orthogonal_(model.final_proj.weight, gain=6.0)
    return model


def make_inputs(n0, n1, seed):
    """Image 1 sees a jittered subset of image 0's keypoints with noisy copies of their descriptors."""
    h, w = CONFIG["image_size"]
    d = CONFIG["descriptor_dim"]
    g = torch.Generator().manual_seed(seed)
    kp0 = torch.rand(1, n0, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    sc0 = torch.rand(1, n0, generator=g)
    de0 = torch.nn.functional.normalize(torch.randn(1, d, n0, generator=g), dim=1)
    perm = torch.randperm(n0, generator=g)[:n1]
    kp1 = (kp0[:, perm] + torch.randn(1, n1, 2, generator=g)).clamp(min=0.0)
    kp1 = torch.minimum(kp1, torch.tensor([w - 1.0, h - 1.0]))
    sc1 = torch.rand(1, n1, generator=g)
    de1 = torch.nn.functional.normalize(de0[:, :, perm] + 0.3 * torch.randn(1, d, n1, generator=g), dim=1)
    return {"keypoints0": kp0, "scores0": sc0, "descriptors0": de0,
            "keypoints1": kp1, "scores1": sc1, "descriptors1": de1}


IN_NAMES = ["keypoints0", "scores0", "descriptors0", "keypoints1", "scores1", "descriptors1"]
OUT_NAMES = ["matches0", "matches1", "matching_scores0", "matching_scores1"]
DYNAMIC = {
    "keypoints0": {1: "num_keypoints0"}, "scores0": {1: "num_keypoints0"},
    "descriptors0": {2: "num_keypoints0"},
    "keypoints1": {1: "num_keypoints1"}, "scores1": {1: "num_keypoints1"},
    "descriptors1": {2: "num_keypoints1"},
    "matches0": {1: "num_keypoints0"}, "matching_scores0": {1: "num_keypoints0"},
    "matches1": {1: "num_keypoints1"}, "matching_scores1": {1: "num_keypoints1"},
}
EXPECTED_EQUATIONS = {"bdhn,bdhm->bhnm", "bhnm,bdhm->bdhn", "bdn,bdm->bnm"}


def main():
    model = build()
    inputs = make_inputs(N0, N1, seed=1)
    args = tuple(inputs[k] for k in IN_NAMES)
    onnx_path = _common.path(NAME + ".onnx")
    with torch.no_grad():
        outs = model(*args)
        torch.onnx.export(model, args, onnx_path, input_names=IN_NAMES, output_names=OUT_NAMES,
                          dynamic_axes=DYNAMIC, opset_version=OPSET, do_constant_folding=True,
                          dynamo=False)
    torch_out = {k: v.numpy() for k, v in zip(OUT_NAMES, outs)}
    print("torch matches0:", torch_out["matches0"].tolist())
    _common.save_npz(NAME, {k: v.numpy() for k, v in inputs.items()}, torch_out)

    m = onnx.load(onnx_path)
    onnx.checker.check_model(m, full_check=True)
    _common.describe(onnx_path, interesting=("Einsum", "CumSum"))
    equations = [_common.attrs(n)["equation"] for n in _common.iter_nodes(m.graph) if n.op_type == "Einsum"]
    equations = [e.decode() if isinstance(e, bytes) else e for e in equations]
    hist = _common.op_histogram(m)
    assert set(equations) == EXPECTED_EQUATIONS, equations
    assert hist["CumSum"] >= 1, "expected CumSum from arange_like"

    _common.ort_check(onnx_path, {k: v.numpy() for k, v in inputs.items()}, torch_out)
    # the keypoint axes really are dynamic
    other = make_inputs(29, 17, seed=2)
    with torch.no_grad():
        ref = model(*(other[k] for k in IN_NAMES))
    print("at N0=29, N1=17:")
    _common.ort_check(onnx_path, {k: v.numpy() for k, v in other.items()},
                      {k: v.numpy() for k, v in zip(OUT_NAMES, ref)})


if __name__ == "__main__":
    main()
