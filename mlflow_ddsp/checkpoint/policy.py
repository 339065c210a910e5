"""Retention policy: which checkpoints stay. Pure logic, no I/O.

Upstream DDSP-SVC's rule, restated: at every validation step ``s`` it writes
``model_<s>.pt`` and deletes the previous validation checkpoint unless that one
was saved at a multiple of ``interval_force_save``. So the kept set is every
force-save step plus the newest checkpoint. Here the newest checkpoint is the
one the rolling alias points to, and force-saved checkpoints are immutable
model versions.

Upstream silently keeps only multiples of lcm(interval_val,
interval_force_save) when the force interval is not a multiple of the
validation interval; we refuse such a pair instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError
from ..tags import KIND_FORCE_SAVED, KIND_ROLLING

__all__ = ["RetentionPolicy", "validate_alias", "DEFAULT_ALIAS"]

DEFAULT_ALIAS = "rolling"

# MLflow refuses these alias names: `latest` (any case) already means "highest
# version number", and v<digits> would be ambiguous with version numbers.
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)
_ALIAS_CHARS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def validate_alias(alias: object) -> str:
    """Return ``alias`` if MLflow accepts it as a model alias, else raise ConfigError."""
    if not isinstance(alias, str) or not _ALIAS_CHARS.match(alias):
        raise ConfigError(
            f"alias={alias!r} is not a valid model alias: use 1-255 characters from "
            "[A-Za-z0-9_-], e.g. 'rolling'"
        )
    if _RESERVED_ALIAS.match(alias):
        raise ConfigError(
            f"alias={alias!r} is reserved by MLflow ('latest' and 'v<N>' already mean "
            "'newest version' and 'version N'); use another name, e.g. 'rolling'"
        )
    return alias


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RetentionPolicy:
    """Which saved steps are kept forever, validated on construction.

    Args:
        interval_val: steps between validations (and checkpoint saves); > 0.
        interval_force_save: steps between checkpoints kept forever; a positive
            multiple of ``interval_val``, or None to never force-save.
    """

    interval_val: int
    interval_force_save: int | None

    def __post_init__(self) -> None:
        iv, ifs = self.interval_val, self.interval_force_save
        if not _is_int(iv) or iv <= 0:
            raise ConfigError(f"train.interval_val={iv!r} must be a positive integer")
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
        ifs = self.interval_force_save
        return step == 0 or (ifs is not None and step % ifs == 0)

    def kind(self, step: int) -> str:
        """The version kind a checkpoint saved at ``step`` gets."""
        return KIND_FORCE_SAVED if self.is_force_save(step) else KIND_ROLLING
