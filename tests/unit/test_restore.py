"""Starting the job from a savepoint: the path is checked before Flink starts."""

import subprocess
import sys

import pytest

from contract.paths import PROJECT_ROOT
from jobs.runtime import restore_options


def test_a_savepoint_directory_becomes_flinks_restore_options(tmp_path):
    sp = tmp_path / "savepoint-0a1b2c-3d4e5f"
    sp.mkdir()
    (sp / "_metadata").write_bytes(b"\0")
    for given in (str(sp), sp.as_uri(), f"file:{sp}"):
        assert restore_options(given) == {"execution.state-recovery.path": sp.as_uri(),
                                          "execution.state-recovery.ignore-unclaimed-state": "false"}
    assert restore_options(str(sp), True)["execution.state-recovery.ignore-unclaimed-state"] == "true"
    assert restore_options("s3://bucket/savepoints/sp-1")["execution.state-recovery.path"] == "s3://bucket/savepoints/sp-1"
    assert restore_options(None) == {}


def test_a_path_without_a_savepoint_fails_and_says_what_to_give(tmp_path):
    with pytest.raises(SystemExit, match=r"no savepoint there \(no _metadata file\).*cluster stop"):
        restore_options(str(tmp_path))
    with pytest.raises(SystemExit, match="needs --from-savepoint"):
        restore_options(None, allow_non_restored=True)


def test_cli_refuses_a_wrong_savepoint_before_flink_starts(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cli", "run", "--from-savepoint", str(tmp_path / "nope")],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no savepoint there" in out.stderr
