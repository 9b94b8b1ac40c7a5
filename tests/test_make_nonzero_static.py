"""make_nonzero_static: both x[mask] spellings into TopK, where equality holds, near misses, hf_superpoint."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, parse, run
from rulecheck import op_types, rewrite

RULE = "make_nonzero_static"


def _gathernd_topk(dtype: str = "float", largest: int = 1, k: str = "k = Constant <value = int64[1] {5}> ()",
                   sorted_: int = 1, topk_axis: int = 0) -> onnx.ModelProto:
    """values, indices = torch.topk(x[mask], 5) with a 2-D mask over x's leading dims."""
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g ({dtype}[h, w, 3] x, bool[h, w] mask) => ({dtype}[a, b] values, int64[a, b] indices) {{
        found = NonZero(mask)
        index = Transpose <perm = [1, 0]> (found)
        selected = GatherND(x, index)
        {k}
        values, indices = TopK <axis = {topk_axis}, largest = {largest}, sorted = {sorted_}> (selected, k)
    }}
    """)


_SQUEEZE = "axes = Constant <value = int64[1] {0}> ()\n        index = Squeeze(found, axes)"


def _gather_topk(flatten: str = _SQUEEZE) -> onnx.ModelProto:
    """values, indices = x[:, torch.where(keep)[0]].topk(4, dim=1) with a 1-D mask on axis 1."""
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, n] x, float[n] score) => (float[2, 4] values, int64[2, 4] indices) {{
        threshold = Constant <value = float {{0.2}}> ()
        keep = Greater(score, threshold)
        found = NonZero(keep)
        {flatten}
        selected = Gather <axis = 1> (x, index)
        k = Constant <value = int64[1] {{4}}> ()
        values, indices = TopK <axis = 1> (selected, k)
    }}
    """)


def _assert_same(model, result, feeds):
    for expected, actual in zip(run(model, feeds), run(result, feeds)):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("dtype, np_dtype, largest", [
    ("float", np.float32, 1), ("float", np.float32, 0), ("int32", np.int32, 1), ("int64", np.int64, 0),
])
def test_masked_select_then_topk_becomes_static_and_equal(dtype, np_dtype, largest, rng):
    model = _gathernd_topk(dtype, largest)
    result, report = rewrite(model, RULE)
    assert "NonZero" not in op_types(result) and "GatherND" not in op_types(result)
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    for h, w in ((4, 6), (9, 3), (2, 5)):
        x = rng.integers(-4, 5, (h, w, 3)).astype(np_dtype)  # many ties: the tie-break must agree
        mask = rng.random((h, w)) < 0.6
        mask.flat[:5] = True  # at least K selected, else the original TopK fails
        _assert_same(model, result, {"x": x, "mask": mask})
    _, again = rewrite(result, RULE)
    assert again.passes[0].matches == 0


def test_one_dimensional_where_then_gather_on_another_axis(rng):
    model = _gather_topk()
    result, report = rewrite(model, RULE)
    assert "NonZero" not in op_types(result) and report.passes[0].status == "verified"
    for n in (6, 40):
        score = rng.random(n).astype(np.float32)
        score[:4] = 0.9
        _assert_same(model, result, {"x": rng.standard_normal((2, n)).astype(np.float32), "score": score})


def test_original_fails_exactly_where_the_static_form_would_differ(rng):
    model = _gathernd_topk()
    result, _ = rewrite(model, RULE)
    feeds = {"x": rng.standard_normal((3, 3, 3)).astype(np.float32), "mask": np.eye(3, dtype=bool)}
    with pytest.raises(Exception, match="TopK|k"):  # 3 selected < K = 5: onnxruntime refuses
        run(model, feeds)
    assert run(result, feeds)[0].shape == (5, 3)  # fill values (-inf) fill the missing places


def test_unused_indices_are_not_computed():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[n] x) => (float[2] values) {
        zero = Constant <value = float {0}> ()
        positive = Greater(x, zero)
        found = NonZero(positive)
        index = Transpose <perm = [1, 0]> (found)
        selected = GatherND(x, index)
        k = Constant <value = int64[1] {2}> ()
        values, unused = TopK(selected, k)
    }
    """)
    result, _ = rewrite(model, RULE)
    assert "ReduceSum" not in op_types(result)
    x = np.array([3.0, -1.0, 2.0, 5.0, -7.0], np.float32)
    _assert_same(model, result, {"x": x})


def test_k_computed_from_constants_is_folded():
    model = _gathernd_topk(k="count = Constant <value = int64[1] {5}> ()\n        k = Abs(count)")
    result, report = rewrite(model, RULE)
    assert report.passes[0].matches == 1 and "NonZero" not in op_types(result)


@pytest.mark.parametrize("model, reason", [
    (lambda: _gathernd_topk(sorted_=0), "TopK sorted=0 leaves the order unspecified: no equality to prove"),
    (lambda: _gathernd_topk(k="k = Constant <value = int64[1] {2}> ()", topk_axis=1),
     "TopK reduces axis 1, not the selected axis 0"),
    (lambda: _gather_topk("shape = Constant <value = int64[1] {-1}> ()\n        index = Reshape(found, shape)"),
     "Gather's indices are not Squeeze(NonZero(mask), axes=[0])"),
])
def test_near_misses(model, reason):
    result, report = rewrite(model(), RULE, verify=False)
    assert report.passes[0].matches == 0 and report.passes[0].near_misses[0][2] == reason
    assert "NonZero" in op_types(result)


def test_runtime_k_is_a_near_miss():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[n] x, int64[1] k) => (float[m] values) {
        zero = Constant <value = float {0}> ()
        positive = Greater(x, zero)
        found = NonZero(positive)
        index = Transpose <perm = [1, 0]> (found)
        selected = GatherND(x, index)
        values, indices = TopK(selected, k)
    }
    """)
    _, report = rewrite(model, RULE)
    reason = report.passes[0].near_misses[0][2]
    assert reason == "TopK's K is computed at run time: a static form needs a constant count"


def test_superpoint_top_k_keypoints_lose_one_of_three_nonzeros(rng):
    """transformers' SuperPoint: nonzero(scores > t) -> border filter -> scores[mask].topk(K).

    The last selection feeds TopK(K = max_keypoints) and becomes static; the first two feed
    coordinate arithmetic and a second selection (variable length, no fixed-size consumer), so
    they stay, and fold_nonzero names them.
    """
    model, _ = rewrite(onnx.load(SAMPLES / "hf_superpoint.onnx"), "batch_unbatched_pooling")  # valid ONNX first
    data = np.load(SAMPLES / "hf_superpoint.npz")
    result, report = rewrite(model, RULE)
    assert op_types(model).count("NonZero") == 3 and op_types(result).count("NonZero") == 2
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    for output, value in zip(result.graph.output, run(result, {"pixel_values": data["input:pixel_values"]})):
        np.testing.assert_allclose(value, data[f"torch:{output.name}"], rtol=1e-5, atol=1e-6)
    image = rng.random((1, 1, 64, 64)).astype(np.float32).repeat(3, axis=1)
    _assert_same(model, result, {"pixel_values": image})


def test_mask_smaller_than_x_indexes_from_its_start(rng):
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[h, w, 3] x, bool[a, b] mask) => (float[k, 3] values, int64[k, 3] indices) {
        found = NonZero(mask)
        index = Transpose <perm = [1, 0]> (found)
        selected = GatherND(x, index)
        k = Constant <value = int64[1] {4}> ()
        values, indices = TopK <axis = 0> (selected, k)
    }
    """)
    result, report = rewrite(model, RULE)
    assert "Slice" in op_types(result) and report.passes[0].status == "verified"
    mask = rng.random((3, 4)) < 0.5
    mask[0, :] = True
    _assert_same(model, result, {"x": rng.standard_normal((5, 6, 3)).astype(np.float32), "mask": mask})
