"""schemathesis against the live ``/openapi.json``: every check, with the admin token.

A real server serves a tiny classifier and a tiny detector from a registry (so
the admin routes have something to reload and roll back); schemathesis derives
requests from the schema, valid and invalid, and checks each answer against it.
Bounded: a fixed seed and a fixed number of examples per operation (about 10 s
here; the subprocess is cut at 120 s).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import QUICK_START

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "schemathesis-admin-token"
MAX_EXAMPLES = 40

# Which statuses count as "accepted" and "rejected". A file part's schema can say
# "binary", not "bytes that decode as a supported image", so a schema-valid request
# whose part is random bytes or a PDF (schemathesis sends both) gets 400 bad_image or
# 415; over-limit content (too many parts, too many pixels) gets 413, not the 422 that
# schemathesis expects by default. /v1/detect's class ids must also be below the
# served model's class count (422 otherwise), which no static schema can know.
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "404", "409", "413", "415"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "409", "413", "415", "422"]

[[operations]]
include-path = "/v1/detect"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409", "413", "415",
                                                     "422"]
"""


@pytest.fixture(scope="module")
def served(start_server, tiny_exports, tiny_detector_export, tmp_path_factory):
    from models.registry import ModelRegistry

    root = tmp_path_factory.mktemp("registry")
    registry = ModelRegistry(root)
    for export in tiny_exports:  # two versions, so a rollback has somewhere to go
        registry.promote("tiny", registry.publish("tiny", export))
    registry.promote("tinydet", registry.publish("tinydet", tiny_detector_export))
    return start_server("--registry", str(root), env={
        "OCELLUS_ADMIN_TOKEN": ADMIN_TOKEN, **QUICK_START, "OCELLUS_REGISTRY_POLL_SECONDS": "0",
        "OCELLUS_MAX_FILES": "4", "OCELLUS_MAX_UPLOAD_BYTES": str(1024 * 1024)})


def test_schemathesis_finds_no_server_error_and_no_schema_violation(served, tmp_path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    cli = Path(sys.executable).with_name("schemathesis")
    cmd = [str(cli), "--config-file", str(config), "run", f"{served.url}/openapi.json",
           "--checks", "all", "-H", f"Authorization: Bearer {ADMIN_TOKEN}",
           "--max-examples", str(MAX_EXAMPLES), "--seed", "0", "--workers", "1",
           "--generation-database", "none", "--request-timeout", "30", "--no-color"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    output = run.stdout + run.stderr
    print(output[output.find("SUMMARY"):])  # phases, failures, warnings and case counts
    assert run.returncode == 0, output[-8000:]
    # Every operation, admin and Open Inference Protocol ones included.
    assert "Tested: 18" in output and "Unresolvable" not in output, output[-3000:]
    assert served.alive()
