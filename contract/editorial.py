"""Editorial rules: what a CMS team pins, boosts, buries and excludes, applied by the lookup
services at serving time (serving/lookupd/editorial.go, serving/lookup.py; tests/vectors/editorial.json
holds both to the same answers), so an edit takes effect on the next call with no job restart.

    [[rules]]
    name = "xmas-hero"         # 1-63 of a-z 0-9 _ -
    action = "pin"             # pin | boost | bury | exclude
    item = "i42"               # the target: an item, or (not for pin) a category
    position = 1               # pin: the 1-based position
    placements = ["hero"]      # only these placements (empty: all)
    segments = ["vip"]         # only users in one of these segments (empty: everyone)
    start = 2026-12-01T00:00:00Z   # optional window, end exclusive
    end = 2027-01-01T00:00:00Z

Precedence, for one answer (the rules that are active: inside their window, for the request's
placement and one of the user's segments):
1. An item the catalog marks unavailable (`available = false` on the items topic) is never served.
2. The request's own filters, then `exclude` rules, remove items; nothing else brings them back
   (a pinned item that is excluded is not shown).
3. `boost` and `bury` multiply an item's score by their factor (several multiply together; a
   negative score, as a ranking model gives, is divided by it instead, so a boost always moves an
   item up); the list is re-sorted by the new scores (ties keep the model's order).
4. `pin` puts its item at its position, taken from the list or added to it. Pins are placed in the
   file's order: a later pin whose position is taken goes to the next free position after it;
   an item pinned twice keeps the first pin. A pin past the end of the list lands at the end.
5. The list is cut to k. A pinned item is shown only at its pin: a pin past k hides it from
   that answer, even where the model ranked it higher.

`streamrank rules apply` stores a version in Redis (`keys.RULES`) and an audit entry (who, when,
what, the diff) in `keys.RULES_HISTORY` (`{rules}:history` on a Redis Cluster); `rules rollback` restores the version before the current.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from contract import keys
from contract.config import _read_toml, _Strict, validated
from contract.experiments import spec_version

ACTIONS = ("pin", "boost", "bury", "exclude")
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
FOREVER_MS = 2**62  # the end of a rule without one (an int64 in Go)
MAX_RULES = 1000


class Rule(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    """1-63 of a-z 0-9 _ -; the audit and `rules list` name rules by it."""
    action: Literal["pin", "boost", "bury", "exclude"]
    """pin: the item at a position; boost / bury: scores times factor; exclude: never served."""
    item: str | None = Field(None, min_length=1, max_length=256)
    """The target item (pin needs one)."""
    category: str | None = Field(None, min_length=1, max_length=256)
    """The target category (boost, bury, exclude): every item of it. For a pin, the pinned item's
    category (`rules apply` fills it from the catalog when the item is there)."""
    position: int | None = Field(None, ge=1, le=500)
    """pin: the 1-based position."""
    factor: float | None = Field(None, gt=0, le=1000)
    """boost: > 1, bury: < 1; the score is multiplied by it."""
    placements: list[str] = []
    """Only for these placements (empty: every placement, also none)."""
    segments: list[str] = []
    """Only for users in one of these segments (empty: every user, also cold ones)."""
    start: datetime | None = None
    """Active from (with a timezone), inclusive."""
    end: datetime | None = None
    """Active until (with a timezone), exclusive."""

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, v: datetime | None, info) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError(f"{info.field_name} needs a timezone, e.g. 2026-12-01T00:00:00Z")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.action != "pin" and (self.item is None) == (self.category is None):
            raise ValueError(f"rule {self.name!r}: set exactly one of item and category")
        if self.action == "pin":
            if self.item is None or self.position is None:
                raise ValueError(f"rule {self.name!r}: pin needs item and position (a category cannot be pinned)")
        elif self.position is not None:
            raise ValueError(f"rule {self.name!r}: position is for pin only")
        if self.action == "boost" and not (self.factor and self.factor > 1):
            raise ValueError(f"rule {self.name!r}: boost needs factor > 1 (bury takes factor < 1)")
        if self.action == "bury" and not (self.factor and self.factor < 1):
            raise ValueError(f"rule {self.name!r}: bury needs 0 < factor < 1 (boost takes factor > 1)")
        if self.action in ("pin", "exclude") and self.factor is not None:
            raise ValueError(f"rule {self.name!r}: factor is for boost and bury only")
        if self.start and self.end and self.end <= self.start:
            raise ValueError(f"rule {self.name!r}: end must be after start")
        return self

    def spec(self) -> dict:
        """The form the services read: every field present, times as epoch ms."""
        return {"name": self.name, "action": self.action, "item": self.item or "", "category": self.category or "",
                "position": self.position or 0, "factor": self.factor or 1.0, "placements": self.placements,
                "segments": self.segments, "start_ms": _ms(self.start) if self.start else 0,
                "end_ms": _ms(self.end) if self.end else FOREVER_MS}


class RulesFile(_Strict):
    """An editorial rules file (deploy/config/rules.toml is an example)."""
    rules: list[Rule] = Field([], max_length=MAX_RULES)

    @model_validator(mode="after")
    def _unique_names(self) -> RulesFile:
        seen: set[str] = set()
        for n, r in enumerate(self.rules):
            if r.name in seen:
                raise ValueError(f"rules[{n}].name: {r.name!r} is used twice; name each rule once")
            seen.add(r.name)
        return self

    def spec(self) -> dict:
        return {"rules": [r.spec() for r in self.rules]}

    def conflicts(self) -> list[str]:
        """What the precedence settles that an editor may not expect (`rules check` prints them)."""
        out, pins = [], {}
        for r in self.rules:
            if r.action != "pin":
                continue
            for other in pins.get(r.position, []):
                if _overlap(other, r):
                    out.append(f"{r.name} and {other.name} pin position {r.position}: {other.name} takes it, "
                               f"{r.name} goes to the next free position")
            pins.setdefault(r.position, []).append(r)
            for x in self.rules:
                if x.action == "exclude" and (x.item == r.item) and _overlap(x, r):
                    out.append(f"{r.name} pins {r.item}, which {x.name} excludes: exclude wins, it is not shown")
        return out


def pinned_items(spec: dict) -> list[str]:
    """The items of the spec's pins that name no category (apply gives them the catalog's)."""
    return [r["item"] for r in spec["rules"] if r["action"] == "pin" and not r["category"]]


def fill_pin_categories(spec: dict, categories: dict[str, str]) -> list[str]:
    """Gives each pin without a category its item's (categories: item -> category, from the
    catalog), so request filters and category rules apply to a pinned item the list lacks.
    Returns the pinned items the catalog does not know (they are served with no category)."""
    missing = []
    for r in spec["rules"]:
        if r["action"] == "pin" and not r["category"]:
            if r["item"] in categories:
                r["category"] = categories[r["item"]]
            else:
                missing.append(f"{r['item']} ({r['name']})")
    return missing


def _overlap(a: Rule, b: Rule) -> bool:
    """Whether two rules can be active for the same answer (placements, segments and windows meet)."""
    def meets(x: list[str], y: list[str]) -> bool:
        return not x or not y or bool(set(x) & set(y))
    x, y = a.spec(), b.spec()
    return (meets(a.placements, b.placements) and meets(a.segments, b.segments)
            and x["start_ms"] < y["end_ms"] and y["start_ms"] < x["end_ms"])


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def parse_rules(data: dict, source: str = "<dict>") -> RulesFile:
    return validated(RulesFile, data, source)


def load_rules(path: str | Path) -> RulesFile:
    return parse_rules(_read_toml(path, "rules file"), str(path))


def diff(before: dict | None, after: dict) -> dict:
    """Rule by rule: the names added and removed, and per changed rule its fields {field: [old, new]}."""
    old = {r["name"]: r for r in (before or {"rules": []})["rules"]}
    new = {r["name"]: r for r in after["rules"]}
    changed = {n: {f: [old[n][f], r[f]] for f in r if old[n].get(f) != r[f]} for n, r in new.items()
               if n in old and old[n] != r}
    return {"added": [n for n in new if n not in old], "removed": [n for n in old if n not in new],
            "changed": changed}


RULE_FIELDS = {"name", "action", "item", "category", "position", "factor", "placements", "segments", "start_ms",
               "end_ms"}


def decode_spec(raw: bytes | str) -> dict:
    """A stored spec; ValueError for a spec that is not exactly what `rules apply` stores (a field
    missing, or one this version does not know): lookupd refuses the same, so no engine serves
    rules it half understands."""
    spec = json.loads(raw)
    if not isinstance(spec, dict) or set(spec) != {"rules"} or not isinstance(spec["rules"], list):
        raise ValueError(f"rules spec: {str(spec)[:80]} is not {{\"rules\": [...]}} (apply it again with this "
                         "version's `streamrank rules apply`)")
    for r in spec["rules"]:
        if not isinstance(r, dict):
            raise ValueError(f"rules spec: rule {r!r} is not an object (apply it again with this version's "
                             "`streamrank rules apply`)")
        if set(r) != RULE_FIELDS:
            raise ValueError(f"rules spec: rule {r.get('name')!r} has fields {sorted(r)}, expected {sorted(RULE_FIELDS)} "
                             "(apply it again with this version's `streamrank rules apply`)")
    return spec


def read_rules(r) -> tuple[dict, str] | None:
    """The applied spec and its version, or None when none is applied."""
    spec, version = r.hmget(keys.RULES, ("spec", "version"))
    if not (spec and version):
        return None
    return decode_spec(spec), version.decode()


def history(r, limit: int = 50, layout: keys.Layout = keys.ONE_REDIS) -> list[dict]:
    """Audit entries, newest first: version, at_ms, who, action (apply | rollback), diff, spec, source."""
    return [json.loads(e) for e in r.lrange(layout.rules_history(), 0, limit - 1)]


def store_rules(r, spec: dict, source: str, who: str, at_ms: int, action: str = "apply",
                layout: keys.Layout = keys.ONE_REDIS) -> dict:
    """Applies a spec and audits it in one script (contract/lua/rules_apply.lua), which stores them
    only if the version the diff was made against is still the current one; otherwise it reads
    again and retries, so two editors never diff against the same version. One script, not
    WATCH/MULTI, so that it runs on a Redis Cluster too. Returns the audit entry."""
    version = spec_version(spec)
    for _ in range(50):
        current, current_version = r.hmget(keys.RULES, ("spec", "version"))
        entry = {"version": version, "at_ms": at_ms, "who": who, "action": action,
                 "diff": diff(decode_spec(current) if current else None, spec), "spec": spec, "source": source}
        stored = r.eval(keys.lua("rules_apply"), 2, keys.RULES, layout.rules_history(),
                        current_version or "", json.dumps(spec), version, at_ms, source, json.dumps(entry))
        if stored:
            return entry
    raise RuntimeError("the rules kept changing under this apply (50 tries): another editor is applying "
                       "in a loop; try again")


def previous_version(entries: list[dict]) -> dict | None:
    """The audit entry of the version that was current before the latest change (what rollback
    restores; a second rollback restores the rolled-back one again, as an undo would)."""
    return entries[1] if len(entries) > 1 else None
