#!/usr/bin/python3
"""Per-run cost of ctrwatch's write programs, by the kernel's BPF statistics (issue 14).

Usage (as root, ctrwatch already attached to a root elsewhere):

    /usr/bin/python3 xtask/scripts/bpf-write-stats.py --pid CTRWATCH_PID [--pid PID2] --dir DIR \
        [--iters 200000] [--sizes 1,4096] [--rounds 3]

For each write size it runs a loop of write(2)s of that size to one file in DIR (outside the
watched root; lseek to 0 every 256 writes so the file stays small) and prints, for each of
ctrwatch's write programs, run_cnt and run_time_ns added during the loop and their ratio, ns
per run. These figures do not depend on the load of the machine the way wall-clock ones do:
they count only the time the programs ran (the load still shows through cache misses).

Statistics are switched on with the refcounted BPF_ENABLE_STATS command (bpf(2) cmd 32,
BPF_STATS_RUN_TIME): on while this script holds the returned fd, off again when it exits,
whatever other users of the command do; the sysctl kernel.bpf_stats_enabled is not touched.
They add two clock reads to every program run, which are in the figures.

Which programs: those of the links --pid holds (read from /proc/PID/fdinfo: once attached,
ctrwatch keeps links, not program fds), plus the tail-called stages (`write_path`, no link of
their own) among the programs with the same name whose id lies within the ids of that
daemon's linked programs (one daemon loads its programs together). The kernel accounts a
tail-called program's time to the program that jumped to it: `write_path` shows run_cnt 0,
and its time is inside `enter_write`'s.

With two --pid (say a daemon of the build before a change and one of the build after it,
both attached to the same unrelated root), every write runs both builds' programs in the same
instant: the comparison is paired write by write, the fairest this machine allows (start them
in both orders: the second program on a tracepoint finds the task's fd table in cache).

The workload runs in Python, so its own per-write time is meaningless here; the statistics
are per program run, taken over every write the machine made meanwhile (the loop's are nearly
all of them).
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

SYS_BPF = 321  # x86_64
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
PROGRAMS = ("enter_write", "write_path", "exit_write")


def enable_stats():
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.c_uint32(BPF_STATS_RUN_TIME)
    fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        sys.exit(f"BPF_ENABLE_STATS: {os.strerror(err)}")
    return fd


def bpftool(*args):
    out = subprocess.run(["bpftool", *args, "--json"], check=True, capture_output=True)
    return json.loads(out.stdout)


def daemon_programs(pid):
    """{id: (pid, name)} of the write programs that belong to the daemon `pid`."""
    linked = set()
    fdinfo = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fdinfo):
        try:
            with open(os.path.join(fdinfo, fd)) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        if "link_id" in fields and "prog_id" in fields:
            linked.add(int(fields["prog_id"]))
    if not linked:
        sys.exit(f"no BPF links held by pid {pid}: is ctrwatch attached?")
    low, high = min(linked), max(linked)
    chosen = {}
    for prog in bpftool("prog", "show"):
        name = prog.get("name", "")
        if name not in PROGRAMS:
            continue
        if prog["id"] in linked or (name == "write_path" and low <= prog["id"] <= high):
            chosen[prog["id"]] = (pid, name)
    return chosen


def snapshot(ids):
    stats = {}
    for prog in bpftool("prog", "show"):
        if prog["id"] in ids:
            stats[prog["id"]] = (prog.get("run_cnt", 0), prog.get("run_time_ns", 0))
    return stats


def write_loop(path, size, iters):
    buf = b"x" * size
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write, lseek = os.write, os.lseek
        for i in range(iters):
            if i % 256 == 0:
                lseek(fd, 0, os.SEEK_SET)
            write(fd, buf)
    finally:
        os.close(fd)
        os.unlink(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, action="append", required=True,
                        help="a ctrwatch daemon's pid (repeat to compare daemons)")
    parser.add_argument("--dir", required=True, help="where to write (outside the root)")
    parser.add_argument("--iters", type=int, default=200_000)
    parser.add_argument("--sizes", default="1,4096")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    programs = {}
    for pid in args.pid:
        programs.update(daemon_programs(pid))
    stats_fd = enable_stats()
    try:
        path = os.path.join(args.dir, f"bpf-write-stats.{os.getpid()}")
        print(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, "
              f"load average {os.getloadavg()[0]:.2f}, programs {sorted(programs.items())}")
        print("size\tround\tdaemon\tprogram\tid\truns\tns_total\tns_per_run")
        for size in (int(s) for s in args.sizes.split(",")):
            for rnd in range(args.rounds):
                before = snapshot(programs)
                write_loop(path, size, args.iters)
                after = snapshot(programs)
                order = sorted(programs.items(), key=lambda kv: (PROGRAMS.index(kv[1][1]), kv[1][0]))
                for prog_id, (daemon, name) in order:
                    runs = after[prog_id][0] - before[prog_id][0]
                    ns = after[prog_id][1] - before[prog_id][1]
                    per = f"{ns / runs:.1f}" if runs else "-"
                    print(f"{size}\t{rnd}\t{daemon}\t{name}\t{prog_id}\t{runs}\t{ns}\t{per}")
    finally:
        os.close(stats_fd)


if __name__ == "__main__":
    main()
