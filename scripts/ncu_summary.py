#!/usr/bin/env python3
"""Summarise an Nsight Compute CSV (--csv --log-file, metrics gpu__time_duration.sum and dram__bytes_read.sum /
dram__bytes_write.sum) per kernel name: launches, total and mean time, DRAM bytes, achieved bandwidth.

    python3 scripts/ncu_summary.py ncu.csv [--templates]

--templates keeps the template arguments in the kernel names (one row per instantiation).
"""
import csv
import re
import sys
from collections import OrderedDict, defaultdict

TIME = {"nsecond": 1e-9, "ns": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3, "second": 1.0, "s": 1.0}
BYTES = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9, "B": 1}


KEEP_TEMPLATES = False


def short(name):
    name = name.replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"\((?![^<]*>).*", "", name)  # drop the parameter list (not a parenthesis inside template arguments)
    return name if KEEP_TEMPLATES else re.sub(r"<.*>", "<>", name)  # collapse template arguments


def main(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    rows = list(csv.DictReader(lines))
    kernels = OrderedDict()
    for r in rows:
        k = kernels.setdefault(r["ID"], {"name": short(r["Kernel Name"]), "grid": r.get("Grid Size", ""),
                                         "block": r.get("Block Size", ""), "t": 0.0, "rd": 0.0, "wr": 0.0})
        v = float(r["Metric Value"].replace(",", "")) if r["Metric Value"] not in ("", "n/a") else 0.0
        unit = r["Metric Unit"]
        if r["Metric Name"] == "gpu__time_duration.sum":
            k["t"] = v * TIME.get(unit, 1e-9)
        elif r["Metric Name"] == "dram__bytes_read.sum":
            k["rd"] = v * BYTES.get(unit, 1)
        elif r["Metric Name"] == "dram__bytes_write.sum":
            k["wr"] = v * BYTES.get(unit, 1)
    agg = defaultdict(lambda: {"n": 0, "t": 0.0, "rd": 0.0, "wr": 0.0})
    for k in kernels.values():
        a = agg[k["name"]]
        a["n"] += 1
        a["t"] += k["t"]
        a["rd"] += k["rd"]
        a["wr"] += k["wr"]
    total = sum(a["t"] for a in agg.values())
    total_b = sum(a["rd"] + a["wr"] for a in agg.values())
    print(f"kernels profiled: {len(kernels)}, GPU time {total * 1e6:.1f} us, DRAM {total_b / 1e6:.1f} MB "
          f"({total_b / total / 1e9 if total else 0:.0f} GB/s over kernel time)")
    print("| kernel | launches | total us | mean us | share | DRAM MB | GB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, a in sorted(agg.items(), key=lambda kv: -kv[1]["t"]):
        b = a["rd"] + a["wr"]
        print(f"| {name} | {a['n']} | {a['t'] * 1e6:.1f} | {a['t'] * 1e6 / a['n']:.2f} | {100 * a['t'] / total:.1f}% | "
              f"{b / 1e6:.2f} | {b / a['t'] / 1e9 if a['t'] else 0:.0f} |")


if __name__ == "__main__":
    KEEP_TEMPLATES = "--templates" in sys.argv[2:]
    main(sys.argv[1])
