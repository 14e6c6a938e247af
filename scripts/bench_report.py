"""The report of scripts/bench.py: ratios, the design's targets, and the printed tables.

Everything here reads the JSON report alone, so a saved report can be printed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MiB = 1 << 20
Report = dict[str, Any]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def random_run(report: Report, system: str, block: int, threads: int) -> dict | None:
    runs = report["random"][system] or []
    return next((r for r in runs if (r["block"], r["threads"]) == (block, threads)), None)


def add_ratios(report: Report) -> None:
    """The mount's number over each baseline's, in the measured unit (MB/s, IOPS or s)."""
    report["ratio_cold_mount_vs_raw"] = ratio(report["mount_cold_seq_mb_s"],
                                              report["raw_client_seq_mb_s"])
    report["ratio_cold_mount_vs_rclone"] = ratio(report["mount_cold_seq_mb_s"],
                                                 report["rclone_cold_seq_mb_s"])
    report["ratio_warm_mount_vs_local"] = ratio(report["mount_warm_seq_mb_s"],
                                                report["local_warm_seq_mb_s"])
    sh = report["shards"]
    sh["ratio_mount_vs_raw"] = ratio(sh["mount_mb_s"], sh["raw_client_mb_s"])
    sh["ratio_mount_vs_rclone"] = ratio(sh["mount_mb_s"], sh["rclone_mb_s"])
    mine, theirs = (random_run(report, s, 4096, 4) for s in ("mount", "rclone"))
    report["ratio_random_4k_x4_mount_vs_rclone_iops"] = ratio(
        mine and mine["iops"], theirs and theirs["iops"])
    st = report["safetensors"]
    for how in ("read", "mmap"):  # seconds: below 1 means the mount is faster
        st[f"ratio_mount_{how}_vs_raw"] = ratio(st[f"mount_{how}_s"], st["raw_client_fetch_s"])
        st[f"ratio_mount_{how}_vs_rclone"] = ratio(st[f"mount_{how}_s"], st[f"rclone_{how}_s"])
    report["ratio_4_readers_vs_1"] = ratio(report["shared_4_readers_s"],
                                           report["shared_1_reader_s"])


@dataclass
class Target:
    source: str  # "§7" (DESIGN.md) or "bench" (held by this script)
    what: str
    op: str  # ">=" or "<="
    bound: float
    measured: float | None

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.bound if self.op == ">=" else self.measured <= self.bound


def targets(report: Report) -> list[Target]:
    st, pr, big = report["safetensors"], report["probes"], size_label(report)
    budget = report["memory_budget_mib"]
    return [
        Target("§7", f"cold seq {big}: mount / raw client (MB/s)", ">=", 0.8,
               report["ratio_cold_mount_vs_raw"]),
        Target("§7", f"cold seq {big}: mount / rclone mount (MB/s)", ">=", 2.0,
               report["ratio_cold_mount_vs_rclone"]),
        Target("§7", "random 4 KiB x4 threads: mount / rclone (IOPS)", ">=", 10.0,
               report["ratio_random_4k_x4_mount_vs_rclone_iops"]),
        Target("§7", "warm re-read: mount / local page cache (MB/s)", ">=", 0.9,
               report["ratio_warm_mount_vs_local"]),
        Target("§7", "open + first byte, cold, no peers: p50 (ms)", "<=", 5.0,
               report["ttfb_0_peers"]["p50_ms"]),
        Target("§7", f"probes to open all {pr['files']} files, {pr['peers']} peers (N + P)",
               "<=", pr["files"] + pr["peers"], pr["probes"]),
        # §7 says "while streaming a 4 GiB file"; this is the peak over 1 GiB + shards + random
        Target("§7", "mount peak RSS over seq, shards, random, safetensors (MiB)", "<=",
               budget + 300, report["mount_vm_hwm_mib"]),
        Target("bench", "modelfs serve / gRPC byte pump, one stream (MB/s)", ">=", 0.8,
               report["store_vs_pump"]["ratio"]),
        Target("bench", "safetensors by read: mount / raw client (s)", "<=", 1.5,
               st["ratio_mount_read_vs_raw"]),
        Target("bench", "safetensors by mmap: mount / raw client (s)", "<=", 1.5,
               st["ratio_mount_mmap_vs_raw"]),
        Target("bench", "4 readers of one file / 1 reader (s)", "<=", 1.5,
               report["ratio_4_readers_vs_1"]),
    ]


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100 or (abs(v) >= 10 and float(v).is_integer()):
        return f"{v:.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


@dataclass
class Row:
    name: str
    unit: str
    mount: float | None
    raw: float | None = None
    local: float | None = None
    rclone: float | None = None

    def faster(self, base: float | None) -> float | None:
        """How many times faster the mount is than a baseline."""
        if self.unit in ("s", "ms"):
            return ratio(base, self.mount)
        return ratio(self.mount, base)


def size_label(report: Report) -> str:
    mib = report["size_bytes"] // MiB
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def comparison_rows(report: Report) -> list[Row]:
    sh, st, big = report["shards"], report["safetensors"], size_label(report)
    rows = [
        Row(f"cold sequential {big}, 1 MiB reads", "MB/s", report["mount_cold_seq_mb_s"],
            report["raw_client_seq_mb_s"], report["local_cold_seq_mb_s"],
            report["rclone_cold_seq_mb_s"]),
        Row(f"{sh['files']} shards one after another, cold", "MB/s", sh["mount_mb_s"],
            sh["raw_client_mb_s"], sh["local_cold_mb_s"], sh["rclone_mb_s"]),
    ]
    for block, threads in [(r["block"], r["threads"]) for r in report["random"]["mount"]]:
        mine, theirs = (random_run(report, s, block, threads) for s in ("mount", "rclone"))
        key, unit = ("iops", "IOPS") if block < MiB else ("mb_s", "MB/s")
        rows.append(Row(f"random {block // 1024} KiB x{threads}, cold", unit,
                        mine and mine[key], rclone=theirs and theirs[key]))
    for how in ("read", "mmap"):
        rows.append(Row(f"safetensors load by {how}", "s", st[f"mount_{how}_s"],
                        st["raw_client_fetch_s"], st[f"local_{how}_s"], st[f"rclone_{how}_s"]))
    rows.append(Row(f"warm re-read {big}", "MB/s", report["mount_warm_seq_mb_s"],
                    local=report["local_warm_seq_mb_s"], rclone=report["rclone_warm_seq_mb_s"]))
    for stat in ("p50", "p95"):
        theirs = report["rclone_ttfb"]
        rows.append(Row(f"open + first byte, cold, {stat}", "ms",
                        report["ttfb_0_peers"][f"{stat}_ms"],
                        rclone=theirs and theirs[f"{stat}_ms"]))
    return rows


def print_comparison(report: Report) -> None:
    print(f"{'workload':36} {'unit':>4} {'mount':>8} {'raw':>8} {'local':>8} {'rclone':>8}"
          f" {'x raw':>7} {'x local':>7} {'x rclone':>8}")
    for r in comparison_rows(report):
        print(f"{r.name:36} {r.unit:>4} {fmt(r.mount):>8} {fmt(r.raw):>8} {fmt(r.local):>8} "
              f"{fmt(r.rclone):>8} {fmt(r.faster(r.raw)):>7} {fmt(r.faster(r.local)):>7} "
              f"{fmt(r.faster(r.rclone)):>8}")
    print("  (x base: how many times faster the mount is; local = cold from disk for the "
          "sequential rows, page cache otherwise)")


def print_random(report: Report) -> None:
    print(f"\n{'random preads (distinct blocks)':36} {'ops':>7} {'IOPS':>8} {'MB/s':>8}"
          f" {'p50 ms':>8} {'p99 ms':>8}")
    for system in ("mount", "rclone"):
        for r in report["random"][system] or []:
            label = f"{system} {r['block'] // 1024} KiB x{r['threads']}"
            done = " all blocks" if r["all_blocks_read"] else ""
            print(f"{label:36} {r['ops']:7d} {fmt(r['iops']):>8} {fmt(r['mb_s']):>8} "
                  f"{fmt(r['p50_ms']):>8} {fmt(r['p99_ms']):>8}{done}")


def print_other(report: Report) -> None:
    sp, t3, pr = report["store_vs_pump"], report["ttfb_3_peers"], report["probes"]
    print()
    print(f"{'gRPC byte pump / modelfs serve':36} {fmt(sp['pump_mb_s'])} / "
          f"{fmt(sp['store_mb_s'])} MB/s, one stream")
    print(f"{'4 readers of one file / 1 reader':36} {fmt(report['shared_4_readers_s'])} / "
          f"{fmt(report['shared_1_reader_s'])} s")
    print(f"{'open + first byte, cold, 3 peers':36} p50 {fmt(t3['p50_ms'])} ms, "
          f"p95 {fmt(t3['p95_ms'])} ms; {pr['probes']} probes for {pr['files']} files")
    by_mount = ", ".join(f"{k} {fmt(v)}" for k, v in report["mount_vm_hwm_mib_by_mount"].items())
    print(f"{'peak RSS by mount (MiB)':36} {by_mount}")
    print(f"{'peak RSS, rclone mounts (MiB)':36} {fmt(report['rclone_vm_hwm_mib'])}; "
          f"mount memory budget {fmt(report['memory_budget_mib'])} MiB")


def print_targets(ts: list[Target]) -> None:
    print(f"\n{'target':6} {'what':58} {'bound':>9} {'measured':>9}  result")
    for t in ts:
        result = "n/a" if t.met is None else ("met" if t.met else "MISSED")
        print(f"{t.source:6} {t.what:58} {t.op + ' ' + fmt(t.bound):>9} {fmt(t.measured):>9}  "
              f"{result}")


def print_report(report: Report, ts: list[Target]) -> None:
    print_comparison(report)
    print_random(report)
    print_other(report)
    print_targets(ts)
