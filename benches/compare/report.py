#!/usr/bin/env python3
"""Turns results.tsv (one run of benches/compare/run.sh) into BENCHMARKS.md and an SVG chart of
commit latency (p50, 1 client) against quorum size for each system."""
import csv
import statistics
import sys

results, env, out_md, out_svg = sys.argv[1:5]
# Optional: markdown written by the criterion quorum matrix and by soak.sh, included as found.
extra_dir = sys.argv[5] if len(sys.argv) > 5 else None
rows = list(csv.DictReader(open(results), delimiter="\t"))

# quorum size of each (system, mode): replica acknowledgements a commit waits for
QUORUM = {
    ("repnode", "q0_async"): 0, ("repnode", "q1"): 1, ("repnode", "q2"): 2,
    ("postgres", "a_async"): 0, ("postgres", "b_any1_on"): 1, ("postgres", "c_any2_on"): 2,
    ("redis", "set_only_async_repl"): 0, ("redis", "set+wait_1"): 1, ("redis", "set+wait_2"): 2,
    ("etcd", "raft3_put_to_leader"): 1,
}


def median(system, mode, clients, key):
    values = [float(r[key]) for r in rows if r["system"] == system and r["mode"] == mode and r["clients"] == str(clients)]
    return statistics.median(values) if values else None


table = ["| system | mode | clients | writes/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
seen = []
for r in rows:
    key = (r["system"], r["mode"], r["clients"])
    if key in seen:
        continue
    seen.append(key)
    s, m, c = key
    table.append(f"| {s} | {m} | {c} | {median(s, m, c, 'ops_per_s'):.0f} | {median(s, m, c, 'p50_ms'):.2f} | {median(s, m, c, 'p99_ms'):.2f} |")

# SVG: p50 latency (1 client) against quorum size
series = {}
for (system, mode), q in QUORUM.items():
    value = median(system, mode, 1, "p50_ms")
    if value is not None:
        series.setdefault(system, []).append((q, value))
colors = {"repnode": "#d62728", "postgres": "#1f77b4", "etcd": "#2ca02c", "redis": "#9467bd"}
width, height, left, bottom, top = 640, 400, 70, 50, 30
ymax = max([v for pts in series.values() for _, v in pts] + [0.1]) * 1.15
def x(q): return left + q * (width - left - 40) / 2
def y(v): return height - bottom - v / ymax * (height - bottom - top)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
       f'<rect width="{width}" height="{height}" fill="white"/>',
       f'<text x="{width/2}" y="18" text-anchor="middle" font-size="14">Commit latency p50, 1 client, against quorum size (loopback, fsync on)</text>',
       f'<line x1="{left}" y1="{height-bottom}" x2="{width-30}" y2="{height-bottom}" stroke="black"/>',
       f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height-bottom}" stroke="black"/>',
       f'<text x="{width/2}" y="{height-12}" text-anchor="middle">replica acknowledgements per commit (0 = asynchronous)</text>',
       f'<text x="16" y="{height/2}" transform="rotate(-90 16 {height/2})" text-anchor="middle">p50 ms</text>']
for q in range(3):
    svg.append(f'<text x="{x(q)}" y="{height-bottom+16}" text-anchor="middle">{q}</text>')
for i in range(5):
    v = ymax * i / 4
    svg.append(f'<text x="{left-6}" y="{y(v)+4}" text-anchor="end">{v:.2f}</text>')
    svg.append(f'<line x1="{left}" y1="{y(v)}" x2="{width-30}" y2="{y(v)}" stroke="#ddd"/>')
for n, (system, pts) in enumerate(sorted(series.items())):
    pts.sort()
    color = colors.get(system, "black")
    svg.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (color, " ".join(f"{x(q)},{y(v)}" for q, v in pts)))
    for q, v in pts:
        svg.append(f'<circle cx="{x(q)}" cy="{y(v)}" r="4" fill="{color}"/>')
    svg.append(f'<text x="{width-150}" y="{top+20+16*n}" fill="{color}">{system}</text>')
svg.append("</svg>")
open(out_svg, "w").write("\n".join(svg))

def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(value, digits=2, suffix="x"):
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


# The targets of the benchmark issue, computed from this run only.
rtt = median("loopback", "tcp-64B-pingpong", 1, "p50_ms")
targets = []
for label, mode in [("append", "4KiB-write+fdatasync-append"), ("overwrite", "4KiB-write+fdatasync-overwrite"),
                    ("append, 3 processes syncing at once", "4KiB-append+fdatasync-3procs"),
                    ("into prepared space, 3 processes syncing at once", "4KiB-prepared+fdatasync-3procs")]:
    fsync = median("disk", mode, 1, "p50_ms")
    if rtt is not None and fsync is not None:
        floor = rtt + max(fsync, rtt + fsync)
        q1 = median("repnode", "q1", 1, "p50_ms")
        targets.append(f"| 1 client, quorum 1: p50 against the floor (RTT + max(fdatasync, RTT + fdatasync), "
                       f"fdatasync of a 4 KiB {label} = {fsync:.2f} ms, RTT {rtt:.2f} ms: floor {floor:.2f} ms) "
                       f"| at most 1.2x | {fmt(ratio(q1, floor))} |")
for peer, mode in [("postgres", "b_any1_on"), ("etcd", "raft3_put_to_leader")]:
    ours = median("repnode", "q1", 16, "ops_per_s")
    theirs = median(peer, mode, 16, "ops_per_s")
    targets.append(f"| 16 clients, quorum 1: throughput against {peer} `{mode}` | at least 3x | {fmt(ratio(ours, theirs))} |")
    ours99 = median("repnode", "q1", 16, "p99_ms")
    theirs99 = median(peer, mode, 16, "p99_ms")
    targets.append(f"| 16 clients, quorum 1: p99 against {peer} `{mode}` ({fmt(ours99, 2, ' ms')} vs {fmt(theirs99, 2, ' ms')}) | lower | {fmt(ratio(ours99, theirs99))} |")
for clients in (1, 16):
    targets.append(f"| {clients} client(s): p50 of quorum 2 of 2 against quorum 1 | at most 1.3x | "
                   f"{fmt(ratio(median('repnode', 'q2', clients, 'p50_ms'), median('repnode', 'q1', clients, 'p50_ms')))} |")
    targets.append(f"| {clients} client(s): asynchronous throughput against a primary without replicas | at least 0.9x | "
                   f"{fmt(ratio(median('repnode', 'q0_async', clients, 'ops_per_s'), median('repnode', 'q0_alone', clients, 'ops_per_s')))} |")
targets_md = "\n".join(["| target | wanted | measured |", "|---|---|---|"] + targets)

extras = ""
if extra_dir:
    import os
    for name, title, blurb in [
        ("quorum_matrix.md", "Commit path per quorum size (criterion)",
         "`cargo bench -p benches --bench quorum_matrix`: in one process, a primary and 0 to 5 replicas, "
         "quorum 0 to 4, in-memory transport or QUIC with mutual TLS on loopback, store-mem or "
         "store-file, 1 or 64 writers of 128-byte payloads. p50 and p99 from an HDR histogram of every "
         "write; the last column compares QUIC on store-file with the contended floor: every node's sync with as many syncing at once as there are nodes, plus a round trip when a replica must acknowledge."),
        ("snapshot.md", "A new replica from a snapshot (#14)",
         "`bash benches/compare/snapshot.sh`: a primary holding a million keys of 1 KiB; a new "
         "replica created with `db create --replica-of ... --wait` (snapshot transfer, install, "
         "catch-up) against `cp -r` + `sync` of the database's directory, and, before the log is "
         "compacted, a replica replaying the whole log against reading the log's files."),
        ("soak.md", "Memory under sustained load",
         "`bash benches/compare/soak.sh`: the primary's resident memory, sampled every 5 s "
         "(`target/bench-results/soak.tsv`)."),
    ]:
        path = os.path.join(extra_dir, name)
        if os.path.exists(path):
            extras += f"\n## {title}\n\n{blurb}\n\n{open(path).read().strip()}\n"

env_text = open(env).read().strip()
md = f"""# Benchmarks

Produced by `bash benches/compare/run.sh` (every system on loopback on one machine, in one run;
medians over its rounds). Compare systems within this table only: the machine is shared and
noisy, and another run gives other absolute numbers.

```
{env_text}
```

{chr(10).join(table)}

![commit latency against quorum size](benchmarks.svg)

## Targets, from this run

{targets_md}
{extras}
## What each mode guarantees

- **repnode** `q1` / `q2`: the commit waits for the primary's `fdatasync` and for 1 or 2
  replicas to report the transaction durable (their own `fdatasync`); `q0_async` waits for the
  primary's `fdatasync` only and `q0_alone` is the same primary without replicas. Clients speak
  QUIC with mutual TLS. store-file writes into space it zero-filled ahead (as PostgreSQL's WAL
  does), so its `fdatasync` is of the `overwrite` kind in the `disk` rows. The three servers
  share the machine's cores, so each runs `repnode serve --threads 1` (one runtime worker;
  with one per core, idle workers waking each other cost about 7 context switches per write
  with one client, and the single-client p50 is 8-15% higher).
- **PostgreSQL 15** `b_any1_on` / `c_any2_on`: `synchronous_standby_names = 'ANY 1 (s1,s2)'` /
  `'ANY 2 (...)'` with `synchronous_commit = on`: the standbys have flushed the WAL to disk.
  `a_async`: local flush only.
- **etcd 3.4**, three members: a put commits once a majority (the leader and one follower)
  has it in its fsynced WAL: comparable to quorum 1 of 2 replicas.
- **Redis 7** `set+wait_k`: `appendfsync always` on the primary; `WAIT k` counts replicas that
  *received* the write, not replicas that synced it, so its guarantee is weaker than the others'.
- `disk` rows: the floor, one 4 KiB write plus `fdatasync`, and a loopback round trip. The
  `-3procs` rows measure the same with three processes syncing their own files at once, as the
  primary and both replicas do here: on one machine their flushes share one disk and slow each
  other down, which the single-process floor does not show.
"""
open(out_md, "w").write(md)
print(f"wrote {out_md} and {out_svg}")
