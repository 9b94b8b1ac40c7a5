"""Export a small CNN with reductions at opset 18 (plain torch, random weights).

Writes samples/reduce_opset18.onnx (+ .npz), dynamic batch, H and W.

At opset 18 every Reduce* op (ReduceMean, ReduceMax, ReduceSum, ...) takes `axes` as an input
instead of an attribute.  The model uses:
  * global average pooling written as `x.mean(dim=(2, 3))`      -> ReduceMean
  * a channel-summed saliency map `x.sum(dim=1)`                 -> ReduceSum
  * `x.amax(dim=1)`                                              -> ReduceMax
  * a boolean reduction `(x > 0).any(dim=1)`                     -> Cast/ReduceMax/... on bool
  * `torch.arange(0, w)` with `w = x.shape[-1]` at runtime       -> Range
  * `.bool()` on an integer count                                -> Cast(to=BOOL)

Run from the repo root:  python samples/scripts/export_reduce_opset18.py
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
NAME = "reduce_opset18"
OPSET = 18


class TinyReduceNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, classes)

    def forward(self, image):
        x = F.relu(self.conv1(image))
        x = F.relu(self.conv2(x))
        x = self.conv3(x)  # signed features, B x 16 x h x w
        logits = self.fc(x.mean(dim=(2, 3)))  # global average pooling
        saliency = x.sum(dim=1)  # B x h x w
        peak = x.amax(dim=1)  # B x h x w
        active = (x > 0).any(dim=1)  # B x h x w, bool
        w = x.shape[-1]
        xs = torch.arange(0, w, device=x.device).to(x.dtype)  # column coordinates
        col = (saliency * active).sum(dim=1)  # B x w
        center_x = (F.softmax(col, dim=-1) * xs).sum(dim=-1)  # expected column
        col_mask = active.long().sum(dim=1).bool()  # columns with any active cell
        return logits, saliency, peak, active, center_x, col_mask


def main():
    torch.manual_seed(0)
    model = TinyReduceNet().eval()
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 24, 32, generator=gen)
    out_names = ["logits", "saliency", "peak", "active", "center_x", "col_mask"]
    dyn = {"image": {0: "batch", 2: "H", 3: "W"}, "logits": {0: "batch"},
           "saliency": {0: "batch", 1: "h", 2: "w"}, "peak": {0: "batch", 1: "h", 2: "w"},
           "active": {0: "batch", 1: "h", 2: "w"}, "center_x": {0: "batch"},
           "col_mask": {0: "batch", 1: "w"}}
    path = os.path.join(SAMPLES, NAME + ".onnx")
    with torch.no_grad():
        outs = model(image)
        torch.onnx.export(model, (image,), path, input_names=["image"], output_names=out_names,
                          dynamic_axes=dyn, opset_version=OPSET, dynamo=False)
    data = {"input:image": image.numpy()}
    data.update({"torch:" + k: v.numpy() for k, v in zip(out_names, outs)})
    np.savez(os.path.join(SAMPLES, NAME + ".npz"), **data)

    m = onnx.load(path)
    onnx.checker.check_model(m)
    print(f"== {NAME}: {os.path.getsize(path)} bytes, opset "
          f"{[o.version for o in m.opset_import if o.domain in ('', 'ai.onnx')]}")
    print("ops:", dict(sorted(collections.Counter(n.op_type for n in m.graph.node).items())))
    values = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            values[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    for n in m.graph.node:
        if n.op_type.startswith("Reduce"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            axes = values.get(n.input[1], "computed") if len(n.input) > 1 and n.input[1] else None
            print(f"  {n.op_type} {n.name}: axes input {axes}, attrs {attrs}")
        if n.op_type == "Cast":
            to = onnx.helper.get_attribute_value(n.attribute[0])
            print(f"  Cast {n.name}: to {onnx.TensorProto.DataType.Name(to)}")
        if n.op_type == "Range":
            print(f"  Range {n.name}: inputs {list(n.input)}")

    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    res = sess.run(out_names, {"image": data["input:image"]})
    for k, r in zip(out_names, res):
        err = float(np.abs(r.astype(np.float64) - data["torch:" + k].astype(np.float64)).max())
        print(f"  ORT vs torch {k}: max abs err {err:.3g}")
    img2 = torch.randn(1, 3, 40, 20, generator=gen)
    with torch.no_grad():
        ref = model(img2)
    res = sess.run(out_names, {"image": img2.numpy()})
    err = max(float(np.abs(r.astype(np.float64) - t.numpy().astype(np.float64)).max())
              for r, t in zip(res, ref))
    print(f"  ORT vs torch at 1x3x40x20: max abs err {err:.3g}")


if __name__ == "__main__":
    main()
