"""decompose_einsum: backend cases, SuperGlue/LightGlue/RoFormer samples, targets, random equations.

The property test draws random valid equations and shapes and compares the rewritten model, run
in onnxruntime, with numpy.einsum. It runs GRAPHFIX_EINSUM_EXAMPLES examples (default 200, about
7 s); for a long run: `GRAPHFIX_EINSUM_EXAMPLES=5000 pytest tests/test_decompose_einsum.py -k random`
(about 2 minutes).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from backend import assert_outputs_match, node_cases, onnxruntime_refusal
from conftest import SAMPLES, parse, run, sample_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rulecheck import check_backend_case, op_types, rewrite

import graphfix as gf
from graphfix import ir
from graphfix._loader import builtin_rules
from graphfix.rules.decompose_einsum import parse_equation, plan_einsum

RULE = "decompose_einsum"
EINSUM_CASES = node_cases("test_einsum")
EXAMPLES = int(os.environ.get("GRAPHFIX_EINSUM_EXAMPLES", "200"))


def _einsum_model(
    equation: str, dims: list[list[int | str]], dtype=np.float32, opset: int = 17, output: list[int] | None = None
) -> onnx.ModelProto:
    """One Einsum node over inputs x0, x1, ... with the given (static or symbolic) dims.

    `output`: the declared output shape (as PyTorch writes it), else left to ONNX inference.
    """
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = [onnx.helper.make_tensor_value_info(f"x{i}", elem, d) for i, d in enumerate(dims)]
    node = onnx.helper.make_node("Einsum", [f"x{i}" for i in range(len(dims))], ["y"], equation=equation, name="einsum")
    graph = onnx.helper.make_graph([node], "g", inputs, [onnx.helper.make_tensor_value_info("y", elem, output)])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _declared_output(equation: str, shapes) -> list[int]:
    """The output shape a correct exporter declares (numpy's)."""
    return list(np.einsum(equation, *(np.ones(s) for s in shapes)).shape)


def _feeds(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {f"x{i}": a for i, a in enumerate(arrays)}


def _reference(equation: str, arrays: list[np.ndarray]) -> np.ndarray:
    """numpy.einsum, in float64 for float inputs (the rewrite is compared with the exact sum)."""
    if arrays and arrays[0].dtype.kind == "f":
        return np.einsum(equation, *(a.astype(np.float64) for a in arrays)).astype(arrays[0].dtype)
    return np.einsum(equation, *arrays)


def _assert_matches_numpy(model: onnx.ModelProto, equation: str, arrays: list[np.ndarray]) -> None:
    got = run(model, _feeds(arrays))[0]
    want = _reference(equation, arrays)
    assert got.shape == want.shape and got.dtype == want.dtype
    if want.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want)
    else:
        tight = 1e-12 if want.dtype == np.float64 else 1e-5
        np.testing.assert_allclose(got, want, rtol=tight, atol=tight)


def _uniform(rng: np.random.Generator, shapes, dtype=np.float32) -> list[np.ndarray]:
    return [rng.uniform(-1, 1, s).astype(dtype) for s in shapes]


# ----------------------------------------------------------------------------- backend node tests


@pytest.mark.parametrize("case", EINSUM_CASES, ids=lambda c: c.name)
def test_backend_einsum_cases(case):
    if onnxruntime_refusal(case.model) is None:
        result, report = check_backend_case(case, RULE)
        assert report.passes[0].status == "verified"
    else:  # bfloat16 cases need opset 28 / IR 14: onnx's reference evaluator runs the rewrite
        from onnx.reference import ReferenceEvaluator

        result, report = rewrite(case.model, RULE)
        assert report.passes[0].status == "unverified"  # onnxruntime cannot run the original
        for inputs, expected in case.data_sets:
            feeds = {i.name: v for i, v in zip(result.graph.input, inputs)}
            actual = ReferenceEvaluator(result).run(None, feeds)
            assert_outputs_match([a.astype(np.float32) for a in actual],
                                 [np.asarray(e).astype(np.float32) for e in expected], rtol=1e-2, atol=1e-2)
    assert report.passes[0].matches == 1 and "Einsum" not in op_types(result)


# ----------------------------------------------------------------------------- SuperGlue attention


@pytest.mark.parametrize("equation, dims, ops", [
    ("bdhn,bdhm->bhnm", [[1, 16, 4, "n"], [1, 16, 4, "m"]], ["Transpose", "Transpose", "MatMul"]),
    ("bhnm,bdhm->bdhn", [[1, 4, "n", "m"], [1, 16, 4, "m"]], ["Transpose", "MatMul", "Transpose"]),
    ("bdn,bdm->bnm", [[1, 64, "n"], [1, 64, "m"]], ["Transpose", "MatMul"]),
])
def test_superglue_equations_become_plain_batched_matmuls(equation, dims, ops, rng):
    model = _einsum_model(equation, dims)
    result, report = rewrite(model, RULE)
    assert op_types(result) == ops and report.passes[0].status == "verified"
    for n, m in ((24, 20), (7, 31)):  # the same model at two keypoint counts
        shapes = [[{"n": n, "m": m}.get(d, d) for d in shape] for shape in dims]
        _assert_matches_numpy(result, equation, _uniform(rng, shapes))


# ----------------------------------------------------------------------------- equation forms


@pytest.mark.parametrize("equation, shapes, ops", [
    ("ij,jk", [(2, 3), (3, 4)], ["MatMul"]),  # implicit output
    ("i,i", [(5,), (5,)], ["Unsqueeze", "MatMul", "Squeeze"]),  # dot product (right side [k, 1])
    ("j,ij->i", [(4,), (3, 4)], ["Transpose", "MatMul"]),  # a 1-D left side is MatMul's vector form
    ("i,j->ij", [(2,), (3,)], ["Unsqueeze", "Unsqueeze", "MatMul"]),  # outer product: k = 1
    ("ij,kl->ijkl", [(2, 3), (4, 5)], ["Unsqueeze", "Mul"]),  # MatMul would need 2 Reshapes more
    ("ij->ji", [(3, 4)], ["Transpose"]),
    ("ij->i", [(3, 4)], ["ReduceSum"]),
    ("ij->", [(3, 4)], ["ReduceSum"]),
    ("i,->i", [(3,), ()], ["Mul"]),  # scalars
    (",->", [(), ()], ["Mul"]),
    ("abcd,cdef->abef", [(2, 3, 4, 5), (4, 5, 6, 7)], ["Reshape", "Reshape", "MatMul", "Reshape"]),
    ("ij,ij->ij", [(1, 3), (2, 3)], ["Mul"]),  # size-1 broadcast of a kept label
    ("ij,jk", [(2, 1), (3, 4)], ["Squeeze", "ReduceSum", "Unsqueeze", "Unsqueeze", "MatMul"]),  # summed
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (1, 5, 4, 2)], ["MatMul"]),  # MatMul broadcasts batch dims
    ("..., f -> ... f", [(2, 3), (4,)], ["Unsqueeze", "Unsqueeze", "MatMul"]),
    ("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 6)], ["MatMul", "MatMul"]),  # leading dims broadcast
])
def test_equation_forms(equation, shapes, ops, rng):
    model = _einsum_model(equation, [list(s) for s in shapes], output=_declared_output(equation, shapes))
    result, report = rewrite(model, RULE)
    assert op_types(result) == ops and report.passes[0].status == "verified"
    _assert_matches_numpy(result, equation, _uniform(rng, shapes))


def test_right_matmul_input_is_never_a_vector_so_onnxruntime_fusion_stays_correct(rng):
    # onnxruntime 1.31 at ORT_ENABLE_ALL (the default, used by run()) fuses Transpose -> MatMul
    # and gets the result wrong when MatMul's second input is 1-D; here the Transpose is the model's.
    model = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[5, 4, 3] x, float[4] v) => (float[5, 3] y) {
        xt = Transpose <perm = [0, 2, 1]> (x)
        y = Einsum <equation = "abj,j->ab"> (xt, v)
    }
    """)
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified"
    graph = onnx.shape_inference.infer_shapes(result).graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.value_info, *graph.input]}
    assert all(ranks[n.input[1]] >= 2 for n in graph.node if n.op_type == "MatMul")
    x, v = _uniform(rng, [(5, 4, 3), (4,)])
    np.testing.assert_allclose(run(result, {"x": x, "v": v})[0], np.einsum("ajb,j->ab", x, v), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("equation, dims, sizes", [
    ("ii->i", [["n", "n"]], [{"n": 3}, {"n": 6}]),
    ("bii->bi", [["b", "n", "n"]], [{"b": 2, "n": 3}, {"b": 1, "n": 5}]),
    ("ii", [["n", "n"]], [{"n": 4}, {"n": 1}]),
    ("iij->ji", [[3, 3, "j"]], [{"j": 2}, {"j": 5}]),
    ("iii->i", [["n", "n", "n"]], [{"n": 2}, {"n": 4}]),
    ("...ii->...i", [["a", "b", "n", "n"]], [{"a": 2, "b": 3, "n": 4}, {"a": 1, "b": 2, "n": 2}]),
    ("biij,jcd->bicd", [["b", "i", "i", "j"], ["j", 2, 3]], [{"b": 2, "i": 3, "j": 4}, {"b": 3, "i": 2, "j": 5}]),
])
def test_diagonals_are_gathered_exactly_at_every_size(equation, dims, sizes, rng):
    model = _einsum_model(equation, dims)
    result, report = rewrite(model, RULE)
    assert "Gather" in op_types(result) and report.passes[0].status == "verified"
    for size in sizes:
        arrays = _uniform(rng, [[size.get(d, d) for d in shape] for shape in dims])
        _assert_matches_numpy(result, equation, arrays)


def test_diagonal_copies_elements_so_infinities_off_the_diagonal_do_not_leak():
    # A 0/1 mask would compute inf * 0 = NaN; gathering the diagonal reads only its elements.
    model = _einsum_model("ii->i", [[3, 3]])
    result, _ = rewrite(model, RULE)
    x = np.full((3, 3), np.inf, np.float32)
    np.fill_diagonal(x, [1.0, -2.0, 3.0])
    np.testing.assert_array_equal(run(result, {"x0": x})[0], [1.0, -2.0, 3.0])


def test_uppercase_labels_which_onnxruntime_refuses_are_rewritten_by_numpy_semantics(rng):
    model = _einsum_model("Ab,bC", [[2, 3], [3, 4]])
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "unverified"  # onnxruntime's Einsum refuses uppercase
    assert op_types(result) == ["MatMul"]
    _assert_matches_numpy(result, "Ab,bC", _uniform(rng, [(2, 3), (3, 4)]))


def test_ellipsis_of_different_ranks_broadcasts_as_in_numpy(rng):
    model = _einsum_model("...ij,...jk->...ik", [[2, 1, 3, 4], [5, 4, 2]], output=[2, 5, 3, 2])
    result, _ = rewrite(model, RULE, verify=False)  # onnxruntime's Einsum wants equal ranks
    _assert_matches_numpy(result, "...ij,...jk->...ik", _uniform(rng, [(2, 1, 3, 4), (5, 4, 2)]))


# ----------------------------------------------------------------------------- integers


# Sums up to 2^27 (int32) and 2^47 (int64): past float32's 2^24 and int32's range, below 2^53,
# where onnxruntime's integer ReduceSum (which accumulates in double) stops being exact.
@pytest.mark.parametrize("dtype, high", [(np.int32, 2**12), (np.int64, 2**22)])
def test_integers_use_mul_and_reducesum_and_stay_exact_beyond_float_precision(dtype, high, rng):
    equation, shapes = "bij,bjk->bik", [(2, 3, 8), (2, 8, 4)]
    model = _einsum_model(equation, [list(s) for s in shapes], dtype)
    result, report = rewrite(model, RULE)
    assert "MatMul" not in op_types(result) and {"Mul", "ReduceSum"} <= set(op_types(result))
    assert report.passes[0].status == "verified"
    arrays = [rng.integers(high // 2, high, s).astype(dtype) for s in shapes]
    want = np.einsum(equation, *arrays)
    assert np.abs(want).max() > (2**24 if dtype == np.int32 else 2**32)  # float32 / int32 could not hold them
    np.testing.assert_array_equal(run(result, _feeds(arrays))[0], want)


# ----------------------------------------------------------------------------- dynamic dims


@pytest.mark.parametrize("equation, dims", [
    ("pqrs,rstu->pqtu", [["p", "q", "r", "s"], ["r", "s", "t", "u"]]),
    ("...id,...jd->...ij", [["b", "h", "i", "d"], ["b", "h", "j", "d"]]),
    ("bij,bjk->bik", [["b", "i", "j"], ["b", "j", "k"]]),
    ("ab,bc,cd->ad", [["a", "b"], ["b", "c"], ["c", "d"]]),
])
def test_dynamic_dims_come_from_runtime_shapes(equation, dims, rng):
    model = _einsum_model(equation, dims)
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified"
    for reshape in (n for n in result.graph.node if n.op_type == "Reshape"):
        literal = next((t for t in result.graph.initializer if t.name == reshape.input[1]), None)
        # a constant target may copy (0) or infer (-1) dims, never fix a symbolic one
        assert literal is None or set(onnx.numpy_helper.to_array(literal).tolist()) <= {0, -1}
    for scale in (1, 3):
        sizes = {label: 2 + (ord(label) % 3) * scale for label in "abcdhijkpqrstu"}
        _assert_matches_numpy(result, equation, _uniform(rng, [[sizes[d] for d in shape] for shape in dims]))


# ----------------------------------------------------------------------------- contraction order


def test_contraction_order_keeps_intermediates_small():
    def tree(equation, shapes):
        return plan_einsum(parse_equation(equation, [len(s) for s in shapes]), shapes, integer=False).tree

    # (ij,jk) first would build a 100x100 intermediate; jk,k first keeps a 100-vector.
    assert tree("ij,jk,k->i", [(100, 100), (100, 100), (100,)]) == (0, (1, 2))
    assert tree("ab,bc,cd,d->a", [(2, 64), (64, 64), (64, 64), (64,)]) == (0, (1, (2, 3)))
    assert tree("a,ab,bc,cd->d", [(64,), (64, 64), (64, 64), (64, 2)]) == (((0, 1), 2), 3)


def test_more_operands_than_the_exhaustive_search_take_the_greedy_order(rng):
    equation = "ab,bc,cd,de,ef,fg,gh,hi,ij,j->a"
    shapes = [(3, 4)] + [(4, 4)] * 8 + [(4,)]
    model = _einsum_model(equation, [list(s) for s in shapes])
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified" and op_types(result).count("MatMul") == 9
    _assert_matches_numpy(result, equation, _uniform(rng, shapes))


# ----------------------------------------------------------------------------- targets and near misses


def test_keep_supported_follows_the_target():
    floats = _einsum_model("bdhn,bdhm->bhnm", [[1, 8, 2, "n"], [1, 8, 2, "m"]])
    ints = _einsum_model("bdhn,bdhm->bhnm", [[1, 8, 2, "n"], [1, 8, 2, "m"]], np.int32)
    _, kept = rewrite(floats, RULE, target="trt10.16")
    assert kept.passes[0].matches == 0
    assert kept.passes[0].near_misses[0][2] == "TensorRT 10.16 imports this Einsum as it is (keep_supported)"
    _, refused = rewrite(ints, RULE, target="trt10.16")  # 10.12+ refuses integer operands
    assert refused.passes[0].matches == 1
    _, forced = rewrite(floats, RULE, target="trt10.16", rule_options=(f"{RULE}.keep_supported=false",))
    assert forced.passes[0].matches == 1
    for target in ("trt8.0", "portable"):  # no importer on 8.0; portable includes 7.2 and 8.0
        assert rewrite(floats, RULE, target=target)[1].passes[0].matches == 1


def test_without_a_target_everything_is_decomposed():
    model = ir.from_proto(_einsum_model("ij,jk->ik", [[2, 3], [3, 4]]))
    rule = next(r for r in builtin_rules() if r.name == RULE)
    reports = gf.PassManager([gf.RulePass([rule])], target=None).run(model)
    assert reports[0].matches == 1 and "Einsum" not in op_types(ir.to_proto(model))


def test_near_misses_say_why():
    unknown_rank = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[12] x, int64[r] s, float[3, 4] w) => (float[a, b] y) {
        x_s = Reshape(x, s)
        y = Einsum <equation = "...j,jk->...k"> (x_s, w)
    }
    """)
    _, report = rewrite(unknown_rank, RULE, verify=False)
    assert report.passes[0].near_misses[0][2] == (
        "equation '...j,jk->...k': the rank of operand 0 is unknown, so its ellipsis is too")
    # ONNX's Einsum inference gives y the first operand's dim 1 where broadcasting makes it 2.
    mistyped = _einsum_model("ij,ij->ij", [[1, 3], [2, 3]])
    _, report = rewrite(mistyped, RULE)
    reason = report.passes[0].near_misses[0][2]
    assert reason.startswith("the model types the output [1, 3] but broadcasting makes it [2, 3]")
    # ... or a static 1 where the broadcast dim is dynamic
    guessed = _einsum_model("aab,ab->ba", [[1, 1, 1], ["n", 1]], output=[None, None])
    _, report = rewrite(guessed, RULE)
    assert report.passes[0].near_misses[0][2].startswith(
        "the model types the output [1, 1] but broadcasting makes it [1, ?]")
    ellipsis = _einsum_model("...i,...i->...", [[1, 3], ["e", 3]], output=["e"])  # inference: 1, not e
    _, report = rewrite(ellipsis, RULE)
    assert report.passes[0].near_misses[0][2].startswith("the model types the output [1] but broadcasting makes it [?]")
    empty = _einsum_model("ij,jk->ik", [[2, 0], [0, 4]])
    _, report = rewrite(empty, RULE)
    assert report.passes[0].near_misses[0][2] == "an operand has a zero-size dim: nothing to contract"


# ----------------------------------------------------------------------------- samples


@pytest.mark.parametrize("sample, einsums, target, keeping", [
    # 16 attention einsums + the final descriptor product; 8.0 has no Einsum, 8.2+ take these
    ("superglue_attention", 17, "trt8.0", "trt8.2"),
    ("kornia_lightglue", 10, "trt8.0", "trt8.2"),
    # ellipsis: refused by 8.2-8.6, rewritten by the 10.x parser itself
    ("einsum_ellipsis", 8, "trt8.6", "trt10.0"),
])
def test_samples_lose_every_einsum_and_match_torch(sample, einsums, target, keeping):
    model = onnx.load(SAMPLES / f"{sample}.onnx")
    assert op_types(model).count("Einsum") == einsums
    _, kept = rewrite(model, RULE, target=keeping, verify=False)
    assert kept.passes[0].matches == 0 and "imports this Einsum as it is" in kept.passes[0].near_misses[0][2]
    result, report = rewrite(model, RULE, target=target)
    assert report.passes[0].matches == einsums and report.passes[0].status == "verified"
    assert "Einsum" not in op_types(result)
    feeds, data = sample_data(sample)
    for output, value in zip(result.graph.output, run(result, feeds)):
        expected = data[f"torch:{output.name}"]
        if expected.dtype.kind in "iub":
            np.testing.assert_array_equal(value, expected)
        else:
            np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4)
    _, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0  # idempotent


def test_superglue_sample_attention_is_transpose_and_matmul_only():
    model = onnx.load(SAMPLES / "superglue_attention.onnx")
    _, report = rewrite(model, RULE)
    forms = {r.added_ops for r in report.passes[0].rewrites}
    assert forms == {
        ("Transpose", "Transpose", "MatMul"),  # bdhn,bdhm->bhnm
        ("Transpose", "MatMul", "Transpose"),  # bhnm,bdhm->bdhn
        ("Transpose", "MatMul"),  # bdn,bdm->bnm
    }


# ----------------------------------------------------------------------------- random equations


@st.composite
def einsum_cases(draw):
    """A valid equation, its operand dims (static or symbolic), concrete shapes, dtype and opset.

    Operands may repeat labels (diagonals), hold an ellipsis of any width up to the widest and
    a size 1 where other operands have more (broadcasting). With symbolic dims, size-1
    broadcasting is drawn for summed labels only: for a kept label or an ellipsis dim, ONNX's
    Einsum inference may type the output with the broadcast 1, and the rule leaves such a node
    alone (see test_near_misses_say_why).
    """
    pool = draw(st.lists(st.sampled_from("abcdefgXY"), min_size=1, max_size=5, unique=True))
    size = {label: draw(st.integers(1, 4)) for label in pool}
    ellipsis = draw(st.lists(st.integers(1, 3), max_size=2)) if draw(st.booleans()) else None
    dynamic = draw(st.booleans())
    terms = []  # per operand: labels, those broadcast as 1, ("..." position, [(dim, broadcast)])
    for _ in range(draw(st.integers(1, 4))):
        labels = draw(st.lists(st.sampled_from(pool), max_size=3))
        broadcast = {l for l in labels if draw(st.integers(0, 5)) == 0}
        dots = None
        if ellipsis is not None and draw(st.booleans()):
            width = draw(st.integers(0, len(ellipsis)))
            own = [(len(ellipsis) - width + k, draw(st.integers(0, 4)) == 0) for k in range(width)]
            dots = (draw(st.integers(0, len(labels))), own)
        terms.append((labels, broadcast, dots))
    equation = ",".join(
        "".join(labels[:dots[0]]) + "..." + "".join(labels[dots[0]:]) if dots else "".join(labels)
        for labels, _, dots in terms
    )
    letters = [l for labels, _, _ in terms for l in labels]
    if draw(st.booleans()):  # explicit output: any subset of the labels, in any order
        output = draw(st.permutations(sorted(set(letters))))[: draw(st.integers(0, len(set(letters))))]
        if "..." in equation:
            output.insert(draw(st.integers(0, len(output))), "...")
        equation += "->" + "".join(output)
    else:
        output = [l for l in set(letters) if letters.count(l) == 1]
    dims, shapes = [], []
    for labels, broadcast, dots in terms:
        if dynamic:
            broadcast = broadcast - set(output)
        term_dims = [1 if l in broadcast else (f"n{l}" if dynamic else size[l]) for l in labels]
        term_shape = [1 if l in broadcast else size[l] for l in labels]
        if dots:
            at, own = dots
            own = [(k, broadcast_one and not dynamic) for k, broadcast_one in own]
            term_dims[at:at] = [1 if one else (f"e{k}" if dynamic else ellipsis[k]) for k, one in own]
            term_shape[at:at] = [1 if one else ellipsis[k] for k, one in own]
        dims.append(term_dims)
        shapes.append(term_shape)
    dtype = draw(st.sampled_from([np.float64, np.float32, np.int32, np.int64]))
    opset = draw(st.sampled_from([12, 13, 18]))
    return equation, dims, shapes, dtype, opset


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=einsum_cases(), seed=st.integers(0, 2**16))
def test_random_equations_match_numpy_einsum(case, seed):
    equation, dims, shapes, dtype, opset = case
    declared = _declared_output(equation, shapes)
    if any(isinstance(d, str) for shape in dims for d in shape):
        declared = [None] * len(declared)  # symbolic inputs: the rank only
    model = _einsum_model(equation, dims, dtype, opset, output=declared)
    result, report = rewrite(model, RULE, verify=False)  # numpy is the oracle here
    assert report.passes[0].matches == 1 and "Einsum" not in op_types(result)
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        arrays = _uniform(rng, shapes, dtype)
    else:
        arrays = [rng.integers(-8, 8, s).astype(dtype) for s in shapes]
    _assert_matches_numpy(result, equation, arrays)
