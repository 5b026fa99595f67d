#!/usr/bin/env python3
"""The disk floor when several nodes of a loopback cluster sync at once: PROCS processes, each
appending 4 KiB records to its own file with an fdatasync after each, for SECS seconds. On one
machine a primary and its replicas share one disk, and their flushes slow each other down, so
the floor of a replicated commit here uses this figure, not a lone process's.

Usage: fsync_contended.py DIR PROCS SECS append|prepared
  append:   the file grows with every record (the inode is written with every sync);
  prepared: records overwrite zeros written and synced beforehand (as store-file does).
Prints a RESULT line as ../shared/bench/disk.sh does: p50 and p99 over every process's syncs.
"""
import multiprocessing
import os
import sys
import time

RECORD = 4096


def worker(path, secs, mode, out):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    if mode == "prepared":
        zeros = b"\0" * (1 << 20)
        for _ in range(64):
            os.write(fd, zeros)
        os.fdatasync(fd)
    record = b"\xab" * RECORD
    latencies, offset = [], 0
    end = time.perf_counter() + secs
    while time.perf_counter() < end:
        started = time.perf_counter()
        os.pwrite(fd, record, offset)
        os.fdatasync(fd)
        latencies.append(time.perf_counter() - started)
        offset = (offset + RECORD) % (64 << 20)
    os.close(fd)
    os.unlink(path)
    out.put(latencies)


def main():
    directory, procs, secs, mode = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    out = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=worker, args=(os.path.join(directory, f"contended-{i}.dat"), secs, mode, out))
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    latencies = sorted(l for _ in workers for l in out.get())
    for w in workers:
        w.join()
    n = len(latencies)
    p = lambda q: latencies[min(n - 1, round(q / 100 * (n - 1)))] * 1e3
    print("RESULT disk 4KiB-%s+fdatasync-%dprocs %d %.1f %d %.1f %.4f %.4f %.4f 0"
          % (mode, procs, 1, secs, n, n / secs, sum(latencies) / n * 1e3, p(50), p(99)))


if __name__ == "__main__":
    main()
