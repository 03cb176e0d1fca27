"""A versioned model registry on disk, updated atomically.

Layout::

    REGISTRY/<name>/<version>/       an export (model.safetensors + manifest.json)
    REGISTRY/<name>/current          the version served, as text ("3\\n")
    REGISTRY/<name>/history.json     promotions and rollbacks, oldest first

Every write goes to a temporary file or folder in the same directory, is
fsynced, then renamed into place, so a reader (the service polling ``current``)
never sees half a model or half a pointer, and a job killed at any point leaves
the registry valid: at worst a hidden ``.tmp`` entry that readers ignore.
``current`` is the source of truth; ``history.json`` only orders rollbacks.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.errors import ExportError, RegistryError, RegistryLockedError
from models.export import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Manifest,
    fsync_dir,
    read_manifest,
    sha256_file,
    write_atomic,
)
from models.int8 import INT8_FILES, verify_int8_files

log = logging.getLogger(__name__)

CURRENT_FILE = "current"
HISTORY_FILE = "history.json"
# Names and versions become path parts (and URL parts of the admin API): no
# separators, no leading dot, so no traversal and no clash with temp entries.
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_part(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _SAFE.match(value):
        raise RegistryError(f"{kind} must match {_SAFE.pattern} (letters, digits, '.', '_', "
                            f"'-'; no leading dot), got {value!r}")
    return value


def _version_key(version: str) -> tuple[int, int | str]:
    # Numeric versions sort numerically and after any non-numeric ones.
    return (1, int(version)) if version.isdigit() else (0, version)


class ModelRegistry:
    """Versions of named exports under `root`, with a ``current`` pointer per name.

    Args:
        root: The registry folder; created on the first publish.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- reading ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Names that have a ``current`` version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if _SAFE.match(p.name) and (p / CURRENT_FILE).is_file())

    def versions(self, name: str) -> list[str]:
        """Published versions of `name`, oldest first (numeric order for numbers)."""
        folder = self.root / _check_part("name", name)
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir()
                 if p.is_dir() and _SAFE.match(p.name) and (p / MANIFEST_FILE).is_file()]
        return sorted(found, key=_version_key)

    def path(self, name: str, version: str) -> Path:
        """The export folder of a version (which may not exist)."""
        return self.root / _check_part("name", name) / _check_part("version", version)

    def current(self, name: str) -> str | None:
        """The version ``current`` names, or None when the name has none."""
        file = self.root / _check_part("name", name) / CURRENT_FILE
        try:
            text = file.read_text().strip()
        except FileNotFoundError:
            return None
        return _check_part(f"{file} content", text)

    def current_path(self, name: str) -> Path:
        """The export folder of the current version.

        Raises:
            RegistryError: The name has no current version.
        """
        version = self.current(name)
        if version is None:
            raise RegistryError(f"{self.root / name} has no {CURRENT_FILE!r} file; publish and "
                                f"promote a version first")
        return self.path(name, version)

    def verify(self, name: str, version: str) -> Manifest:
        """Check a version's manifest and weights hash without building the model.

        Raises:
            RegistryError: The version does not exist.
            ExportError: A bad manifest or a weights hash mismatch.
        """
        folder = self.path(name, version)
        if not folder.is_dir():
            raise RegistryError(f"{name} has no version {version!r}; versions: "
                                f"{self.versions(name)}")
        manifest = read_manifest(folder)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file() or sha256_file(weights) != manifest.weights_sha256:
            raise ExportError(f"{weights}: missing, or its sha256 is not the manifest's "
                              f"{manifest.weights_sha256}")
        if manifest.precision == "int8":
            verify_int8_files(folder, manifest.quantization)
        return manifest

    def history(self, name: str) -> list[dict[str, Any]]:
        """Promotion and rollback events of `name`, oldest first."""
        file = self.root / _check_part("name", name) / HISTORY_FILE
        if not file.is_file():
            return []
        try:
            events = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{file}: not valid JSON ({exc})") from exc
        return events if isinstance(events, list) else []

    # -- writing ---------------------------------------------------------------------------
    def next_version(self, name: str) -> str:
        """One more than the largest numeric version (``"1"`` for a new name)."""
        numbers = [int(v) for v in self.versions(name) if v.isdigit()]
        return str(max(numbers, default=0) + 1)

    def publish(self, name: str, export_dir: str | Path, *, version: str | None = None,
                extra: dict[str, Any] | None = None) -> str:
        """Copy an export into the registry as a new version (not yet current).

        Only the weights and the manifest are copied; the manifest's ``name`` and
        ``version`` are set to the registry's, so responses report the version
        served. The copy is written to a hidden temp folder, fsynced, and renamed.

        Args:
            name: The registry name.
            export_dir: An export folder (weights + manifest).
            version: Default: `next_version`.
            extra: Merged into the manifest's ``provenance``.

        Returns:
            The version written.
        """
        _check_part("name", name)
        src = Path(export_dir)
        manifest = read_manifest(src)
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        version = _check_part("version", version or self.next_version(name))
        dest = folder / version
        if dest.exists():
            raise RegistryError(f"{dest} already exists; versions are immutable, pick another")
        manifest.name, manifest.version = name, version
        manifest.provenance = {**manifest.provenance, "registry_source": str(src.resolve()),
                               **(extra or {})}
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=folder))
        try:
            # An int8 export's IR files travel with its weights (models/int8.py); the
            # names are ours, never the manifest's (which could name any path).
            for file in (WEIGHTS_FILE, *(INT8_FILES if manifest.precision == "int8" else ())):
                shutil.copyfile(src / file, tmp / file)
                with open(tmp / file, "rb+") as fh:
                    os.fsync(fh.fileno())
            write_atomic(tmp / MANIFEST_FILE, json.dumps(manifest.to_dict(), indent=2))
            fsync_dir(tmp)
            os.rename(tmp, dest)
            fsync_dir(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version

    def promote(self, name: str, version: str, *, verify: bool = True,
                reason: str = "") -> None:
        """Make `version` current: the ``current`` pointer first, then the history.

        ``current`` is the commit point: a crash between the two writes leaves
        the promotion done and merely unrecorded, which `_stack` accounts for.

        Args:
            verify: Check the manifest and the weights hash first (a service
                refuses a bad version anyway; this refuses it earlier).
        """
        if verify:
            self.verify(name, version)
        elif not self.path(name, version).is_dir():
            raise RegistryError(f"{name} has no version {version!r}")
        with self._history_lock(name):
            write_atomic(self.root / name / CURRENT_FILE, version + "\n")
            self._append(name, "promote", version, reason)
        log.info("registry: %s version %s promoted", name, version, extra={
            "event": "model_promoted", "model": name, "version": version, "reason": reason})

    def rollback(self, name: str, *, reason: str = "") -> str:
        """Make the version promoted before the current one current again.

        Earlier promotions that fail `verify`, or that have another task than the
        current version, are skipped: they could not have been served.

        Returns:
            The version now current.

        Raises:
            RegistryError: There is no earlier valid promotion to go back to.
        """
        with self._history_lock(name):
            stack = self._stack(name)
            current = stack.pop() if stack else None
            # A current version that is itself bad (refused by the service) still has
            # a task: that of the nearest valid earlier promotion.
            task = self._task_or_none(name, current) or next(
                (t for v in reversed(stack) if (t := self._task_or_none(name, v))), None)
            while stack and (stack[-1] == current or task is None
                             or self._task_or_none(name, stack[-1]) != task):
                stack.pop()
            if not stack:
                raise RegistryError(f"{name}: no earlier valid promotion to roll back to "
                                    f"(history: {[e.get('version') for e in self.history(name)]})")
            target = stack[-1]
            write_atomic(self.root / name / CURRENT_FILE, target + "\n")
            self._append(name, "rollback", target, reason)
        log.info("registry: %s rolled back to version %s", name, target, extra={
            "event": "model_rolled_back", "model": name, "version": target,
            "previous": current, "reason": reason})
        return target

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the job lock of `name` (``.job.lock``), or fail at once if another job has it.

        An OS file lock: it is released when its holder exits, even when killed,
        so no stale lock is left behind.

        Raises:
            RegistryLockedError: Another process holds it.
        """
        folder = self.root / _check_part("name", name)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".job.lock", "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise RegistryLockedError(
                    f"another job holds {folder / '.job.lock'}; wait for it to finish") from exc
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- internals -------------------------------------------------------------------------
    @contextmanager
    def _history_lock(self, name: str) -> Iterator[None]:
        # Short, blocking: serialises promote/rollback between processes.
        folder = self.root / _check_part("name", name)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".history.lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _stack(self, name: str) -> list[str]:
        """Replay the history: promote pushes, rollback pops back to its target."""
        stack: list[str] = []
        for event in self.history(name):
            version = event.get("version")
            if event.get("action") == "promote" and (not stack or stack[-1] != version):
                stack.append(version)
            elif event.get("action") == "rollback":
                while stack and stack[-1] != version:
                    stack.pop()
                if not stack:
                    stack.append(version)
        current = self.current(name)
        if current in stack:
            # Entries past ``current`` never took effect (a writer that crashed after
            # the history but before ``current``, as promote did before it wrote
            # ``current`` first), or ``current`` was set back by hand: drop them.
            del stack[len(stack) - stack[::-1].index(current):]
        elif current is not None:
            stack.append(current)  # a promotion whose history write never happened
        return stack

    def _task_or_none(self, name: str, version: str | None) -> str | None:
        if version is None:
            return None
        try:
            return self.verify(name, version).task
        except (RegistryError, ExportError):
            return None

    def _append(self, name: str, action: str, version: str, reason: str) -> None:
        events = self.history(name)
        events.append({"action": action, "version": version, "reason": reason,
                       "at": datetime.now(UTC).isoformat(timespec="seconds")})
        write_atomic(self.root / name / HISTORY_FILE, json.dumps(events, indent=2) + "\n")
