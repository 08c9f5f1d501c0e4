"""The web SDK's own tests (serving/web/test: node's test runner over the tsc build, no browser),
run from pytest so the one test command covers TypeScript too. The browser test is
tests/integration/test_web_sdk.py."""

from __future__ import annotations

import shutil
import subprocess

from contract.paths import PROJECT_ROOT


def test_web_sdk_node_tests():
    assert shutil.which("npm"), "Node.js and npm are not installed; `make setup` needs them to build serving/web"
    out = subprocess.run(["npm", "test", "--silent"], cwd=PROJECT_ROOT / "serving" / "web", capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "# fail 0" in out.stdout and "# pass 5" in out.stdout, out.stdout[-2000:]
