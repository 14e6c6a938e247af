"""A short soak in the default suite; `scripts/soak` runs the long one."""

from soak import run_soak


def test_short_soak_no_wrong_bytes_no_hangs_memory_bounded(tmp_path):
    report = run_soak(tmp_path, seconds=15, readers=8, files=4, file_mib=40, fault_every=0.5,
                      restart=True, memory_mib=64, read_timeout=5)
    print(report.view())
    assert report.reads > 100 and report.bytes > 50 << 20
    assert report.wrong_bytes == 0
    assert report.hung == 0 and report.slowest_op < 5 * 2 + 10
    assert report.restarts == 1
    assert sum(report.faults_injected.values()) >= 5
    assert report.peak_rss_mib <= report.memory_budget_mib + 300
