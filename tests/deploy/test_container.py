"""The image, built and served by a real container engine: `scripts/container-check.sh`.

The script builds the image (the mmdebstrap base, then `docker build --network host`),
runs it as `docker run` and as deploy/k8s run it, and checks the answers, the user, the
read-only root and the shutdown (docs/container.md). This test runs it when an engine
answers, or can be started here: Debian's dockerd, with no bridge and no iptables rules,
as docs/container.md starts it. When no engine can run, it skips with the engine's own
error. A cold build takes about 6 minutes, a change to the sources about 1; the engine
caches its layers, so a rerun with unchanged sources takes seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _docker_info() -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Iterator[str]:
    """The engine's version; starts dockerd for the module when none answers."""
    if shutil.which("docker") is None:
        pytest.skip("no container engine: no `docker` client on PATH "
                    "(Debian's docker.io; `make system-deps` installs it)")
    info = _docker_info()
    if info.returncode == 0:
        yield info.stdout.strip()
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        why = "dockerd is not installed" if dockerd is None else "starting dockerd needs root"
        pytest.skip(f"no container engine: `docker info` says {info.stderr.strip()!r}, "
                    f"and {why}")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([dockerd, "--bridge=none", "--iptables=false",
                                 "--ip6tables=false"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while (info := _docker_info()).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                how = "never answered" if proc.poll() is None else f"exited {proc.returncode}"
                pytest.skip(f"the container engine cannot start here: dockerd {how}; "
                            f"its log ends:\n{tail}")
            time.sleep(0.5)
        yield info.stdout.strip()
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_image_builds_serves_and_stops_as_deployed(engine) -> None:
    run = subprocess.run(["bash", "scripts/container-check.sh"], cwd=ROOT,
                         capture_output=True, text=True, timeout=1800)
    print(f"\ndockerd {engine}\n{run.stdout}")
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-3000:]}"
    assert "all checks passed" in run.stdout
