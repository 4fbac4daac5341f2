"""Child processes the applications start in their own session (the web server, detection runs): stopping
one with everything it started."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """End the process group led by ``process`` (started with ``start_new_session=True``): SIGTERM, then
    SIGKILL when it has not ended within ``timeout`` seconds; waits for it. Nothing for None or a process
    that has ended."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)
