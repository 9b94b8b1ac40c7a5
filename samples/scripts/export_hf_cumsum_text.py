"""Export a tiny transformers RoBERTa (RobertaModel, random weights) with dynamic batch and sequence.

Writes samples/hf_cumsum_text.onnx (+ .npz).

RoBERTa computes its position ids from the input ids
(`create_position_ids_from_input_ids`: `mask = input_ids.ne(padding_idx).int();
(torch.cumsum(mask, dim=1) + past) * mask + padding_idx`), so the graph contains a `CumSum`
(int32 data, axis 1) that depends on the runtime input; opset 17 makes the exporter emit
`LayerNormalization`.  Attention is the eager implementation (MatMul / Softmax, additive mask).

Inputs in the npz: batch 2, sequence 12, int64 `input_ids` in [3, 100) with the second row
right-padded with the pad id 1, and the matching int64 `attention_mask`.

Run from the repo root:  python samples/scripts/export_hf_cumsum_text.py
"""

import collections
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import torch
from transformers import RobertaConfig, RobertaModel

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.dirname(HERE)
NAME = "hf_cumsum_text"
OPSET = 17
PAD = 1


class Wrapper(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)
        return out[0], out[1]


def make_inputs(gen, batch, seq, lengths):
    ids = torch.randint(3, 100, (batch, seq), generator=gen, dtype=torch.int64)
    mask = torch.zeros(batch, seq, dtype=torch.int64)
    for i, n in enumerate(lengths):
        ids[i, n:] = PAD
        mask[i, :n] = 1
    ids[:, 0] = 0  # <s>
    return ids, mask


def main():
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=66, type_vocab_size=1,
        pad_token_id=PAD, bos_token_id=0, eos_token_id=2,
    )
    config._attn_implementation = "eager"
    model = Wrapper(RobertaModel(config).eval()).eval()

    gen = torch.Generator().manual_seed(1)
    input_ids, attention_mask = make_inputs(gen, 2, 12, [12, 7])
    in_names = ["input_ids", "attention_mask"]
    out_names = ["last_hidden_state", "pooler_output"]
    path = os.path.join(SAMPLES, NAME + ".onnx")
    dyn = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
           "last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}}
    with torch.no_grad():
        outs = model(input_ids, attention_mask)
        torch.onnx.export(model, (input_ids, attention_mask), path, input_names=in_names,
                          output_names=out_names, dynamic_axes=dyn, opset_version=OPSET,
                          dynamo=False)
    data = {"input:input_ids": input_ids.numpy(), "input:attention_mask": attention_mask.numpy()}
    data.update({"torch:" + k: v.numpy() for k, v in zip(out_names, outs)})
    np.savez(os.path.join(SAMPLES, NAME + ".npz"), **data)

    m = onnx.load(path)
    onnx.checker.check_model(m)
    hist = collections.Counter(n.op_type for n in m.graph.node)
    print(f"== {NAME}: {os.path.getsize(path)} bytes, opset {OPSET}")
    print("ops:", dict(sorted(hist.items())))
    consts = {o: n for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    inits = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "CumSum":
            src = consts.get(n.input[1]) or inits.get(n.input[1])
            axis = (onnx.numpy_helper.to_array(src.attribute[0].t) if hasattr(src, "attribute")
                    else onnx.numpy_helper.to_array(src)) if src is not None else "computed"
            print(f"  CumSum {n.name}: axis {axis}")
    assert hist.get("CumSum") and hist.get("LayerNormalization"), "expected CumSum and LayerNormalization"

    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    res = sess.run(out_names, {"input_ids": data["input:input_ids"],
                               "attention_mask": data["input:attention_mask"]})
    for k, r in zip(out_names, res):
        print(f"  ORT vs torch {k}: max abs err {float(np.abs(r - data['torch:' + k]).max()):.3g}")
    ids2, mask2 = make_inputs(gen, 3, 20, [20, 5, 13])  # other batch and sequence sizes
    with torch.no_grad():
        ref = model(ids2, mask2)
    res = sess.run(out_names, {"input_ids": ids2.numpy(), "attention_mask": mask2.numpy()})
    err = max(float(np.abs(r - t.numpy()).max()) for r, t in zip(res, ref))
    print(f"  ORT vs torch at batch 3, sequence 20: max abs err {err:.3g}")


if __name__ == "__main__":
    main()
