"""Persist a queue's alias and retention options on its registered model, and read them back.

A queue records them (tag ``mlflow_ddsp.retention``) when it opens, so that
``mlflow-ddsp gc``/``versions``/``verify``, which have no training config, plan
with the same options. The options themselves are :class:`RetentionPolicy`
(``policy.py``, pure logic); this module is their I/O.
"""

from __future__ import annotations

import json

from .. import tags as T
from ..errors import CheckpointNotFoundError, ConfigError
from ..names import BEST_ALIAS, DEFAULT_ALIAS, validate_alias
from .policy import RetentionPolicy
from ..store import RegistryStore

__all__ = ["record_policy", "recorded_policy"]


def record_policy(store: RegistryStore, name: str, alias: str, policy: RetentionPolicy) -> None:
    """Store the queue's alias and retention options on the registered model, for ``gc``/``versions``."""
    value = json.dumps(
        {"alias": alias, "keep_last": policy.keep_last, "best_metric": policy.best_metric, "best_mode": policy.best_mode},
        sort_keys=True,
    )
    if store.registered_model_tags(name).get(T.RETENTION) != value:
        store.set_registered_model_tag(name, T.RETENTION, value)


def recorded_policy(store: RegistryStore, name: str, alias: str | None = None) -> tuple[str, RetentionPolicy]:
    """The alias and retention options the last queue of ``name`` recorded (defaults if none).

    ``alias`` overrides the recorded alias. The intervals play no part in a
    plan (a version's kind is its tag), so they are not recorded.
    """
    raw: dict = {}
    try:
        raw = json.loads(store.registered_model_tags(name).get(T.RETENTION, "{}"))
    except (ValueError, CheckpointNotFoundError):
        pass
    raw = raw if isinstance(raw, dict) else {}
    recorded_alias = raw.get("alias")
    if alias is not None:
        validate_alias(alias)
        if alias == BEST_ALIAS or (recorded_alias and alias != recorded_alias):
            raise ConfigError(
                f"alias={alias!r} is not the rolling alias of the queue of {name!r} "
                f"({recorded_alias or DEFAULT_ALIAS!r}, recorded when it trained); give that one, or none"
            )
    policy = RetentionPolicy(
        interval_val=1,
        interval_force_save=None,
        keep_last=raw.get("keep_last", 1),
        best_metric=raw.get("best_metric"),
        best_mode=raw.get("best_mode", "min"),
    )
    return alias or raw.get("alias") or DEFAULT_ALIAS, policy
