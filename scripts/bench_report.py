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
    report["ratio_cold_mount_vs_raw"] = ratio(
        report["mount_cold_seq_mb_s"], report["raw_client_seq_mb_s"]
    )
    report["ratio_cold_mount_vs_rclone"] = ratio(
        report["mount_cold_seq_mb_s"], report["rclone_cold_seq_mb_s"]
    )
    report["ratio_warm_mount_vs_local"] = ratio(
        report["mount_warm_seq_mb_s"], report["local_warm_seq_mb_s"]
    )
    sh = report["shards"]
    sh["ratio_mount_vs_raw"] = ratio(sh["mount_mb_s"], sh["raw_client_mb_s"])
    sh["ratio_mount_vs_rclone"] = ratio(sh["mount_mb_s"], sh["rclone_mb_s"])
    mine, theirs = (random_run(report, s, 4096, 4) for s in ("mount", "rclone"))
    report["ratio_random_4k_x4_mount_vs_rclone_iops"] = ratio(
        mine and mine["iops"], theirs and theirs["iops"]
    )
    st = report["safetensors"]
    for how in ("read", "mmap"):  # seconds: below 1 means the mount is faster
        st[f"ratio_mount_{how}_vs_raw"] = ratio(st[f"mount_{how}_s"], st["raw_client_fetch_s"])
        st[f"ratio_mount_{how}_vs_rclone"] = ratio(st[f"mount_{how}_s"], st[f"rclone_{how}_s"])
    report["ratio_4_readers_vs_1"] = ratio(
        report["shared_4_readers_s"], report["shared_1_reader_s"]
    )
    dc = report.get("disk_cache")
    if dc:
        add_cache_ratios(report, dc)


def add_cache_ratios(report: Report, dc: dict) -> None:
    """Disk cache: MB/s over MB/s, and seconds over seconds (below 1: the cache is faster)."""
    dc["ratio_cold_fill_vs_cold_no_cache"] = ratio(
        dc["cold_fill_mb_s"], report["mount_cold_seq_mb_s"]
    )
    for key in ("warm_remount", "warm_remount_evicted"):
        mb_s = dc[key]["value"]
        dc[key]["ratios"] = {
            "vs_cold_no_cache": ratio(mb_s, report["mount_cold_seq_mb_s"]),
            "vs_cold_fill": ratio(mb_s, dc["cold_fill_mb_s"]),
            "vs_local_cold": ratio(mb_s, report["local_cold_seq_mb_s"]),
            "vs_local_warm": ratio(mb_s, report["local_warm_seq_mb_s"]),
        }
    st = report["safetensors"]
    for how in ("read", "mmap"):
        seconds = dc[f"safetensors_{how}"]["value"]
        dc[f"safetensors_{how}"]["ratios"] = {
            "vs_raw_fetch": ratio(seconds, st["raw_client_fetch_s"]),
            "vs_local": ratio(seconds, st[f"local_{how}_s"]),
            "vs_mount_no_cache": ratio(seconds, st[f"mount_{how}_s"]),
        }


@dataclass
class Target:
    source: str  # "§7" (DESIGN.md) or "bench" (held by this script)
    what: str
    op: str  # ">=", "<=", "==", or "info" (reported, no bound)
    bound: float | None
    measured: float | None

    @property
    def met(self) -> bool | None:
        if self.measured is None or self.bound is None:
            return None
        if self.op == "==":
            return self.measured == self.bound
        return self.measured >= self.bound if self.op == ">=" else self.measured <= self.bound


def targets(report: Report) -> list[Target]:
    if "safetensors" not in report:  # one workload only (--only)
        return small_file_targets(report)
    st, pr, big = report["safetensors"], report["probes"], size_label(report)
    budget = report["memory_budget_mib"]
    return [
        Target(
            "§7",
            f"cold seq {big}: mount / raw client (MB/s)",
            ">=",
            0.8,
            report["ratio_cold_mount_vs_raw"],
        ),
        Target(
            "§7",
            f"cold seq {big}: mount / rclone mount (MB/s)",
            ">=",
            2.0,
            report["ratio_cold_mount_vs_rclone"],
        ),
        Target(
            "§7",
            "random 4 KiB x4 threads: mount / rclone (IOPS)",
            ">=",
            10.0,
            report["ratio_random_4k_x4_mount_vs_rclone_iops"],
        ),
        Target(
            "§7",
            "warm re-read: mount / local page cache (MB/s)",
            ">=",
            0.9,
            report["ratio_warm_mount_vs_local"],
        ),
        Target(
            "§7",
            "open + first byte, cold, no peers: p50 (ms)",
            "<=",
            5.0,
            report["ttfb_0_peers"]["p50_ms"],
        ),
        Target(
            "§7",
            f"probes to open all {pr['files']} files, {pr['peers']} peers (N + P)",
            "<=",
            pr["files"] + pr["peers"],
            pr["probes"],
        ),
        # §7 says "while streaming a 4 GiB file"; this is the peak over 1 GiB + shards + random
        Target(
            "§7",
            "mount peak RSS over seq, shards, random, safetensors (MiB)",
            "<=",
            budget + 300,
            report["mount_vm_hwm_mib"],
        ),
        Target(
            "bench",
            "modelfs serve / gRPC byte pump, one stream (MB/s)",
            ">=",
            0.8,
            report["store_vs_pump"]["ratio"],
        ),
        Target(
            "bench",
            "safetensors by read: mount / raw client (s)",
            "<=",
            1.5,
            st["ratio_mount_read_vs_raw"],
        ),
        Target(
            "bench",
            "safetensors by mmap: mount / raw client (s)",
            "<=",
            1.5,
            st["ratio_mount_mmap_vs_raw"],
        ),
        Target(
            "bench",
            "4 readers of one file / 1 reader (s)",
            "<=",
            1.5,
            report["ratio_4_readers_vs_1"],
        ),
        *small_file_targets(report),
        *cache_targets(report),
    ]


def small_file_targets(report: Report) -> list[Target]:
    sf = report.get("small_files")
    if not sf:
        return []
    mine, theirs = sf["mount"], sf["rclone"]
    return [
        Target(
            "§7",
            f"{sf['files']} small files one after another: mount / rclone (files/s)",
            ">=",
            1.0,
            ratio(mine["files_s"], theirs and theirs["files_s"]),
        ),
        Target(
            "§7",
            "open + first byte, small files, region known: p50 (ms)",
            "<=",
            3.0,
            mine["ttfb_p50_ms"],
        ),
    ]


def cache_targets(report: Report) -> list[Target]:
    dc = report.get("disk_cache")
    if not dc:
        return []
    warm, evicted = dc["warm_remount"]["ratios"], dc["warm_remount_evicted"]["ratios"]
    return [
        Target(
            "bench",
            "warm after remount: bytes served by the store",
            "==",
            0,
            dc["remount_store_bytes"],
        ),
        Target(
            "bench",
            "warm after remount / local disk cold (MB/s)",
            "info",
            None,
            warm["vs_local_cold"],
        ),
        Target(
            "bench",
            "warm after remount, evicted / local disk cold (MB/s)",
            "info",
            None,
            evicted["vs_local_cold"],
        ),
        Target(
            "bench",
            "warm after remount / local page cache (MB/s)",
            "info",
            None,
            warm["vs_local_warm"],
        ),
        Target(
            "bench",
            "cold with cache / cold without cache (MB/s)",
            "info",
            None,
            dc["ratio_cold_fill_vs_cold_no_cache"],
        ),
    ]


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):  # counts (bytes, probes) print whole
        return str(v)
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
        Row(
            f"cold sequential {big}, 1 MiB reads",
            "MB/s",
            report["mount_cold_seq_mb_s"],
            report["raw_client_seq_mb_s"],
            report["local_cold_seq_mb_s"],
            report["rclone_cold_seq_mb_s"],
        ),
        Row(
            f"{sh['files']} shards one after another, cold",
            "MB/s",
            sh["mount_mb_s"],
            sh["raw_client_mb_s"],
            sh["local_cold_mb_s"],
            sh["rclone_mb_s"],
        ),
    ]
    for block, threads in [(r["block"], r["threads"]) for r in report["random"]["mount"]]:
        mine, theirs = (random_run(report, s, block, threads) for s in ("mount", "rclone"))
        key, unit = ("iops", "IOPS") if block < MiB else ("mb_s", "MB/s")
        rows.append(
            Row(
                f"random {block // 1024} KiB x{threads}, cold",
                unit,
                mine and mine[key],
                rclone=theirs and theirs[key],
            )
        )
    for how in ("read", "mmap"):
        rows.append(
            Row(
                f"safetensors load by {how}",
                "s",
                st[f"mount_{how}_s"],
                st["raw_client_fetch_s"],
                st[f"local_{how}_s"],
                st[f"rclone_{how}_s"],
            )
        )
    rows.append(
        Row(
            f"warm re-read {big}",
            "MB/s",
            report["mount_warm_seq_mb_s"],
            local=report["local_warm_seq_mb_s"],
            rclone=report["rclone_warm_seq_mb_s"],
        )
    )
    for stat in ("p50", "p95"):
        theirs = report["rclone_ttfb"]
        rows.append(
            Row(
                f"open + first byte, cold, {stat}",
                "ms",
                report["ttfb_0_peers"][f"{stat}_ms"],
                rclone=theirs and theirs[f"{stat}_ms"],
            )
        )
    if dc := report.get("disk_cache"):
        cold = (
            report["raw_client_seq_mb_s"],
            report["local_cold_seq_mb_s"],
            report["rclone_cold_seq_mb_s"],
        )
        rows += [
            Row(f"cache: cold {big}, filling it", "MB/s", dc["cold_fill_mb_s"], *cold),
            Row("cache: remount, file in page cache", "MB/s", dc["warm_remount"]["value"], *cold),
            Row("cache: remount, file evicted", "MB/s", dc["warm_remount_evicted"]["value"], *cold),
        ]
        for how in ("read", "mmap"):
            rows.append(
                Row(
                    f"cache: remount, safetensors {how}",
                    "s",
                    dc[f"safetensors_{how}"]["value"],
                    st["raw_client_fetch_s"],
                    st[f"local_{how}_s"],
                    st[f"rclone_{how}_s"],
                )
            )
    return rows


def print_comparison(report: Report) -> None:
    print(
        f"{'workload':36} {'unit':>4} {'mount':>8} {'raw':>8} {'local':>8} {'rclone':>8}"
        f" {'x raw':>7} {'x local':>7} {'x rclone':>8}"
    )
    for r in comparison_rows(report):
        print(
            f"{r.name:36} {r.unit:>4} {fmt(r.mount):>8} {fmt(r.raw):>8} {fmt(r.local):>8} "
            f"{fmt(r.rclone):>8} {fmt(r.faster(r.raw)):>7} {fmt(r.faster(r.local)):>7} "
            f"{fmt(r.faster(r.rclone)):>8}"
        )
    print(
        "  (x base: how many times faster the mount is; local = cold from disk for the "
        "sequential rows, page cache otherwise;\n   cache: through --cache-dir; the cold row "
        "fills it, the remount rows read it back through fresh mounts)"
    )


def print_random(report: Report) -> None:
    print(
        f"\n{'random preads (distinct blocks)':36} {'ops':>7} {'IOPS':>8} {'MB/s':>8}"
        f" {'p50 ms':>8} {'p99 ms':>8}"
    )
    for system in ("mount", "rclone"):
        for r in report["random"][system] or []:
            label = f"{system} {r['block'] // 1024} KiB x{r['threads']}"
            done = " all blocks" if r["all_blocks_read"] else ""
            print(
                f"{label:36} {r['ops']:7d} {fmt(r['iops']):>8} {fmt(r['mb_s']):>8} "
                f"{fmt(r['p50_ms']):>8} {fmt(r['p99_ms']):>8}{done}"
            )


def print_other(report: Report) -> None:
    sp, t3, pr = report["store_vs_pump"], report["ttfb_3_peers"], report["probes"]
    print()
    print(
        f"{'gRPC byte pump / modelfs serve':36} {fmt(sp['pump_mb_s'])} / "
        f"{fmt(sp['store_mb_s'])} MB/s, one stream"
    )
    print(
        f"{'4 readers of one file / 1 reader':36} {fmt(report['shared_4_readers_s'])} / "
        f"{fmt(report['shared_1_reader_s'])} s"
    )
    print(
        f"{'open + first byte, cold, 3 peers':36} p50 {fmt(t3['p50_ms'])} ms, "
        f"p95 {fmt(t3['p95_ms'])} ms; {pr['probes']} probes for {pr['files']} files"
    )
    by_mount = ", ".join(f"{k} {fmt(v)}" for k, v in report["mount_vm_hwm_mib_by_mount"].items())
    print(f"{'peak RSS by mount (MiB)':36} {by_mount}")
    print(
        f"{'peak RSS, rclone mounts (MiB)':36} {fmt(report['rclone_vm_hwm_mib'])}; "
        f"mount memory budget {fmt(report['memory_budget_mib'])} MiB"
    )


def print_disk_cache(report: Report) -> None:
    dc = report.get("disk_cache")
    if not dc:
        return
    big, st = size_label(report), report["safetensors"]
    unknown = {"store_bytes": None, "entries_resident": None}
    fill = {
        "value": dc["cold_fill_mb_s"],
        "store_bytes": dc["cold_fill_store_bytes"],
        "entries_resident": None,
    }
    rows = [
        ("mount without cache, cold", {**unknown, "value": report["mount_cold_seq_mb_s"]}),
        ("through the cache, cold (filling it)", fill),
        ("after remount, cache file in page cache", dc["warm_remount"]),
        ("after remount, cache file evicted", dc["warm_remount_evicted"]),
        ("local disk, cold (pages dropped)", {**unknown, "value": report["local_cold_seq_mb_s"]}),
        ("local page cache", {**unknown, "value": report["local_warm_seq_mb_s"]}),
    ]
    bases = (
        report["mount_cold_seq_mb_s"],
        dc["cold_fill_mb_s"],
        report["local_cold_seq_mb_s"],
        report["local_warm_seq_mb_s"],
    )
    heads = ("x nocache", "x fill", "x l.cold", "x l.pc")
    print(
        f"\n{'disk cache: ' + big + ', 1 MiB reads':40} {'MB/s':>7} {'store MiB':>9} "
        f"{'in pc':>6} " + " ".join(f"{h:>9}" for h in heads)
    )
    for name, r in rows:
        served, resident = r["store_bytes"], r["entries_resident"]
        mib = "-" if served is None else ("0" if served == 0 else fmt(served / MiB))
        pc = "-" if resident is None else f"{resident:.0%}"
        print(
            f"{name:40} {fmt(r['value']):>7} {mib:>9} {pc:>6} "
            + " ".join(f"{fmt(ratio(r['value'], base)):>9}" for base in bases)
        )
    print(
        "  (store MiB: served by the store during the read; in pc: share of the cache files'"
        " pages in the page cache before it;\n   x: MB/s over: cold mount without cache,"
        " cold through the cache, local disk cold, local page cache)"
    )
    print(f"\n{'safetensors load (s)':40} {'read':>7} {'mmap':>7}")
    for name, key in (
        ("through the cache, after remount", None),
        ("mount without cache, cold", "mount_{}_s"),
        ("raw client fetch (no parsing)", "raw_client_fetch_s"),
        ("local files (page cache)", "local_{}_s"),
    ):
        values = [
            dc[f"safetensors_{how}"]["value"] if key is None else st[key.format(how)]
            for how in ("read", "mmap")
        ]
        print(f"{name:40} {fmt(values[0]):>7} {fmt(values[1]):>7}")
    fs = dc["fill_status"]
    seal = (
        "not within the timeout"
        if dc["seal_wait_s"] is None
        else f"{dc['seal_wait_s']:.1f} s after the last read"
    )
    print(
        f"{'cache fill':40} {dc['files_sealed']} of {dc['files']} files sealed, {seal} "
        f"(status counted {fs['sealed']}); written {fmt(fs['written_bytes'] / MiB)} MiB, "
        f"{fs['evictions']} evictions"
    )
    print(
        f"{'store bytes after remount, all reads':40} {dc['remount_store_bytes']} "
        f"(source of {big} file: {dc['warm_remount']['source']})"
    )


def print_targets(ts: list[Target]) -> None:
    print(f"\n{'target':6} {'what':58} {'bound':>9} {'measured':>9}  result")
    for t in ts:
        if t.op == "info":
            result, bound = "info", "-"
        else:
            result = "n/a" if t.met is None else ("met" if t.met else "MISSED")
            bound = t.op + " " + fmt(t.bound)
        print(f"{t.source:6} {t.what:58} {bound:>9} {fmt(t.measured):>9}  {result}")


def print_small_files(report: Report) -> None:
    sf = report.get("small_files")
    if not sf:
        return
    print(
        f"\n{'small files (~2 KB), one after another':40} {'files/s':>8} {'p50 ms':>8} "
        f"{'p95 ms':>8}"
    )
    for system in ("mount", "rclone"):
        r = sf[system]
        if r is None:
            print(f"{system:40} {'-':>8} {'-':>8} {'-':>8}")
            continue
        print(
            f"{system:40} {fmt(r['files_s']):>8} {fmt(r['ttfb_p50_ms']):>8} "
            f"{fmt(r['ttfb_p95_ms']):>8}"
        )
    print("  (p50/p95: open + first byte of each file, the repo's region already known)")


def print_report(report: Report, ts: list[Target]) -> None:
    if "safetensors" in report:
        print_comparison(report)
        print_random(report)
        print_other(report)
        print_disk_cache(report)
    print_small_files(report)
    print_targets(ts)
