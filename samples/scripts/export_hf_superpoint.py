"""Export transformers' SuperPointForKeypointDetection (tiny config, random weights).

Writes samples/hf_superpoint.onnx (+ .npz).

SuperPoint's keypoint NMS (`simple_nms` in transformers/models/superpoint/modeling_superpoint.py)
calls `nn.functional.max_pool2d` on the (batch, H, W) score map, i.e. a 3-D tensor that PyTorch
treats as (C, H, W).  The TorchScript exporter writes that as an ONNX `MaxPool` on a rank-3 input
with a 2-D kernel, which ONNX does not allow (MaxPool wants N x C x spatial...), and onnxruntime
refuses to load the model.  This script records onnxruntime's error; graphfix is expected to wrap
such MaxPools in Unsqueeze/Squeeze.

The input is what the SuperPoint image processor produces: a grayscale image replicated to 3
channels (the model keeps channel 0).  Batch 1, 64x64, static shapes (the keypoint count is
data dependent: NonZero / boolean masks / TopK).

Run from the repo root:  python samples/scripts/export_hf_superpoint.py
"""

import collections
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import torch
from transformers import SuperPointConfig, SuperPointForKeypointDetection

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.dirname(HERE)
NAME = "hf_superpoint"
OPSET = 17


class Wrapper(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model(pixel_values, return_dict=False)
        return out[0], out[1], out[2], out[3]  # keypoints, scores, descriptors, mask


def main():
    torch.manual_seed(0)
    config = SuperPointConfig(
        encoder_hidden_sizes=[8, 8, 16, 16],
        decoder_hidden_size=32,
        keypoint_decoder_dim=65,  # 8x8 cell + dustbin, fixed by the architecture
        descriptor_decoder_dim=32,
        keypoint_threshold=0.005,
        max_keypoints=32,
        nms_radius=4,
        border_removal_distance=4,
    )
    model = SuperPointForKeypointDetection(config).eval()
    # transformers' _init_weights draws N(0, 0.02) with zero biases: with random weights the
    # softmax is then flat (every score == 1/65) and NMS / TopK only see ties.  Re-draw the convs
    # with PyTorch's default (Kaiming-uniform) init, deterministically, for a peaky score map.
    torch.manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.reset_parameters()
    model = Wrapper(model).eval()

    gen = torch.Generator().manual_seed(1)
    gray = torch.rand(1, 1, 64, 64, generator=gen)
    pixel_values = gray.expand(1, 3, 64, 64).contiguous()
    in_names = ["pixel_values"]
    out_names = ["keypoints", "scores", "descriptors", "mask"]
    path = os.path.join(SAMPLES, NAME + ".onnx")
    with torch.no_grad():
        outs = model(pixel_values)
        torch.onnx.export(model, (pixel_values,), path, input_names=in_names,
                          output_names=out_names, opset_version=OPSET, dynamo=False)
    data = {"input:pixel_values": pixel_values.numpy()}
    data.update({"torch:" + k: v.numpy() for k, v in zip(out_names, outs)})
    np.savez(os.path.join(SAMPLES, NAME + ".npz"), **data)

    m = onnx.load(path)
    print(f"== {NAME}: {os.path.getsize(path)} bytes, opset {OPSET}")
    print("ops:", dict(sorted(collections.Counter(n.op_type for n in m.graph.node).items())))
    print("torch outputs:", {k: tuple(v.shape) for k, v in zip(out_names, outs)})
    sc = outs[1][0]
    print(f"  scores: {sc.unique().numel()} distinct of {sc.numel()}, min {sc.min():.4g} max {sc.max():.4g}")
    try:
        onnx.checker.check_model(m, full_check=True)
        print("onnx.checker (full_check): ok")
    except Exception as e:  # noqa: BLE001 - record what the checker says
        print("onnx.checker (full_check):", str(e).splitlines()[0])
    m_inf = onnx.shape_inference.infer_shapes(m)
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in
             list(m_inf.graph.value_info) + list(m_inf.graph.input) + list(m_inf.graph.output)
             if vi.type.tensor_type.HasField("shape")}
    for n in m.graph.node:
        if n.op_type == "MaxPool":
            ks = [list(a.ints) for a in n.attribute if a.name == "kernel_shape"][0]
            print(f"  MaxPool {n.name}: input rank {ranks.get(n.input[0], '?')}, kernel_shape {ks}")
    print("  (the keypoint_decoder MaxPools are simple_nms's max_pool2d on the (1, 64, 64) score map;"
          " shape inference stops at the first one, hence '?')")

    import onnxruntime as ort
    try:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - the expected outcome
        print("onnxruntime refuses to load it:")
        print(str(e))
        # Sanity check of the rest of the graph (in memory only, nothing is written): wrap the
        # NMS MaxPools (all on the 3-D (B, H, W) score map) in Unsqueeze(0) / Squeeze(0).
        fixed = wrap_nms_maxpools(m)
        sess = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
        print("after wrapping the rank-3 MaxPools in Unsqueeze/Squeeze (in memory):")
    res = sess.run(out_names, {"pixel_values": data["input:pixel_values"]})
    for k, r in zip(out_names, res):
        err = float(np.abs(r.astype(np.float64) - data["torch:" + k]).max())
        print(f"  ORT vs torch {k}: max abs err {err:.3g}")


def wrap_nms_maxpools(model):
    from onnx import helper
    m = onnx.ModelProto()
    m.CopyFrom(model)
    axes = helper.make_tensor("nms_axes0", onnx.TensorProto.INT64, [1], [0])
    m.graph.initializer.append(axes)
    nodes = []
    for n in m.graph.node:
        if n.op_type == "MaxPool" and n.name.startswith("/model/keypoint_decoder/"):
            x, y = n.input[0], n.output[0]
            nodes.append(helper.make_node("Unsqueeze", [x, "nms_axes0"], [x + "_4d"]))
            n.input[0] = x + "_4d"
            n.output[0] = y + "_4d"
            nodes.append(n)
            nodes.append(helper.make_node("Squeeze", [y + "_4d", "nms_axes0"], [y]))
        else:
            nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


if __name__ == "__main__":
    main()
