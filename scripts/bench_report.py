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


SYSTEMS = ("mount", "mount_http", "rclone")
SYSTEM_LABELS = {"mount": "mount (gRPC)", "mount_http": "mount_http", "rclone": "rclone"}


def random_run(
    report: Report, system: str, block: int, threads: int, workload: str = "random"
) -> dict | None:
    """One run of `random` (distinct blocks) or `random_large` (random offsets, 1 GiB)."""
    runs = (report.get(workload) or {}).get(system) or []
    return next((r for r in runs if (r["block"], r["threads"]) == (block, threads)), None)


def random_iops(report: Report, system: str, block: int = 4096) -> float | None:
    run = random_run(report, system, block, 4, "random_large")
    return run and run["iops"]


def add_path_ratios(report: Report) -> None:
    """The two data paths against rclone and the raw client: cold sequential MB/s and
    random_large IOPS (4 KiB x4)."""
    cold = {s: report.get(f"{s}_cold_seq_mb_s") for s in SYSTEMS}
    report["ratio_cold_mount_vs_raw"] = ratio(cold["mount"], report.get("raw_client_seq_mb_s"))
    report["ratio_cold_mount_vs_rclone"] = ratio(cold["mount"], cold["rclone"])
    report["ratio_cold_http_vs_rclone"] = ratio(cold["mount_http"], cold["rclone"])
    report["ratio_cold_http_vs_mount"] = ratio(cold["mount_http"], cold["mount"])
    for block in (4096, 64 * 1024):
        k = f"{block // 1024}k"
        iops = {s: random_iops(report, s, block) for s in SYSTEMS}
        report[f"ratio_random_large_{k}_mount_vs_rclone_iops"] = ratio(
            iops["mount"], iops["rclone"]
        )
        report[f"ratio_random_large_{k}_http_vs_rclone_iops"] = ratio(
            iops["mount_http"], iops["rclone"]
        )


def add_ratios(report: Report) -> None:
    """The mount's number over each baseline's, in the measured unit (MB/s, IOPS or s)."""
    add_path_ratios(report)
    report["ratio_warm_mount_vs_local"] = ratio(
        report["mount_warm_seq_mb_s"], report["local_warm_seq_mb_s"]
    )
    sh = report["shards"]
    sh["ratio_mount_vs_raw"] = ratio(sh["mount_mb_s"], sh["raw_client_mb_s"])
    sh["ratio_mount_vs_rclone"] = ratio(sh["mount_mb_s"], sh["rclone_mb_s"])
    sh["ratio_http_vs_rclone"] = ratio(sh["mount_http_mb_s"], sh["rclone_mb_s"])
    mine, http, theirs = (random_run(report, s, 4096, 4) for s in SYSTEMS)
    report["ratio_random_4k_x4_mount_vs_rclone_iops"] = ratio(
        mine and mine["iops"], theirs and theirs["iops"]
    )
    report["ratio_random_4k_x4_http_vs_rclone_iops"] = ratio(
        http and http["iops"], theirs and theirs["iops"]
    )
    st = report["safetensors"]
    for how in ("read", "mmap"):  # seconds: below 1 means the mount is faster
        st[f"ratio_mount_{how}_vs_raw"] = ratio(st[f"mount_{how}_s"], st["raw_client_fetch_s"])
        st[f"ratio_mount_{how}_vs_rclone"] = ratio(st[f"mount_{how}_s"], st[f"rclone_{how}_s"])
        st[f"ratio_http_{how}_vs_rclone"] = ratio(st[f"mount_http_{how}_s"], st[f"rclone_{how}_s"])
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


def path_targets(report: Report) -> list[Target]:
    """§7 on the two data paths: gRPC (mount) and ranged HTTP (mount_http, nginx)."""
    big = size_label(report)
    return [
        Target(
            "§7",
            f"cold seq {big}, gRPC: mount / raw client (MB/s)",
            ">=",
            0.8,
            report["ratio_cold_mount_vs_raw"],
        ),
        Target(
            "§7",
            f"cold seq {big}, gRPC: mount / rclone mount (MB/s)",
            ">=",
            2.0,
            report["ratio_cold_mount_vs_rclone"],
        ),
        Target(
            "§7",
            f"cold seq {big}, HTTP: mount_http / rclone (MB/s)",
            ">=",
            1.5,
            report["ratio_cold_http_vs_rclone"],
        ),
        Target(
            "§7",
            f"random 4 KiB x4 over {big}, HTTP: mount_http / rclone (IOPS)",
            ">=",
            2.0,
            report["ratio_random_large_4k_http_vs_rclone_iops"],
        ),
        Target(
            "§7",
            f"random 4 KiB x4 over {big}, gRPC: mount / rclone (IOPS)",
            ">=",
            10.0,
            report["ratio_random_large_4k_mount_vs_rclone_iops"],
        ),
        Target(
            "bench",
            f"cold seq {big}: mount_http / mount (MB/s)",
            "info",
            None,
            report["ratio_cold_http_vs_mount"],
        ),
        Target(
            "bench",
            f"random 64 KiB x4 over {big}, HTTP: mount_http / rclone (IOPS)",
            "info",
            None,
            report["ratio_random_large_64k_http_vs_rclone_iops"],
        ),
        Target(
            "bench",
            f"random 64 KiB x4 over {big}, gRPC: mount / rclone (IOPS)",
            "info",
            None,
            report["ratio_random_large_64k_mount_vs_rclone_iops"],
        ),
    ]


def targets(report: Report) -> list[Target]:
    if "random_large" in report and "safetensors" not in report:  # --only http
        return path_targets(report)
    if "safetensors" not in report:  # one workload only (--only)
        return small_file_targets(report)
    st, pr = report["safetensors"], report["probes"]
    budget = report["memory_budget_mib"]
    return [
        *path_targets(report),
        Target(
            "bench",
            "random 4 KiB x4, distinct blocks of 256 MiB: mount / rclone (IOPS)",
            "info",
            None,
            report["ratio_random_4k_x4_mount_vs_rclone_iops"],
        ),
        Target(
            "bench",
            "random 4 KiB x4, distinct blocks of 256 MiB: mount_http / rclone (IOPS)",
            "info",
            None,
            report["ratio_random_4k_x4_http_vs_rclone_iops"],
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
    http: float | None = None
    raw: float | None = None
    local: float | None = None
    rclone: float | None = None

    def faster(self, value: float | None, base: float | None) -> float | None:
        """How many times faster `value` is than `base` (for seconds: base over value)."""
        if self.unit in ("s", "ms"):
            return ratio(base, value)
        return ratio(value, base)


def size_label(report: Report) -> str:
    mib = report["size_bytes"] // MiB
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def cold_seq_row(report: Report) -> Row:
    return Row(
        f"cold sequential {size_label(report)}, 1 MiB reads",
        "MB/s",
        report["mount_cold_seq_mb_s"],
        report["mount_http_cold_seq_mb_s"],
        report.get("raw_client_seq_mb_s"),
        report.get("local_cold_seq_mb_s"),  # not measured by --only http
        report["rclone_cold_seq_mb_s"],
    )


def comparison_rows(report: Report) -> list[Row]:
    sh, st, big = report["shards"], report["safetensors"], size_label(report)
    rows = [
        cold_seq_row(report),
        Row(
            f"{sh['files']} shards one after another, cold",
            "MB/s",
            sh["mount_mb_s"],
            sh["mount_http_mb_s"],
            sh["raw_client_mb_s"],
            sh["local_cold_mb_s"],
            sh["rclone_mb_s"],
        ),
    ]
    for block in (4096, 64 * 1024):
        got = [random_run(report, s, block, 4, "random_large") for s in SYSTEMS]
        mine, http, theirs = (r and r["iops"] for r in got)
        rows.append(
            Row(f"random {block // 1024} KiB x4 over {big}", "IOPS", mine, http, None, None, theirs)
        )
    for block, threads in [(r["block"], r["threads"]) for r in report["random"]["mount"]]:
        got = [random_run(report, s, block, threads) for s in SYSTEMS]
        key, unit = ("iops", "IOPS") if block < MiB else ("mb_s", "MB/s")
        mine, http, theirs = (r and r[key] for r in got)
        name = f"random {block // 1024} KiB x{threads}, distinct"
        rows.append(Row(name, unit, mine, http, None, None, theirs))
    for how in ("read", "mmap"):
        rows.append(
            Row(
                f"safetensors load by {how}",
                "s",
                st[f"mount_{how}_s"],
                st[f"mount_http_{how}_s"],
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
            report["mount_http_warm_seq_mb_s"],
            local=report["local_warm_seq_mb_s"],
            rclone=report["rclone_warm_seq_mb_s"],
        )
    )
    for stat in ("p50", "p95"):
        http, theirs = report["mount_http_ttfb"], report["rclone_ttfb"]
        rows.append(
            Row(
                f"open + first byte, cold, {stat}",
                "ms",
                report["ttfb_0_peers"][f"{stat}_ms"],
                http and http[f"{stat}_ms"],
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
            Row(f"cache: cold {big}, filling it", "MB/s", dc["cold_fill_mb_s"], None, *cold),
            Row(
                "cache: remount, file in page cache",
                "MB/s",
                dc["warm_remount"]["value"],
                None,
                *cold,
            ),
            Row(
                "cache: remount, file evicted",
                "MB/s",
                dc["warm_remount_evicted"]["value"],
                None,
                *cold,
            ),
        ]
        for how in ("read", "mmap"):
            rows.append(
                Row(
                    f"cache: remount, safetensors {how}",
                    "s",
                    dc[f"safetensors_{how}"]["value"],
                    None,
                    st["raw_client_fetch_s"],
                    st[f"local_{how}_s"],
                    st[f"rclone_{how}_s"],
                )
            )
    return rows


def path_rows(report: Report) -> list[Row]:
    """The rows --only http measures: cold sequential and random_large."""
    big = size_label(report)
    rows = [cold_seq_row(report)]
    for block in (4096, 64 * 1024):
        got = [random_run(report, s, block, 4, "random_large") for s in SYSTEMS]
        for key, unit in (("iops", "IOPS"), ("p50_ms", "ms"), ("p99_ms", "ms")):
            mine, http, theirs = (r and r[key] for r in got)
            name = f"random {block // 1024} KiB x4 over {big}" + (
                "" if key == "iops" else f", {key[:3]}"
            )
            rows.append(Row(name, unit, mine, http, None, None, theirs))
    return rows


def print_rows(rows: list[Row]) -> None:
    print(
        f"{'workload':40} {'unit':>4} {'mount':>8} {'m_http':>8} {'raw':>8} {'local':>8} "
        f"{'rclone':>8} {'m/raw':>6} {'m/local':>7} {'m/rcl':>6} {'h/rcl':>6}"
    )
    for r in rows:
        print(
            f"{r.name:40} {r.unit:>4} {fmt(r.mount):>8} {fmt(r.http):>8} {fmt(r.raw):>8} "
            f"{fmt(r.local):>8} {fmt(r.rclone):>8} {fmt(r.faster(r.mount, r.raw)):>6} "
            f"{fmt(r.faster(r.mount, r.local)):>7} {fmt(r.faster(r.mount, r.rclone)):>6} "
            f"{fmt(r.faster(r.http, r.rclone)):>6}"
        )


def print_comparison(report: Report) -> None:
    print_rows(comparison_rows(report))
    print(
        "  (mount: gRPC path; m_http: the mount on the HTTP path, reading nginx; rclone: rclone"
        " mount of the same nginx;\n   m/x, h/x: how many times faster mount, m_http is than x"
        " (for s and ms: x over it); local = cold from disk for the\n   sequential rows, page"
        " cache otherwise; cache: through --cache-dir; the cold row fills it, the remount rows"
        " read\n   it back through fresh mounts)"
    )


def print_paths(report: Report) -> None:
    """The headline ratios of the two data paths, each with what it divides."""
    print(f"\n{'data paths':46} {'ratio':>6}")
    for name, key in (
        ("cold seq: mount_http / rclone (MB/s)", "ratio_cold_http_vs_rclone"),
        (
            "random 4 KiB x4: mount_http / rclone (IOPS)",
            "ratio_random_large_4k_http_vs_rclone_iops",
        ),
        ("cold seq: mount (gRPC) / rclone (MB/s)", "ratio_cold_mount_vs_rclone"),
        ("cold seq: mount (gRPC) / raw client (MB/s)", "ratio_cold_mount_vs_raw"),
        (
            "random 4 KiB x4: mount (gRPC) / rclone (IOPS)",
            "ratio_random_large_4k_mount_vs_rclone_iops",
        ),
        ("cold seq: mount_http / mount (gRPC) (MB/s)", "ratio_cold_http_vs_mount"),
    ):
        print(f"{name:46} {fmt(report.get(key)):>6}")


def print_random(report: Report) -> None:
    for workload, title in (
        ("random_large", f"random preads over {size_label(report)} (random offsets)"),
        ("random", "random preads (distinct blocks)"),
    ):
        if workload not in report:
            continue
        extra = "distinct" if workload == "random_large" else ""
        print(
            f"\n{title:40} {'ops':>7} {'IOPS':>8} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
            f" {extra:>8}"
        )
        for system in SYSTEMS:
            runs = report[workload].get(system)
            if not runs:
                print(f"{SYSTEM_LABELS[system]:40} {'-':>7}")
                continue
            for r in runs:
                label = f"{SYSTEM_LABELS[system]} {r['block'] // 1024} KiB x{r['threads']}"
                if workload == "random_large":
                    done = f" {r['distinct_offsets']:8d}"
                else:
                    done = " all blocks" if r["all_blocks_read"] else ""
                print(
                    f"{label:40} {r['ops']:7d} {fmt(r['iops']):>8} {fmt(r['mb_s']):>8} "
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
    print(f"\n{'target':6} {'what':64} {'bound':>9} {'measured':>9}  result")
    for t in ts:
        if t.op == "info":
            result, bound = "info", "-"
        else:
            result = "n/a" if t.met is None else ("met" if t.met else "MISSED")
            bound = t.op + " " + fmt(t.bound)
        print(f"{t.source:6} {t.what:64} {bound:>9} {fmt(t.measured):>9}  {result}")


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


def print_memory(report: Report) -> None:
    by_mount = ", ".join(f"{k} {fmt(v)}" for k, v in report["mount_vm_hwm_mib_by_mount"].items())
    print(f"\n{'peak RSS by mount (MiB)':36} {by_mount}")
    print(f"{'peak RSS, rclone mounts (MiB)':36} {fmt(report['rclone_vm_hwm_mib'])}")


def print_report(report: Report, ts: list[Target]) -> None:
    if "safetensors" in report:
        print_comparison(report)
        print_paths(report)
        print_random(report)
        print_other(report)
        print_disk_cache(report)
    elif "random_large" in report:  # --only http
        print_rows(path_rows(report))
        print(
            "  (mount: gRPC path; m_http: the mount on the HTTP path, reading nginx; m/x, h/x: "
            "how many times faster;\n   for ms rows, x over it)"
        )
        print_paths(report)
        print_random(report)
        print_memory(report)
    print_small_files(report)
    print_targets(ts)
