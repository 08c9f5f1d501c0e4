"""The model registry: a directory of versions and a `current` pointer the job follows.

    var/models/
      v0001/ model.onnx card.json     one directory per published version (never changed again)
      v0002/ ...
      current -> v0002                the promoted version (a relative symlink, swapped atomically)
      promotions.jsonl                every promote / rollback, oldest first

The running job resolves `current` every `scoring.reload_check_s` and switches to the version it
points at, so promote and rollback take effect without a restart (see udfs.scorer.ModelWatcher).
On a multi-host cluster the registry must be on storage every TaskManager sees at the same path.

Rollback undoes the latest promotion that is still in effect: the promotions log is a stack
(promote pushes, rollback pops), and `current` moves to the version below.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

CURRENT = "current"
LOG = "promotions.jsonl"


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class ModelVersion:
    version: str
    model: str
    created_at: str
    holdout: dict
    current: bool


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- reading --------------------------------------------------------------------------
    def version_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.glob("v*") if p.name[1:].isdigit() and (p / "card.json").exists())

    def current(self) -> str | None:
        link = self.root / CURRENT
        return os.readlink(link) if link.is_symlink() else None

    def versions(self) -> list[ModelVersion]:
        current = self.current()
        out = []
        for d in self.version_dirs():
            card = json.loads((d / "card.json").read_text())
            out.append(ModelVersion(d.name, card.get("model", "?"), card.get("created_at", "?"),
                                    card.get("holdout", {}), d.name == current))
        return out

    def promotions(self) -> list[dict]:
        path = self.root / LOG
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def stack(self) -> list[str]:
        """Versions promoted and not rolled back, oldest first; the last one is `current`."""
        stack: list[str] = []
        for entry in self.promotions():
            if entry["action"] == "promote":
                stack.append(entry["version"])
            elif entry["action"] == "rollback" and stack:
                stack.pop()
        return stack

    # -- writing --------------------------------------------------------------------------
    def publish(self, files: dict[str, bytes], card: dict, promote: bool = True) -> Path:
        """Write a new version (its number is taken atomically with mkdir); card['version'] is
        filled in. Promotes it unless promote is False."""
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            existing = [int(p.name[1:]) for p in self.root.glob("v*") if p.name[1:].isdigit()]
            version = f"v{max(existing, default=0) + 1:04d}"
            try:
                (self.root / version).mkdir()
                break
            except FileExistsError:
                continue
        out = self.root / version
        for name, data in files.items():
            (out / name).write_bytes(data)
        card = {**card, "version": version}
        tmp = out / ".card.json.tmp"
        tmp.write_text(json.dumps(card, indent=2))
        tmp.replace(out / "card.json")  # card last: a version without a card is not listed
        if promote:
            self.promote(version)
        return out

    def promote(self, version: str) -> str:
        """Make `version` current; returns it."""
        if not (self.root / version / "card.json").exists():
            known = ", ".join(d.name for d in self.version_dirs()) or "none"
            raise RegistryError(f"no model version {version!r} in {self.root} (published: {known})")
        self._point_at(version)
        self._log("promote", version)
        return version

    def rollback(self) -> str:
        """Back to the version promoted before the current one; returns it."""
        stack = self.stack()
        if len(stack) < 2:
            raise RegistryError(
                f"nothing to roll back to in {self.root}: promotions in effect are {stack or 'none'}; "
                "promote a version explicitly with `streamrank models promote VERSION`")
        target = stack[-2]
        self._point_at(target)
        self._log("rollback", target, undone=stack[-1])
        return target

    def _point_at(self, version: str) -> None:
        tmp = self.root / f".{CURRENT}.{os.getpid()}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(version)
        tmp.replace(self.root / CURRENT)  # rename(2): readers see the old or the new link, never none

    def _log(self, action: str, version: str, **extra) -> None:
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "action": action,
                 "version": version, **extra}
        with open(self.root / LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")
