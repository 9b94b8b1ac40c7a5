"""Export a SuperPoint-style keypoint/descriptor head (plain torch, random weights).

Writes samples/superpoint_head.onnx (+ .npz) with dynamic H and W, and
samples/superpoint_head_static.onnx (+ .npz) with a static 1x1x64x96 input exported with
do_constant_folding=False.

The keypoint coordinates are clamped to the image with bounds taken from the runtime shape
(`kx.clamp(min=0, max=W - 1)` with `W = image.shape[-1]`).  The TorchScript exporter turns the
bounds into Shape -> Gather -> Sub (-> Cast) chains that feed the `min`/`max` inputs of `Clip`;
TensorRT 7.2 / 8.0 reject that ("Clip max value must be an initializer").  In the static variant
the chains are constant-foldable but are *not* initializers (constant folding was disabled).

Run from the repo root:  python samples/scripts/export_superpoint_head.py
"""

import collections
import os
import sys

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.dirname(HERE)
OPSET = 13


class SuperPointHead(nn.Module):
    """SuperPoint (DeTone et al. 2018) shaped: VGG encoder /8, 65-channel detector head,
    descriptor head with L2 normalisation, plus a sub-pixel offset head."""

    def __init__(self, c=(8, 8, 16, 16), c5=32, dim=32, cell=8):
        super().__init__()
        c1, c2, c3, c4 = c
        self.cell = cell
        self.conv1a = nn.Conv2d(1, c1, 3, 1, 1)
        self.conv1b = nn.Conv2d(c1, c1, 3, 1, 1)
        self.conv2a = nn.Conv2d(c1, c2, 3, 1, 1)
        self.conv2b = nn.Conv2d(c2, c2, 3, 1, 1)
        self.conv3a = nn.Conv2d(c2, c3, 3, 1, 1)
        self.conv3b = nn.Conv2d(c3, c3, 3, 1, 1)
        self.conv4a = nn.Conv2d(c3, c4, 3, 1, 1)
        self.conv4b = nn.Conv2d(c4, c4, 3, 1, 1)
        self.convPa = nn.Conv2d(c4, c5, 3, 1, 1)
        self.convPb = nn.Conv2d(c5, cell * cell + 1, 1)
        self.convOa = nn.Conv2d(c4, c5, 3, 1, 1)
        self.convOb = nn.Conv2d(c5, 2, 1)
        self.convDa = nn.Conv2d(c4, c5, 3, 1, 1)
        self.convDb = nn.Conv2d(c5, dim, 1)

    def forward(self, image):
        b = image.shape[0]
        H = image.shape[-2]
        W = image.shape[-1]
        x = F.relu(self.conv1a(image))
        x = F.max_pool2d(F.relu(self.conv1b(x)), 2)
        x = F.relu(self.conv2a(x))
        x = F.max_pool2d(F.relu(self.conv2b(x)), 2)
        x = F.relu(self.conv3a(x))
        x = F.max_pool2d(F.relu(self.conv3b(x)), 2)
        x = F.relu(self.conv4a(x))
        x = F.relu(self.conv4b(x))
        hc = x.shape[-2]
        wc = x.shape[-1]
        s = self.cell

        # detector: 64 positions per 8x8 cell + "no keypoint" dustbin
        semi = self.convPb(F.relu(self.convPa(x)))
        prob = F.softmax(semi, dim=1)[:, :-1]  # b, 64, hc, wc
        heat = prob.reshape(b, s, s, hc, wc).permute(0, 3, 1, 4, 2).reshape(b, hc * s, wc * s)

        # one keypoint per cell: arg-max position in the cell + a regressed sub-pixel offset
        score, idx = prob.max(dim=1)  # b, hc, wc
        dy = torch.div(idx, s, rounding_mode="floor")
        dx = idx - dy * s
        off = torch.tanh(self.convOb(F.relu(self.convOa(x)))) * s  # may leave the image
        gy = torch.arange(hc).view(1, hc, 1)
        gx = torch.arange(wc).view(1, 1, wc)
        ky = (gy * s + dy).float() + 0.5 + off[:, 0]
        kx = (gx * s + dx).float() + 0.5 + off[:, 1]
        # clamp to the image, bounds computed from the runtime size
        kx = kx.clamp(min=0, max=W - 1)
        ky = ky.clamp(min=0, max=H - 1)
        keypoints = torch.stack([kx, ky], dim=-1).reshape(b, -1, 2)
        scores = score.reshape(b, -1)

        # descriptors: L2-normalised, sampled at the (clamped) keypoint cells
        desc = F.normalize(self.convDb(F.relu(self.convDa(x))), p=2, dim=1)  # b, dim, hc, wc
        cx = torch.div(kx, s, rounding_mode="floor").long().clamp(min=0, max=wc - 1)
        cy = torch.div(ky, s, rounding_mode="floor").long().clamp(min=0, max=hc - 1)
        flat = (cy * wc + cx).reshape(b, 1, -1).expand(-1, desc.shape[1], -1)
        descriptors = torch.gather(desc.flatten(2), 2, flat).transpose(1, 2)
        return heat, keypoints, scores, descriptors


def clip_report(model):
    """Which Clip nodes have min/max inputs that are not initializers, and what computes them."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    found = []
    for n in g.node:
        if n.op_type != "Clip":
            continue
        for slot, name in zip(("min", "max"), list(n.input[1:3])):
            if not name or name in inits:
                continue
            chain, todo, seen = [], [name], set()
            while todo and len(chain) < 12:
                t = todo.pop()
                p = producer.get(t)
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                chain.append(p.op_type)
                todo.extend(i for i in p.input if i)
            found.append((n.name, slot, name, chain))
    return found


def histogram(model):
    return collections.Counter(n.op_type for n in model.graph.node)


def export(name, dynamic):
    torch.manual_seed(0)
    model = SuperPointHead().eval()
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(1, 1, 64, 96, generator=gen)
    path = os.path.join(SAMPLES, name + ".onnx")
    in_names = ["image"]
    out_names = ["heatmap", "keypoints", "scores", "descriptors"]
    kw = {}
    if dynamic:
        kw["dynamic_axes"] = {
            "image": {2: "H", 3: "W"},
            "heatmap": {1: "H", 2: "W"},
            "keypoints": {1: "N"},
            "scores": {1: "N"},
            "descriptors": {1: "N"},
        }
    with torch.no_grad():
        outs = model(image)
        torch.onnx.export(
            model, (image,), path, input_names=in_names, output_names=out_names,
            opset_version=OPSET, dynamo=False, do_constant_folding=dynamic, **kw)
    data = {"input:image": image.numpy()}
    data.update({"torch:" + k: v.numpy() for k, v in zip(out_names, outs)})
    np.savez(os.path.join(SAMPLES, name + ".npz"), **data)

    m = onnx.load(path)
    onnx.checker.check_model(m)
    print(f"== {name}: {os.path.getsize(path)} bytes, opset {OPSET}, dynamic={dynamic}")
    print("ops:", dict(sorted(histogram(m).items())))
    clips = clip_report(m)
    computed = [c for c in clips if c[3] and c[3][0] != "Constant"]
    for node, slot, tensor, chain in clips:
        kind = "computed" if chain and chain[0] != "Constant" else "Constant node"
        print(f"  Clip {node}: {slot}={tensor} ({kind}) <- {' <- '.join(chain)}")
    if not computed:
        sys.exit(f"{name}: expected Clip nodes with computed (non-initializer) bounds")
    print(f"  {len(computed)} Clip bounds are computed by other nodes; "
          f"{sum(1 for n in m.graph.node if n.op_type == 'Clip')} Clip nodes in all")

    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {k[6:]: v for k, v in data.items() if k.startswith("input:")}
    res = sess.run(out_names, feeds)
    for k, r in zip(out_names, res):
        err = float(np.abs(r.astype(np.float64) - data["torch:" + k]).max())
        print(f"  ORT vs torch {k}: max abs err {err:.3g}")
    if dynamic:  # the graph really is shape-generic
        img2 = torch.rand(1, 1, 48, 80, generator=gen)
        with torch.no_grad():
            ref = model(img2)
        res = sess.run(out_names, {"image": img2.numpy()})
        err = max(float(np.abs(r - t.numpy()).max()) for r, t in zip(res, ref))
        print(f"  ORT vs torch at 1x1x48x80: max abs err {err:.3g}")


if __name__ == "__main__":
    export("superpoint_head", dynamic=True)
    export("superpoint_head_static", dynamic=False)
