"""lookupd's own Go tests (serving/lookupd/*_test.go: the shared lookup and serving vectors) and
go vet, run from pytest so the one test command covers both languages. No servers are started."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from serving.launch import LOOKUPD_SRC


@pytest.mark.parametrize("command", [["go", "vet", "./..."], ["go", "test", "-count=1", "./..."]],
                         ids=["go vet", "go test"])
def test_lookupd_go(command):
    if shutil.which("go") is None:
        pytest.fail("Go is not installed; `make setup` needs it to build serving/lookupd")
    out = subprocess.run(command, cwd=LOOKUPD_SRC, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
