"""Passes and the pass manager: apply passes in order, verify them, roll back what changes results.

A pass edits the model through a journal and reports what it did (matches, nodes -/+, time,
and the regions it rewrote). The pass manager applies every pass, then verifies: one reference
run captures the outputs and the tensors at the boundaries of the rewritten regions, each
region is checked locally against them, and one final run compares the outputs. A pass that
changes results is undone (later passes are undone, the pass dropped, later passes applied
again) and blamed by rule, node and tensor. Moving between states is undo/redo of journals,
never a copy of the model. `mode="full"` runs the whole model after every pass instead.
"""

from __future__ import annotations

import functools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from graphfix import execute, ir
from graphfix.driver import DriverResult, NearMiss, Region, apply_rules
from graphfix.errors import RuleError, VerificationError, first_line
from graphfix.report import (
    STATUS_DRY_RUN,
    STATUS_NOT_VERIFIED,
    STATUS_ROLLED_BACK,
    STATUS_UNCHANGED,
    STATUS_UNVERIFIED,
    STATUS_VERIFIED,
    Comparison,
    PassReport,
    RewriteEntry,
    VerificationSummary,
)
from graphfix.rule import Accept, Reject, Rule
from graphfix.verify import Verifier, compare, reference_reads, unordered_outputs

__all__ = ["Pass", "RulePass", "ModelRulePass", "ModelContext", "SimplifyPass", "PassResult", "PassManager"]

logger = logging.getLogger(__name__)


@dataclass
class PassResult:
    """What a pass did; `journal` undoes and redoes it."""

    name: str
    rules: tuple[str, ...]
    journal: ir.Journal
    seconds: float
    driver: DriverResult = field(default_factory=DriverResult)
    whole_graph: bool = False  # no regions: only an end-to-end run verifies it
    opsets: list[Any] = field(default_factory=list)  # the model's opsets its regions were built at
    error: str = ""
    status: str = ""
    detail: str = ""
    max_abs: float = 0.0
    max_rel: float = 0.0

    @property
    def changed(self) -> bool:
        return self.journal.changed

    @property
    def regions(self) -> list[Region]:
        return self.driver.regions

    @property
    def has_reference(self) -> bool:
        return any(r.reference is not None for r in self.regions)

    @property
    def needs_end_to_end(self) -> bool:
        """Parts of the change that only a whole-model run can verify (subgraphs, whole-graph passes)."""
        return self.whole_graph or any(r.in_subgraph for r in self.regions)


class Pass(ABC):
    """A step of the pipeline. Subclasses edit `model.graph` only through `journal`."""

    name: str = "pass"
    rules: tuple[str, ...] = ()

    @abstractmethod
    def apply(self, model: ir.Model, names: ir.NameRegistry, *, target: Any, dry_run: bool) -> PassResult:
        """Run the pass on `model`."""


class RulePass(Pass):
    """Applies one or more rules to a fixpoint (see driver.apply_rules)."""

    def __init__(self, rules: Sequence[Rule], name: str | None = None, max_rounds: int = 10):
        self._rules = list(rules)
        self.rules = tuple(r.name for r in self._rules)
        self.name = name or "+".join(self.rules)
        self.max_rounds = max_rounds

    def apply(self, model: ir.Model, names: ir.NameRegistry, *, target: Any, dry_run: bool) -> PassResult:
        journal = ir.Journal()
        start = time.perf_counter()
        driver = apply_rules(
            model, self._rules, journal, names=names, target=target, max_rounds=self.max_rounds, dry_run=dry_run
        )
        return PassResult(self.name, self.rules, journal, time.perf_counter() - start, driver)


@dataclass
class ModelContext:
    """The `ctx` of whole-model rules: `proto` is exported on first use (a check that can decide
    from `op_types` alone costs no copy of the model)."""

    opset: int
    target: Any
    options: dict[str, Any]
    model: ir.Model = field(repr=False)

    @functools.cached_property
    def proto(self) -> Any:
        """The model as exported before the rule (onnx.ModelProto)."""
        return ir.to_proto(self.model)

    @functools.cached_property
    def op_types(self) -> frozenset[tuple[str, str]]:
        """(domain, op type) of every node, subgraphs included ('' for the default domain)."""
        return frozenset(
            ("" if node.domain in (None, "ai.onnx") else node.domain, node.op)
            for graph in ir.iter_graphs(self.model.graph) for node in graph.nodes
        )

    def weights(self, dtype: Any) -> Iterator[tuple[str, Any]]:
        """(name, values) of every initializer and Constant-node output of a numpy `dtype`,
        loading only those (a check can look at INT64 weights without exporting the model)."""
        seen: set[str] = set()
        for graph in ir.iter_graphs(self.model.graph):
            for node in graph.nodes:
                for tensor in (*node.inputs, *(node.outputs if node.op == "Constant" else ())):
                    if tensor.name in seen or ir.numpy_dtype(tensor) != dtype:
                        continue
                    value = ir.literal_value(tensor)
                    if value is not None:
                        seen.add(tensor.name)
                        yield tensor.name, value

    def node_named(self, op_type: str) -> str:
        """The first node of `op_type`, by name (its first output's for an unnamed node)."""
        node = next(n for g in ir.iter_graphs(self.model.graph) for n in g.nodes if n.op == op_type)
        return node.name or (node.outputs[0].name if node.outputs else "")


class ModelRulePass(Pass):
    """A whole-model rule: check(ctx), then transform(ctx, proto) -> proto, swapped in whole."""

    def __init__(self, rule: Rule):
        self._rule = rule
        self.rules = (rule.name,)
        self.name = rule.name

    def apply(self, model: ir.Model, names: ir.NameRegistry, *, target: Any, dry_run: bool) -> PassResult:
        journal = ir.Journal()
        start = time.perf_counter()
        result = PassResult(self.name, self.rules, journal, 0.0, whole_graph=True)
        rule = self._rule
        ctx = ModelContext(model.opset, target, {**rule.option_defaults, **rule.options}, model)
        verdict = _guarded(rule, "checking", lambda: rule.check_fn(ctx) if rule.check_fn else Accept())
        if isinstance(verdict, Reject) or verdict is False:
            reason = verdict.reason if isinstance(verdict, Reject) else "check returned False"
            result.driver.near_misses[rule.name] = NearMiss(rule.name, "<model>", reason, 1)
        else:
            record = RewriteEntry(rule.name, "<model>", "<model>", (), (), ())
            result.driver.rewrites.append(record)
            values = verdict.values if isinstance(verdict, Accept) else {}
            if not dry_run:
                transformed = _guarded(rule, "transforming", lambda: rule.transform_fn(ctx, ctx.proto, **values))
                journal.swap(model, "graph", ir.import_proto(transformed))
        result.seconds = time.perf_counter() - start
        return result


def _guarded(rule: Rule, stage: str, action: Any) -> Any:
    try:
        return action()
    except Exception as error:  # a rule may raise anything; we name it
        raise RuleError(f"rule {rule.name} raised {type(error).__name__} while {stage} the model: {error}") from error


class SimplifyPass(Pass):
    """onnxsim: constant folding and shape-driven simplification of the whole graph."""

    name = "onnxsim"

    def apply(self, model: ir.Model, names: ir.NameRegistry, *, target: Any, dry_run: bool) -> PassResult:
        journal = ir.Journal()
        start = time.perf_counter()
        result = PassResult(self.name, (), journal, 0.0, whole_graph=True)
        if not dry_run:
            try:
                import onnxsim

                simplified, _ = onnxsim.simplify(ir.to_proto(model), check_n=0)
                journal.swap(model, "graph", ir.import_proto(simplified))
            except Exception as error:  # onnxsim raises plain RuntimeErrors from C++
                result.error = f"onnxsim failed: {first_line(error)}"
        result.seconds = time.perf_counter() - start
        return result


class PassManager:
    """Applies passes in order and verifies them with a `Verifier` hook.

    Args:
        passes: in order.
        verifier: None means no verification (`--no-verify`).
        target: handed to rule checks.
        dry_run: find matches, change nothing.
    """

    def __init__(self, passes: Sequence[Pass], *, verifier: Verifier | None = None, target: Any = None, dry_run: bool = False):
        self.passes = list(passes)
        self.verifier = verifier
        self.target = target
        self.dry_run = dry_run
        self.summary = VerificationSummary(enabled=verifier is not None)

    def run(self, model: ir.Model) -> list[PassReport]:
        """Apply (and verify) every pass; returns one report per pass, in order."""
        self._model = model
        self._names = ir.NameRegistry(model.graph)
        self._results = [self._apply(p) for p in self.passes]
        self._position = len(self._results)
        if self.dry_run:
            for result in self._results:
                result.status = STATUS_DRY_RUN
        elif self.verifier is None:
            for result in self._results:
                result.status = STATUS_NOT_VERIFIED if result.changed else STATUS_UNCHANGED
        else:
            self._verify()
        return [_report(r) for r in self._results]

    # ------------------------------------------------------------------ applying and moving

    def _apply(self, pass_: Pass) -> PassResult:
        result = pass_.apply(self._model, self._names, target=self.target, dry_run=self.dry_run)
        result.opsets = _opsets(self._model)  # a later whole-model rule may change them
        if result.whole_graph and result.changed:
            self._names = ir.NameRegistry(self._model.graph)
        if result.error:
            result.status, result.detail = STATUS_UNVERIFIED, result.error
        return result

    def _goto(self, count: int) -> None:
        """Undo or redo journals until exactly the first `count` passes are applied."""
        while self._position > count:
            self._position -= 1
            self._results[self._position].journal.undo()
        while self._position < count:
            self._results[self._position].journal.redo()
            self._position += 1

    def _roll_back(self, index: int, detail: str, worst: Comparison | None) -> None:
        """Drop pass `index`: undo it and everything after, re-apply the passes after it."""
        self._goto(index)
        failed = self._results[index]
        failed.status, failed.detail = STATUS_ROLLED_BACK, detail
        if worst is not None:
            failed.max_abs, failed.max_rel = worst.max_abs, worst.max_rel
        failed.journal = ir.Journal()  # undone for good: navigation skips it from now on
        logger.warning("rolled back %s: %s", failed.name, detail)
        self._position = index + 1
        for later in range(index + 1, len(self._results)):
            self._results[later] = self._apply(self.passes[later])
            self._position = later + 1

    # ------------------------------------------------------------------ verification

    def _verify(self) -> None:
        start = time.perf_counter()
        if not any(r.changed for r in self._results):
            for result in self._results:
                result.status = result.status or STATUS_UNCHANGED
            return
        reference = self._find_reference()
        if reference is None or not self._verified_by_final_run(reference):
            first = reference
            while first is not None:
                self._goto(len(self._results))
                self._check_regions(first)
                first = self._final_check(reference)
        self._goto(len(self._results))
        self.summary = replace(
            self.summary,
            mode=self.verifier.mode,
            full_runs=self.verifier.full_runs,
            region_checks=self.verifier.region_checks,
            seconds=time.perf_counter() - start,
        )

    def _verified_by_final_run(self, reference: int) -> bool:
        """Incremental mode's common case in one run: the final model, asked for every
        rewritten region's outputs as well, matches the reference on those and on the model
        outputs, and every pass is verified with no local check.

        Anything else (a mismatch, a region output that a later pass removed, a rule with its
        own reference semantics, a run that fails) takes the local way, which pins the blame on
        one region; this run then only cost one more full run.
        """
        if self.verifier.mode != "incremental":
            return False
        later = [r for r in self._results[reference:] if r.changed]
        if any(r.status or r.has_reference for r in later):
            return False
        pairs = [(region, ref, new) for r in later for region in r.regions if not region.in_subgraph
                 for ref, new in region.compare]
        self._goto(len(self._results))
        present = _main_graph_names(self._model.graph)
        if any(new not in present or self.verifier.lookup(ref) is None for _, ref, new in pairs):
            return False
        try:
            final = self.verifier.run(self._model, sorted({new for _, _, new in pairs}))
        except execute.NotRunnable:
            return False
        outputs = self.verifier.compare_outputs(final, self._reference_outputs, self._unordered)
        regions: dict[int, list[Comparison]] = {}
        for region, ref, new in pairs:
            found = compare(ref, final[new], self.verifier.lookup(ref), self.verifier.tolerance,
                            unordered_rows=ref in region.unordered)
            regions.setdefault(id(region), []).append(found)
        if not all(c.ok for c in outputs + [c for found in regions.values() for c in found]):
            return False
        for result in self._results[reference:]:
            if not result.changed:
                result.status = result.status or STATUS_UNCHANGED
                continue
            found = [c for region in result.regions for c in regions.get(id(region), ())]
            result.status = STATUS_VERIFIED
            result.max_abs = max((c.max_abs for c in found), default=0.0)
            result.max_rel = max((c.max_rel for c in found), default=0.0)
            if result.needs_end_to_end:
                result.detail = "by the end-to-end run"
        self.summary = replace(self.summary, final=tuple(outputs), regions_in_final_run=len(regions))
        return True

    def _find_reference(self) -> int | None:
        """Capture the first state onnxruntime runs; returns how many passes it contains."""
        needed = reference_reads([region for r in self._results for region in r.regions])
        reasons = []
        for count in range(len(self._results) + 1):
            if count and not self._results[count - 1].changed:
                continue
            self._goto(count)
            present = _main_graph_names(self._model.graph)
            try:
                captured = self.verifier.capture(self._model, sorted(needed & present))
            except execute.NotRunnable as error:
                reasons.append(str(error))
                continue
            self._reference_outputs = {t.name: captured[t.name] for t in self._model.graph.outputs}
            self._unordered = unordered_outputs(self._model)
            self._reference_count = count
            label = "input model" if count == 0 else f"state after {self._results[count - 1].name}"
            if reasons:
                for result in self._results[:count]:
                    if result.changed:
                        result.status = STATUS_UNVERIFIED
                        result.detail = f"onnxruntime cannot run the input model ({reasons[0]}); verified from {label}"
            note = f"input model not runnable by onnxruntime: {reasons[0]}" if reasons else ""
            self.summary = replace(self.summary, reference_state=label, note=note)
            return count
        for result in self._results:
            if result.changed:
                result.status, result.detail = STATUS_UNVERIFIED, f"no state of the model runs in onnxruntime: {reasons[-1]}"
        self.summary = replace(self.summary, reference_state="none", note=f"nothing verified: {reasons[-1]}")
        return None

    def _ensure_captured(self, index: int) -> None:
        """Capture reference values that pass `index`'s regions read and no run took yet.

        Names of the reference state come from the reference state; names that only exist
        later (a whole-graph pass renamed them) come from the verified state before the pass.
        """
        verifier = self.verifier
        missing = {n for n in reference_reads(self._results[index].regions) if verifier.lookup(n) is None}
        position = self._position
        for state in (self._reference_count, index):
            if not missing:
                break
            self._goto(state)
            wanted = missing & _main_graph_names(self._model.graph)
            if wanted:
                verifier.capture(self._model, sorted(wanted))
                missing -= wanted
        self._goto(position)

    def _check_regions(self, first: int) -> None:
        index = first
        while index < len(self._results):
            result = self._results[index]
            if result.status in (STATUS_ROLLED_BACK, STATUS_UNVERIFIED) or not result.changed:
                result.status = result.status or STATUS_UNCHANGED
                index += 1
                continue
            keep = reference_reads([g for r in self._results[index:] for g in r.regions])
            self._ensure_captured(index)
            failure = self._check_pass_regions(result, result.opsets, keep)
            if failure is not None:
                self._roll_back(index, *failure)
                continue
            if self.verifier.mode == "full" and not self._full_check(index):
                continue
            index += 1

    def _check_pass_regions(self, result: PassResult, opsets: Sequence[Any], keep: set[str]) -> tuple[str, Comparison | None] | None:
        worst_abs = worst_rel = 0.0
        unverified = ""
        local = [region for region in result.regions if not region.in_subgraph]  # others: end to end
        for region, outcome in zip(local, self.verifier.check_regions(local, opsets, keep)):
            if outcome.unverified:
                unverified = unverified or f"region at {region.root}: {outcome.unverified}"
                continue
            worst = outcome.worst
            if not outcome.ok:
                return (f"rule {region.rule} changed {worst.tensor} at node {region.root} "
                        f"(max abs err {worst.max_abs:.3g}, rel {worst.max_rel:.3g}; {worst.reason})", worst)
            if worst is not None:
                worst_abs, worst_rel = max(worst_abs, worst.max_abs), max(worst_rel, worst.max_rel)
        result.max_abs, result.max_rel = worst_abs, worst_rel
        if unverified:
            result.status, result.detail = STATUS_UNVERIFIED, unverified
            return None
        result.status = STATUS_VERIFIED
        if result.has_reference:
            result.detail = "against the rule's reference semantics"
        elif result.needs_end_to_end:
            result.detail = "by the end-to-end run"
        return None

    def _full_check(self, index: int) -> bool:
        """Full mode: run the model after pass `index`; roll it back when outputs differ."""
        self._goto(index + 1)
        outputs = self._run_or_none()
        if outputs is None:
            return True
        if self._results[index].has_reference:
            self._reference_outputs = {n: outputs[n] for n in self._reference_outputs}
            return True
        comparisons = self.verifier.compare_outputs(outputs, self._reference_outputs, self._unordered)
        failing = [c for c in comparisons if not c.ok]
        if failing:
            worst = max(failing, key=lambda c: c.max_abs)
            self._roll_back(index, f"output {worst.tensor} differs (max abs err {worst.max_abs:.3g}; {worst.reason})", worst)
            return False
        return True

    def _run_or_none(self) -> dict[str, Any] | None:
        """A full run of the current state; None (and every end-to-end-only pass marked
        unverified) when onnxruntime cannot run it."""
        try:
            return self.verifier.run(self._model)
        except execute.NotRunnable as error:
            self.summary = replace(self.summary, note=_joined(self.summary.note, f"end-to-end run failed: {error}"))
            for result in self._results:
                if result.status == STATUS_VERIFIED and result.needs_end_to_end:
                    result.status, result.detail = STATUS_UNVERIFIED, f"end-to-end run failed: {error}"
            return None

    def _final_check(self, reference: int) -> int | None:
        """Compare final outputs with the reference; returns where to re-verify from after a
        bisection rolled a pass back, or None when done."""
        if self.verifier.mode == "full":
            return None
        expected = self._reference_outputs
        if not any(r.changed for r in self._results[reference:]):
            # Every pass since the reference state was rolled back: the final state is that state.
            self.summary = replace(self.summary, final=tuple(self.verifier.compare_outputs(expected, expected, set())))
            return None
        custom = [i for i, r in enumerate(self._results) if r.status == STATUS_VERIFIED and r.has_reference]
        if custom:
            self._goto(custom[-1] + 1)
            state = self._run_or_none()
            if state is None:
                return None
            expected = {n: state[n] for n in expected}
        self._goto(len(self._results))
        outputs = self._run_or_none()
        if outputs is None:
            return None
        comparisons = self.verifier.compare_outputs(outputs, expected, self._unordered)
        self.summary = replace(self.summary, final=tuple(comparisons))
        if all(c.ok for c in comparisons):
            return None
        start = custom[-1] + 1 if custom else reference
        culprit = self._bisect(start, expected)
        if culprit is None:
            return None
        worst = max((c for c in comparisons if not c.ok), key=lambda c: c.max_abs)
        self._roll_back(culprit, f"end-to-end output {worst.tensor} differs after this pass "
                                 f"(max abs err {worst.max_abs:.3g}; found by bisecting passes)"
                                 f"{self._first_divergence(culprit)}", worst)
        return culprit

    def _first_divergence(self, index: int) -> str:
        """Where, inside the model, pass `index` first changed values (graphfix bisect)."""
        from graphfix.bisect import first_divergence

        self._goto(index)
        before = ir.to_proto(self._model)
        self._goto(index + 1)
        after = ir.to_proto(self._model)
        try:
            found = first_divergence(before, after, self.verifier.feeds, self.verifier.tolerance)
        except execute.NotRunnable:
            return ""
        return "" if found is None else f"; {found.describe()}"

    def _bisect(self, start: int, expected: dict[str, Any]) -> int | None:
        """The first pass after which outputs differ (binary search over applied passes)."""
        low, high = start, len(self._results)  # state(low) matches, state(high) differs
        while high - low > 1:
            middle = (low + high) // 2
            self._goto(middle)
            outputs = self._run_or_none()
            if outputs is None:
                return None
            if all(c.ok for c in self.verifier.compare_outputs(outputs, expected, self._unordered)):
                low = middle
            else:
                high = middle
        self._goto(len(self._results))
        return high - 1


def _main_graph_names(graph: ir.Graph) -> set[str]:
    names = {t.name for t in graph.inputs}
    for node in graph.nodes:
        names.update(t.name for t in node.outputs if not t.is_empty())
    return names


def _opsets(model: ir.Model) -> list[Any]:
    import onnx

    domains = {o.domain: o.version for o in (model.graph.import_domains or [])}
    domains[""] = model.opset
    return [onnx.helper.make_opsetid(d, v) for d, v in sorted(domains.items())]


def _joined(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second


def _report(result: PassResult) -> PassReport:
    driver = result.driver
    return PassReport(
        name=result.name,
        rules=result.rules,
        matches=len(driver.rewrites),
        nodes_removed=driver.removed if result.status != STATUS_ROLLED_BACK else 0,
        nodes_added=driver.added if result.status != STATUS_ROLLED_BACK else 0,
        seconds=result.seconds,
        status=result.status or (STATUS_UNCHANGED if not result.changed else STATUS_NOT_VERIFIED),
        detail=result.detail,
        max_abs=result.max_abs,
        max_rel=result.max_rel,
        rewrites=tuple(driver.rewrites),
        near_misses=tuple((m.rule, m.node, m.reason) for m in driver.near_misses.values()),
        converged=driver.converged,
        still_firing=driver.still_firing,
        stage_seconds=dict(driver.seconds),
    )


def raise_if_strict(reports: Sequence[PassReport]) -> None:
    """`--strict`: a rolled-back or unverified pass is a failure."""
    bad = [p for p in reports if p.status in (STATUS_ROLLED_BACK, STATUS_UNVERIFIED)]
    if bad:
        raise VerificationError(f"--strict: pass {bad[0].name} {bad[0].status}: {bad[0].detail}")
