#!/bin/sh
# Issue 15, benchmarks: cargo xtask vm-test --scenario bench. The overhead of each backend
# on operation loops, in one boot: no watcher; `run --backend tracepoint`; `run --backend
# fentry`; `run --backend tracepoint --protect dry-run` (the LSM hooks on top of the
# tracepoints: there is no LSM without them). The loops are tests/src/bin/bench.rs's
# `--worker --serve` mode (static, beside ctrwatch on the test disk): one process per loop
# and block, serving its passes. Starting the daemon takes 5-70 s under TCG, so each start
# serves a block of passes of every loop, and every block of a daemon is bracketed by blocks
# with no watcher, to which the host compares it (xtask/src/guest_bench.rs). The
# configurations' order rotates across rounds.
# The checks say only that each configuration ran and gave numbers; the figures are in
# $out/bench.txt: `SAMPLE block round config place workload iters ns`.
set -u
disk=$1
out=$2
bin=$disk/ctrwatch
loop=$disk/bench
root=/srv/root
blobs=$root/io.containerd.content.v1.content/blobs/sha256
outside=/var/tmp/ctrwatch-bench
store=/var/lib/ctrwatch-vmtest/events.db
results=$out/results.txt
samples=$out/bench.txt
failed=0
: > "$results"
: > "$samples"
# say, pass, fail, uptime_s, since, wait_for, wait_watching, desc, build_busybox_image.
. "$disk/lib.sh"
mkdir -p "$blobs" "$outside"
mkdir -p -m 0700 "$(dirname "$store")"
# A blob, so that the content store looks used; the loops' files go beside it, below the
# protected blobs directory (the LSM's walk stops at its first step there; outside the root
# it walks every ancestor up to /).
echo blob > "$blobs/0000"

# place:workload; `inside` is the blobs directory, `outside` a directory on the same ext4.
loops="outside:getppid outside:write1 outside:write4k outside:stat outside:create-unlink \
outside:setxattr inside:create-unlink inside:setxattr inside:write1"
# Passes of each loop per block (after one not counted: the warm-up), and how long one pass
# should take in the guest.
passes=7
pass_ns=100000000
# Another round starts only while one more fits in this budget (the boot wrapper stops the
# script at 20 min), with at least 2 rounds; at most 6 (each order of the configurations
# twice).
budget_s=720
max_rounds=6

dir_of() {
    case $1 in
    inside) echo "$blobs" ;;
    *) echo "$outside" ;;
    esac
}
# The iterations of loop $1 (place:workload), from the calibration.
iters_of() { awk -v k="$1" '$1 == k { print $2 }' "$out/iters.txt"; }

# Every loop once with few iterations, no watcher: iterations for a pass of ~$pass_ns.
: > "$out/iters.txt"
calibrated=1
for pw in $loops; do
    place=${pw%%:*}
    w=${pw#*:}
    if ns=$("$loop" --worker "$w" --dir "$(dir_of "$place")" --iters 2000 2>> "$out/loop.err"); then
        awk -v k="$pw" -v ns="$ns" -v t="$pass_ns" \
            'BEGIN { n = int(t * 2000 / ns); if (n < 1000) n = 1000; print k, n }' >> "$out/iters.txt"
    else
        calibrated=0
    fi
done
if [ "$calibrated" = 1 ]; then
    pass bench-calibrated "$(tr '\n' ' ' < "$out/iters.txt")"
else
    fail bench-calibrated "$(tail -n 3 "$out/loop.err" | tr '\n' ' ' | cut -c 1-300)"
    exit "$failed"
fi

block=0
# The running daemon's pid, empty when none runs.
daemon=
# A block of configuration $1 (round $2): $passes passes of every loop (one process per
# loop), appended to $samples; false when a pass failed.
run_block() {
    _ok=0
    for pw in $loops; do
        place=${pw%%:*}
        w=${pw#*:}
        n=$(iters_of "$pw")
        # A daemon's backlog of the records of the loop before (inside the root) is not
        # this loop's: up to 6 s for it to go.
        [ "$place" = inside ] && [ -n "$daemon" ] && wait_idle "$daemon" 3
        # passes + 1 commands: the first pass warms up and is dropped.
        if answers=$(awk -v n="$n" -v k="$passes" 'BEGIN { for (i = 0; i <= k; i++) print n }' |
            "$loop" --worker "$w" --dir "$(dir_of "$place")" --serve 2>> "$out/loop.err") &&
            [ "$(echo "$answers" | wc -l)" -eq "$((passes + 1))" ]; then
            for ns in $(echo "$answers" | tail -n +2); do
                echo "SAMPLE $block $2 $1 $place $w $n $ns" >> "$samples"
            done
        else
            _ok=1
        fi
    done
    block=$((block + 1))
    return "$_ok"
}

# CPU ticks (user + system) of process $1.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Waits (up to $2 times 2 s) until the daemon $1 used at most a tick of CPU (10 ms) in 2 s:
# what it does after saying it is watching (its first look at the root, the store) must not
# land in the block.
wait_idle() {
    _i=0
    _t=$(ticks "$1")
    while [ "$_i" -lt "$2" ]; do
        sleep 2
        _n=$(ticks "$1")
        [ "$_n" -le "$((_t + 1))" ] && return 0
        _t=$_n
        _i=$((_i + 1))
    done
    return 1
}

# Configuration $1's failures (none when it stays empty), and what its start logs said.
: > "$out/failures-none"
for c in tracepoint fentry lsm; do : > "$out/failures-$c"; done
failure() { echo "$2" >> "$out/failures-$1"; }

# Starts the daemon of configuration $1 (round $2), runs its block, stops it.
session() {
    case $1 in
    tracepoint) args="--backend tracepoint" want='backend asked for: tracepoint' ;;
    fentry) args="--backend fentry" want='fentry usable .*, 4 programs attached' ;;
    lsm) args="--backend tracepoint --protect dry-run" want='protect mode dry-run in force' ;;
    esac
    log=$out/daemon-$1-$2.log
    rm -f "$store"
    # shellcheck disable=SC2086 # $args is words.
    "$bin" run $args --root "$root" --store "$store" > "$log" 2>&1 &
    daemon=$!
    start=$(uptime_s)
    if ! wait_watching "$log" "$daemon"; then
        failure "$1" "round $2: not watching: $(grep -m 1 -i 'error' "$log" | cut -c 1-200)"
        kill -KILL "$daemon" 2> /dev/null
        wait "$daemon"
        daemon=
        return
    fi
    say INFO "start_seconds_$1_$2" "$(since "$start")"
    grep -q "$want" "$log" || failure "$1" "round $2: no '$want' in the start log"
    wait_idle "$daemon" 15 || say INFO "not_idle_$1_$2" "still busy 30 s after watching"
    cpu0=$(ticks "$daemon")
    t0=$(uptime_s)
    run_block "$1" "$2" || failure "$1" "round $2: a pass failed (loop.err)"
    # The daemon's CPU over its block, in % of one CPU.
    say INFO "daemon_cpu_pct_$1_$2" "$(awk -v a="$cpu0" -v t="$t0" -v hz="$(getconf CLK_TCK)" -v u="$(uptime_s)" \
        '{ printf "%.0f", ($14 + $15 - a) / hz / (u - t) * 100 }' "/proc/$daemon/stat")"
    kill -TERM "$daemon"
    wait "$daemon"
    daemon=
}

bench_start=$(uptime_s)
run_block none 0 || failure none "round 0: a pass failed (loop.err)"
round=0
while [ "$round" -lt "$max_rounds" ]; do
    round_start=$(uptime_s)
    case $((round % 3)) in
    0) order="tracepoint fentry lsm" ;;
    1) order="fentry lsm tracepoint" ;;
    *) order="lsm tracepoint fentry" ;;
    esac
    for c in $order; do
        session "$c" "$round"
        run_block none "$round" || failure none "round $round: a pass failed (loop.err)"
    done
    round=$((round + 1))
    # Another round only if one as long as this one fits in the budget.
    elapsed=$(since "$bench_start")
    took=$(since "$round_start")
    if [ "$round" -ge 2 ] && awk -v e="$elapsed" -v t="$took" -v b="$budget_s" 'BEGIN { exit !(e + t > b) }'; then
        break
    fi
done
say INFO rounds "$round"
say INFO bench_seconds "$(since "$bench_start")"
say INFO release "$(uname -r)"

for c in none tracepoint fentry lsm; do
    n=$(grep -c " $c [a-z]* [a-z0-9-]* [0-9]* [0-9]*\$" "$samples")
    if [ -s "$out/failures-$c" ]; then
        fail "bench-$c" "$(tr '\n' ' ' < "$out/failures-$c" | cut -c 1-300)"
    elif [ "$n" -eq 0 ]; then
        fail "bench-$c" "no samples"
    else
        pass "bench-$c" "$n passes"
    fi
done
exit "$failed"
