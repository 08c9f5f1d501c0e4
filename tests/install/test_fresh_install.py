"""Each role's extra, installed with pip's own machinery (uv) into a fresh venv at the lock's
pins, gives a working install of that role and nothing of the others: what `pip install
".[serving]"` gives a platform team, and what the image installs (job + serving)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from contract.paths import PROJECT_ROOT

ROLES = {
    # extra: (modules that must import, commands whose --help must answer, distributions that must be absent)
    "serving": (["serving.launch", "serving.gateway", "serving.client", "serving.webhooks", "cli.serving",
                 "cli.webhooks", "cli.rules"], ["serve", "gateway", "lookup", "webhooks", "rules"],
                ["pyflink", "lightgbm", "matplotlib", "pytest", "ruff"]),
    "train": (["models.training", "models.evaluation", "cli.models", "cli.experiments"],
              ["train", "evaluate", "models", "experiments"],
              ["pyflink", "fastapi", "pytest", "ruff"]),
    "job": (["jobs.recommend", "jobs.functions", "cli.job", "cli.cluster"], ["run", "submit", "ledger"],
            ["lightgbm", "fastapi", "matplotlib", "pytest", "ruff"]),
}


@pytest.mark.parametrize("extra", list(ROLES))
def test_an_extra_installs_a_working_role(extra, tmp_path):
    modules, commands, absent = ROLES[extra]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "uv", "pip", "install", "-q", "--python", str(py),
                              "-c", "requirements.lock", f".[{extra}]"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    # run from elsewhere, so that every import comes from the install and not from the source tree
    probe = ("import importlib, importlib.util, json; "
             f"[importlib.import_module(m) for m in {modules!r}]; "
             f"print(json.dumps([m for m in {absent!r} if importlib.util.find_spec(m)]))")
    out = subprocess.run([str(py), "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == [], f"the {extra} role installs what it does not run"
    streamrank = venv / "bin" / "streamrank"
    for command in ([], *([c] for c in commands)):
        helped = subprocess.run([str(streamrank), *command, "--help"], cwd=tmp_path, capture_output=True, text=True,
                                timeout=300)
        assert helped.returncode == 0 and "Usage" in helped.stdout, (command, helped.stderr[-2000:])
