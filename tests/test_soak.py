"""A short soak in the default suite: the same script as `scripts/soak`, for 15 seconds."""

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"


def test_short_soak_no_wrong_bytes_no_hangs_memory_bounded():
    result = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--minutes",
            "0.25",
            "--readers",
            "8",
            "--files",
            "4",
            "--file-mib",
            "40",
            "--fault-every",
            "0.5",
            "--memory-mib",
            "64",
            "--read-timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    print(result.stdout, result.stderr[-3000:])
    report = json.loads(result.stdout)
    assert result.returncode == 0
    assert report["reads"] > 100 and report["bytes"] > 50 << 20
    assert report["wrong_bytes"] == 0
    assert report["hung"] == 0 and report["slowest_op"] < 5 * 2 + 10
    assert report["restarts"] == 1
    assert sum(report["faults_injected"].values()) >= 5
    assert report["peak_rss_mib"] <= report["memory_budget_mib"] + 300
