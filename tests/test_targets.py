"""Target profiles: resolution, per-node evaluation and model-level facts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphfix import targets as T
from graphfix.targets import (
    LIMITATIONS,
    OPT_IN_LIMITATIONS,
    TRT_PLUGIN_DOMAIN,
    TRT_PLUGIN_DOMAIN_VERSION,
    InputFacts,
    NodeFacts,
    resolve_target,
)


def inp(index, name, dtype="float32", *, weights=False, producer=None, producer_op=None,
        shape=None, value=None):
    return InputFacts(index=index, name=name, dtype=dtype,
                      rank=None if shape is None else len(shape), shape=shape,
                      is_weights=weights, producer=producer, producer_op=producer_op,
                      value=value)


def node(op_type, inputs=(), *, attrs=None, opset=17, domain="", name=None, outputs=("float32",)):
    return NodeFacts(name=name or f"/{op_type}_0", op_type=op_type, domain=domain, opset=opset,
                     attrs=attrs or {}, inputs=tuple(inputs), output_dtypes=tuple(outputs),
                     in_subgraph=False)


def keys(target, n):
    return {f.limitation for f in resolve_target(target).evaluate(n)}


def only(target, n):
    findings = resolve_target(target).evaluate(n)
    assert len(findings) == 1, findings
    return findings[0]


# ---------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize("spec,name", [
    ("trt8.6", "trt8.6"), ("8.6", "trt8.6"), ("8.6.1.6", "trt8.6"), ("tensorrt==8.6", "trt8.6"),
    ("TRT8.6", "trt8.6"), ("trt-rtx", "trt-rtx"), ("rtx", "trt-rtx"), ("portable", "portable"),
    ("10.13", "trt10.13"), ("trt10.16", "trt10.16"), ("10.17.0", "trt10.16"), ("8.3", "trt8.2"),
    ("8.1.2", "trt8.0"), ("7.2.3.4", "trt7.2"), ("trt11", "trt11"), ("11.1", "trt11.1"),
    ("10.0.1.6", "trt10.0"),
])
def test_resolve_aliases(spec, name):
    assert resolve_target(spec).name == name


def test_resolve_defaults():
    assert resolve_target(None).name == T.DEFAULT_TARGET == "portable"
    assert resolve_target(None, installed_version="10.13.3.9").name == "trt10.13"
    assert resolve_target(None, installed_version="8.5.3.1").name == "trt8.5"


@pytest.mark.parametrize("spec", ["trt9.3", "7.1", "trt10", "banana", "12.0", ""])
def test_resolve_unknown_lists_known_targets(spec):
    with pytest.raises(ValueError, match="trt8.6.*trt10.16.*portable"):
        resolve_target(spec)


def test_10x_sub_versions_fold_their_deltas():
    eq = node("Einsum", [inp(0, "a"), inp(1, "b")], attrs={"equation": "...ij,...jk->...ik"},
              opset=17)
    diag = node("Einsum", [inp(0, "a")], attrs={"equation": "ii->i"})
    assert "einsum.diagonal" in keys("trt10.11", diag)
    assert "einsum.diagonal" not in keys("trt10.12", diag)
    assert keys("trt10.0", eq) == set() and keys("trt8.6", eq) == {"einsum.ellipsis"}
    assert resolve_target("10.9").op_support("ScatterND").restrictions[0].limitation == \
        "scatter.reduction_refused"
    assert not resolve_target("10.9").plugin_namespace_from_domain
    assert resolve_target("10.10").plugin_namespace_from_domain
    assert resolve_target("10.14").op_support("Attention").importer
    assert not resolve_target("10.13").op_support("Attention").importer


def test_target_fields():
    t86, t10, t11 = resolve_target("trt8.6"), resolve_target("trt10.16"), resolve_target("trt11")
    assert t86.opset_range == (7, 17) and t10.opset_range == (9, 24)
    assert not t86.int64_native and t10.int64_native
    assert t86.parser_registers_plugins and not t10.parser_registers_plugins
    assert t11.strongly_typed_only and not t10.strongly_typed_only
    assert t10.strongly_typed_available and not t86.strongly_typed_available
    assert not resolve_target("trt8.4").bool_cast and resolve_target("trt8.5").bool_cast
    assert t10.plugins["ROIAlign_TRT"] == ("1", "2")
    assert resolve_target("trt10.0").plugins["ROIAlign_TRT"] == ("1",)
    assert "EfficientNMS_ONNX_TRT" not in t11.plugins and "EfficientNMS_TRT" in t11.plugins
    assert "ROIAlign_TRT" not in resolve_target("trt8.4").plugins


def test_limitation_vocabulary_is_closed():
    for name in [n for n, _ in T._LINES] + ["trt-rtx", "portable"]:
        assert resolve_target(name).limitations <= set(LIMITATIONS)
    assert all(k in LIMITATIONS for k in OPT_IN_LIMITATIONS)


def test_portable_has_every_limitation_but_the_opt_ins():
    portable = resolve_target("portable")
    assert portable.limitations == set(LIMITATIONS) - set(OPT_IN_LIMITATIONS)
    assert portable.opset_range == (9, 11)


def test_export_repairs_active_everywhere():
    for name in [n for n, _ in T._LINES] + ["trt-rtx", "portable"]:
        assert T.EXPORT_REPAIRS <= resolve_target(name).limitations


def test_opt_in_limitations():
    t = resolve_target("trt8.6")
    assert "msda.unfused" not in t.limitations
    assert "msda.unfused" in t.with_limitations("msda.unfused").limitations
    with pytest.raises(ValueError, match="MultiscaleDeformableAttnPlugin_TRT"):
        resolve_target("trt8.2").with_limitations("msda.unfused")
    with pytest.raises(ValueError, match="MultiscaleDeformableAttnPlugin_TRT"):
        resolve_target("portable").with_limitations("msda.unfused")


def test_list_targets():
    rows = T.list_targets()
    names = [r.name for r in rows]
    assert names == ["trt7.2", "trt8.0", "trt8.2", "trt8.4", "trt8.5", "trt8.6", "trt10.0",
                     "trt10.16", "trt11", "trt-rtx", "portable"]
    assert all(r.notes for r in rows)
    assert tuple(rows[5]) == ("trt8.6", "TensorRT 8.6", "7-17", rows[5].notes)


def test_targets_needing():
    assert T.targets_needing(["einsum.ellipsis"]) == "trt8.2, trt8.4, trt8.5, trt8.6"
    assert T.targets_needing(["maxpool.unbatched"]) == "all"
    assert T.targets_needing([]) == "all"
    assert T.targets_needing(["msda.unfused"]) == "none"


# ---------------------------------------------------------------------------------- Clip
CLIP_COMPUTED_MAX = [inp(0, "x"), inp(1, "lo", weights=True),
                     inp(2, "hi", producer="/Sub_3", producer_op="Sub")]


def test_clip_computed_max_fails_80_passes_86():
    f = only("trt8.0", node("Clip", CLIP_COMPUTED_MAX, opset=13))
    assert (f.kind, f.limitation) == ("unsupported", "clip.bounds_not_weights")
    assert f.reason == "input 2 (max) is computed by node /Sub_3 (Sub), not an initializer"
    assert keys("trt7.2", node("Clip", CLIP_COMPUTED_MAX, opset=11)) == {"clip.bounds_not_weights"}
    assert keys("trt8.6", node("Clip", CLIP_COMPUTED_MAX, opset=13)) == set()


def test_clip_graph_input_bound_reason():
    f = only("trt8.0", node("Clip", [inp(0, "x"), inp(1, "lo")], opset=13))
    assert f.reason == "input 1 (min) is a graph input, not an initializer"


def test_clip_fp16_tensor_bounds_fails_84_passes_85():
    fp16 = [inp(0, "x", "float16"), inp(1, "lo", "float16", weights=True),
            inp(2, "hi", "float16", producer="/Sub_3", producer_op="Sub")]
    f = only("trt8.4", node("Clip", fp16, opset=13))
    assert f.limitation == "clip.fp16_tensor_bounds"
    assert f.reason.startswith("input 0 (input) is float16")
    assert keys("trt8.5", node("Clip", fp16, opset=13)) == set()
    # FP32 input with tensor bounds is fine on 8.2/8.4; FP16 with constant bounds too.
    assert keys("trt8.4", node("Clip", CLIP_COMPUTED_MAX, opset=13)) == set()
    const16 = [inp(0, "x", "float16"), inp(1, "lo", "float16", weights=True),
               inp(2, "hi", "float16", weights=True)]
    assert keys("trt8.4", node("Clip", const16, opset=13)) == set()


# ---------------------------------------------------------------------------------- Einsum
def einsum(eq, *shapes, dtype="float32"):
    return node("Einsum", [inp(i, f"x{i}", dtype, shape=s) for i, s in enumerate(shapes)],
                attrs={"equation": eq}, opset=12)


def test_einsum_ellipsis_fails_86_passes_1016():
    n = einsum("...ij,...jk", None, None)
    f = only("trt8.6", n)
    assert f.limitation == "einsum.ellipsis"
    assert f.reason == 'equation "...ij,...jk" uses ellipsis'
    assert keys("trt10.16", n) == set()


def test_einsum_uppercase_fails_100_and_1016():
    n = einsum("bij,bjK->biK", None, None)
    f = only("trt10.0", n)
    assert f.limitation == "einsum.uppercase"
    assert f.reason == 'equation "bij,bjK->biK" uses uppercase label(s) K'
    assert keys("trt10.16", n) == {"einsum.uppercase"}


def test_einsum_other_features():
    assert keys("trt8.2", einsum("ij,jk,kl->il", None, None, None)) == \
        {"einsum.more_than_two_operands"}
    assert keys("trt10.0", einsum("ij,jk,kl->il", None, None, None)) == set()
    assert "einsum.diagonal" in keys("trt10.0", einsum("ii->i", None))
    b = einsum("ij,jk->ik", (3, 1), (4, 5))
    f = only("trt8.6", b)
    assert f.limitation == "einsum.broadcast"
    assert "label j (sizes 1 and 4)" in f.reason
    assert keys("trt10.16", b) == set()
    assert keys("trt10.16", einsum("ij,jk->ik", None, None, dtype="int32")) == \
        {"einsum.integer_inputs"}
    assert keys("trt8.0", einsum("ij,jk->ik", None, None)) == {"einsum.missing"}


# ---------------------------------------------------------------------------------- NonZero, NMS
def test_nonzero():
    n = node("NonZero", [inp(0, "m", "bool")], opset=13, outputs=("int64",))
    assert keys("trt8.4", n) == {"nonzero.missing"}
    assert keys("trt8.5", n) == set()
    f = only("trt-rtx", n)
    assert f.limitation == "nonzero.missing" and "no runner" in f.reason
    assert keys("portable", n) == {"nonzero.missing"}


def test_nms():
    ins = [inp(0, "boxes"), inp(1, "scores"), inp(2, "max", "int64", weights=True),
           inp(3, "iou", producer="/Mul_1", producer_op="Mul"), inp(4, "score", weights=True)]
    n = node("NonMaxSuppression", ins, opset=11, outputs=("int64",))
    assert keys("trt7.2", n) == {"nms.missing"}
    assert keys("trt8.4", n) == {"nms.padded_plugin", "nms.params_not_weights"}
    assert keys("trt8.5", n) == set()
    assert keys("trt-rtx", n) == {"nms.missing"}


# ---------------------------------------------------------------------------------- silent ones
def test_gridsample_linear_is_silent_from_85():
    n = node("GridSample", [inp(0, "x", shape=(1, 3, 8, 8)), inp(1, "g", shape=(1, 4, 4, 2))],
             attrs={"mode": "linear"}, opset=20)
    for target in ("trt8.5", "trt10.16", "trt11"):
        f = only(target, n)
        assert (f.kind, f.limitation) == ("silent", "gridsample.mode_string_ignored")
        assert f.reason == 'mode "linear" (opset 20 spelling) is imported as nearest'
    assert keys("trt8.4", n) == {"gridsample.missing"}
    ok = node("GridSample", [inp(0, "x"), inp(1, "g")], attrs={"mode": "bilinear"}, opset=16)
    assert keys("trt10.16", ok) == set()
    # Without mode the importer uses bilinear, which is the ONNX default as well.
    assert keys("trt10.16", node("GridSample", [inp(0, "x"), inp(1, "g")], opset=20)) == set()
    vol = node("GridSample", [inp(0, "x", shape=(1, 3, 4, 8, 8)), inp(1, "g", shape=(1, 2, 4, 4, 3))],
               opset=20)
    assert keys("trt10.16", vol) == {"gridsample.5d"}


def test_topk_largest_zero_silent_on_84_not_85():
    n = node("TopK", [inp(0, "x"), inp(1, "k", "int64", weights=True, value=np.array([5]))],
             attrs={"largest": 0}, opset=11, outputs=("float32", "int64"))
    f = only("trt8.4", n)
    assert (f.kind, f.limitation) == ("silent", "topk.largest_ignored")
    assert keys("trt8.5", n) == set()


def test_topk_other_limits():
    k_computed = node("TopK", [inp(0, "x"), inp(1, "k", "int64", producer="/Min", producer_op="Min")],
                      opset=11)
    assert keys("trt8.5", k_computed) == {"topk.k_not_weights"}
    assert keys("trt8.6", k_computed) == set()
    int_x = node("TopK", [inp(0, "x", "int32"), inp(1, "k", "int64", weights=True)], opset=11)
    assert keys("trt8.5", int_x) == {"topk.int32_input"}
    big = node("TopK", [inp(0, "x"), inp(1, "k", "int64", weights=True, value=np.array([5000]))],
               opset=11)
    assert keys("trt10.16", big) == {"topk.k_above_limit"}


def test_reduce_mean_18_axes_input():
    axes_w = node("ReduceMean", [inp(0, "x"), inp(1, "axes", "int64", weights=True)], opset=18)
    axes_c = node("ReduceMean", [inp(0, "x"),
                                 inp(1, "axes", "int64", producer="/Concat", producer_op="Concat")],
                  opset=18)
    f = only("trt8.6", axes_w)
    assert (f.kind, f.limitation) == ("silent", "reduce.axes_input_ignored")
    assert f.reason == ("ReduceMean-18 takes axes as input 1, which this parser ignores: all axes "
                        "are reduced")
    assert keys("trt10.0", axes_w) == set()
    f = only("trt10.0", axes_c)
    assert (f.kind, f.limitation) == ("unsupported", "reduce.axes_not_weights")
    # ReduceMean-13 keeps axes as an attribute: nothing to say.
    assert keys("trt8.6", node("ReduceMean", [inp(0, "x")], attrs={"axes": [1]}, opset=13)) == set()


def test_reduce_sum_13_axes():
    n = node("ReduceSum", [inp(0, "x"), inp(1, "axes", "int64", weights=True)], opset=13)
    assert only("trt7.2", n).kind == "silent"
    assert keys("trt8.6", n) == set()
    c = node("ReduceSum", [inp(0, "x"), inp(1, "axes", "int64", producer="/S", producer_op="Shape")],
             opset=13)
    assert keys("trt8.0", c) == {"reduce.axes_not_weights"}
    assert keys("trt10.0", node("ReduceMax", [inp(0, "m", "bool")], attrs={"axes": [1]},
                                opset=13)) == {"reduce.bool_input"}


def test_roialign_without_sampling_ratio_silent_from_85():
    n = node("RoiAlign", [inp(0, "x"), inp(1, "rois"), inp(2, "idx", "int64")], opset=16)
    for target in ("trt8.5", "trt8.6", "trt10.0", "trt10.16", "trt11"):
        f, = [f for f in resolve_target(target).evaluate(n) if f.kind != "plugin"]
        assert (f.kind, f.limitation) == ("silent", "roialign.sampling_ratio_default")
        assert f.reason == ("attribute sampling_ratio absent: TensorRT uses 1, ONNX means 0 "
                            "(adaptive)")
    assert keys("trt8.4", n) == {"roialign.missing"}
    explicit = node("RoiAlign", [inp(0, "x"), inp(1, "rois"), inp(2, "idx", "int64")],
                    attrs={"sampling_ratio": 0}, opset=16)
    assert keys("trt8.6", explicit) == set()
    # From 10.0 the application loads the plugin RoiAlign is lowered to.
    assert keys("trt10.16", explicit) == {"plugin.standard_library"}


def test_scatter_reduction():
    n = node("ScatterND", [inp(0, "d"), inp(1, "i", "int64"), inp(2, "u")],
             attrs={"reduction": "add"}, opset=16)
    assert only("trt8.6", n).kind == "silent"
    assert keys("trt8.6", n) == {"scatter.reduction_ignored"}
    assert keys("trt10.0", n) == {"scatter.reduction_refused"}
    none = node("ScatterND", [inp(0, "d"), inp(1, "i", "int64"), inp(2, "u")],
                attrs={"reduction": "none"}, opset=18)
    assert keys("trt10.0", none) == {"scatter.reduction_refused"}
    assert keys("trt10.16", none) == set()
    # 8.0: no importer, the ScatterND plugin takes it and drops the reduction.
    assert keys("trt8.0", n) == {"plugin.standard_library", "scatter.reduction_ignored"}
    el = node("ScatterElements", [inp(0, "d"), inp(1, "i", "int64"), inp(2, "u")],
              attrs={"reduction": "add"}, opset=16)
    assert keys("trt8.2", el) == {"scatter.reduction_ignored"}
    f = only("trt10.16", el)
    assert (f.kind, f.limitation) == ("plugin", "plugin.standard_library")
    assert "init_libnvinfer_plugins" in f.advice


def test_cast_layernorm_range():
    cast = node("Cast", [inp(0, "x")], attrs={"to": TensorProto.BOOL}, outputs=("bool",))
    assert keys("trt8.4", cast) == {"cast.to_bool"} and keys("trt8.5", cast) == set()
    ln = node("LayerNormalization", [inp(0, "x"), inp(1, "s", weights=True)], opset=17)
    assert keys("trt8.5", ln) == {"layernorm.missing"} and keys("trt8.6", ln) == set()
    ln3 = NodeFacts("/ln", "LayerNormalization", "", 17, {}, (inp(0, "x"),),
                    ("float32", "float32", "float32"), False)
    assert keys("trt10.16", ln3) == {"layernorm.extra_outputs"}
    rng = node("Range", [inp(0, "a", producer="/S", producer_op="Sub"), inp(1, "b", weights=True),
                         inp(2, "c", weights=True)], opset=11)
    assert keys("trt8.2", rng) == {"range.float_not_weights"} and keys("trt8.4", rng) == set()
    rng16 = node("Range", [inp(0, "a", "float16", weights=True), inp(1, "b", "float16", weights=True),
                           inp(2, "c", "float16", weights=True)], opset=11)
    assert keys("trt10.16", rng16) == {"range.dtype"}


def test_cumsum():
    n = node("CumSum", [inp(0, "x"), inp(1, "axis", "int64", producer="/G", producer_op="Gather")],
             opset=11)
    assert keys("trt7.2", n) == {"cumsum.missing"}
    assert keys("trt8.0", n) == keys("trt10.16", n) == {"cumsum.axis_not_weights"}


def test_export_repairs():
    pool = node("MaxPool", [inp(0, "x", shape=(3, 8, 8))], attrs={"kernel_shape": [2, 2]})
    f = only("trt10.16", pool)
    assert f.limitation == "maxpool.unbatched" and "rank 3" in f.reason
    assert keys("trt10.16", node("MaxPool", [inp(0, "x", shape=(1, 3, 8, 8))],
                                 attrs={"kernel_shape": [2, 2]})) == set()
    eye = node("EyeLike", [inp(0, "x")], attrs={"dtype": TensorProto.BOOL}, outputs=("bool",))
    assert keys("trt10.16", eye) == {"eyelike.bool"}


# ---------------------------------------------------------------------------------- custom ops
def test_unknown_op():
    n = node("MyFancyOp", [inp(0, "x")], domain="com.acme")
    f = only("trt10.16", n)
    assert (f.kind, f.limitation) == ("unsupported", "custom_op.unknown")
    assert 'no importer for op "MyFancyOp" (domain "com.acme")' in f.reason
    assert keys("portable", n) == {"custom_op.unknown"}


def test_standard_op_without_importer():
    f = only("trt10.16", node("Unique", [inp(0, "x")], opset=11))
    assert f.limitation == "op.missing"
    assert keys("trt7.2", node("GatherND", [inp(0, "x"), inp(1, "i", "int64")], opset=11)) == \
        {"op.missing"}
    # com.microsoft Attention before 10.14: no importer of that name at all.
    assert keys("trt10.13", node("Attention", [inp(0, "x")], domain="com.microsoft")) == \
        {"custom_op.unknown"}


def test_plugin_nodes():
    n = node("EfficientNMS_TRT", [inp(0, "b"), inp(1, "s")], domain=TRT_PLUGIN_DOMAIN)
    f = only("trt10.16", n)
    assert (f.kind, f.limitation) == ("plugin", "plugin.standard_library")
    assert "init_libnvinfer_plugins" in f.advice
    assert "itself" in only("trt8.6", n).advice
    assert keys("trt7.2", n) == {"custom_op.unknown"}
    v2 = node("ROIAlign_TRT", [inp(0, "x"), inp(1, "r"), inp(2, "i", "int32")],
              attrs={"plugin_version": "2"}, domain=TRT_PLUGIN_DOMAIN)
    assert keys("trt10.1", v2) == {"plugin.standard_library"}
    f = only("trt10.0", v2)
    assert f.limitation == "custom_op.unknown" and "version 2" in f.reason


def test_mmcv_ops():
    gs = node("grid_sampler", [inp(0, "x"), inp(1, "g")], domain="mmdeploy",
              attrs={"interpolation_mode": 0, "padding_mode": 0, "align_corners": 0})
    assert keys("trt8.5", gs) == {"custom_op.mmcv_grid_sampler"}
    assert keys("trt8.4", gs) == {"custom_op.unknown"}
    ra = node("MMCVRoiAlign", [inp(0, "x"), inp(1, "rois")], domain="mmdeploy")
    assert keys("trt10.16", ra) == {"custom_op.mmcv_roialign"}


# ---------------------------------------------------------------------------------- model level
def test_evaluate_model():
    f, = resolve_target("trt8.6").evaluate_model(18)
    assert (f.kind, f.limitation) == ("silent", "opset.above_declared_range")
    assert "18" in f.reason and "7-17" in f.reason
    assert resolve_target("trt10.16").evaluate_model(18) == []
    clamped = resolve_target("trt8.6").evaluate_model(17, [("ends", ["Slice /Slice_2"])])
    assert [c.limitation for c in clamped] == ["int64.clamped"]
    assert "ends" in clamped[0].reason and "Slice /Slice_2" in clamped[0].reason
    assert resolve_target("trt10.0").evaluate_model(17, [("ends", ["Slice /Slice_2"])]) == []
    portable = {f.limitation for f in resolve_target("portable").evaluate_model(13, [("e", [])])}
    assert portable == {"opset.above_declared_range", "int64.clamped"}


def test_portable_reasons_name_the_releases():
    f = only("portable", node("Clip", CLIP_COMPUTED_MAX, opset=13))
    assert f.reason.endswith("[7.2, 8.0]")


# ---------------------------------------------------------------------------------- plugin domain
def test_plugin_domain_passes_full_check():
    n = helper.make_node("EfficientNMS_TRT", ["boxes", "scores"],
                         ["num", "det_boxes", "det_scores", "det_classes"], name="nms",
                         domain=TRT_PLUGIN_DOMAIN, score_threshold=0.25, iou_threshold=0.45,
                         max_output_boxes=100, background_class=-1, score_activation=0,
                         box_coding=0, **T.TRT_PLUGIN_NODE_ATTRS)
    g = helper.make_graph(
        [n], "g",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 10, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 10, 3])],
        [helper.make_tensor_value_info("num", TensorProto.INT32, [1, 1]),
         helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [1, 100, 4]),
         helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, [1, 100]),
         helper.make_tensor_value_info("det_classes", TensorProto.INT32, [1, 100])])
    model = helper.make_model(g, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid(TRT_PLUGIN_DOMAIN,
                                                         TRT_PLUGIN_DOMAIN_VERSION)])
    onnx.checker.check_model(model, full_check=True)
    # The default domain is rejected, which is why plugin nodes get a domain of their own.
    model.graph.node[0].domain = ""
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model, full_check=True)


def test_targets_module_imports_nothing_from_graphfix():
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(T))
    mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.startswith("graphfix") for m in mods)
    assert mods <= {"__future__", "functools", "re", "collections.abc", "dataclasses", "types", "typing",
                    "numpy"}
