"""samples/fp16_overflow.onnx: a small detector (conv backbone + one self-attention block + box head) whose
FP32 export has intermediates far above the FP16 maximum (65504) while its outputs are finite, so a naive
full FP16 conversion produces inf/NaN (when activations are really stored in FP16; see below).

Run from the repo root:  /work/export-venv/bin/python samples/scripts/export_fp16_overflow.py

Model (random weights, fixed seed, opset 17, TorchScript exporter):
  image [1,3,128,128] in 0..255, fed raw (no mean/std normalisation) -> Conv s4 (3->32) + ReLU -> Conv s2
  (32->32) + ReLU -> tokens [1,256,32] (stride 8, NOT layer-normalised: features O(100-1000))
  -> self-attention, 1 head, d=32: logits = einsum("bqd,bkd->bqk", t Wq, t Wk) / sqrt(32) with Wq, Wk of
     large norm (x8 their default init) -> Softmax -> (t Wv) -> out proj + residual.
     [the Einsum output (pre-softmax logits before the 1/sqrt(d) Div) reaches 2.5e5]
  -> FFN (32->64->32, ReLU) + residual -> LayerNormalization (post-LN)
  -> box head (1x1 convs): 3 class logits -> sigmoid scores; 4 deltas -> delta2bbox on anchors (one 384x384 px
     anchor per cell, dw/dh clamped to log(1000/16)), in the ORIGINAL image's pixels (the 128x128 input
     stands for a 1024x1024 image), clipped to [0, 1024]
  -> box_scale = sqrt((x2 - x1) * (y2 - y1)) (torchvision LevelMapper-style)   [the area Mul reaches 1.7e5]
Outputs: boxes [256,4], scores [256,3], box_scale [256]; all finite in FP32 (box_scale <= 1024).
The script prints every intermediate whose |max| exceeds 65504 on the npz input (from onnxruntime), and runs
onnxconverter_common.float16.convert_float_to_float16 on the export: with keep_io_types=True the converter
itself produces an invalid model (onnxruntime refuses it: a graph output that is also consumed inside the
graph); with keep_io_types=False (image fed as float16) the model loads, and:
  - in ONE onnxruntime CPU session the outputs stay finite (max error 0.6 px on boxes, 1.6 on box_scale): the CPU EP runs fp16 nodes
    that lack an fp16 kernel in fp32 between inserted Casts and then removes back-to-back Casts, so whole
    fp16 regions run in fp32 and no intermediate is ever stored in fp16 (probed on ORT 1.31: the same holds for
    MatMul, Einsum, Conv, Add, Div, LayerNormalization, Softmax, ... between two such nodes). ORT CPU cannot
    show an FP16 overflow of an intermediate.
  - run node by node (each node its own session, every tensor stored in fp16, as an FP16 TensorRT engine
    stores activations) the Einsum logits and the box areas become inf -> Softmax NaN -> NaN outputs
    (the area Mul then shows NaN, not inf, because NaN arrives first; it is > 65504 in FP32 on its own).
npz: input:image, torch:boxes/scores/box_scale, fp32_absmax:<tensor> for the intermediates above
65504 (tensor names with '/' replaced by '|'), fp16_naive:<output> (the naive FP16 model's outputs, node by node).
"""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

NAME = "fp16_overflow"
OPSET = 17
IMG = 128
ORIG = 1024
FP16_MAX = 65504.0
QK_GAIN = 8.0


class Detector(nn.Module):
    def __init__(self, d=32, num_classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, d, 4, 4), nn.ReLU(), nn.Conv2d(d, d, 3, 2, 1), nn.ReLU())
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)
        self.cls = nn.Conv2d(d, num_classes, 1)
        self.reg = nn.Conv2d(d, 4, 1)
        self.d = d
        h = w = IMG // 8
        stride = ORIG / w
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) * stride, (torch.arange(w) + 0.5) * stride, indexing="ij")
        size = 6 * stride  # 384 px anchors on the 1024 px image
        self.register_buffer("anchors", torch.stack([xs - size / 2, ys - size / 2, xs + size / 2, ys + size / 2],
                                                    -1).reshape(-1, 4), persistent=False)

    def forward(self, image):
        f = self.stem(image)                                  # [1, d, 16, 16]
        b, d, h, w = f.shape
        t = f.flatten(2).transpose(1, 2)                   # [1, 256, d]
        # einsum as in SuperGlue / LoFTR-style attention code -> ONNX Einsum
        logits = torch.einsum("bqd,bkd->bqk", self.q(t), self.k(t)) / math.sqrt(self.d)
        attn = torch.softmax(logits, -1)
        t = t + self.o(torch.matmul(attn, self.v(t)))
        t = self.norm(t + self.ffn(t))                     # post-LN (T5/BERT-style): FFN output + residual > 65504
        f = t.transpose(1, 2).reshape(b, d, h, w)
        scores = self.cls(f).flatten(2).transpose(1, 2)[0].sigmoid()       # [256, C]
        deltas = self.reg(f).flatten(2).transpose(1, 2)[0]                  # [256, 4]
        a = self.anchors
        aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        ax, ay = a[:, 0] + 0.5 * aw, a[:, 1] + 0.5 * ah
        clamp = math.log(1000.0 / 16)
        dw = deltas[:, 2].clamp(-clamp, clamp)
        dh = deltas[:, 3].clamp(-clamp, clamp)
        cx, cy = ax + deltas[:, 0] * aw, ay + deltas[:, 1] * ah
        bw, bh = aw * dw.exp(), ah * dh.exp()
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1).clamp(0, ORIG)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        box_scale = torch.sqrt(area)
        return boxes, scores, box_scale


def intermediate_absmax(onnx_path, feeds, dtype=np.float32):
    import onnxruntime as ort

    m = onnx.load(onnx_path)
    m = onnx.shape_inference.infer_shapes(m)
    et = onnx.TensorProto.FLOAT if dtype == np.float32 else onnx.TensorProto.FLOAT16
    floats = {v.name for v in m.graph.value_info if v.type.tensor_type.elem_type == et}
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o not in have and (o in floats or n.op_type != "Constant"):
                m.graph.output.append(onnx.ValueInfoProto(name=o))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    producer = {o: n for n in m.graph.node for o in n.output}
    res = {}
    for o, v in zip([x.name for x in sess.get_outputs()], outs):
        if v.dtype == dtype and v.size:
            res[o] = (float(np.max(np.abs(v.astype(np.float32)))), producer[o].op_type if o in producer else "output")
    return res


def run_node_by_node(onnx_path, feeds):
    """execute every node in its own onnxruntime session so that each tensor is materialised in its own dtype."""
    import onnxruntime as ort
    from onnx import helper

    m = onnx.load(onnx_path)
    opsets = list(m.opset_import)
    vals = dict(feeds)
    vals.update({i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer})
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for n in m.graph.node:
        if n.op_type == "Constant":
            vals[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
            continue
        ins = [i for i in dict.fromkeys(n.input) if i]
        g = helper.make_graph(
            [n], "one",
            [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(vals[i].dtype), vals[i].shape) for i in ins],
            [onnx.ValueInfoProto(name=o) for o in n.output if o])
        mm = helper.make_model(g, opset_imports=opsets)
        mm.ir_version = m.ir_version
        sess = ort.InferenceSession(mm.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for o, v in zip([o for o in n.output if o], sess.run(None, {i: vals[i] for i in ins})):
            vals[o] = v
    return vals


def main():
    C.seed_all(0)
    model = Detector().eval()
    with torch.no_grad():
        model.q.weight.mul_(QK_GAIN)
        model.k.weight.mul_(QK_GAIN)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, IMG // 16, IMG // 16) * 255, size=(IMG, IMG),
                                            mode="bilinear", align_corners=False)
    with torch.no_grad():
        boxes, scores, box_scale = model(image)
    for n, v in (("boxes", boxes), ("scores", scores), ("box_scale", box_scale)):
        assert torch.isfinite(v).all(), n
        print(f"torch {n}: {tuple(v.shape)} max|.| {float(v.abs().max()):.4g}")
    onnx_path = C.path(NAME + ".onnx")
    out_names = ["boxes", "scores", "box_scale"]
    torch.onnx.export(model, (image,), onnx_path, dynamo=False, opset_version=OPSET, input_names=["image"],
                      output_names=out_names, do_constant_folding=True)
    C.describe(onnx_path)
    inputs = {"image": image.numpy()}
    touts = {"boxes": boxes.numpy(), "scores": scores.numpy(), "box_scale": box_scale.numpy()}
    C.ort_check(onnx_path, inputs, touts)
    C.save_npz(NAME, inputs, touts)  # rewritten below with the extra arrays

    absmax = intermediate_absmax(onnx_path, inputs)
    over = {k: v for k, v in absmax.items() if v[0] > FP16_MAX}
    print(f"FP32 intermediates with max|x| > {FP16_MAX:g} on the npz input ({len(over)} of {len(absmax)} float tensors):")
    for k, (v, op) in sorted(over.items(), key=lambda kv: -kv[1][0]):
        print(f"  {v:12.4g}  {op:<8} {k}")
    print("largest other intermediates:", sorted(((round(v, 1), k) for k, (v, _) in absmax.items() if v <= FP16_MAX),
                                                  reverse=True)[:4])
    assert any(op == "Einsum" for _, op in over.values()), "attention logits do not overflow"
    assert any(op == "Mul" for _, op in over.values()), "box areas do not overflow"

    from onnxconverter_common import float16

    fp16_path = "/tmp/fp16_overflow.naive_fp16.onnx"
    # keep_io_types=True makes an invalid model here (onnxconverter-common 1.16: the graph output `boxes` is
    # also read by a Gather inside the graph; the converter casts the output back to float but leaves the
    # consumer typed float16) -> onnxruntime refuses it; recorded, then keep_io_types=False is used.
    onnx.save(float16.convert_float_to_float16(onnx.load(onnx_path), keep_io_types=True), fp16_path)
    print("naive FP16, onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True):")
    C.ort_check(fp16_path, inputs, touts)
    onnx.save(float16.convert_float_to_float16(onnx.load(onnx_path), keep_io_types=False), fp16_path)
    feeds16 = {"image": inputs["image"].astype(np.float16)}
    print("naive FP16, convert_float_to_float16(keep_io_types=False), image fed as float16, one onnxruntime session:")
    C.ort_check(fp16_path, feeds16, touts)
    print("  (finite: ORT's CPU EP runs fp16 nodes without an fp16 kernel in fp32 between inserted Casts and removes "
          "back-to-back Casts, so the overflowing tensors are never stored in fp16)")
    print("the same FP16 model run node by node (every tensor stored in fp16, as an FP16 engine does):")
    got = run_node_by_node(fp16_path, feeds16)
    for k in out_names:
        g, r = got[k].astype(np.float32), touts[k]
        fin = np.isfinite(g)
        print(f"  {k}: {int((~fin).sum())} of {g.size} non-finite; max|fp16-torch| over finite "
              f"{float(np.max(np.abs(g[fin] - r[fin]))) if fin.any() else float('nan'):.3g}")
    for k in over:
        v = got[k].astype(np.float32)
        print(f"  {k} in fp16: {int(np.isinf(v).sum())} of {v.size} inf")
    assert any(not np.isfinite(got[k].astype(np.float32)).all() for k in out_names), "no overflow in FP16"
    got = {k: got[k] for k in out_names}
    extra = {f"fp32_absmax:{k.replace('/', '|')}": np.float32(v) for k, (v, _) in over.items()}
    extra.update({f"fp16_naive:{k}": v for k, v in got.items()})
    C.save_npz(NAME, inputs, touts, extra)


if __name__ == "__main__":
    main()
