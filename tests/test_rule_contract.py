"""Every built-in rule: named after its file, documented, known to the targets, tested, sampled."""

from __future__ import annotations

import re

import pytest
from conftest import REPO, SAMPLES

from graphfix import targets
from graphfix._loader import builtin_rules

RULES = builtin_rules()
SAMPLE_STEMS = {p.stem for p in SAMPLES.glob("*.onnx")}


def test_rules_are_found():
    assert RULES, "graphfix.rules must be importable (the mapped rules/ folder)"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_rule_contract(rule):
    module_stem = rule.source.rsplit(".", 1)[-1]
    assert rule.name == module_stem, "one rule per file, named after the file"
    assert rule.summary, "the docstring's first line is the summary"
    assert rule.limitation_text, 'the docstring needs a "TensorRT limitation:" paragraph'
    assert re.search(r"\d+\.\d+", rule.limitation_text), "the limitation names the TensorRT versions"
    unknown = [key for key in rule.limitations if key not in targets.LIMITATIONS]
    assert not unknown, f"limitation keys unknown to graphfix.targets: {unknown}"
    assert rule.limitations, "a built-in rule names the limitation(s) it fixes"
    test_file = REPO / "tests" / f"test_{rule.name}.py"
    assert test_file.is_file(), f"missing {test_file.name}"
    text = test_file.read_text()
    assert any(stem in text for stem in SAMPLE_STEMS), "the rule's test runs a committed sample"
