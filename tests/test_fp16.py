"""`graphfix fp16-guard`: flags, the emulation against real FP16 storage, the mixed model, flags for TensorRT."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, graphfix_cli, parse

from graphfix import execute, fp16, targets
from graphfix.bisect import compare_to_scale
from graphfix.fp16 import FP16_TOLERANCE, KIND_OVERFLOW, KIND_PRECISION, KIND_READS_OVERFLOW, KIND_UNDERFLOW

SAMPLE = SAMPLES / "fp16_overflow.onnx"
ATTENTION_AND_BOX_AREA = ("/Einsum", "/Div", "/Softmax", "/Mul_4", "/Sqrt")


def _data(stem: str) -> np.lib.npyio.NpzFile:
    return np.load(SAMPLES / f"{stem}.npz")


def _feeds(stem: str) -> dict[str, np.ndarray]:
    data = _data(stem)
    return {k.removeprefix("input:"): data[k] for k in data.files if k.startswith("input:")}


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(SAMPLE)


@pytest.fixture(scope="module")
def guarded(model) -> fp16.Guarded:
    return fp16.guard(model, [_feeds("fp16_overflow")], target=targets.resolve_target("trt10.16"), model_path=str(SAMPLE))


def _flags(report: fp16.GuardReport) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for flag in report.flags:
        found.setdefault(flag.node, set()).add(flag.kind)
    return found


def _node_by_node(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of `model` run one node per onnxruntime session, so that every tensor is stored in
    its own dtype between nodes (FP16 really stored as float16), without graphfix's emulation."""
    return execute.evaluate(execute.Program.from_model(model), feeds, [o.name for o in model.graph.output], chunk_nodes=1)


def test_guard_flags_the_overflowing_attention_logits_and_box_areas(guarded):
    report, data = guarded.report, _data("fp16_overflow")
    assert _flags(report) == {
        "/Einsum": {KIND_OVERFLOW},  # pre-softmax logits: 2.5e5
        "/Div": {KIND_OVERFLOW, KIND_READS_OVERFLOW},  # logits / sqrt(32): 4.5e4 > 65504 x 0.5
        "/Softmax": {KIND_READS_OVERFLOW},
        "/Mul_4": {KIND_OVERFLOW},  # box area in pixels: 1.7e5
        "/Sqrt": {KIND_READS_OVERFLOW},
    }
    measured = {f.tensor: f.value for f in report.flags if f.kind == KIND_OVERFLOW}
    for tensor in ("/Einsum_output_0", "/Mul_4_output_0"):  # what the export script measured
        assert measured[tensor] == pytest.approx(float(data[f"fp32_absmax:{tensor.replace('/', '|')}"]), rel=1e-5)
    assert report.fp32_nodes == ATTENTION_AND_BOX_AREA and report.search == ()
    assert report.threshold == 65504 * 0.5 and report.convertible == 71


def test_the_margin_moves_the_threshold(model):
    report = fp16.guard(model, [_feeds("fp16_overflow")], margin=1.0).report
    assert _flags(report)["/Div"] == {KIND_READS_OVERFLOW}  # 4.5e4 fits below 65504
    assert report.fp32_nodes == ATTENTION_AND_BOX_AREA


def test_the_mixed_model_matches_fp32_where_the_naive_conversion_gives_nan(guarded, model):
    report, feeds = guarded.report, _feeds("fp16_overflow")
    assert report.mixed_ok and all(c.ok for c in report.mixed)
    assert all(not c.ok and "NaN" in c.reason for c in report.naive)
    assert [c.tensor for c in report.mixed] == ["scores", "boxes", "box_scale"]
    assert max(c.max_abs for c in report.mixed if c.tensor == "boxes") < 2.0  # pixels of a 1024 px image
    # Without graphfix's emulation: each node its own onnxruntime session, tensors stored in float16.
    reference = execute.run_model(model, feeds)
    naive_model = fp16.to_fp16(model, feeds)
    mixed, naive = _node_by_node(guarded.mixed, feeds), _node_by_node(naive_model, feeds)
    exported_naive = _data("fp16_overflow")  # the export script's own node-by-node run
    for name, expected in reference.items():
        assert np.isfinite(mixed[name]).all()
        assert compare_to_scale(name, mixed[name], expected, FP16_TOLERANCE).ok
        assert np.isnan(naive[name]).any() and not np.isfinite(exported_naive[f"fp16_naive:{name}"].astype(np.float32)).all()
    # ... and the emulation gives exactly what those real float16 tensors give.
    for fp16_model, stored in ((guarded.mixed, mixed), (naive_model, naive)):
        emulated = execute.run_model(fp16.emulate_fp16(fp16_model), feeds)
        for name, values in stored.items():
            np.testing.assert_array_equal(emulated[name], values)


def test_onnxruntime_alone_hides_the_overflow(model):
    """Why the guard emulates: one onnxruntime CPU session runs the naive FP16 model's FP16
    regions in FP32, so its outputs stay finite (if this starts failing, onnxruntime changed)."""
    feeds = _feeds("fp16_overflow")
    outputs = execute.run_model(fp16.to_fp16(model, feeds), feeds)
    assert all(np.isfinite(v).all() for v in outputs.values())


def test_the_mixed_model_is_valid_fp16_with_fp32_islands_and_its_io_types(guarded, model):
    mixed = guarded.mixed
    onnx.checker.check_model(mixed, full_check=True)
    assert [(v.name, v.type.tensor_type.elem_type) for v in mixed.graph.input] == [("image", onnx.TensorProto.FLOAT)]
    assert {v.type.tensor_type.elem_type for v in mixed.graph.output} == {onnx.TensorProto.FLOAT}
    types = {v.name: v.type.tensor_type.elem_type for v in mixed.graph.value_info}
    produced = {n.name: [types.get(o) for o in n.output] for n in mixed.graph.node}
    assert all(produced[name] == [onnx.TensorProto.FLOAT] for name in ATTENTION_AND_BOX_AREA)
    for name in ("/stem/stem.0/Conv", "/q/MatMul", "/Exp", "/norm/LayerNormalization"):
        assert produced[name][0] == onnx.TensorProto.FLOAT16
    assert {n.name for n in mixed.graph.node} >= {n.name for n in model.graph.node if n.op_type != "Constant"}
    weights = {t.name: t.data_type for t in mixed.graph.initializer}
    assert weights["stem.0.weight/fp16"] == onnx.TensorProto.FLOAT16 and "stem.0.weight" not in weights


def test_emulation_rounds_every_stored_tensor_like_float16():
    model = parse("""<ir_version: 8, opset_import: ["" : 17]> g (float[6] x) => (float[6] z) {
        c = Constant <value = float {300.0}> ()
        y = Mul(x, c)
        z = Add(y, y)
    }""")
    x = np.array([1.0001, 200.0, 2e-8, 1e-7, -150.0, 0.5], np.float32)
    got = execute.run_model(fp16.emulated_fp16(model, {"x": x}), {"x": x})["z"]
    with np.errstate(over="ignore"):
        y = (x.astype(np.float16).astype(np.float32) * np.float32(300)).astype(np.float16)
        expected = (y.astype(np.float32) + y.astype(np.float32)).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got, expected)  # storage rounding, 6e4 + 6e4 -> inf, subnormals
    assert np.isinf(got[1]) and got[0] == 600.0 and got[2] == 0.0 and 0 < y[3] < 6.1e-5  # overflow, flushed, subnormal y


def test_values_that_flush_to_zero_before_a_division_are_flagged():
    model = parse("""<ir_version: 8, opset_import: ["" : 17]> g (float[8] x) => (float[8] y) {
        tiny = Constant <value = float {1e-8}> ()
        s = Mul(x, tiny)
        y = Div(x, s)
    }""")
    feeds = {"x": np.linspace(1.0, 2.0, 8, dtype=np.float32)}
    report = fp16.guard(model, [feeds]).report
    flags = {(f.node, f.kind) for f in report.flags}
    assert {("#1 (Mul)", KIND_UNDERFLOW), ("#2 (Div)", KIND_UNDERFLOW), ("#2 (Div)", KIND_OVERFLOW)} <= flags
    assert report.fp32_nodes == ("#1 (Mul)", "#2 (Div)") and report.mixed_ok
    assert not any(c.ok for c in report.naive)
    assert "no ONNX name" in " ".join(fp16.guard(model, [feeds], target=targets.resolve_target("trt10.16")).report.notes)


def test_precision_loss_before_a_softmax_is_flagged_grown_and_kept_minimal():
    model = parse("""<ir_version: 8, opset_import: ["" : 17]> g (float[4, 64] x) => (float[4, 64] p) {
        scale = Constant <value = float {1000.0}> ()
        logits = Mul(x, scale)
        p = Softmax <axis = -1> (logits)
    }""")
    for index, node in enumerate(model.graph.node):
        node.name = f"n{index}_{node.op_type}"
    feeds = {"x": np.random.default_rng(0).uniform(0.99, 1.0, (4, 64)).astype(np.float32)}  # logits 990..1000
    report = fp16.guard(model, [feeds]).report
    assert {(f.node, f.kind) for f in report.flags} == {("n1_Mul", KIND_PRECISION)}  # FP16 spacing 0.5 there
    assert any(step.startswith("grow: + n2_Softmax") for step in report.search)  # it re-rounded them when reading
    assert report.fp32_nodes == ("n1_Mul", "n2_Softmax") and report.mixed_ok
    reference = execute.run_model(model, feeds)["p"]
    for dropped in report.fp32_nodes:  # each node of the set is needed
        kept = [n for n in report.fp32_nodes if n != dropped]
        outputs = execute.run_model(fp16.emulated_fp16(model, feeds, keep_fp32=kept), feeds)
        assert not compare_to_scale("p", outputs["p"], reference, FP16_TOLERANCE).ok


@pytest.mark.parametrize(("target", "flags"), [("trt10.16", True), ("trt8.6", True), ("trt8.4", True), ("trt8.2", False), ("trt11", False)])
def test_weakly_typed_flags_name_the_fp32_nodes(model, target, flags):
    guarded = fp16.guard(model, [_feeds("fp16_overflow")], target=targets.resolve_target(target), model_path=str(SAMPLE))
    report = guarded.report
    if not flags:
        assert report.trtexec == "" and guarded.plan is None
        assert any("no weakly typed build" in note for note in report.notes)
        return
    names = ",".join(f"{n}:fp32" for n in ATTENTION_AND_BOX_AREA)
    assert f"--fp16 --precisionConstraints=obey --layerPrecisions={names} --layerOutputTypes={names}" in report.trtexec
    assert report.trtexec.startswith(f"trtexec --onnx={SAMPLE}")
    assert guarded.plan.layer_precisions == tuple((n, "fp32") for n in ATTENTION_AND_BOX_AREA) == report.layer_precisions
    assert guarded.plan.fp16 and guarded.plan.precision_constraints == "obey"


def test_several_input_sets_flag_what_any_of_them_overflows(model):
    image = _feeds("fp16_overflow")["image"]
    report = fp16.guard(model, [{"image": image * np.float32(0.1)}, {"image": image}]).report
    assert report.input_sets == 2 and report.fp32_nodes == ATTENTION_AND_BOX_AREA and report.mixed_ok
    dim = fp16.guard(model, [{"image": image * np.float32(0.1)}]).report
    assert dim.fp32_nodes == ("/Mul_4", "/Sqrt") and dim.mixed_ok  # a dark image: small logits, same box areas


def test_custom_ops_stay_in_fp32_and_the_guard_still_runs():
    model, feeds = onnx.load(SAMPLES / "mmcv_ops.onnx"), _feeds("mmcv_ops")
    guarded = fp16.guard(model, [feeds])
    custom = [n for n in guarded.mixed.graph.node if n.domain not in ("", "ai.onnx")]
    types = {v.name: v.type.tensor_type.elem_type for v in guarded.mixed.graph.value_info}
    assert custom and all(types.get(name, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for n in custom for name in n.input if name)
    assert guarded.report.mixed_ok


def test_capture_memory_stays_within_a_small_budget():
    """The largest sample ORT runs: 19 MB of intermediates, its largest tensor 1.3 MB."""
    model, feeds = onnx.load(SAMPLES / "deformable_detr_tiny_f32.onnx"), _feeds("deformable_detr_tiny_f32")
    budget = 4 << 20
    report = fp16.guard(model, [feeds], budget=budget, max_steps=2).report
    assert 1 << 20 < report.peak_bytes <= budget and report.budget == budget


# ----------------------------------------------------------------------------- through the CLI


def test_cli_writes_the_mixed_model_the_flags_and_json(tmp_path):
    mixed, report = tmp_path / "mixed.onnx", tmp_path / "report.json"
    result = graphfix_cli("fp16-guard", str(SAMPLE), "--inputs", str(SAMPLES / "fp16_overflow.npz"), "--write-mixed", str(mixed),
                          "--json", str(report), "--target", "trt10.16")
    assert result.returncode == 0, result.stderr
    assert "nodes that break in FP16" in result.stdout and "/Einsum" in result.stdout
    assert "mixed model: within tolerance" in result.stdout and "--layerPrecisions=/Einsum:fp32" in result.stdout
    data = json.loads(report.read_text())
    assert tuple(data["fp32_nodes"]) == ATTENTION_AND_BOX_AREA and data["mixed_ok"] and data["written"] == str(mixed)
    onnx.checker.check_model(str(mixed), full_check=True)


def test_cli_strict_fails_when_the_mixed_model_misses_the_tolerance():
    """maskrcnn_tiny's RPN TopK reorders near-equal scores in FP16: no small FP32 set fixes it."""
    result = graphfix_cli("fp16-guard", str(SAMPLES / "maskrcnn_tiny.onnx"), "--inputs", str(SAMPLES / "maskrcnn_tiny.npz"),
                          "--strict", "--max-steps", "2")
    assert result.returncode == 1 and "NOT within tolerance" in result.stdout and "reorders near-equal values" in result.stdout
    assert result.stderr.startswith("graphfix: error: --strict: the mixed model's outputs miss the tolerance (boxes")
    assert graphfix_cli("fp16-guard", str(SAMPLE), "--inputs", str(SAMPLES / "fp16_overflow.npz"), "--strict").returncode == 0


def test_cli_refuses_bad_usage_in_one_line(tmp_path):
    for args, message in (((str(SAMPLE), "--margin", "0"), "--margin"), ((str(SAMPLE), "--write-mixed", str(SAMPLE)), "overwrite"),
                          ((str(SAMPLE), "--inputs", str(tmp_path / "missing.npz")), "cannot read"),
                          ((str(tmp_path / "missing.onnx"),), "no such file")):
        result = graphfix_cli("fp16-guard", *args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
