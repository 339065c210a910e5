"""Registered models, their versions, aliases and tags: the checkpoint queue's index.

A part of :class:`~mlflow_ddsp.store.RegistryStore` (a mixin: it uses the store's
``client``, ``tracking_uri`` and ``_calling``). Version numbers come back as ``int``
whatever the backend (``int`` from the embedded store, ``str`` from a server).
"""

from __future__ import annotations

import contextlib
import json
from typing import Mapping

from .. import tags as T
from ..errors import CheckpointNotFoundError, RegistryError
from . import fluent
from .errors import ALREADY_EXISTS, DOES_NOT_EXIST, _lost_concurrent_rename, _unique_key_collision
from .logged_models import PAGE, LoggedModelRef
from .records import CheckpointVersion

__all__ = ["RegistryPart"]


class RegistryPart:
    """Registered models, versions and aliases of one registry (see :class:`~mlflow_ddsp.store.RegistryStore`)."""

    # -- registered models ---------------------------------------------------
    def ensure_registered_model(self, name: str, description: str) -> None:
        """Create ``name`` unless it exists; one that vanishes while being created is created again."""
        for _ in range(3):
            if self._create_registered_model(name, {}, description) != "vanished":
                return
        raise RegistryError(
            f"could not create registered model {name!r}: it vanished three times while being created; "
            "another process is deleting it"
        )

    def registered_model_exists(self, name: str) -> bool:
        try:
            self.registered_model_tags(name)
        except CheckpointNotFoundError:
            return False
        return True

    def registered_model_tags(self, name: str) -> dict[str, str]:
        with self._calling(f"read registered model {name!r}", needs=("READ", f"registered model {name!r}")):
            return dict(self.client.get_registered_model(name).tags)

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        from mlflow.exceptions import MlflowException  # heavy: imported on first use

        # Two processes creating the same tag at once collide on the unique key (the
        # writer lease's binding, measured on SQLite); last writer wins, as for aliases.
        for attempt in range(3):
            try:
                self.client.set_registered_model_tag(name, key, value)
                return
            except MlflowException as exc:
                if not _unique_key_collision(exc) or attempt == 2:
                    with self._calling(f"tag registered model {name!r}", needs=("EDIT", f"registered model {name!r}")):
                        raise

    def registered_model_created(self, name: str) -> tuple[dict[str, str], int]:
        """Registered model ``name``'s tags and its creation time (the server's clock, ms since the epoch).

        The creation time is set by the server and cannot be written by any client
        (the writer lease binds its holder to it). Raises CheckpointNotFoundError if absent.
        """
        with self._calling(f"read registered model {name!r}", needs=("READ", f"registered model {name!r}")):
            rm = self.client.get_registered_model(name)
        return dict(rm.tags), int(rm.creation_timestamp or 0)

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        """Remove tag ``key`` from registered model ``name`` (an absent tag: nothing to do)."""
        with self._calling(f"untag registered model {name!r}", needs=("EDIT", f"registered model {name!r}")):
            self.client.delete_registered_model_tag(name, key)

    def try_create_registered_model(self, name: str, tags: Mapping[str, str], description: str) -> bool:
        """Create ``name`` atomically; False if it already exists (a unique-name mutex), or
        existed and vanished meanwhile (see :meth:`_create_registered_model`)."""
        return self._create_registered_model(name, tags, description) == "created"

    def _create_registered_model(self, name: str, tags: Mapping[str, str], description: str) -> str:
        """``"created"``, ``"exists"``, or ``"vanished"``: the name existed but was gone
        before the server could say so. MLflow's SQL store answers a duplicate insert by
        reading the existing model back, and a concurrent rename or delete in between
        (the lease's takeover, seen on PostgreSQL) turns that read into
        RESOURCE_DOES_NOT_EXIST. Nothing was created then; the caller decides again.
        """
        from mlflow.exceptions import MlflowException  # heavy: imported on first use

        try:
            self.client.create_registered_model(name, tags=dict(tags), description=description)
            return "created"
        except MlflowException as exc:
            if exc.error_code == ALREADY_EXISTS:
                return "exists"
            if exc.error_code == DOES_NOT_EXIST:
                return "vanished"
            with self._calling(f"create registered model {name!r}", needs=("USE", "the workspace (creating registered models)")):
                raise
        raise AssertionError("unreachable: _calling re-raises")

    def try_rename_registered_model(self, name: str, new_name: str) -> bool:
        """Rename atomically; False if ``name`` vanished first (someone else renamed it)."""
        from mlflow.exceptions import MlflowException  # heavy: imported on first use

        try:
            self.client.rename_registered_model(name, new_name)
            return True
        except MlflowException as exc:
            if exc.error_code in (DOES_NOT_EXIST, ALREADY_EXISTS) or _lost_concurrent_rename(exc):
                return False  # someone else renamed or deleted it first
            with self._calling(f"rename registered model {name!r}", needs=("EDIT", f"registered model {name!r}")):
                raise
        return False

    def delete_registered_model(self, name: str) -> None:
        with contextlib.suppress(CheckpointNotFoundError), self._calling(
            f"delete registered model {name!r}", needs=("MANAGE", f"registered model {name!r}")
        ):
            self.client.delete_registered_model(name)

    def record_experiment(self, name: str, experiment_id: str) -> list[str]:
        """Remember that queue ``name`` writes into ``experiment_id``; return all recorded ids.

        On a server the tag is written even when unchanged: it is the queue's first
        write, so a user without EDIT on the registered model is refused at start
        (:class:`PermissionDeniedError`), not at the first save.
        """
        recorded = self.experiment_ids(name)
        known = experiment_id in recorded
        if not known:
            recorded.append(experiment_id)
        if not known or self.tracking_uri.startswith(("http://", "https://")):
            self.set_registered_model_tag(name, T.EXPERIMENT_IDS, json.dumps(recorded))
        return recorded

    def experiment_ids(self, name: str) -> list[str]:
        try:
            value = self.registered_model_tags(name).get(T.EXPERIMENT_IDS, "[]")
            ids = json.loads(value)
            return [str(i) for i in ids] if isinstance(ids, list) else []
        except (CheckpointNotFoundError, ValueError):
            return []

    # -- aliases ------------------------------------------------------------
    def alias_version(self, name: str, alias: str) -> int | None:
        with self._calling(f"read alias {name}@{alias}", needs=("READ", f"registered model {name!r}")):
            aliases = self.client.get_registered_model(name).aliases
        version = aliases.get(alias)
        return int(version) if version is not None else None

    def registered_model(self, name: str) -> tuple[dict[str, str], dict[str, int]]:
        """Registered model ``name``'s tags, and its aliases -> version numbers, in one request."""
        with self._calling(f"read registered model {name!r}", needs=("READ", f"registered model {name!r}")):
            rm = self.client.get_registered_model(name)
        return dict(rm.tags), {alias: int(version) for alias, version in rm.aliases.items()}

    def set_alias(self, name: str, alias: str, version: int) -> None:
        from mlflow.exceptions import MlflowException  # heavy: imported on first use

        # Two writers creating the same alias at once can collide on the unique
        # key (measured); one retry resolves it, last writer wins as usual.
        for attempt in range(3):
            try:
                self.client.set_registered_model_alias(name, alias, str(version))
                return
            except MlflowException as exc:
                if not _unique_key_collision(exc) or attempt == 2:
                    with self._calling(f"point alias {name}@{alias} at v{version}", needs=("EDIT", f"registered model {name!r}")):
                        raise

    def delete_alias(self, name: str, alias: str) -> None:
        with contextlib.suppress(CheckpointNotFoundError), self._calling(
            f"delete alias {name}@{alias}", needs=("MANAGE", f"registered model {name!r}")
        ):
            self.client.delete_registered_model_alias(name, alias)

    # -- model versions -----------------------------------------------------
    @staticmethod
    def _version(mv) -> CheckpointVersion:
        return CheckpointVersion(
            name=mv.name,
            version=int(mv.version),
            source=mv.source or "",
            run_id=mv.run_id or None,
            created_ms=int(mv.creation_timestamp or 0),
            tags=dict(mv.tags or {}),
            description=mv.description or "",
            aliases=tuple(mv.aliases or ()),
        )

    def list_versions(self, name: str) -> list[CheckpointVersion]:
        """Every live version of ``name``, lowest number first (empty if the model is absent)."""
        out: list[CheckpointVersion] = []
        token = None
        with self._calling(f"list versions of {name!r}", needs=("READ", f"registered model {name!r}")):
            while True:
                page = self.client.search_model_versions(
                    f"name = '{name}'", max_results=PAGE, page_token=token
                )
                out += [self._version(mv) for mv in page]
                token = page.token
                if not token:
                    break
        return sorted(out, key=lambda v: v.version)

    def get_version(self, name: str, version: int) -> CheckpointVersion:
        with self._calling(f"read {name} v{version}", needs=("READ", f"registered model {name!r}")):
            return self._version(self.client.get_model_version(name, str(version)))

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        with self._calling(f"tag {name} v{version}", needs=("EDIT", f"registered model {name!r}")):
            self.client.set_model_version_tag(name, str(version), key, value)

    def delete_version_tag(self, name: str, version: int, key: str) -> None:
        with contextlib.suppress(CheckpointNotFoundError), self._calling(f"untag {name} v{version}", needs=("MANAGE", f"registered model {name!r}")):
            self.client.delete_model_version_tag(name, str(version), key)

    def create_version(
        self,
        name: str,
        files: LoggedModelRef,
        run_id: str | None,
        tags: Mapping[str, str],
        description: str,
    ) -> CheckpointVersion:
        with self._calling(f"register a version of {name!r}", needs=("EDIT", f"registered model {name!r}")), fluent.global_tracking_uri(self.tracking_uri):
            mv = self.client.create_model_version(
                name,
                source=f"models:/{files.model_id}",
                run_id=run_id,
                tags=dict(tags),
                description=description,
                model_id=files.model_id,
                await_creation_for=0,  # a models:/ source is READY at once
            )
        return self._version(mv)

    def delete_version(self, name: str, version: int) -> None:
        with contextlib.suppress(CheckpointNotFoundError), self._calling(
            f"delete {name} v{version}", needs=("MANAGE", f"registered model {name!r}")
        ):
            self.client.delete_model_version(name, str(version))

    def set_description(self, name: str, version: int, description: str) -> None:
        with self._calling(f"describe {name} v{version}", needs=("EDIT", f"registered model {name!r}")):
            self.client.update_model_version(name, str(version), description=description)
