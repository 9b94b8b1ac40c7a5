"""samples/deformable_detr_tiny.onnx: transformers DeformableDetrForObjectDetection, tiny config, random weights.

Run from the repo root:  /work/export-venv/bin/python samples/scripts/export_deformable_detr_tiny.py

Config (chosen so that every dimension of the deformable attention has a distinct size):
  N (batch) 2, image 128x160 (non-square), tiny ResNet backbone (basic blocks, 8/16/24/32 ch, stages 2-4 ->
  strides 8/16/32 -> levels 16x20, 8x10, 4x5, S = 420 tokens), d_model 32, heads M = 2 (head dim D = 16),
  levels L = 3, points P = 4, 1 encoder + 1 decoder layer, 10 queries (Lq = 10 in the decoder, 420 in the
  encoder), 5 labels.
The deformable attention runs transformers' pure-PyTorch path (no `kernels` package, USE_HUB_KERNELS=0,
disable_custom_kernels=True): value.split per level -> grid_sample(bilinear, zeros, align_corners=False) per
level on 2*loc-1 -> stack -> * attention weights -> sum. TorchScript exporter, opset 16 (GridSample).

Writes two exports of the same model (same inputs, same torch reference outputs):
  deformable_detr_tiny.onnx      exactly what torch.onnx.export(dynamo=False) gives. The TorchScript
                                 exporter's aten::linspace symbolic ignores `dtype` and computes in DOUBLE, so the
                                 encoder reference points, sampling locations and the three encoder GridSample
                                 grids are float64 (66 double tensors). onnxruntime has no GridSample kernel for a
                                 double grid and refuses the model ("Could not find an implementation for
                                 GridSample(16)"); TensorRT has no FP64 either.
  deformable_detr_tiny_f32.onnx  same model exported with a linspace symbolic that honours dtype (emits the
                                 float32 constant): no double tensors, runs in onnxruntime. Use it to verify the
                                 MSDA fusion in isolation.
"""
import os
import sys

os.environ["USE_HUB_KERNELS"] = "0"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig  # noqa: E402

NAME = "deformable_detr_tiny"
OPSET = 16
N, H, W = 2, 128, 160


def build():
    backbone = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
        layer_type="basic", out_features=["stage2", "stage3", "stage4"],
    )
    config = DeformableDetrConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        num_feature_levels=3,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_n_points=4,
        decoder_n_points=4,
        num_queries=10,
        num_labels=5,
        disable_custom_kernels=True,
        dropout=0.0,
        # with 1 decoder layer the class/bbox heads have a single entry; tying the (absent) others fails
        tie_word_embeddings=False,
    )
    model = DeformableDetrForObjectDetection(config).eval()
    # transformers initialises sampling_offsets / attention_weights weights to 0 (offsets = fixed bias grid,
    # uniform attention). Give them random weights so that sampling locations differ per query and head and
    # some fall outside [0, 1] (exercising zeros padding), and attention weights are not uniform.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for attn in (model.model.encoder.layers[0].self_attn, model.model.decoder.layers[0].encoder_attn):
            attn.sampling_offsets.weight.normal_(0.0, 0.3, generator=g)
            attn.attention_weights.weight.normal_(0.0, 0.3, generator=g)
    return model


class Wrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values, return_dict=True)
        return out.logits, out.pred_boxes


def main():
    C.seed_all(0)
    model = build()
    attn_cls = type(model.model.encoder.layers[0].self_attn.attn)
    print("deformable attention kernel class:", attn_cls.__module__, attn_cls.__qualname__,
          "| forward from", attn_cls.forward.__module__)
    assert attn_cls.forward.__module__.startswith("transformers.models.deformable_detr"), "custom kernel path"
    stats = {}

    def grab(name):
        def hook(mod, args, kwargs, out):
            loc = args[4] if len(args) > 4 else kwargs["sampling_locations"]
            stats[name] = (tuple(loc.shape), float(((loc < 0) | (loc > 1)).float().mean()))
        return hook

    for name, attn in (("encoder", model.model.encoder.layers[0].self_attn.attn),
                       ("decoder", model.model.decoder.layers[0].encoder_attn.attn)):
        attn.register_forward_hook(grab(name), with_kwargs=True)
    x = torch.rand(N, 3, H // 8, W // 8)
    x = nn.functional.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.25
    wrapper = Wrapper(model).eval()
    with torch.no_grad():
        ref = wrapper(x)
    for name, (shape, frac) in stats.items():
        print(f"{name} MSDA sampling_locations {shape}: {100 * frac:.1f}% of coordinates outside [0, 1]")
        assert frac > 0
    out_names = ["logits", "pred_boxes"]
    for n, r in zip(out_names, ref):
        print(f"torch {n}: {tuple(r.shape)} {r.dtype}")
    inputs = {"pixel_values": x.numpy()}
    touts = {n: r.numpy() for n, r in zip(out_names, ref)}
    for name, fix in ((NAME, False), (NAME + "_f32", True)):
        if fix:
            C.register_float_linspace(OPSET)
        onnx_path = C.path(name + ".onnx")
        torch.onnx.export(
            wrapper, (x,), onnx_path, dynamo=False, opset_version=OPSET,
            input_names=["pixel_values"], output_names=out_names, do_constant_folding=True,
        )
        C.describe(onnx_path, interesting=("GridSample",))
        print(f"{name}: {C.count_double(onnx_path)} float64 tensors")
        C.save_npz(name, inputs, touts)
        C.ort_check(onnx_path, inputs, touts)
    # the MSDA subgraphs, with runtime shapes (from the float32 export; the raw one differs only in the dtype of
    # the encoder reference points / sampling locations / grids, which are double there)
    txt = C.path(NAME + ".msda.txt")
    with open(txt, "w") as f:
        f.write("# written by samples/scripts/export_deformable_detr_tiny.py; N=2 M=2 D=16 L=3 P=4, levels (H,W) = "
                "(16,20) (8,10) (4,5), S=420, Lq=420 (encoder) / 10 (decoder)\n"
                "# in deformable_detr_tiny.onnx (raw export) the encoder tensors from encoder/Mul_6 (reference points) "
                "through self_attn/Add_1, attn/Mul, attn/Sub, attn/Gather_k, Transpose, Reshape (the grids) are DOUBLE "
                "(self_attn/Cast_1 casts the offsets to double)\n\n")
    for prefix in ("/model/model/decoder/layers.0/encoder_attn/", "/model/model/encoder/layers.0/self_attn/"):
        C.dump_region_runtime(C.path(NAME + "_f32.onnx"), prefix, inputs, out=txt)


if __name__ == "__main__":
    main()
