"""fuse_multiscale_deformable_attention: the DETR samples fuse and match, near misses, targets, the CLI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, graphfix_cli
from onnx import TensorProto, helper
from rulecheck import op_types, rewrite

from graphfix import execute
from graphfix.targets import TRT_PLUGIN_DOMAIN, TRT_PLUGIN_DOMAIN_VERSION

RULE = "fuse_multiscale_deformable_attention"
PLUGIN = "MultiscaleDeformableAttnPlugin_TRT"
HEADS, DEPTH, QUERIES, POINTS = 2, 4, 5, 3
LEVELS = ((3, 4), (2, 2))


def msda_model(*, mode: str = "bilinear", padding: str = "zeros", align_corners: int = 0, batch: int | str = 1,
               stacked: tuple[int, ...] = (0, 1), location_levels: int = len(LEVELS),
               value_flat: list[int] | None = None) -> onnx.ModelProto:
    """transformers' pure-PyTorch multi_scale_deformable_attention as the TorchScript exporter
    writes it (opset 17): per-level Slice/Reshape/Transpose/Reshape, Gather/Transpose/Reshape of
    the grids 2 * loc - 1, GridSample, Unsqueeze + Concat, weighted ReduceSum, Reshape, Transpose.

    `stacked` is the order in which the levels are stacked; `location_levels` the levels the
    locations have (more than are sampled: a level is missing); `value_flat` replaces the
    [N, HW, M*D] reshape target of every level (layout mismatches).
    """
    rows = sum(h * w for h, w in LEVELS)
    nodes, constants = [], {}

    def const(name: str, value) -> str:
        constants[name] = np.asarray(value)
        return name

    def add(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    scaled = add("Mul", ["loc", const("two", np.float32(2))], "scaled")
    grids = add("Sub", [scaled, const("one", np.float32(1))], "grids")
    samples, start = [], 0
    for level, (height, width) in enumerate(LEVELS):
        end = start + height * width
        bounds = [const(f"s{level}", [start]), const(f"e{level}", [end]), const("ax1", [1])]
        part = add("Slice", ["value", *bounds], f"part{level}")
        flat = add("Reshape", [part, const(f"f{level}", value_flat or [0, height * width, -1])], f"flat{level}")
        image = add("Reshape", [add("Transpose", [flat], f"chan{level}", perm=[0, 2, 1]),
                                const(f"i{level}", [-1, DEPTH, height, width])], f"image{level}")
        picked = add("Gather", [grids, const(f"l{level}", np.int64(level))], f"pick{level}", axis=3)
        grid = add("Reshape", [add("Transpose", [picked], f"gt{level}", perm=[0, 2, 1, 3, 4]),
                               const("gshape", [-1, QUERIES, POINTS, 2])], f"grid{level}")
        sampled = add("GridSample", [image, grid], f"sample{level}", mode=mode, padding_mode=padding,
                      align_corners=align_corners)
        samples.append(add("Unsqueeze", [sampled, const("m2", [-2])], f"level{level}"))
        start = end
    stack = add("Concat", [samples[i] for i in stacked], "stack", axis=-2)
    stack_flat = add("Reshape", [stack, const("sf", [-1, DEPTH, QUERIES, len(stacked) * POINTS])], "stack_flat")
    weights = add("Reshape", [add("Transpose", ["weights"], "wt", perm=[0, 2, 1, 3, 4]),
                              const("ws", [-1, 1, QUERIES, len(LEVELS) * POINTS])], "weights_flat")
    total = add("ReduceSum", [add("Mul", [stack_flat, weights], "product"), const("last", [-1])], "total", keepdims=0)
    unflat = add("Reshape", [total, const("us", [-1, HEADS * DEPTH, QUERIES])], "unflat")
    add("Transpose", [unflat], "attended", perm=[0, 2, 1])
    inputs = [
        helper.make_tensor_value_info("value", TensorProto.FLOAT, [batch, rows, HEADS, DEPTH]),
        helper.make_tensor_value_info("loc", TensorProto.FLOAT, [batch, QUERIES, HEADS, location_levels, POINTS, 2]),
        helper.make_tensor_value_info("weights", TensorProto.FLOAT, [batch, QUERIES, HEADS, len(LEVELS), POINTS]),
    ]
    output = helper.make_tensor_value_info("attended", TensorProto.FLOAT, [batch, QUERIES, HEADS * DEPTH])
    graph = helper.make_graph(nodes, "msda", inputs, [output],
                              [onnx.numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def msda_feeds(rng, batch: int = 1) -> dict[str, np.ndarray]:
    """Locations partly outside [0, 1] (zero padding matters), softmax-like weights."""
    rows = sum(h * w for h, w in LEVELS)
    weights = rng.random((batch, QUERIES, HEADS, len(LEVELS), POINTS)).astype(np.float32)
    return {
        "value": rng.standard_normal((batch, rows, HEADS, DEPTH)).astype(np.float32),
        "loc": rng.uniform(-0.2, 1.2, (batch, QUERIES, HEADS, len(LEVELS), POINTS, 2)).astype(np.float32),
        "weights": weights / weights.sum(axis=(3, 4), keepdims=True),
    }


def _assert_close(result, model, feeds, atol: float) -> None:
    expected, actual = execute.run_model(model, feeds), execute.run_model(result, feeds)
    for output in model.graph.output:
        np.testing.assert_allclose(actual[output.name], expected[output.name], rtol=1e-4, atol=atol)


@pytest.mark.parametrize("batch", [1, "n"], ids=["static", "dynamic_batch"])
def test_fuses_into_one_plugin_node_and_matches(batch, rng):
    model = msda_model(batch=batch)
    result, report = rewrite(model, RULE, target="trt8.4")
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    assert op_types(result) == [PLUGIN, "Reshape"]
    [plugin] = [n for n in result.graph.node if n.op_type == PLUGIN]
    assert plugin.domain == TRT_PLUGIN_DOMAIN and not plugin.attribute
    assert onnx.helper.make_opsetid(TRT_PLUGIN_DOMAIN, TRT_PLUGIN_DOMAIN_VERSION) in result.opset_import
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in result.graph.initializer}
    spatial, starts = initializers[plugin.input[1]], initializers[plugin.input[2]]
    assert spatial.dtype == np.int32 and spatial.tolist() == [list(level) for level in LEVELS]
    assert starts.dtype == np.int32 and starts.tolist() == [0, 12]
    for size in (1, 3) if batch == "n" else (1,):
        _assert_close(result, model, msda_feeds(rng, size), atol=1e-5)
    _, again = rewrite(result, RULE, target="trt8.4")
    assert again.passes[0].matches == 0


@pytest.mark.parametrize("target", ["trt7.2", "trt8.0", "trt8.2"])
def test_targets_without_the_plugin_are_refused(target):
    result, report = rewrite(msda_model(), RULE, target=target, verify=False)
    assert report.passes[0].matches == 0 and PLUGIN not in op_types(result)
    label = target.replace("trt", "TensorRT ")
    assert report.passes[0].near_misses[0][2] == f"{label} has no {PLUGIN} plugin (TensorRT >= 8.4 ships it)"


@pytest.mark.parametrize("model, reason", [
    (lambda: msda_model(mode="nearest"),
     "GridSample sample0 has mode='nearest'; the plugin samples with mode='bilinear'"),
    (lambda: msda_model(padding="border"),
     "GridSample sample0 has padding_mode='border'; the plugin samples with padding_mode='zeros'"),
    (lambda: msda_model(align_corners=1),
     "GridSample sample0 has align_corners=1; the plugin samples with align_corners=0"),
    (lambda: msda_model(location_levels=3), "loc has shape [1, 5, 2, 3, 3, 2], the attention needs [1, 5, 2, 2, 3, 2]"),
    (lambda: msda_model(stacked=(1, 0)), "pick1 does not pick level 0 (axis 3) of the grids for stacked level 0"),
    (lambda: msda_model(value_flat=[0, -1, DEPTH]), "flat0 has shape [1, 24, 4], the attention needs [1, 12, 8]"),
])
def test_near_misses_leave_the_subgraph_unfused(model, reason):
    result, report = rewrite(model(), RULE, target="trt8.6", verify=False)
    assert report.passes[0].matches == 0 and "GridSample" in op_types(result)
    assert report.passes[0].near_misses[0][2] == reason


def test_an_intermediate_read_elsewhere_blocks_the_fusion():
    model = msda_model()
    model.graph.output.append(helper.make_tensor_value_info("sample1", TensorProto.FLOAT, None))
    _, report = rewrite(model, RULE, target="trt8.6", verify=False)
    assert report.passes[0].near_misses[0][2] == "sample1 inside the attention is a graph output"


def _sample_feeds(name: str) -> tuple[dict[str, np.ndarray], np.lib.npyio.NpzFile]:
    data = np.load(SAMPLES / f"{name}.npz")
    return {k.removeprefix("input:"): data[k] for k in data.files if k.startswith("input:")}, data


@pytest.mark.parametrize("sample, repairs", [
    ("deformable_detr_tiny_f32", ()),
    ("grounding_dino_tiny_f32", ("compute_eyelike_in_int",)),
    ("deformable_detr_tiny", ("narrow_double_grid",)),
    ("grounding_dino_tiny", ("compute_eyelike_in_int", "narrow_double_grid")),
])
def test_detr_samples_fuse_both_attentions_and_match(sample, repairs):
    """Encoder self-attention and decoder cross-attention: 3 (DETR) / 4 (Grounding DINO) levels."""
    model = onnx.load(SAMPLES / f"{sample}.onnx")
    npz = str(SAMPLES / f"{sample}.npz")
    result, report = rewrite(model, *repairs, RULE, target="trt8.6", inputs=npz)
    fusion = report.passes[-1]
    assert fusion.name == RULE and fusion.matches == 2 and fusion.status == "verified"
    assert fusion.max_abs < 1e-5
    assert "GridSample" not in op_types(result) and op_types(result).count(PLUGIN) == 2
    repaired, _ = rewrite(model, *repairs, verify=False) if repairs else (model, None)
    feeds, data = _sample_feeds(sample)
    _assert_close(result, repaired, feeds, atol=1e-4)
    actual = execute.run_model(result, feeds)
    np.testing.assert_allclose(actual["pred_boxes"], data["torch:pred_boxes"], rtol=1e-4, atol=1e-4)


def test_cli_enable_on_trt86_fuses_and_trt82_refuses(tmp_path):
    source = SAMPLES / "deformable_detr_tiny_f32.onnx"
    fused_path, refused_path = tmp_path / "fused.onnx", tmp_path / "refused.onnx"
    result = graphfix_cli("apply", str(source), "--enable", RULE, "--target", "trt8.6", "-o", str(fused_path),
                          "--inputs", str(SAMPLES / "deformable_detr_tiny_f32.npz"))
    assert result.returncode == 0, result.stderr
    assert RULE in result.stdout and "verified" in result.stdout
    onnx.checker.check_model(str(fused_path), full_check=True)
    assert op_types(onnx.load(fused_path)).count(PLUGIN) == 2
    result = graphfix_cli("apply", str(source), "--enable", RULE, "--target", "trt8.2", "-o", str(refused_path))
    assert result.returncode == 0, result.stderr
    assert PLUGIN not in op_types(onnx.load(refused_path))
    explained = graphfix_cli("explain", str(source), RULE, "--target", "trt8.2")
    assert f"TensorRT 8.2 has no {PLUGIN} plugin" in explained.stdout + explained.stderr
