"""decompose_xor: every backend Xor case, broadcasting, the SuperPoint sample."""

from __future__ import annotations

import onnx
import pytest
from backend import node_cases
from conftest import SAMPLES, assert_matches_torch, sample_data
from rulecheck import check_backend_case, op_types, rewrite

RULE = "decompose_xor"


@pytest.mark.parametrize("case", node_cases("test_xor"), ids=lambda c: c.name)
def test_backend_xor_cases(case):
    result, report = check_backend_case(case, RULE)
    assert "Xor" not in op_types(result) and report.passes[0].status == "verified"
    _, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0


def test_superpoint_head_border_mask():
    model = onnx.load(SAMPLES / "superpoint_head.onnx")
    result, report = rewrite(model, RULE, target="trt8.2")
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    feeds, data = sample_data("superpoint_head")
    assert_matches_torch(result, feeds, data, rtol=1e-4, atol=1e-4)
