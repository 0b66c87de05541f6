"""Running `klaviyo-stream` as a person does: a child process, its exit code and its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.core.settings import known_environment_variable

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Ran:
    """One finished command."""

    code: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json_stderr(self) -> list[dict[str, Any]]:
        """Every stderr line parsed as JSON (fails on the first line that is not)."""
        return [json.loads(line) for line in self.stderr_lines]


def clean_env(**settings: Any) -> dict[str, str]:
    """The caller's environment without any setting of ours, plus `settings` (upper-cased)."""
    env = {k: v for k, v in os.environ.items() if not known_environment_variable(k)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k.upper(): str(v) for k, v in settings.items()})
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 120.0) -> Ran:
    """`python -m stream ARGS` with `env`; waits for it to finish."""
    done = subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)
