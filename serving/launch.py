"""Starts the lookup service with the engine the serving config names.

- `engine = "go"` (default): lookupd, the compiled service in serving/lookupd, answers every gRPC
  call on the configured port. The config is validated here (contract.serving_config.ServingConfig,
  the one validator) and handed to lookupd as JSON with the contract's limits and key names.
- `engine = "python"`: the grpc.aio service (serving.server).

`start_server(cfg)` gives a running server with `.port` and `.stop()` (tests, demo, benches);
`serve(cfg)` runs until SIGTERM/SIGINT and drains in-flight calls for grace_s."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from contract import compact, keys
from contract.config import ConfigError
from contract.serving_config import ServingConfig
from contract.schema import ID_PATTERN
from contract.paths import PROJECT_ROOT
from serving import lookup
from serving.core import DEADLINE_RESERVE_S
from serving.server import SERVICE_NAME, ServerThread, bearer_token, serve as serve_python

log = logging.getLogger(__name__)

LOOKUPD_SRC = PROJECT_ROOT / "serving" / "lookupd"
LOOKUPD = PROJECT_ROOT / ".cache" / "bin" / "lookupd"


def contract_spec() -> dict:
    """What lookupd takes from the Python contract rather than repeating it."""
    return {
        "service_name": SERVICE_NAME, "id_pattern": ID_PATTERN, "user_id_rule": lookup.USER_ID_RULE,
        "undecodable_rule": lookup.UNDECODABLE_RULE,
        "max_filter_categories": lookup.MAX_FILTER_CATEGORIES, "max_excluded_items": lookup.MAX_EXCLUDED_ITEMS,
        "max_batch": lookup.MAX_BATCH, "max_placement": lookup.MAX_PLACEMENT, "rec_prefix": keys.rec_key(""),
        "profile_prefix": keys.profile_key(""), "feat_prefix": keys.feat_key(""),
        "trending": keys.TRENDING, "item_meta": keys.ITEM_META, "experiments": keys.EXPERIMENTS, "deadline_reserve_s": DEADLINE_RESERVE_S,
        "rules": keys.RULES, "unavailable_items": keys.UNAVAILABLE_ITEMS,
        "dictionary_prefix": compact.DICTIONARY_PREFIX,
    }


def lookupd_spec(cfg: ServingConfig, port_file: Path) -> dict:
    return {**cfg.model_dump(mode="json"), "contract": contract_spec(), "port_file": str(port_file)}


def lookupd_binary() -> Path:
    if not LOOKUPD.is_file():
        raise ConfigError(f"{LOOKUPD} is not built; run `make setup` (it builds serving/lookupd with Go), "
                          "or set engine = \"python\" in the serving config")
    return LOOKUPD


class GoServer:
    """lookupd as a child process."""

    def __init__(self, cfg: ServingConfig, port: int | None = 0, *, metrics: bool = False) -> None:
        binary = lookupd_binary()
        bearer_token(cfg)  # an unset token variable fails here, with the config's wording
        self.work = Path(tempfile.mkdtemp(prefix="lookupd-"))
        port_file = self.work / "port"
        if port is not None:
            cfg = cfg.model_copy(update={"port": port})
        if not metrics:
            cfg = cfg.model_copy(update={"metrics_port": None})
        spec = self.work / "spec.json"
        spec.write_text(json.dumps(lookupd_spec(cfg, port_file)))
        self.grace_s = cfg.grace_s
        self.proc = subprocess.Popen([str(binary), "--spec", str(spec)])
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(0)
                raise RuntimeError(f"lookupd did not start (exit {self.proc.poll()}); its log is above")
            time.sleep(0.02)
        self.port = int(port_file.read_text())

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self) -> int:
        return self.proc.wait()  # signal handlers run meanwhile; the wait resumes (PEP 475)

    def stop(self, grace_s: float | None = 0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(max(grace_s or 0, self.grace_s) + 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.work, ignore_errors=True)
        return self.proc.wait()

    def __enter__(self) -> GoServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop(0)


def start_server(cfg: ServingConfig, port: int = 0) -> GoServer | ServerThread:
    """A running server of cfg.engine on `port` (0: a free one); `.port`, `.stop()`, a context manager."""
    return GoServer(cfg, port) if cfg.engine == "go" else ServerThread(cfg, port)


def serve(cfg: ServingConfig, port: int | None = None) -> None:
    """Runs the configured engine until SIGTERM/SIGINT, then drains in-flight calls for grace_s."""
    if cfg.engine == "python":
        serve_python(cfg, port)
        return
    server = GoServer(cfg, port, metrics=True)

    def forward(sig, _frame) -> None:
        log.info("draining in-flight calls (grace %.1fs)", cfg.grace_s)
        server.signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    rc = server.wait()
    server.stop(0)
    log.info("stopped" if rc == 0 else f"stopped (lookupd exit {rc})")
    if rc != 0:
        raise SystemExit(rc)
