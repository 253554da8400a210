#!/usr/bin/env python3
"""Summary of the benchmark scripts' Markdown results (used by bench/all.sh).

    python3 bench/lib/summary.py --results DIR --status FILE --env FILE \
        --md OUT.md --png OUT.png [--tsv OUT.tsv]

DIR holds <script>.md as the scripts wrote them (their `--out`). FILE has one
line per script: name<TAB>exit code<TAB>seconds<TAB>reason<TAB>options
(exit code "-" = not run). The env file holds Markdown lines for the header.

Each figure below names the cells it takes from a script's first table of
figures: a row (by the start of its label) and a column ("median" for
startup/agent/ha, "value" for scheduler, the median of the "run N" columns for
pods, named columns for api). Where the script prints a ratio row it is used
as is (it is the median of per-run ratios); otherwise ratio = ours / reference.
Nothing here measures anything: a figure missing from a script's table is
shown as "n/a (row missing)", a script that failed as "failed".

Prints the table on stdout, writes it as Markdown (with the environment, each
script's status and wall time, what each reference is, and each script's own
Markdown as an appendix), as TSV, and the ratios as a PNG bar chart
(matplotlib; a plain bar chart without text when matplotlib is missing).
"""

import argparse
import math
import os
import re
import statistics
import struct
import sys
import zlib

# ------------------------------------------------------------------ figures --
# key: (row label prefix, column); column "median", "value", "runs" (median of
# the run columns) or a header name with "@N" for its N-th occurrence.
# better: "lower" (times, memory) or "higher" (rates), for the chart colours.
# check: (which, op, limit) evaluated on "ours" or "ratio".
FIGURES = [
    # start to Ready
    dict(script="startup", figure="start to Ready (s)",
         ours=("start-to-Ready", "median"), ref=("raw etcd start-to-healthy", "median"),
         ratio=("ratio ours / raw etcd", "median"),
         refis="raw etcd (same binary, no TLS) start to healthy, same run",
         target="< 3 s", check=("ours", "<", 3), better="lower"),
    dict(script="startup", figure="warm restart to Ready (s)",
         ours=("warm-restart-to-Ready", "median"), ref=("raw etcd restart-to-healthy", "median"),
         refis="raw etcd restart to healthy on its data dir", target="-", better="lower"),
    # join
    dict(script="agent", figure="agent join to Ready (s)",
         ours=("join to Ready", "median"), ref=("probe latency, HAProxy", "median"),
         refis="floor: one `kubectl get node` through HAProxy (the poll that sees Ready)",
         target="-", better="lower"),
    dict(script="ha", figure="server join to Ready, servers 2+3 together (s)",
         ours=("initial join to Ready", "median"), ref=None,
         refis="none measured", target="< 10 s", check=("ours", "<", 10), better="lower"),
    dict(script="ha", figure="server re-join to Ready, wiped data dir (s)",
         ours=("re-join to Ready", "median"), ref=None,
         refis="none measured", target="< 10 s", check=("ours", "<", 10), better="lower"),
    # failover
    dict(script="ha", figure="failover: first write after SIGKILL of etcd leader (s)",
         ours=("first write after SIGKILL, etcd leader", "median"),
         ref=("etcd new leader after SIGKILL of leader", "median"),
         ratio=("ratio write / etcd election", "median"),
         refis="etcd's own new leader after the same kill",
         target="< 2 s", check=("ours", "<", 2), better="lower"),
    dict(script="ha", figure="failover: first write after SIGKILL of a follower (s)",
         ours=("first write after SIGKILL, follower", "median"),
         ref=("write latency, healthy", "median"),
         refis="floor: one write (curl) on the healthy cluster",
         target="< 2 s", check=("ours", "<", 2), better="lower"),
    # agent resume
    dict(script="agent", figure="agent API resume after server SIGKILL (s)",
         ours=("API resume after SIGKILL, agent balancer", "median"),
         ref=("API resume after SIGKILL, HAProxy", "median"),
         ratio=("ratio resume agent / HAProxy", "median"),
         refis="the same fault and probe through HAProxy",
         target="< 2 s", check=("ours", "<", 2), better="lower"),
    # RSS
    dict(script="startup", figure="server RSS idle, excl. etcd (MB)",
         ours=("server RSS idle", "median"), ref=None,
         refis="none (not machine-speed dependent)",
         target="< 64 MB", check=("ours", "<", 64), better="lower"),
    dict(script="startup", figure="etcd child RSS idle (MB)",
         ours=("etcd child RSS idle", "median"), ref=("raw etcd RSS idle", "median"),
         refis="raw etcd (no TLS) RSS, same run", target="-", better="lower"),
    dict(script="agent", figure="agent RSS (MB)",
         ours=("agent RSS", "median"), ref=("server RSS, rke2 excl. etcd", "median"),
         ratio=("ratio RSS agent / server", "median"),
         refis="a server's rke2 process, same moment",
         target="< 32 MB", check=("ours", "<", 32), better="lower"),
    # API throughput
    dict(script="api", figure="API create ConfigMap (ops/s)",
         ours=("create:", "ours ops/s"), ref=("create:", "raw ops/s"), ratio=("create:", "ratio"),
         refis="raw etcd put on the same member", target="ratio >= 0.70",
         check=("ratio", ">=", 0.70), better="higher"),
    dict(script="api", figure="API GET (ops/s)",
         ours=("get:", "ours ops/s"), ref=("get:", "raw ops/s"), ratio=("get:", "ratio"),
         refis="raw etcd range of 1 key", target="-", better="higher"),
    dict(script="api", figure="API update with resourceVersion (ops/s)",
         ours=("update:", "ours ops/s"), ref=("update:", "raw ops/s"), ratio=("update:", "ratio"),
         refis="raw etcd txn on mod_revision", target="-", better="higher"),
    dict(script="api", figure="API LIST of 1,000 (ops/s)",
         ours=("list:", "ours ops/s"), ref=("list:", "raw ops/s"), ratio=("list:", "ratio"),
         refis="raw etcd range of the same keys", target="-", better="higher"),
    dict(script="api", figure="API watch events (events/s)",
         ours=("watch:", "ours ops/s"), ref=("watch:", "raw ops/s"), ratio=("watch:", "ratio"),
         refis="raw etcd watch of raw puts", target="-", better="higher"),
    dict(script="api", figure="API GET p99, paced open loop (ms)",
         ours=("GET paced", "p99"), ref=("GET paced", "p99@2"),
         refis="raw etcd range p99 at the same rate",
         target="< 5 ms", check=("ours", "<", 5), better="lower"),
    dict(script="api", figure="API watch fan-out delivery p99 (ms)",
         ours=("delivery p99, write answer", "API watches"),
         ref=("delivery p99, write answer", "etcd watches"),
         ratio=("delivery p99, write answer", "API / etcd"),
         refis="as many etcd watches of the same writes as raw puts, same run",
         target="-", better="lower"),
    dict(script="api", figure="server RSS with the fan-out's API watches open (MiB)",
         ours=("rke2 RSS with the watches open", "API watches"), ref=None,
         refis="none (memory)", target="-", better="lower"),
    # scheduler
    dict(script="scheduler", figure="scheduler throughput (pods/s)",
         ours=("scheduling throughput", "value"),
         ref=("raw API create rate", "value"), ratio=("ratio throughput / raw create rate", "value"),
         refis="the API's create rate with nothing scheduled, same server",
         target=">= 300 pods/s", check=("ours", ">=", 300), better="higher"),
    dict(script="scheduler", figure="scheduler creation -> binding p99 (s)",
         ours=("creation -> binding p99 (s)", "value"), ref=None,
         refis="none measured", target="-", better="lower"),
    # pod startup: paced (the SLO method, the target) and the burst (context)
    dict(script="pods", figure="pod creation -> Ready p50, paced 5/s (s)",
         ours=(r"paced, [\d.]+ pods/s: creation -> Ready p50", "runs"), ref=None,
         refis="none measured (pods created one at a time at a uniform rate, --qps)",
         target="-", better="lower"),
    dict(script="pods", figure="pod creation -> Ready p99, paced 5/s (s)",
         ours=(r"paced, [\d.]+ pods/s: creation -> Ready p99 \(s\)", "runs"), ref=None,
         refis="none measured (the k8s SLO method: clusterloader2's uniform-rate latency pods)",
         target="< 2 s", check=("ours", "<", 2), better="lower"),
    dict(script="pods", figure="pod creation -> Ready p50, burst all at once (s)",
         ours=(r"burst, all \d+ at once: creation -> Ready p50", "runs"),
         ref=(r"ctr run, all \d+ at once: p50", "runs"),
         ratio=("ratio burst p50 / ctr all at once", "runs"),
         refis="`ctr run -d` of as many containers, all at once, same containerd",
         target="-", better="lower"),
    dict(script="pods", figure="pod creation -> Ready p99, burst all at once (s)",
         ours=(r"burst, all \d+ at once: creation -> Ready p99 \(s\)", "runs"),
         ref=(r"ctr run, all \d+ at once: p99", "runs"),
         ratio=("ratio burst p99 / ctr all at once", "runs"),
         refis="`ctr run -d`, all at once: p99", target="-", better="lower"),
    dict(script="pods", figure="pods Ready per second, burst all at once",
         ours=(r"burst, all \d+ at once: throughput", "runs"),
         ref=(r"ctr run, all \d+ at once: throughput", "runs"),
         ratio=("ratio burst throughput / ctr all at once", "runs"),
         refis="`ctr run -d`, all at once: containers/s", target="-", better="higher"),
    # scale (hollow nodes)
    dict(script="scale", figure="scale: worst mutating p99 in the pod ramp (ms)",
         ours=[("mutating p99, probe", "value"), ("mutating p99, ReplicaSet creates", "value"),
               ("mutating p99, hollow nodes' writes in the ramp", "value")],
         ref=("reference: raw etcd put p99", "value"),
         ratio=("ratio worst mutating p99 in the ramp", "value"),
         refis="raw etcd puts of a stored pod's size, same concurrency, same etcd: p99",
         target="< 1000 ms", check=("ours", "<", 1000), better="lower"),
    dict(script="scale", figure="scale: mutating p99 with the watchers open (ms)",
         ours=(r"mutating p99 with \d+ watchers open", "value"), ref=None,
         refis="none (the raw put p99 above is a closed-loop burst, these writes are paced)",
         target="< 1000 ms", check=("ours", "<", 1000), better="lower"),
    dict(script="scale", figure="scale: pod startup p99, seen -> Running (s)",
         ours=("pod startup p99", "value"), ref=None, refis="none measured",
         target="< 5 s", check=("ours", "<", 5), better="lower"),
    dict(script="scale", figure="scale: pods bound per second",
         ours=("pods bound per second", "value"), ref=None, refis="none measured",
         target="-", better="higher"),
    dict(script="scale", figure="scale: hollow nodes start -> all Ready (s)",
         ours=("hollow nodes: start -> all", "value"), ref=None, refis="none measured",
         target="-", better="lower"),
    dict(script="scale", figure="scale: watch delivery p99 (ms)",
         ours=("watch delivery p99", "value"), ref=None, refis="none measured",
         target="-", better="lower"),
    dict(script="scale", figure="scale: server RSS steady, rke2-1 (MB)",
         ours=("RSS steady / peak (MB): rke2-1", "value"), ref=None,
         refis="none (memory)", target="-", better="lower"),
    # cluster DNS
    dict(script="dns", figure="DNS queries/s, 1,000 Service names",
         ours=("rke2 dns queries/s", "median"), ref=("dnsmasq queries/s", "median"),
         ratio=("ratio ours / dnsmasq", "median"),
         refis="dnsmasq, the same names from --addn-hosts, same CPU", target="ratio >= 1.0",
         check=("ratio", ">=", 1.0), better="higher"),
    dict(script="dns", figure="DNS p99 at a fixed rate (ms)",
         ours=("rke2 dns p99 at", "median"), ref=("dnsmasq p99 at", "median"),
         refis="dnsmasq, same names, same rate: p99", target="-", better="lower"),
    dict(script="dns", figure="DNS server RSS, 1,000 Services (MB)",
         ours=("rke2 dns RSS, 1000 Services, after the load", "median"),
         ref=("dnsmasq RSS", "median"),
         refis="dnsmasq with the same 1,000 hosts", target="-", better="lower"),
    # Services on the two-node bed
    dict(script="services", figure="Service endpoint Ready -> traffic p99, worst path (ms)",
         ours=[("Ready -> answer, ClusterIP via the pod's node", "p99 (ms)"),
               ("Ready -> answer, ClusterIP via the other node", "p99 (ms)"),
               ("Ready -> answer, NodePort on the pod's node", "p99 (ms)"),
               ("Ready -> answer, NodePort on the other node", "p99 (ms)")],
         ref=("Ready -> answer, pod IP", "p99 (ms)"),
         refis="the same by pod IP (the pod serves all along: watch delivery + one request)",
         target="<= 1000 ms", check=("ours", "<=", 1000), better="lower"),
    dict(script="services", figure="TCP connect+request p50 through a ClusterIP (ms)",
         ours=("ClusterIP p50", "median"), ref=("pod IP p50", "median"),
         ratio=("ratio ClusterIP / pod IP p50", "median"),
         refis="the pod IP, same client and node, requests alternating",
         target="ratio <= 1.1", check=("ratio", "<=", 1.1), better="lower"),
    dict(script="services", figure="TCP connect+request p99 through a ClusterIP (ms)",
         ours=("ClusterIP p99", "median"), ref=("pod IP p99", "median"),
         ratio=("ratio ClusterIP / pod IP p99", "median"),
         refis="the pod IP, same client and node, requests alternating",
         target="ratio <= 1.1", check=("ratio", "<=", 1.1), better="lower"),
    dict(script="services", figure="requests/s through a ClusterIP",
         ours=("ClusterIP requests/s", "median"), ref=("pod IP requests/s", "median"),
         ratio=("ratio ClusterIP / pod IP requests/s", "median"),
         refis="the pod IP, same clients, same node", target="-", better="higher"),
]

SCRIPT_ORDER = ["startup", "agent", "ha", "scheduler", "pods", "api", "scale", "dns", "services"]


# ---------------------------------------------------------------- markdown --
def tables(text):
    """Every Markdown table in text: list of (header cells, rows of cells)."""
    out, cur = [], []
    for line in text.splitlines() + [""]:
        s = line.strip()
        if s.startswith("|"):
            cur.append([c.strip() for c in s.strip("|").split("|")])
            continue
        if len(cur) >= 2 and all(re.fullmatch(r":?-{3,}:?", c) for c in cur[1]):
            out.append((cur[0], cur[2:]))
        cur = []
    return out


NUM = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def number(cell):
    m = NUM.search(cell.replace("**", "")) if cell else None
    return (float(m.group()), m.group()) if m else (None, None)


def decimals(s):
    return len(s.split(".")[1]) if s and "." in s else 0


def cell(tbls, spec):
    """(float, text) of the cell spec = (row label prefix, column), or (None,
    reason): the first table with that column and a row whose label starts
    with the prefix (a regular expression when it has \\ or [ ]). A list of
    specs: the largest of their values."""
    if isinstance(spec, list):
        got = [cell(tbls, s) for s in spec]
        nums = [g for g in got if g[0] is not None]
        return max(nums) if nums else (None, got[0][1] if got else "n/a")
    label, col = spec
    name, _, nth = col.partition("@")

    def has_col(head):
        low = [h.lower() for h in head]
        return any(re.fullmatch(r"run \d+", h) for h in low) if col == "runs" else name.lower() in low

    cands = [(h, rs) for h, rs in tbls if has_col(h)]
    if not cands:
        return None, f"n/a (no table with column {name})"
    rx = re.compile(r"\s*" + (label if any(ch in label for ch in "\\[]") else re.escape(label)), re.I)
    hit = next(((h, r) for h, rs in cands for r in rs if r and rx.match(r[0])), None)
    if hit is None:
        return None, "n/a (row missing)"
    head, r = hit
    names = [h.lower() for h in head]
    if col == "runs":
        vals = [number(r[i]) for i, n in enumerate(names) if re.fullmatch(r"run \d+", n) and i < len(r)]
        vals = [v for v in vals if v[0] is not None]
        if not vals:
            return None, "n/a"
        med = statistics.median(v for v, _ in vals)
        d = max(decimals(t) for _, t in vals)
        return med, f"{med:.{d}f}"
    idx = [i for i, n in enumerate(names) if n == name.lower()]
    k = int(nth or 1) - 1
    if k >= len(idx) or idx[k] >= len(r):
        return None, "n/a"
    v, t = number(r[idx[k]])
    return (v, t) if v is not None else (None, r[idx[k]] or "n/a")


def fmt_ratio(x):
    if x is None:
        return ""
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def verdict(check, ours, ratio):
    if not check:
        return ""
    which, op, lim = check
    v = ours if which == "ours" else ratio
    if v is None:
        return ""
    ok = {"<": v < lim, "<=": v <= lim, ">": v > lim, ">=": v >= lim}[op]
    return "met" if ok else "NOT met"


# ------------------------------------------------------------------- rows --
def read_status(path):
    st = {}
    with open(path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) >= 4:
                st[p[0]] = dict(rc=p[1], secs=p[2], reason=p[3], opts=p[4] if len(p) > 4 else "")
    return st


def generic_figures(name, tbls):
    """A script without a spec here: its rows labelled ratio..., or its first
    table's rows with a target that is neither -, context nor reference."""
    rows = []
    for head, trs in tbls[:1]:
        names = [h.lower() for h in head]
        vcol = next((c for c in ("median", "value", "ours") if c in names), None)
        if vcol is None:
            runs = [i for i, n in enumerate(names) if re.fullmatch(r"run \d+", n)]
            vcol = "runs" if runs else (head[1] if len(head) > 1 else None)
        tcol = names.index("target") if "target" in names else None
        for r in trs:
            if not r:
                continue
            t = r[tcol] if tcol is not None and tcol < len(r) else "-"
            if r[0].lower().startswith("ratio"):
                rows.append(dict(script=name, figure=r[0], ours=None, ref=None,
                                 ratio=(re.escape(r[0]), vcol), refis="(the script's own ratio row)",
                                 target=t, better="lower"))
            elif t.strip() not in ("-", "", "context", "reference") and not t.startswith("context"):
                rows.append(dict(script=name, figure=r[0], ours=(re.escape(r[0]), vcol), ref=None,
                                 refis="(not paired by bench/lib/summary.py)", target=t, better="lower"))
    return rows


def build_rows(results, status):
    md = {}
    for name in status:
        p = os.path.join(results, name + ".md")
        if os.path.exists(p):
            with open(p, encoding="utf-8", errors="replace") as f:
                md[name] = f.read()
    specs = list(FIGURES)
    known = {f["script"] for f in FIGURES}
    for name in status:
        if name not in known and name in md:
            g = generic_figures(name, tables(md[name]))
            specs += g or [dict(script=name, figure="(no figures found in its table)", ours=None,
                                ref=None, refis="", target="-", better="lower")]
        elif name not in known:
            specs.append(dict(script=name, figure="(all figures)", ours=None, ref=None,
                              refis="", target="-", better="lower"))
    out = []
    for f in specs:
        name = f["script"]
        s = status.get(name)
        row = dict(figure=f["figure"], source=name + ".sh", refis=f.get("refis", ""),
                   better=f.get("better", "lower"), target=f.get("target", "-"),
                   ours="", ref="", ratio="", ratio_v=None, ok=True, verdict="")
        if s is None or s["rc"] == "-":
            row.update(ours="not run", ok=False, target=(s or {}).get("reason") or "not run")
            out.append(row)
            continue
        if s["rc"] != "0" or name not in md:
            why = s["reason"] or (f"exit {s['rc']}" if s["rc"] != "0" else "no Markdown written")
            row.update(ours="FAILED", ok=False, target=why)
            out.append(row)
            continue
        tbls = tables(md[name])
        ov = rv = None
        if f.get("ours"):
            ov, row["ours"] = cell(tbls, f["ours"])
        if f.get("ref"):
            rv, row["ref"] = cell(tbls, f["ref"])
        else:
            row["ref"] = "-"
        ratio = None
        if f.get("ratio"):
            ratio, txt = cell(tbls, f["ratio"])
            if ratio is None and ov is not None and rv:
                ratio = ov / rv
        elif ov is not None and rv:
            ratio = ov / rv
        row["ratio_v"] = ratio
        row["ratio"] = fmt_ratio(ratio) if ratio is not None else ("n/a" if f.get("ref") else "-")
        row["verdict"] = verdict(f.get("check"), ov, ratio)
        out.append(row)
    order = {n: i for i, n in enumerate(SCRIPT_ORDER)}
    # keep the issue's order of figures; unknown scripts at the end
    out.sort(key=lambda r: 0 if r["source"][:-3] in order else 1)
    return out, md


# ------------------------------------------------------------------ output --
def target_text(r):
    t = r["target"]
    return f"{t}: {r['verdict']}" if r["verdict"] and t not in ("-", "") else t


def print_table(rows):
    w = max(len(r["figure"]) for r in rows) if rows else 10
    print(f"{'figure':<{w}}  {'ours':>10}  {'reference':>10}  {'ratio':>6}  {'target':<24} source")
    for r in rows:
        print(f"{r['figure']:<{w}}  {r['ours']:>10}  {r['ref']:>10}  {r['ratio']:>6}  "
              f"{target_text(r):<24} {r['source']}")


def md_escape(s):
    return s.replace("|", "\\|")


def demote(text):
    """A script's Markdown as an appendix: headings three levels down."""
    return re.sub(r"^(#+) ", lambda m: "#" * min(len(m.group(1)) + 3, 6) + " ", text, flags=re.M)


def write_md(path, rows, md, status, env, png_note):
    L = ["# rke2 benchmarks: summary", ""]
    L += env
    L += ["",
          "One row per figure: ours, the reference measured in the same run of the same",
          "script (same machine, same moment), and ratio = ours / reference (for the",
          "scripts' own ratio rows: the median of their per-run ratios). Times and memory:",
          "lower is better, so a ratio above 1 is the cost over the reference; rates",
          "(ops/s, pods/s): higher is better. Compare ratios across machines, not raw",
          "figures. `-`: no reference for that figure.", "",
          "| figure | ours | reference | ratio | target | source | reference is |",
          "| --- | ---: | ---: | ---: | --- | --- | --- |"]
    for r in rows:
        t = target_text(r).replace(": NOT met", ": **NOT met**")
        L.append("| " + " | ".join(md_escape(x) for x in (
            r["figure"], r["ours"], r["ref"], r["ratio"], t, f"`{r['source']}`", r["refis"])) + " |")
    L += ["", f"![ratios]({png_note[0]})" if png_note[0] else "", png_note[1], ""]
    L += ["## Scripts", "", "| script | options | result | wall time |", "| --- | --- | --- | ---: |"]
    for name in sorted(status, key=lambda n: SCRIPT_ORDER.index(n) if n in SCRIPT_ORDER else 99):
        s = status[name]
        res = ("not run" if s["rc"] == "-" else "ok" if s["rc"] == "0" else f"FAILED (exit {s['rc']})")
        if s["reason"]:
            res = (f"FAILED (exit {s['rc']}): {s['reason'][len('FAILED: '):]}"
                   if s["reason"].startswith("FAILED: ") else f"{res}: {s['reason']}")
        secs = f"{float(s['secs']):.0f} s" if s["secs"] not in ("", "-") else "-"
        opts = "-" if s["rc"] == "-" else f"`{s['opts'] or '(defaults)'}`"
        L.append(f"| `{name}.sh` | {opts} | {md_escape(res)} | {secs} |")
    L += ["", "## Each script's own results (this run)", ""]
    for name in sorted(md, key=lambda n: SCRIPT_ORDER.index(n) if n in SCRIPT_ORDER else 99):
        L += [f"### `{name}.sh`", "", demote(md[name]).rstrip(), ""]
    with open(path, "w") as f:
        f.write("\n".join(L).rstrip() + "\n")


def write_tsv(path, rows):
    with open(path, "w") as f:
        f.write("figure\tours\treference\tratio\ttarget\tsource\n")
        for r in rows:
            f.write("\t".join((r["figure"], r["ours"], r["ref"], r["ratio"], target_text(r), r["source"])) + "\n")


# -------------------------------------------------------------------- chart --
LOWER, HIGHER = "#4c72b0", "#dd8452"


def chart_matplotlib(path, bars, title, foot):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(bars)
    fig, ax = plt.subplots(figsize=(11, 0.42 * n + 1.9), dpi=110)
    ys = list(range(n))[::-1]
    vals = [b[1] for b in bars]
    lo = min(min(vals), 1.0) / 1.6
    hi = max(max(vals), 1.0) * 1.6
    for y, (label, v, better) in zip(ys, bars):
        ax.barh(y, v - 1.0, left=1.0, height=0.62, color=LOWER if better == "lower" else HIGHER)
        ax.text(v * (1.06 if v >= 1 else 1 / 1.06), y, f"{v:.2f}", va="center",
                ha="left" if v >= 1 else "right", fontsize=8)
    ax.axvline(1.0, color="black", linewidth=1.2)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if lo <= t <= hi]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    from matplotlib.ticker import NullFormatter
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(ys)
    ax.set_yticklabels([b[0] for b in bars], fontsize=8.5)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("ratio ours / reference (log scale; 1 = the reference)")
    ax.set_title(title, fontsize=10)
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color=LOWER, label="time / memory: lower is better"),
                       Patch(color=HIGHER, label="rate: higher is better")],
              loc="upper center", bbox_to_anchor=(0.5, -0.07 - 0.6 / n), ncol=2, fontsize=8,
              frameon=False)
    ax.grid(axis="x", which="major", linestyle=":", linewidth=0.6)
    if foot:
        fig.text(0.01, 0.005, foot, fontsize=7.5, va="bottom")
    fig.tight_layout(rect=(0, 0.05 if foot else 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def chart_plain(path, bars):
    """Last resort without matplotlib: bars on a log axis, a black line at
    1.0, no text. PNG written with zlib + struct."""
    W, rowh = 800, 22
    H = rowh * len(bars) + 20
    img = [[(255, 255, 255)] * W for _ in range(H)]
    vals = [b[1] for b in bars]
    lo, hi = math.log(min(min(vals), 1.0) / 1.5), math.log(max(max(vals), 1.0) * 1.5)
    x = lambda v: int(20 + (math.log(v) - lo) / (hi - lo) * (W - 40))
    x1 = x(1.0)
    for i, (_, v, better) in enumerate(bars):
        c = (0x4c, 0x72, 0xb0) if better == "lower" else (0xdd, 0x84, 0x52)
        a, b = sorted((x1, x(v)))
        for yy in range(10 + i * rowh + 3, 10 + i * rowh + rowh - 3):
            for xx in range(a, max(b, a + 1) + 1):
                img[yy][xx] = c
    for yy in range(H):
        img[yy][x1] = (0, 0, 0)
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in img)

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_png(path, rows, title):
    bars = [(f"{r['figure']}  [{r['source']}]", r["ratio_v"], r["better"])
            for r in rows if r["ratio_v"] is not None and r["ratio_v"] > 0]
    failed = sorted({r["source"] for r in rows if not r["ok"]})
    foot = ("no ratio (failed or not run): " + ", ".join(failed)) if failed else ""
    if not bars:
        bars = [("(no ratios)", 1.0, "lower")]
    try:
        chart_matplotlib(path, bars, title, foot)
        return "matplotlib"
    except ImportError:
        chart_plain(path, bars)
        return "plain"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True)
    ap.add_argument("--status", required=True)
    ap.add_argument("--env", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--png", required=True)
    ap.add_argument("--tsv")
    ap.add_argument("--title", default="rke2 benchmarks: ours / reference, same run")
    a = ap.parse_args()

    status = read_status(a.status)
    rows, md = build_rows(a.results, status)
    with open(a.env) as f:
        env = [l.rstrip("\n") for l in f if l.strip()]
    print_table(rows)
    how = write_png(a.png, rows, a.title)
    note = ("" if how == "matplotlib" else
            "The chart was drawn without matplotlib (not importable): bars only, no "
            "text; the bars are the ratios above in the same order, on a log axis, "
            "the black line is 1.0.")
    write_md(a.md, rows, md, status, env, (os.path.basename(a.png), note))
    if a.tsv:
        write_tsv(a.tsv, rows)
    if how != "matplotlib":
        print("summary.py: matplotlib not importable: the PNG has bars only, no text", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
