"""The request fuzzer in the default suite: `scripts/fuzz-store` for 30 seconds."""

import json
import subprocess
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent.parent / "scripts" / "fuzz_store.py"
RSS_BOUND_MIB = 256


def test_random_and_malformed_requests_do_no_harm():
    result = subprocess.run(
        [sys.executable, str(FUZZ), "--seconds", "30", "--rss-bound-mib", str(RSS_BOUND_MIB)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    print(result.stdout, result.stderr[-3000:])
    report = json.loads(result.stdout)
    assert report["findings"] == [] and result.returncode == 0
    assert report["requests"]["grpc"] > 500 and report["requests"]["http"] > 200
    answers = report["answers"]
    assert answers.get("grpc:INVALID_ARGUMENT", 0) > 0 and answers.get("http:400", 0) > 0
    assert answers.get("grpc:OK", 0) > 0  # valid requests were mixed in and served
    assert report["normal_reads"] > 50  # the store answered ordinary reads throughout
    assert report["peak_rss_mib"] <= RSS_BOUND_MIB
