"""Export a small DGCNN-style point-cloud classifier (plain torch, random weights).

Writes samples/topk_smallest.onnx (+ .npz), opset 13, dynamic batch and number of points.

Each EdgeConv finds the k nearest neighbours of every point with
`torch.topk(pairwise_sq_distance, k + 1, dim=-1, largest=False)` -> ONNX `TopK` with `largest=0`,
and drops the point itself with `idx[:, :, 1:]` -> an int64 `Slice` whose end is INT64_MAX
(9223372036854775807), which is what PyTorch writes for open-ended slices.

Run from the repo root:  python samples/scripts/export_topk_smallest.py
"""

import collections
import os

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.dirname(HERE)
NAME = "topk_smallest"
OPSET = 13
INT64_MAX = np.iinfo(np.int64).max


def knn(x, k):
    """x: (B, C, N) -> indices (B, N, k) of the k nearest other points (squared L2)."""
    inner = torch.matmul(x.transpose(2, 1), x)  # B, N, N
    xx = (x * x).sum(dim=1, keepdim=True)  # B, 1, N
    dist = xx.transpose(2, 1) - 2 * inner + xx
    idx = dist.topk(k=k + 1, dim=-1, largest=False)[1]  # nearest first: the point itself
    return idx[:, :, 1:]


def graph_feature(x, k):
    """EdgeConv input: (B, 2C, N, k) = concat(x_j - x_i, x_i) over the k neighbours j of i."""
    b, c, n = x.shape
    idx = knn(x, k)
    base = torch.arange(b, device=x.device).view(-1, 1, 1) * n
    idx = (idx + base).reshape(-1)
    pts = x.transpose(2, 1).reshape(b * n, c)
    nbr = pts[idx].view(b, n, k, c)
    ctr = x.transpose(2, 1).unsqueeze(2).expand(-1, -1, k, -1)
    return torch.cat([nbr - ctr, ctr], dim=3).permute(0, 3, 1, 2)


class EdgeConv(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(2 * cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = F.leaky_relu(self.bn(self.conv(graph_feature(x, self.k))), 0.2)
        return y.max(dim=-1)[0]


class TinyDGCNN(nn.Module):
    def __init__(self, k=4, classes=5):
        super().__init__()
        self.ec1 = EdgeConv(3, 16, k)
        self.ec2 = EdgeConv(16, 16, k)
        self.conv = nn.Conv1d(32, 32, 1)
        self.fc = nn.Linear(64, classes)

    def forward(self, points):  # B, 3, N
        x1 = self.ec1(points)
        x2 = self.ec2(x1)
        x = F.leaky_relu(self.conv(torch.cat([x1, x2], dim=1)), 0.2)
        x = torch.cat([x.max(dim=-1)[0], x.mean(dim=-1)], dim=1)
        return self.fc(x)


def main():
    torch.manual_seed(0)
    model = TinyDGCNN().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (model.ec1.bn, model.ec2.bn):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(1)
    points = torch.randn(2, 3, 32, generator=gen)
    path = os.path.join(SAMPLES, NAME + ".onnx")
    with torch.no_grad():
        logits = model(points)
        torch.onnx.export(model, (points,), path, input_names=["points"], output_names=["logits"],
                          dynamic_axes={"points": {0: "batch", 2: "num_points"},
                                        "logits": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    data = {"input:points": points.numpy(), "torch:logits": logits.numpy()}
    np.savez(os.path.join(SAMPLES, NAME + ".npz"), **data)

    m = onnx.load(path)
    onnx.checker.check_model(m)
    print(f"== {NAME}: {os.path.getsize(path)} bytes, opset {OPSET}")
    print("ops:", dict(sorted(collections.Counter(n.op_type for n in m.graph.node).items())))
    values = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            values[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    n_topk = n_slice = 0
    for n in m.graph.node:
        if n.op_type == "TopK":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            print(f"  TopK {n.name}: {attrs}, K = {values.get(n.input[1], 'computed')}")
            n_topk += attrs.get("largest", 1) == 0
        if n.op_type == "Slice":
            ends = values.get(n.input[2])
            print(f"  Slice {n.name}: starts {values.get(n.input[1])} ends {ends} "
                  f"axes {values.get(n.input[3]) if len(n.input) > 3 else None} "
                  f"dtype {ends.dtype if ends is not None else '?'}")
            n_slice += ends is not None and ends.dtype == np.int64 and INT64_MAX in ends
    assert n_topk and n_slice, "expected TopK(largest=0) and an int64 Slice ending at INT64_MAX"

    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    res = sess.run(["logits"], {"points": data["input:points"]})[0]
    print(f"  ORT vs torch logits: max abs err {float(np.abs(res - logits.numpy()).max()):.3g}")
    pts2 = torch.randn(3, 3, 50, generator=gen)
    with torch.no_grad():
        ref = model(pts2)
    res = sess.run(["logits"], {"points": pts2.numpy()})[0]
    print(f"  ORT vs torch at 3x3x50: max abs err {float(np.abs(res - ref.numpy()).max()):.3g}")


if __name__ == "__main__":
    main()
