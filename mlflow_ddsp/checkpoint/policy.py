"""Retention policy: which checkpoints stay, as options. Pure logic, no I/O.

The rule follows upstream DDSP-SVC's diffusion and reflow trainers
(``diffusion/solver.py``, ``reflow/solver.py``): at every validation step ``s`` they
write ``model_<s>.pt`` and delete the previous validation checkpoint unless that
one was saved at a multiple of ``interval_force_save``. So the kept set is every
force-save step plus the newest checkpoint. (Upstream's pure-DDSP trainer,
``solver.py``, deletes nothing; ``keep_last`` is how to keep more.) Here the
newest checkpoint is the one the rolling alias points to, and force-saved
checkpoints are immutable model versions. Two options of ours widen it:
``keep_last`` (the newest N checkpoints stay) and ``best_metric`` (the best
checkpoint by a metric stays while it is best, under the alias ``best``).

Upstream silently keeps only multiples of lcm(interval_val,
interval_force_save) when the force interval is not a multiple of the
validation interval; we refuse such a pair instead.

:meth:`RetentionPolicy.rules` turns the options into rule objects
(``rules.py``); ``retention.py`` folds them over a registry's state and over the
spool.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..names import BEST_ALIAS, DEFAULT_ALIAS  # re-exported: queue.py, retention.py import them from here
from ..tags import KIND_FORCE_SAVED, KIND_ROLLING
from .rules import Best, ForceSaved, KeepLast, Newest, Protected, Rule

__all__ = ["RetentionPolicy", "DEFAULT_ALIAS", "BEST_ALIAS", "BEST_MODES"]

BEST_MODES = ("min", "max")

def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RetentionPolicy:
    """Which saved steps are kept forever, validated on construction.

    Args:
        interval_val: steps between validations (and checkpoint saves); > 0.
        interval_force_save: steps between checkpoints kept forever; a positive
            multiple of ``interval_val``, or None to never force-save.
        keep_last: how many of the newest checkpoints stay (1: upstream's rule).
        best_metric: a metric given to ``save(metrics=...)``; the checkpoint with
            its best value so far stays (alias ``best``). None: no best.
        best_mode: ``"min"`` (lower is better, e.g. a loss) or ``"max"``.

    Raises:
        ConfigError: naming the option, its value and what is allowed.
    """

    interval_val: int
    interval_force_save: int | None
    keep_last: int = 1
    best_metric: str | None = None
    best_mode: str = "min"

    def __post_init__(self) -> None:
        iv, ifs = self.interval_val, self.interval_force_save
        if not _is_int(iv) or iv <= 0:
            raise ConfigError(f"train.interval_val={iv!r} must be a positive integer")
        if not _is_int(self.keep_last) or self.keep_last < 1:
            raise ConfigError(
                f"train.keep_last={self.keep_last!r} must be an integer >= 1 "
                "(1 keeps only the newest checkpoint, as upstream DDSP-SVC)"
            )
        if self.best_metric is not None and (not isinstance(self.best_metric, str) or not self.best_metric.strip()):
            raise ConfigError(
                f"train.best_metric={self.best_metric!r} must be a metric name such as "
                "'validation/loss', or null for no best checkpoint"
            )
        if self.best_mode not in BEST_MODES:
            raise ConfigError(
                f"train.best_mode={self.best_mode!r} must be one of {', '.join(BEST_MODES)} "
                "('min': lower is better, as for a loss)"
            )
        if ifs is None:
            return
        if not _is_int(ifs) or ifs <= 0 or ifs % iv != 0:
            raise ConfigError(
                f"train.interval_force_save={ifs!r} must be a positive multiple of "
                f"train.interval_val={iv} (e.g. {iv * 5}), or null to never force-save; "
                "upstream DDSP-SVC would silently keep only multiples of their lcm"
            )

    def is_validation_step(self, step: int) -> bool:
        return step > 0 and step % self.interval_val == 0

    def is_force_save(self, step: int) -> bool:
        """Whether ``step`` is kept forever.

        Step 0 always is: upstream's convention for a pretrained starting point
        (``model_0.pt``) is that it is never deleted.
        """
        return ForceSaved(self.interval_force_save).is_force_step(step)

    def kind(self, step: int) -> str:
        """The version kind a checkpoint saved at ``step`` gets."""
        return KIND_FORCE_SAVED if self.is_force_save(step) else KIND_ROLLING

    def rules(self) -> tuple[Rule, ...]:
        """The retention rules these options make, in the order reasons are given.

        Force-saved and newest (upstream's rule), keep_last when above 1, best when
        ``best_metric`` is set, and a person's protection. The planner
        (``retention.plan_retention``) and the spool (``retention.spool_drops``) fold
        this same list; a new rule is one more entry here.
        """
        rules: list[Rule] = [ForceSaved(self.interval_force_save), Newest()]
        if self.keep_last > 1:
            rules.append(KeepLast(self.keep_last))
        if self.best_metric is not None:
            rules.append(Best(self.best_metric, self.best_mode))
        rules.append(Protected())
        return tuple(rules)

    def describe(self) -> str:
        """One line for the start of training: what will be kept, and how to keep more."""
        newest = "the newest checkpoint" if self.keep_last == 1 else f"the newest {self.keep_last} checkpoints"
        parts = [newest]
        if self.interval_force_save is not None:
            parts.append(f"every {_ordinal(self.interval_force_save)} step forever")
        if self.best_metric is not None:
            better = "lowest" if self.best_mode == "min" else "highest"
            parts.append(f"the best by {self.best_metric} ({better}; alias '{BEST_ALIAS}')")
        parts.append("every version you protect (an alias of your own, or `mlflow-ddsp keep`)")
        text = "keeping " + ", ".join(parts[:-1]) + " and " + parts[-1]
        if self.interval_force_save is None:
            text += (
                f"; older checkpoints are deleted: set train.interval_force_save (e.g. {self.interval_val * 5})"
                " or train.keep_last to keep more"
            )
        return text


def _ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
