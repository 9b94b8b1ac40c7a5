"""Build plans, shape specs and trtexec command lines per TensorRT release."""

from __future__ import annotations

import ast
import inspect

import pytest

from graphfix import trt as R
from graphfix.targets import resolve_target
from graphfix.trt import (
    InputSpec,
    PlanError,
    ShapeRange,
    default_profile,
    format_command,
    make_plan,
    parse_shape_range,
    parse_shape_spec,
    trtexec_argv,
)

IMAGES = [InputSpec("images", "float32", ("batch", 3, 640, 640))]
SHAPES = ["--minShapes=images:1x3x640x640", "--optShapes=images:1x3x640x640",
          "--maxShapes=images:8x3x640x640"]


def argv(target, inputs=IMAGES, **kw):
    t = resolve_target(target)
    return trtexec_argv(make_plan("m.onnx", inputs, t, **kw), t)


# ---------------------------------------------------------------------------------- shape specs
def test_parse_shape_spec():
    assert parse_shape_spec("images:1x3x224x224") == ShapeRange.fixed("images", (1, 3, 224, 224))
    assert parse_shape_spec("input:0:1x3") == ShapeRange.fixed("input:0", (1, 3))
    assert parse_shape_spec("'input:0':1x3") == ShapeRange.fixed("input:0", (1, 3))
    assert parse_shape_spec("scale:") == ShapeRange.fixed("scale", ())
    assert parse_shape_spec("scale:scalar") == ShapeRange.fixed("scale", ())
    for bad in ("images", ":1x3", "images:1x3x", "images:ax3"):
        with pytest.raises(PlanError):
            parse_shape_spec(bad)


def test_parse_shape_range():
    r = parse_shape_range("name:1x3x224x224:4x3x224x224:8x3x224x224")
    assert (r.name, r.min, r.opt, r.max) == ("name", (1, 3, 224, 224), (4, 3, 224, 224),
                                              (8, 3, 224, 224))
    assert parse_shape_range("name:1x3") == ShapeRange.fixed("name", (1, 3))
    q = parse_shape_range("'in:0':1x3:2x3:4x3")
    assert (q.name, q.min, q.max) == ("in:0", (1, 3), (4, 3))
    assert parse_shape_range("in:0:1x3:2x3:4x3").name == "in:0"
    with pytest.raises(PlanError, match="min <= opt <= max"):
        parse_shape_range("x:4x3:2x3:8x3")
    with pytest.raises(PlanError, match="different ranks"):
        parse_shape_range("x:1x3:2x3x1:8x3")
    with pytest.raises(PlanError):
        parse_shape_range("x:1x3:2x3")


# ---------------------------------------------------------------------------------- profiles
def test_default_profile_symbolic_dims():
    inputs = [InputSpec("input_ids", "int64", ("batch_size", "sequence_length")),
              InputSpec("attention_mask", "int64", ("batch_size", "sequence_length")),
              InputSpec("scale", "float32", (1,))]
    prof = default_profile(inputs, max_batch=4)
    assert prof == (ShapeRange("input_ids", (1, 1), (1, 128), (4, 512)),
                    ShapeRange("attention_mask", (1, 1), (1, 128), (4, 512)))


def test_default_profile_unnamed_dim0_and_overrides_shared_symbols():
    inputs = [InputSpec("x", "float32", (None, 3, "height", "width")),
              InputSpec("y", "float32", ("N", 1, "height", "width"))]
    prof = default_profile(inputs, [parse_shape_range("x:1x3x256x256:2x3x512x512:4x3x1024x1024")],
                           max_batch=8, opt_batch=2)
    assert prof[0] == ShapeRange("x", (1, 3, 256, 256), (2, 3, 512, 512), (4, 3, 1024, 1024))
    # y learns height/width from x's override; N is batch-like.
    assert prof[1] == ShapeRange("y", (1, 1, 256, 256), (2, 1, 512, 512), (8, 1, 1024, 1024))


def test_default_profile_undeterminable_dim():
    inputs = [InputSpec("images", "float32", ("batch", 3, "height", "width"))]
    with pytest.raises(PlanError) as exc:
        default_profile(inputs)
    msg = str(exc.value)
    assert "input 'images' dim 2 ('height') of [batch, 3, height, width]" in msg
    assert "dim 3 ('width')" in msg
    assert "--shapes" in msg and "images:1x3x1x1:Nx3xNxN:Nx3xNxN" in msg


def test_default_profile_override_errors():
    with pytest.raises(PlanError, match="not a model input"):
        default_profile(IMAGES, [ShapeRange.fixed("imgs", (1, 3, 640, 640))])
    with pytest.raises(PlanError, match="static dim 1"):
        default_profile(IMAGES, [ShapeRange.fixed("images", (1, 4, 640, 640))])
    with pytest.raises(PlanError, match="rank 3"):
        default_profile(IMAGES, [ShapeRange.fixed("images", (1, 3, 640))])


def test_static_inputs_have_no_profile():
    assert default_profile([InputSpec("x", "float32", (1, 3, 8, 8))]) == ()
    assert argv("trt10.16", [InputSpec("x", "float32", (1, 3, 8, 8))]) == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=m.trt10.16.engine"]


# ---------------------------------------------------------------------------------- trtexec argv
def test_argv_trt84_dynamic_batch():
    assert argv("trt8.4", fp16=True, workspace_mib=4096) == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=m.trt8.4.engine", *SHAPES, "--fp16",
        "--memPoolSize=workspace:4096"]


def test_argv_trt1016_dynamic_batch():
    assert argv("trt10.16", fp16=True, workspace_mib=4096, plugins=["libmy.so"],
                timing_cache="cache.bin") == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=m.trt10.16.engine", *SHAPES, "--fp16",
        "--memPoolSize=workspace:4096", "--staticPlugins=libmy.so", "--timingCacheFile=cache.bin"]
    assert argv("trt10.16", strongly_typed=True) == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=m.trt10.16.engine", *SHAPES, "--stronglyTyped"]


def test_argv_trt11_strongly_typed():
    assert argv("trt11", workspace_mib=2048) == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=m.trt11.engine", *SHAPES,
        "--memPoolSize=workspace:2048"]
    plan = make_plan("m.onnx", IMAGES, resolve_target("trt11"))
    assert plan.strongly_typed and not plan.explicit_batch
    with pytest.raises(PlanError, match="strongly typed only: there is no --fp16"):
        argv("trt11", fp16=True)


def test_argv_old_releases():
    assert argv("trt7.2", workspace_mib=1024, plugins=["a.so", "b.so"]) == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=m.trt7.2.engine", "--explicitBatch", *SHAPES,
        "--workspace=1024", "--plugins=a.so", "--plugins=b.so"]
    assert argv("trt8.2", workspace_mib=1024) == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=m.trt8.2.engine", *SHAPES, "--workspace=1024"]
    assert "--plugins=a.so" in argv("trt8.5", plugins=["a.so"])
    assert "--staticPlugins=a.so" in argv("trt8.6", plugins=["a.so"])
    with pytest.raises(PlanError, match="timing cache"):
        argv("trt7.2", timing_cache="c.bin")


def test_argv_layer_precisions_trt86():
    cmd = argv("trt8.6", fp16=True, layer_precisions=["/blk0/ln/*:fp32", ("/head/Softmax", "fp32")],
               layer_output_types=["/blk0/ln/*:fp32", "/split:fp32+fp32"])
    assert cmd[-3:] == ["--precisionConstraints=obey",
                        "--layerPrecisions=/blk0/ln/*:fp32,/head/Softmax:fp32",
                        "--layerOutputTypes=/blk0/ln/*:fp32,/split:fp32+fp32"]
    quoted = argv("trt8.6", fp16=True, layer_precisions=[("ns:conv", "fp32")],
                  precision_constraints="prefer")
    assert quoted[-2:] == ["--precisionConstraints=prefer", "--layerPrecisions='ns:conv':fp32"]


def test_layer_precisions_refused_on_trt11_and_82():
    with pytest.raises(PlanError, match="mixed-precision ONNX"):
        make_plan("m.onnx", IMAGES, resolve_target("trt11"), layer_precisions=["/ln:fp32"])
    with pytest.raises(PlanError, match="no --layerPrecisions.*before 8.4.*8.2 has "
                                        "--precisionConstraints only"):
        make_plan("m.onnx", IMAGES, resolve_target("trt8.2"), fp16=True,
                  layer_precisions=["/ln:fp32"])
    with pytest.raises(PlanError, match="strongly typed networks reject per-layer precisions"):
        make_plan("m.onnx", IMAGES, resolve_target("trt10.16"), strongly_typed=True,
                  layer_precisions=["/ln:fp32"])
    with pytest.raises(PlanError, match="'bf16'"):
        make_plan("m.onnx", IMAGES, resolve_target("trt8.6"), fp16=True,
                  layer_precisions=["/ln:bf16"])


def test_plan_validation():
    with pytest.raises(PlanError, match="BF16 exists from TensorRT 9.0"):
        make_plan("m.onnx", IMAGES, resolve_target("trt8.6"), bf16=True)
    assert "--bf16" in argv("trt10.0", bf16=True)
    with pytest.raises(PlanError, match="from 9.0"):
        make_plan("m.onnx", IMAGES, resolve_target("trt8.6"), strongly_typed=True)
    with pytest.raises(PlanError, match="no effect on a strongly typed network"):
        make_plan("m.onnx", IMAGES, resolve_target("trt10.16"), fp16=True, strongly_typed=True)
    with pytest.raises(PlanError, match="pick one"):
        make_plan("m.onnx", IMAGES, resolve_target("portable"))
    with pytest.raises(PlanError, match="tensorrt_rtx"):
        make_plan("m.onnx", IMAGES, resolve_target("trt-rtx"))
    with pytest.raises(PlanError, match="positive"):
        make_plan("m.onnx", IMAGES, resolve_target("trt8.6"), workspace_mib=0)
    plan = make_plan("m.onnx", IMAGES, resolve_target("trt8.6"), int8=True)
    assert any("INT8 without calibration" in w for w in plan.warnings)
    assert "--int8" in trtexec_argv(plan, resolve_target("trt8.6"))
    with pytest.raises(PlanError, match="made for trt8.6"):
        trtexec_argv(plan, resolve_target("trt10.0"))


def test_plan_is_data():
    plan = make_plan("models/m.onnx", IMAGES, resolve_target("10.13"), fp16=True,
                     shapes=["images:1x3x640x640:4x3x640x640:16x3x640x640"])
    assert plan.engine_path == "models/m.trt10.13.engine"
    assert plan.target_version == (10, 13) and not plan.explicit_batch
    assert plan.profiles == ((ShapeRange("images", (1, 3, 640, 640), (4, 3, 640, 640),
                                         (16, 3, 640, 640)),),)
    assert any("deprecated since TensorRT 10.12" in w for w in plan.warnings)
    assert make_plan("m.onnx", IMAGES, resolve_target("trt8.6")).explicit_batch


def test_format_command_quotes():
    assert format_command(["trtexec", "--onnx=my model.onnx", "--layerPrecisions='a:b':fp32"]) == \
        "trtexec '--onnx=my model.onnx' '--layerPrecisions='\"'\"'a:b'\"'\"':fp32'"


def test_run_trtexec_without_trtexec(monkeypatch):
    monkeypatch.setattr(R.shutil, "which", lambda _: None)
    t = resolve_target("trt10.16")
    with pytest.raises(R.TrtexecNotFound) as exc:
        R.run_trtexec(make_plan("m.onnx", IMAGES, t), t)
    assert exc.value.command.startswith("trtexec --onnx=m.onnx --saveEngine=m.trt10.16.engine")


def test_trt_module_is_pure():
    tree = ast.parse(inspect.getsource(R))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    mods = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert "tensorrt" not in mods and not any(m.startswith("graphfix") for m in mods)


# ---------------------------------------------------------------------------------- real TensorRT
@pytest.mark.tensorrt
def test_parse_check_and_build_with_real_tensorrt(tmp_path):
    trt = pytest.importorskip("tensorrt")
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="/relu")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    assert R.parse_check(path) == []
    target = resolve_target(None, installed_version=trt.__version__)
    plan = make_plan(path, [InputSpec("x", "float32", ("batch", 4))], target, max_batch=2)
    assert len(R.build_engine(plan)) > 0
