"""Export transformers' SuperGlueForKeypointMatching (tiny config, random weights).

Writes two samples:

* samples/hf_superglue.onnx (+ .npz): the whole model, a pair of images in
  (`pixel_values` 1 x 2 x 3 x 64 x 64, static), SuperPoint runs inside.  It inherits SuperPoint's
  rank-3 MaxPool (keypoint NMS on the (B, H, W) score map), so onnxruntime refuses to load it
  (same error as hf_superpoint); the script checks the rest of the graph in memory after
  wrapping those MaxPools in Unsqueeze/Squeeze.
* samples/hf_superglue_matcher.onnx (+ .npz): only the matcher
  (`SuperGlueForKeypointMatching._match_image_pair`: keypoint encoder + attentional GNN + final
  projection + log-space Sinkhorn + mutual check), fed with the keypoints / descriptors / scores /
  mask that the model's own SuperPoint produced for the same image pair, with a dynamic number of
  keypoints.  onnxruntime loads it.

Ops of interest: `CumSum` (SuperGlue's `arange_like(x, dim) = x.new_ones(x.shape[dim]).cumsum(0) - 1`,
on int64), `ReduceLogSumExp` (Sinkhorn), `ArgMax`/`GatherElements` (mutual check).
NOTE: transformers' SuperGlue computes attention with `torch.matmul`, not with the
`torch.einsum('bdhn,bdhm->bhnm')` / `('bhnm,bdhm->bdhn')` of Magic Leap's original code, so the
export contains no `Einsum` (neither does transformers' LightGlue, which also uses matmul).

Run from the repo root:  python samples/scripts/export_hf_superglue.py
"""

import collections
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import torch
from transformers import SuperGlueConfig, SuperGlueForKeypointMatching, SuperPointConfig

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.dirname(HERE)
OPSET = 17
H = W = 64


def build():
    torch.manual_seed(0)
    sp = SuperPointConfig(encoder_hidden_sizes=[8, 8, 16, 16], decoder_hidden_size=32,
                          descriptor_decoder_dim=32, max_keypoints=24)
    config = SuperGlueConfig(
        keypoint_detector_config=sp.to_dict(),
        hidden_size=32,  # == SuperPoint descriptor size
        keypoint_encoder_sizes=[8, 16],
        gnn_layers_types=["self", "cross"],
        num_attention_heads=2,
        sinkhorn_iterations=10,
    )
    model = SuperGlueForKeypointMatching(config).eval()
    # transformers' init (N(0, 0.02), zero bias) gives a flat SuperPoint softmax (all scores tie)
    # and near-zero GNN outputs; re-draw Conv/Linear with PyTorch's default init, deterministically.
    torch.manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            mod.reset_parameters()
    return model


class Full(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model(pixel_values, return_dict=False)
        return out[0], out[1], out[2], out[3]  # matches, matching_scores, keypoints, mask


class Matcher(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, keypoints, descriptors, scores, mask):
        matches, matching_scores, _, _ = self.model._match_image_pair(
            keypoints, descriptors, scores, H, W, mask=mask)
        return matches, matching_scores


def wrap_rank3_maxpools(model):
    """In-memory only: Unsqueeze(0) -> MaxPool -> Squeeze(0) around SuperPoint's NMS MaxPools."""
    from onnx import helper
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.initializer.append(helper.make_tensor("nms_axes0", onnx.TensorProto.INT64, [1], [0]))
    nodes = []
    for n in m.graph.node:
        if n.op_type == "MaxPool" and "/keypoint_decoder" in n.name:
            x, y = n.input[0], n.output[0]
            nodes.append(helper.make_node("Unsqueeze", [x, "nms_axes0"], [x + "_4d"]))
            n.input[0], n.output[0] = x + "_4d", y + "_4d"
            nodes.append(n)
            nodes.append(helper.make_node("Squeeze", [y + "_4d", "nms_axes0"], [y]))
        else:
            nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def describe(name, path):
    m = onnx.load(path)
    hist = collections.Counter(n.op_type for n in m.graph.node)
    print(f"== {name}: {os.path.getsize(path)} bytes, opset {OPSET}")
    print("ops:", dict(sorted(hist.items())))
    for n in m.graph.node:
        if n.op_type in ("CumSum", "Einsum"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            print(f"  {n.op_type} {n.name}: inputs {list(n.input)} attrs {attrs}")
    print(f"  Einsum nodes: {hist.get('Einsum', 0)}")
    return m


def run_ort(model_or_path, data, out_names):
    import onnxruntime as ort
    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    feeds = {k[6:]: v for k, v in data.items() if k.startswith("input:")}
    res = sess.run(out_names, feeds)
    for k, r in zip(out_names, res):
        err = float(np.abs(r.astype(np.float64) - data["torch:" + k]).max())
        print(f"  ORT vs torch {k}: max abs err {err:.3g}")
    return sess


def main():
    model = build()
    gen = torch.Generator().manual_seed(1)
    gray = torch.rand(1, 2, 1, H, W, generator=gen)
    pixel_values = gray.expand(1, 2, 3, H, W).contiguous()  # what the image processor produces

    # ---- whole model -----------------------------------------------------------------------
    full = Full(model).eval()
    out_names = ["matches", "matching_scores", "keypoints", "mask"]
    path = os.path.join(SAMPLES, "hf_superglue.onnx")
    with torch.no_grad():
        outs = full(pixel_values)
        torch.onnx.export(full, (pixel_values,), path, input_names=["pixel_values"],
                          output_names=out_names, opset_version=OPSET, dynamo=False)
    data = {"input:pixel_values": pixel_values.numpy()}
    data.update({"torch:" + k: v.numpy() for k, v in zip(out_names, outs)})
    np.savez(os.path.join(SAMPLES, "hf_superglue.npz"), **data)
    m = describe("hf_superglue", path)
    print("  torch matches:", outs[0].tolist())
    import onnxruntime as ort
    try:
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        print("  onnxruntime loads it")
        run_ort(path, data, out_names)
    except Exception as e:  # noqa: BLE001 - expected: rank-3 MaxPool
        print("  onnxruntime refuses to load it:")
        print("  " + str(e))
        print("  after wrapping the rank-3 MaxPools in Unsqueeze/Squeeze (in memory):")
        run_ort(wrap_rank3_maxpools(m), data, out_names)

    # ---- matcher only, fed with the model's own SuperPoint detections -------------------------
    with torch.no_grad():
        det = model.keypoint_detector(pixel_values.reshape(2, 3, H, W), return_dict=False)
        kpts, scores, desc, mask = det[:4]
        keypoints = kpts.reshape(1, 2, -1, 2).clone()
        keypoints[..., 0] *= W  # absolute pixel coordinates, as SuperGlueForKeypointMatching.forward
        keypoints[..., 1] *= H
        scores = scores.reshape(1, 2, -1)
        desc = desc.reshape(1, 2, -1, model.config.hidden_size)
        mask = mask.reshape(1, 2, -1)
    matcher = Matcher(model).eval()
    in_names = ["keypoints", "descriptors", "scores", "mask"]
    out_names = ["matches", "matching_scores"]
    args = (keypoints, desc, scores, mask)
    path = os.path.join(SAMPLES, "hf_superglue_matcher.onnx")
    dyn = {"keypoints": {2: "N"}, "descriptors": {2: "N"}, "scores": {2: "N"}, "mask": {2: "N"},
           "matches": {2: "N"}, "matching_scores": {2: "N"}}
    with torch.no_grad():
        outs = matcher(*args)
        torch.onnx.export(matcher, args, path, input_names=in_names, output_names=out_names,
                          dynamic_axes=dyn, opset_version=OPSET, dynamo=False)
    data = {"input:" + k: v.numpy() for k, v in zip(in_names, args)}
    data.update({"torch:" + k: v.numpy() for k, v in zip(out_names, outs)})
    np.savez(os.path.join(SAMPLES, "hf_superglue_matcher.npz"), **data)
    describe("hf_superglue_matcher", path)
    assert torch.equal(outs[0], full(pixel_values)[0]), "matcher and full model disagree"
    print("  inputs:", {k: (tuple(v.shape), str(v.dtype)) for k, v in zip(in_names, args)})
    sess = run_ort(path, data, out_names)
    # the keypoint axis really is dynamic: first 16 keypoints of each image
    sub = tuple(a[:, :, :16] for a in args)
    with torch.no_grad():
        ref = matcher(*sub)
    res = sess.run(out_names, {k: v.numpy() for k, v in zip(in_names, sub)})
    err = max(float(np.abs(r.astype(np.float64) - t.numpy()).max()) for r, t in zip(res, ref))
    print(f"  ORT vs torch with N=16: max abs err {err:.3g}")


if __name__ == "__main__":
    main()
