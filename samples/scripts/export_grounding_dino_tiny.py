"""samples/grounding_dino_tiny.onnx: transformers GroundingDinoForObjectDetection, tiny config, random weights.

Run from the repo root:  /work/export-venv/bin/python samples/scripts/export_grounding_dino_tiny.py

Config: image 2x3x128x160, tiny Swin backbone (patch 4, embed 16, depths 1/1/1/1, window 4, stages 2-4 ->
16x20, 8x10, 4x5) + 1 extra conv level (2x3) -> L = 4 levels, S = 426 tokens; tiny BERT text backbone
(hidden 32, 1 layer, 2 heads, vocab 1030 so that the special ids 101/102/1012/1029 that Grounding DINO looks
for exist); d_model 32, 2 heads, 4 points, 1 encoder + 1 decoder layer, 10 queries, two-stage.
Text: batch 2, 8 tokens, "[CLS] a . b c . [SEP] [PAD]"-like ids, second row padded (attention_mask 0).
TorchScript exporter, opset 16 (GridSample). Deformable attention = the same pure-PyTorch path as
Deformable DETR (USE_HUB_KERNELS=0, disable_custom_kernels=True).

transformers 5.x builds the text self-attention mask with torch.isin / torch.cummax / torch.cummin, which
the TorchScript exporter cannot export ("Exporting the operator 'aten::isin' to ONNX opset version 16 is not
supported"). This script registers symbolics for them made of standard ops (isin -> Equal + ReduceMax over
the special-token axis; cummax/cummin along a static axis of length T -> Where(lower-triangular [T,T] mask)
+ ReduceMax/ReduceMin) - the kind of workaround a user writes - and leaves everything else as exported.
(mmdeploy instead exports them as custom `cummax`/`cummin` nodes that need its TensorRT plugin.)
The same function builds the diagonal with torch.eye(seq_len, dtype=torch.bool) -> the export carries
EyeLike on a BOOL ConstantOfShape, which onnxruntime has no kernel for.

Writes two exports (same inputs and torch reference):
  grounding_dino_tiny.onnx      as exported: EyeLike(bool) AND the double-precision encoder grids (the
                                exporter's linspace ignores dtype, see export_deformable_detr_tiny.py);
                                onnxruntime refuses it at the EyeLike.
  grounding_dino_tiny_f32.onnx  exported with a dtype-honouring linspace: no float64 left, only EyeLike(bool)
                                stands between it and onnxruntime.
The script also checks (in memory) that Cast(bool->float) -> EyeLike -> Cast(->bool) makes the _f32 export run
and match torch.
"""
import os
import sys

os.environ["USE_HUB_KERNELS"] = "0"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig  # noqa: E402

NAME = "grounding_dino_tiny"
OPSET = 16
N, H, W = 2, 128, 160


def register_symbolics():
    from torch.onnx import symbolic_helper as sh

    def isin(g, elements, test_elements, assume_unique, invert):
        eq = g.op("Equal", g.op("Unsqueeze", elements, g.op("Constant", value_t=torch.tensor([-1]))), test_elements)
        anyv = g.op("ReduceMax", g.op("Cast", eq, to_i=7), axes_i=[-1], keepdims_i=0)  # int64 "any"
        out = g.op("Cast", anyv, to_i=9)
        if sh._maybe_get_const(invert, "b"):
            out = g.op("Not", out)
        return out

    def make_cum(reduce_op, fill):
        def cum(g, self, dim):
            dim = sh._get_const(dim, "i", "dim")
            rank = sh._get_tensor_rank(self)
            dim = dim % rank
            T = sh._get_tensor_dim_size(self, dim)
            assert T is not None, "needs a static length along dim"
            # x_j laid out on a new last axis, i on `dim`: out[..., i, ...] = reduce_{j <= i} x[..., j, ...]
            perm = [d for d in range(rank) if d != dim] + [dim]
            xj = g.op("Unsqueeze", g.op("Transpose", self, perm_i=perm), g.op("Constant", value_t=torch.tensor([rank - 1])))
            tri = torch.tril(torch.ones(T, T, dtype=torch.bool))  # [i, j]: j <= i
            masked = g.op("Where", g.op("Constant", value_t=tri), xj, g.op("Constant", value_t=torch.tensor(fill)))
            vals = g.op(reduce_op, masked, axes_i=[-1], keepdims_i=0)
            arg = g.op("ArgMax" if reduce_op == "ReduceMax" else "ArgMin", g.op("Cast", masked, to_i=1),
                       axis_i=-1, keepdims_i=0, select_last_index_i=1)
            inv = [perm.index(d) for d in range(rank)]
            return g.op("Transpose", vals, perm_i=inv), g.op("Transpose", arg, perm_i=inv)
        return cum

    torch.onnx.register_custom_op_symbolic("aten::isin", isin, OPSET)
    torch.onnx.register_custom_op_symbolic("aten::cummax", make_cum("ReduceMax", torch.iinfo(torch.int64).min), OPSET)
    torch.onnx.register_custom_op_symbolic("aten::cummin", make_cum("ReduceMin", torch.iinfo(torch.int64).max), OPSET)


def build():
    backbone = SwinConfig(
        image_size=(H, W), patch_size=4, num_channels=3, embed_dim=16, depths=[1, 1, 1, 1],
        num_heads=[1, 2, 2, 4], window_size=4, mlp_ratio=2.0, out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=1030, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, type_vocab_size=2,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        num_feature_levels=4,
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
        max_text_len=16,
        disable_custom_kernels=True,
        dropout=0.0,
        fusion_droppath=0.0,
        # with 1 decoder layer the bbox/class heads have a single entry; tying the (absent) others fails
        tie_word_embeddings=False,
    )
    model = GroundingDinoForObjectDetection(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith("sampling_offsets") or name.endswith(".attention_weights"):
                if isinstance(mod, nn.Linear):
                    mod.weight.normal_(0.0, 0.3, generator=g)
    return model


class Wrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, token_type_ids, attention_mask, pixel_mask):
        out = self.model(pixel_values=pixel_values, input_ids=input_ids, token_type_ids=token_type_ids,
                         attention_mask=attention_mask, pixel_mask=pixel_mask, return_dict=True)
        return out.logits, out.pred_boxes


def main():
    C.seed_all(0)
    model = build()
    attn_cls = type(model.model.encoder.layers[0].deformable_layer.self_attn.attn)
    print("deformable attention class:", attn_cls.__module__, attn_cls.__qualname__)
    assert attn_cls.forward.__module__.startswith("transformers.models.grounding_dino"), "custom kernel path"
    x = torch.rand(N, 3, H // 8, W // 8)
    x = nn.functional.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.25
    input_ids = torch.tensor([[101, 17, 1012, 23, 41, 1012, 102, 0],
                              [101, 55, 66, 1012, 102, 0, 0, 0]], dtype=torch.long)
    attention_mask = (input_ids != 0).long()
    token_type_ids = torch.zeros_like(input_ids)
    pixel_mask = torch.ones(N, H, W, dtype=torch.long)
    args = (x, input_ids, token_type_ids, attention_mask, pixel_mask)
    in_names = ["pixel_values", "input_ids", "token_type_ids", "attention_mask", "pixel_mask"]
    wrapper = Wrapper(model).eval()
    with torch.no_grad():
        ref = wrapper(*args)
    out_names = ["logits", "pred_boxes"]
    for n, r in zip(out_names, ref):
        print(f"torch {n}: {tuple(r.shape)} {r.dtype}")
    register_symbolics()
    inputs = {n: a.numpy() for n, a in zip(in_names, args)}
    touts = {n: r.numpy() for n, r in zip(out_names, ref)}
    for name, fix in ((NAME, False), (NAME + "_f32", True)):
        if fix:
            C.register_float_linspace(OPSET)
        onnx_path = C.path(name + ".onnx")
        torch.onnx.export(
            wrapper, args, onnx_path, dynamo=False, opset_version=OPSET,
            input_names=in_names, output_names=out_names, do_constant_folding=True,
        )
        C.describe(onnx_path, interesting=("GridSample", "EyeLike", "ReduceMin"))
        print(f"{name}: {C.count_double(onnx_path)} float64 tensors")
        C.save_npz(name, inputs, touts)
        C.ort_check(onnx_path, inputs, touts)
    print("in-memory check: _f32 export with EyeLike computed in float and cast back to bool")
    patched = eyelike_via_float(C.path(NAME + "_f32.onnx"))
    C.ort_check(patched, inputs, touts)


def eyelike_via_float(onnx_path):
    import onnx

    m = onnx.load(onnx_path)
    for idx, n in enumerate(list(m.graph.node)):
        if n.op_type == "EyeLike":
            src, out = n.input[0], n.output[0]
            n.input[0], n.output[0] = src + "/as_float", out + "/float"
            m.graph.node.insert(idx, onnx.helper.make_node("Cast", [src], [src + "/as_float"], to=onnx.TensorProto.FLOAT))
            m.graph.node.insert(idx + 2, onnx.helper.make_node("Cast", [out + "/float"], [out], to=onnx.TensorProto.BOOL))
            break
    return m.SerializeToString()


if __name__ == "__main__":
    main()
