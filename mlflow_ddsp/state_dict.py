"""Loading a state_dict into a module, with every mismatch named in one line.

``torch.nn.Module.load_state_dict`` reports problems as a multi-line
``RuntimeError`` that callers used to cut to its first line ("Error(s) in
loading state_dict for CombSubFast:"), losing which keys and shapes differ.
:func:`load_state_dict_checked` compares first and raises one
:class:`~mlflow_ddsp.errors.StateDictMismatchError` listing missing keys,
unexpected keys and shape mismatches (``key: checkpoint [2, 256] vs model [4, 256]``),
a few of each, then how many more. Every load path uses it: resume,
``train --init-from``, import, inference/serving and the content encoders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mlflow_ddsp.errors import StateDictMismatchError, one_line

__all__ = ["StateDictDiff", "compare_state_dict", "load_state_dict_checked", "SHOWN_PER_KIND"]

#: entries of each kind (missing, unexpected, shape) a message names before "and N more"
SHOWN_PER_KIND = 4


def _shape(value: Any) -> str:
    if torch.is_tensor(value):
        return str(list(value.shape))
    return f"a {type(value).__name__}"


@dataclass
class StateDictDiff:
    """How a state_dict differs from a module's.

    Attributes:
        missing: keys the module has and the state_dict lacks.
        unexpected: keys the state_dict has and the module lacks.
        shapes: ``(key, checkpoint shape, module shape)`` for keys both have with
            different shapes (a non-tensor value counts as a mismatch).
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[tuple[str, str, str]] = field(default_factory=list)

    def problems(self, *, strict: bool = True, ignore_unexpected: bool = False) -> list[str]:
        """One phrase per kind that counts (shapes always; missing/unexpected when ``strict``)."""
        parts = []
        if self.shapes:
            parts.append(
                _listing(
                    "shape mismatch", "shape mismatches",
                    [f"{key}: checkpoint {theirs} vs model {ours}" for key, theirs, ours in self.shapes],
                )
            )  # fmt: skip
        if strict and self.missing:
            parts.append(_listing("missing key", "missing keys", self.missing))
        if strict and self.unexpected and not ignore_unexpected:
            parts.append(_listing("unexpected key", "unexpected keys", self.unexpected))
        return parts


def _listing(singular: str, plural: str, items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_PER_KIND])
    more = f", and {len(items) - SHOWN_PER_KIND} more" if len(items) > SHOWN_PER_KIND else ""
    return f"{len(items)} {singular if len(items) == 1 else plural} ({shown}{more})"


def compare_state_dict(module: torch.nn.Module, state: Mapping[str, Any]) -> StateDictDiff:
    """Compare ``state`` with ``module.state_dict()`` key by key (no tensor data is read)."""
    expected = module.state_dict()
    diff = StateDictDiff()
    for key, ours in expected.items():
        if key not in state:
            diff.missing.append(key)
            continue
        theirs = state[key]
        if not torch.is_tensor(theirs) or tuple(theirs.shape) != tuple(ours.shape):
            diff.shapes.append((key, _shape(theirs), _shape(ours)))
    diff.unexpected = [str(key) for key in state if key not in expected]
    return diff


def load_state_dict_checked(
    module: torch.nn.Module,
    state: Mapping[str, Any],
    *,
    source: str,
    strict: bool = True,
    ignore_unexpected: bool = False,
    hint: str = "",
) -> StateDictDiff:
    """Load ``state`` into ``module`` or raise one line naming every mismatch.

    Args:
        module: the module to load into (unwrapped: no DDP/compile prefix).
        state: the state_dict.
        source: what ``state`` comes from, for the message (e.g. ``"checkpoint voice v3 (step 4000)"``).
        strict: missing and unexpected keys are errors (shape mismatches always are).
        ignore_unexpected: with ``strict``, only missing keys and shapes are errors
            (e.g. a fairseq file's pre-training-only weights).
        hint: what to do, appended after a colon.

    Returns:
        The :class:`StateDictDiff` (e.g. to log ignored unexpected keys).

    Raises:
        StateDictMismatchError: ``source does not fit this CombSubFast: 1 shape mismatch
            (unit2ctrl.spk_embed.weight: checkpoint [2, 256] vs model [4, 256])``;
            nothing is loaded then. Also when the module's own checks refuse a
            value (a model's ``data.sampling_rate`` buffer); the module must then
            be discarded, as torch has copied the other tensors.
    """
    if not isinstance(state, Mapping):
        raise StateDictMismatchError(f"{source} holds a {type(state).__name__}, not a state_dict of tensors")
    diff = compare_state_dict(module, state)
    problems = diff.problems(strict=strict, ignore_unexpected=ignore_unexpected)
    suffix = f": {hint}" if hint else ""
    name = type(module).__name__
    if problems:
        raise StateDictMismatchError(f"{source} does not fit this {name}: {'; '.join(problems)}{suffix}")
    try:
        module.load_state_dict(state, strict=strict and not ignore_unexpected)
    except RuntimeError as exc:  # a module's own checks (hyperparameter buffers compared by value)
        text = one_line(exc)
        header = f"Error(s) in loading state_dict for {name}:"
        detail = text.removeprefix(header).strip() or text
        if len(detail) > 400:
            detail = detail[:400] + "..."
        raise StateDictMismatchError(f"{source} does not fit this {name}: {detail}{suffix}") from None
    return diff
