"""Errors graphfix reports to users as one line and an exit code."""

from __future__ import annotations

__all__ = [
    "BuilderUnavailableError",
    "EngineBuildError",
    "GraphfixError",
    "InputError",
    "RuleLoadError",
    "RuleError",
    "VerificationError",
    "UsageError",
    "first_line",
]


def first_line(error: BaseException, limit: int = 400) -> str:
    """The first non-blank line of `error`'s message (its type name when the message is empty):
    checkers and onnxruntime raise multi-line messages, and users get one line."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(error).__name__


class GraphfixError(Exception):
    """Base of every error the CLI turns into one line; `exit_code` is what the process returns."""

    exit_code = 2


class InputError(GraphfixError):
    """The input model cannot be read or used (missing, not ONNX, truncated, missing data...)."""


class UsageError(GraphfixError):
    """Options that contradict each other or name things that do not exist."""


class RuleLoadError(GraphfixError):
    """A rule file or rule package failed to import or defines an invalid rule."""


class RuleError(GraphfixError):
    """A rule raised while matching, checking or rewriting; the message names the rule and node."""


class VerificationError(GraphfixError):
    """`--strict`: a pass changed results, or could not be verified."""

    exit_code = 1


class EngineBuildError(GraphfixError):
    """TensorRT was asked and failed: the parser refused the model, the builder returned no
    engine, or trtexec exited with an error."""

    exit_code = 1


class BuilderUnavailableError(GraphfixError):
    """`graphfix build`: neither the tensorrt Python package nor trtexec is available, so the
    trtexec command was printed instead of run."""

    exit_code = 4
