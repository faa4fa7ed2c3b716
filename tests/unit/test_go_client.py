"""The Go client's native assignment agrees with the shared test vectors (`go test`)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from sluice.config import project_root

GO_DIR = project_root() / "clients" / "go"


def go_test(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("go") is None:
        pytest.skip("the go toolchain is not on PATH")
    cache = project_root() / ".cache" / "go"
    env = {**os.environ, "GOCACHE": str(cache / "build"), "GOPATH": str(cache / "path"), "GOFLAGS": "-mod=mod",
           **(env or {})}
    return subprocess.run(["go", "test", "-count=1", "-v", *args, "./..."], cwd=GO_DIR, env=env,
                          capture_output=True, text=True, timeout=300)


def test_go_assigns_exactly_as_the_shared_vectors_say() -> None:
    run = go_test("-run", "SharedVectors")
    assert run.returncode == 0, run.stdout + run.stderr
    passed = [line for line in run.stdout.splitlines() if line.startswith("--- PASS")]
    assert len(passed) == 3, run.stdout
