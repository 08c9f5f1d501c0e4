"""deploy/config/README.md, generated from the config models' fields and docstrings."""

from __future__ import annotations

import types
import typing

import annotated_types as at
from pydantic import BaseModel

from contract.config import JobConfig, _model_of
from contract.editorial import RulesFile
from contract.experiments import ExperimentsFile
from contract.serving_config import ServingConfig


def _type_text(annotation: object, metadata: list) -> str:
    """`float > 0`, `tuple[float > 0, ...]`, `'go' | 'python'`: a type as data engineers read it."""
    ops = ((at.Gt, "gt", ">"), (at.Ge, "ge", ">="), (at.Lt, "lt", "<"), (at.Le, "le", "<="))
    bounds = [f"{sym} {getattr(m, attr)!r}" for m in metadata for cls, attr, sym in ops if isinstance(m, cls)]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        base, extra = args[0], [m for a in args[1:] for m in (getattr(a, "metadata", None) or [a])]
        return _type_text(base, [*metadata, *extra])
    if origin is typing.Literal:
        text = " | ".join(repr(a) for a in args)
    elif isinstance(annotation, types.UnionType):
        text = " | ".join("none" if a is type(None) else _type_text(a, []) for a in args)
    elif origin in (tuple, dict, list):
        inner = ", ".join("..." if a is Ellipsis else _type_text(a, []) for a in args)
        text = f"{origin.__name__}[{inner}]"
    else:
        text = getattr(annotation, "__name__", str(annotation))
    return " ".join([text, ", ".join(bounds)]).strip() if bounds else text


def _reference_rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows, nested = [], []
    for name, field in model.model_fields.items():
        if (section := _model_of(field.annotation)) is not None:
            nested.append((f"{prefix}{name}", section))
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        text = " ".join((field.description or "").split()).replace("|", "\\|")
        kind = _type_text(field.annotation, field.metadata).replace("|", "\\|")
        rows.append(f"| `{name}` | {kind} | `{default}` | {text} |".replace("`''`", '`""`'))
    out = []
    if rows:
        out += [f"### [{prefix.rstrip('.')}]" if prefix else "### top-level keys", "",
                "| field | type | default | what it does |", "|---|---|---|---|", *rows, ""]
    for name, sub in nested:
        out += _reference_rows(sub, f"{name}.")
    return out


def config_reference() -> str:
    """deploy/config/README.md: every field of both config files, from the models' docstrings.
    Regenerate with `python -m contract.config_reference > deploy/config/README.md`."""
    lines = ["# Config files", "",
             "Generated from `contract/config.py`, `contract/serving_config.py` and `contract/experiments.py` by",
             "`python -m contract.config_reference > deploy/config/README.md` (a unit test checks it is current). Unknown keys and invalid values fail before anything",
             "starts, naming the field; `streamrank config check FILE` checks a file without running it.",
             "", "## The job: `local.toml` (`streamrank run`, `streamrank submit`)", ""]
    lines += _reference_rows(JobConfig, "")
    lines += ["## The lookup service: `serving.toml` (`streamrank serve`, `streamrank gateway`)", ""]
    lines += _reference_rows(ServingConfig, "")
    lines += ["## Experiments: `experiments.toml` (`streamrank experiments check|apply|list`)", "",
              "Each `[[experiments]]` table is one experiment, each `[[experiments.arms]]` one of its arms;",
              "`contract/experiments.py` says how users are assigned.", ""]
    lines += _reference_rows(ExperimentsFile, "")
    lines += ["## Editorial rules: `rules.toml` (`streamrank rules check|apply|list|history|rollback`)", "",
              "Each `[[rules]]` table is one rule; `contract/editorial.py` gives the precedence.", ""]
    lines += _reference_rows(RulesFile, "")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
