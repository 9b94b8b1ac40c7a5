"""Give MaxPool/AveragePool on an unbatched (C, spatial...) tensor the batch axis ONNX requires."""

from __future__ import annotations

import numpy as np

import graphfix as gf

# Pooling ops PyTorch's TorchScript exporter writes on unbatched inputs (checked with torch 2.14:
# max_pool1d/2d/3d -> MaxPool, avg_pool1d/2d and lp_pool2d -> AveragePool). Conv, ConvTranspose
# and InstanceNormalization are not here: torch unsqueezes unbatched inputs itself before those,
# so their exports are already batched.
_POOLING_OPS = frozenset({"MaxPool", "AveragePool"})

# Ops whose output rank is the broadcast (largest) rank of their inputs. Shape inference loses the
# shapes at the first invalid pooling node, so the tensors after it have no rank; following these
# ops back to shaped tensors recovers the rank of the score maps SuperPoint's NMS pools repeatedly.
_RANK_PRESERVING_OPS = _POOLING_OPS | frozenset({
    "Abs", "Add", "And", "Cast", "Ceil", "Clip", "Div", "Equal", "Erf", "Exp", "Floor", "Greater",
    "GreaterOrEqual", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Less", "LessOrEqual", "Log", "Max",
    "Min", "Mod", "Mul", "Neg", "Not", "Or", "Pow", "Reciprocal", "Relu", "Round", "Sigmoid", "Sign",
    "Sqrt", "Sub", "Tanh", "Where", "Xor",
})
_MAX_RANK_HOPS = 64


@gf.rule(limitation="maxpool.unbatched", stage="repair")
class BatchUnbatchedPooling:
    """Wrap pooling on an unbatched tensor in Unsqueeze(0) / Squeeze(0).

    TensorRT limitation: an export repair, needed for every TensorRT version (7.2 to 10.x) and
    for onnxruntime 1.31: PyTorch's max_pool2d/avg_pool2d accept an unbatched (C, H, W) tensor
    and the TorchScript exporter (torch 2.14) writes MaxPool/AveragePool on it, but ONNX requires
    rank 2 + len(kernel_shape) (N, C, spatial...). ONNX shape inference fails ("Attribute
    dilations has incorrect size"), so onnxruntime refuses to load the model and onnx.checker's
    full check fails; TensorRT's pooling layer likewise needs the channel axis before the spatial
    ones (transformers' SuperPoint keypoint NMS does this; targets.py EXPORT_REPAIRS, source key
    "onnx MaxPool shape inference").

    Rewrite: Unsqueeze axis 0, the same pooling node with every attribute unchanged (kernel,
    strides, pads, dilations, ceil_mode, storage_order, count_include_pad, auto_pad only concern
    the spatial axes), then Squeeze axis 0 of each used output. This is what PyTorch computes
    for an unbatched input (it adds and removes the batch axis itself). MaxPool's Indices output
    indexes the flattened (1, C, spatial...) tensor, which is the flattened (C, spatial...) tensor,
    so the indices are unchanged too. When loading the model shape inference stopped at the
    first such node, so later ranks may be unknown: the input rank is then derived from shaped
    tensors upstream through element-wise ops, pooling nodes and Unsqueeze/Squeeze, and a node
    whose rank cannot be derived is left alone with that reason.
    """

    def pattern(self, op, x):
        return op.node(_POOLING_OPS, x, _capture="pool")

    def check(self, ctx, x, pool):
        spatial = len(ctx.attr(pool, "kernel_shape") or ())
        if not spatial:
            return gf.reject("the pooling node has no kernel_shape", pool)
        rank = _derived_rank(ctx, x)
        if rank is None:
            return gf.reject("the input rank is unknown and cannot be derived from shaped tensors upstream", x)
        if rank == spatial + 2:
            return gf.reject(f"the input is batched (rank {rank} = 2 + {spatial} spatial dims)", pool)
        if rank != spatial + 1:
            return gf.reject(f"input rank {rank} fits neither {spatial + 1} (unbatched) nor {spatial + 2}", pool)
        return gf.accept()

    def rewrite(self, op, x, pool):
        used = [not t.is_empty() and (t.outputs or op.ctx.is_graph_output(t)) for t in pool.outputs]
        count = max(i + 1 for i, u in enumerate(used) if u)
        batched = op.node(pool.op, op.unsqueeze(x, [0]), _outputs=count, **dict(pool.attrs))
        batched = batched if isinstance(batched, tuple) else (batched,)
        return tuple(
            op.squeeze(batched[i], [0]) if i < count and used[i] else None for i in range(len(pool.outputs))
        )


def _derived_rank(ctx, tensor, known: dict[str, int | None] | None = None, hops: int = _MAX_RANK_HOPS) -> int | None:
    """The tensor's rank, from its type or, when untyped, from its producer's inputs.

    Follows element-wise ops (broadcast rank), pooling, and Unsqueeze/Squeeze with constant
    axes (the wrapping this rule writes around nodes whose input was untyped).
    """
    known = {} if known is None else known
    rank = ctx.rank(tensor)
    if rank is not None or hops == 0:
        return rank
    if tensor.name not in known:
        known[tensor.name] = None
        producer = ctx.producer(tensor)
        if producer is not None and (producer.domain or "") in ("", "ai.onnx"):
            known[tensor.name] = _rank_after(ctx, producer, lambda t: _derived_rank(ctx, t, known, hops - 1))
    return known[tensor.name]


def _rank_after(ctx, node, rank_of) -> int | None:
    """The rank of `node`'s first output given `rank_of` for its inputs (None when unknown)."""
    if node.op in _RANK_PRESERVING_OPS:
        ranks = [rank_of(t) for t in node.inputs if not t.is_empty()]
        return None if not ranks or None in ranks else max(ranks)
    if node.op in ("Unsqueeze", "Squeeze"):
        axes = ctx.constant(node.inputs[1]) if len(node.inputs) > 1 else ctx.attr(node, "axes")
        rank = rank_of(node.inputs[0])
        if axes is None or rank is None:
            return None
        count = len(list(np.reshape(axes, -1)))
        return rank + count if node.op == "Unsqueeze" else rank - count
    return None
