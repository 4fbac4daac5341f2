"""A real ``rsclip api`` process for the tests (started through the command line users run) and a small HTTP
client over urllib."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra.local_stack import free_port
from rsclip.app.processes import stop_process_group

START_TIMEOUT_S = 180.0  # the deadline of a start that never answers (never a wait for a state already reached)


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict

    def json(self):
        return json.loads(self.body)


@dataclass
class ApiProcess:
    """A running ``rsclip api``: its URL, process and log file."""

    url: str
    process: subprocess.Popen
    log: Path
    token: str | None = None

    def call(self, path: str, body=None, *, method: str | None = None, token: str | None = "default",
             raw: bytes | None = None, timeout: float = 120.0) -> Answer:
        """One request (JSON ``body`` or ``raw`` bytes); error answers are returned, not raised."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path.lstrip("/"), data=data,
                                         method=method or ("POST" if data is not None else "GET"))
        request.add_header("Content-Type", "application/json")
        token = self.token if token == "default" else token
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return Answer(answer.status, answer.read(), {k.lower(): v for k, v in answer.headers.items()})
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.read(), {k.lower(): v for k, v in error.headers.items()})

    def stop(self) -> None:
        stop_process_group(self.process, 15.0)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_api(db, log_dir: Path, *args: str, token: str | None = None, env: dict | None = None) -> ApiProcess:
    """``rsclip api DB ARGS`` on a free loopback port; returns once it answers (its token in the environment)."""
    port = free_port()
    log = Path(log_dir) / f"api-{port}.log"
    environment = {**os.environ, **(env or {})}
    if token:
        environment["RSCLIP_API_TOKEN"] = token
    command = [sys.executable, "-m", "rsclip", "api", str(db), "--port", str(port), *args]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment,
                                   start_new_session=True)
    served = ApiProcess(f"http://127.0.0.1:{port}/", process, log, token)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rsclip api exited ({process.returncode}): {served.output()}")
        try:
            if served.call("conformance", timeout=5).status == 200:
                return served
        except OSError:  # not listening yet
            time.sleep(0.2)
    served.stop()
    raise RuntimeError(f"rsclip api did not answer within {START_TIMEOUT_S:.0f} s: {served.output()}")
