"""Shared helpers for the sample export scripts (run from the repo root with the export venv).

Nothing here downloads anything: every model is built from a config with random weights.
"""
from __future__ import annotations

import collections
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

SAMPLES = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def seed_all(seed: int = 0) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def path(name: str) -> str:
    return os.path.join(SAMPLES, name)


def op_histogram(model) -> collections.Counter:
    """op histogram of the main graph and every subgraph, keyed 'domain::op' for custom domains."""
    import onnx

    counts: collections.Counter = collections.Counter()

    def walk(g):
        for n in g.node:
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            counts[key] += 1
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        walk(sg)

    walk(model.graph)
    return counts


def iter_nodes(graph):
    import onnx

    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sg in a.graphs:
                    yield from iter_nodes(sg)


def attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def describe(onnx_path: str, interesting=()) -> None:
    import onnx

    m = onnx.load(onnx_path)
    size = os.path.getsize(onnx_path)
    print(f"{os.path.basename(onnx_path)}: {size / 1e6:.2f} MB, opsets "
          f"{[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]}, ir {m.ir_version}")
    print("inputs :", [(i.name, [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]) for i in m.graph.input])
    print("outputs:", [(o.name, [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]) for o in m.graph.output])
    print("ops    :", dict(sorted(op_histogram(m).items(), key=lambda kv: -kv[1])))
    for n in iter_nodes(m.graph):
        if n.op_type in interesting:
            print(f"  {n.op_type} {n.name!r} in={list(n.input)} out={list(n.output)} attrs={attrs(n)}")


def save_npz(name: str, inputs: dict, torch_outputs: dict, extra: dict | None = None) -> str:
    arrays = {f"input:{k}": np.asarray(v) for k, v in inputs.items()}
    arrays.update({f"torch:{k}": np.asarray(v) for k, v in torch_outputs.items()})
    for k, v in (extra or {}).items():
        arrays[k] = np.asarray(v)
    p = path(name + ".npz")
    np.savez_compressed(p, **arrays)
    print(f"wrote {p} ({os.path.getsize(p) / 1e6:.3f} MB): {sorted(arrays)}")
    return p


def ort_check(onnx_path: str, inputs: dict, torch_outputs: dict) -> dict | None:
    """Run the model in onnxruntime (CPU) and print the max |ort - torch| per output.

    Returns the ORT outputs, or None (printing the exact error) when ORT refuses the model.
    """
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        res = sess.run(None, {k: np.asarray(v) for k, v in inputs.items()})
    except Exception as e:  # noqa: BLE001 - we record the exact error
        label = os.path.basename(onnx_path) if isinstance(onnx_path, str) else "<in-memory model>"
        print(f"ORT ({ort.__version__}) REFUSES {label}: {type(e).__name__}: {e}")
        return None
    out = dict(zip(names, res))
    for k, ref in torch_outputs.items():
        got = out[k]
        ref = np.asarray(ref)
        if got.shape != ref.shape:
            print(f"  {k}: SHAPE MISMATCH ort {got.shape} vs torch {ref.shape}")
            continue
        if ref.size == 0:
            print(f"  {k}: empty {ref.shape}")
            continue
        if ref.dtype.kind in "fc":
            fin = np.isfinite(ref)
            same_nonfinite = bool(np.array_equal(got[~fin], ref[~fin], equal_nan=True)) and bool(np.all(np.isfinite(got[fin])))
            err = float(np.max(np.abs(got[fin].astype(np.float64) - ref[fin].astype(np.float64)))) if fin.any() else 0.0
            extra = "" if fin.all() else f", {int((~fin).sum())} non-finite torch values {'reproduced' if same_nonfinite else 'NOT reproduced'}"
            print(f"  {k}: shape {ref.shape} max|ort-torch| = {err:.3g} (max finite |torch| "
                  f"{float(np.max(np.abs(ref[fin]))) if fin.any() else 0:.3g}{extra})")
        else:
            print(f"  {k}: shape {ref.shape} {ref.dtype} equal = {bool(np.array_equal(got, ref))}")
    return out


def dump_region(onnx_path: str, prefix: str) -> None:
    """print the nodes whose name starts with prefix (graph order) with dtypes/shapes of their tensors."""
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load(onnx_path))
    info = {}
    for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        t = v.type.tensor_type
        info[v.name] = (onnx.TensorProto.DataType.Name(t.elem_type).lower(),
                        [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim])
    for i in m.graph.initializer:
        info[i.name] = (onnx.TensorProto.DataType.Name(i.data_type).lower(), list(i.dims))
    consts = {}
    for n in m.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            t = onnx.numpy_helper.to_array(n.attribute[0].t)
            consts[n.output[0]] = t
            info[n.output[0]] = (str(t.dtype), list(t.shape))

    def fmt(name):
        if name == "":
            return "-"
        dt, sh = info.get(name, ("?", "?"))
        if name in consts and consts[name].size <= 8:
            return f"const{consts[name].tolist()}:{dt}"
        short = name if len(name) < 60 else "..." + name[-45:]
        return f"{short}:{dt}{sh}"

    print(f"--- nodes named {prefix}* in {os.path.basename(onnx_path)}")
    for n in m.graph.node:
        if n.name.startswith(prefix) and n.op_type != "Constant":
            a = attrs(n)
            a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in a.items()}
            print(f"{n.name[len(prefix):]:<28} {n.op_type:<10} ({', '.join(fmt(i) for i in n.input)}) -> "
                  f"{', '.join(fmt(o) for o in n.output)} {a if a else ''}")


def dump_region_runtime(onnx_path: str, prefix: str, feeds: dict, out=None, skip_shape_math: bool = True) -> None:
    """like dump_region, with the real shapes/dtypes of one onnxruntime run; shape arithmetic (int64 tensors made
    from Shape outputs) is folded into one summary line per consumer when skip_shape_math is set."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(onnx_path)
    region = [n for n in m.graph.node if n.name.startswith(prefix)]
    names = {o for n in region for o in n.output} | {i for n in region for i in n.input}
    produced = {o for n in m.graph.node for o in n.output}
    existing = {o.name for o in m.graph.output}
    inits = {i.name: i for i in m.graph.initializer}
    consts = {}
    for n in m.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    for name in sorted(names):
        if name and name in produced and name not in existing and name not in consts:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    shape_math = set()

    def short(name):
        return name[len(prefix):] if name.startswith(prefix) else name.rsplit("/", 2)[-2] + "/" + name.rsplit("/", 1)[-1] if "/" in name else name

    def fmt(name):
        if name == "":
            return "-"
        if name in consts and consts[name].size <= 8:
            return f"{consts[name].tolist()}"
        if name in consts:
            return f"const{list(consts[name].shape)}"
        if name in inits:
            return f"W{list(inits[name].dims)}"
        if name in outs:
            a = outs[name]
            v = f"={a.tolist()}" if a.dtype.kind in "iu" and a.size <= 8 else ""
            return f"{short(name)}:{a.dtype}{list(a.shape)}{v}"
        return short(name)

    lines = []
    for n in region:
        if n.op_type == "Constant":
            continue
        def is_int(name):
            if name == "" or name in shape_math:
                return True
            a = consts.get(name, outs.get(name))
            return a is not None and a.dtype.kind in "iu"

        if skip_shape_math and n.op_type != "Reshape" and (
                n.op_type == "Shape" or (all(is_int(i) for i in n.input) and all(is_int(o) for o in n.output))):
            shape_math.update(n.output)
            continue
        a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs(n).items()}
        lines.append(f"{n.op_type:<10} {n.name[len(prefix):]:<24} ({', '.join(fmt(i) for i in n.input)}) -> "
                     f"{', '.join(fmt(o) for o in n.output)}{' ' + str(a) if a else ''}")
    text = f"--- {os.path.basename(onnx_path)}: nodes named {prefix}* (shape arithmetic from Shape nodes omitted)\n" + "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")


def register_float_linspace(opset: int) -> None:
    """aten::linspace symbolic that honours dtype (torch's own one always computes in double)."""
    import torch
    from torch.onnx import symbolic_helper as sh
    from torch.onnx._internal.torchscript_exporter import _type_utils
    from torch.onnx._internal.torchscript_exporter import symbolic_opset9 as op9

    def linspace(g, start, end, steps, dtype, layout, device, pin_memory):
        if sh._is_none(dtype) or not all(sh._is_constant(v) for v in (start, end, steps)):
            return op9.linspace(g, start, end, steps, dtype, layout, device, pin_memory)
        st = _type_utils.JitScalarType(sh._get_const(dtype, "i", "dtype"))
        value = torch.linspace(float(sh._get_const(start, "f", "start")), float(sh._get_const(end, "f", "end")),
                               int(sh._get_const(steps, "i", "steps")), dtype=st.dtype())
        return g.op("Constant", value_t=value)

    torch.onnx.register_custom_op_symbolic("aten::linspace", linspace, opset)


def count_double(onnx_path: str) -> int:
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load(onnx_path))
    types = [v.type.tensor_type.elem_type for v in list(m.graph.value_info) + list(m.graph.output)]
    return sum(t == onnx.TensorProto.DOUBLE for t in types)
