#!/bin/sh
# The VM test proper (cargo xtask vm-test, xtask/src/vm.rs), run inside a guest booted with
# another kernel, as root, by ctrwatch-vmtest-boot. Usage: vm-test.sh DISK_DIR OUT_DIR
# (DISK_DIR holds the static ctrwatch). Writes to OUT_DIR, which the host reads afterwards:
#   results.txt   PASS/FAIL/INFO lines, one per check: `PASS name [detail]`
#   probe.txt     what `ctrwatch probe` printed
#   kernel.txt    uname -r, the active LSMs, the kernel's BPF-related config, what bpftool
#                 says the kernel can load
#   daemon.log, history.json, dmesg.txt   for when a check fails
# Exits 0 when every check passed.
set -u
disk=$1
out=$2
bin=$disk/ctrwatch
root=/srv/root
# Not /var/tmp: run refuses a store in a directory other users can write.
store=/var/lib/ctrwatch-vmtest/events.db
victim=$root/vmtest-victim
results=$out/results.txt
failed=0
: > "$results"

say() {
    echo "$*" >> "$results"
    echo "ctrwatch-vmtest: $*"
}
pass() { say PASS "$@"; }
fail() {
    say FAIL "$@"
    failed=1
}
uptime_s() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }'; }

# What this kernel offers, whatever ctrwatch makes of it.
{
    echo "release: $(uname -r)"
    echo "lsm: $(cat /sys/kernel/security/lsm 2>/dev/null)"
    grep -E '^CONFIG_(BPF_SYSCALL|BPF_JIT|BPF_EVENTS|BPF_LSM|DEBUG_INFO_BTF|KPROBES|FUNCTION_TRACER|DYNAMIC_FTRACE_WITH_DIRECT_CALLS|FPROBE|LSM)=' \
        "/boot/config-$(uname -r)" 2>/dev/null | sed 's/^/config: /'
    bpftool feature probe kernel 2>/dev/null |
        grep -E 'program_type (tracepoint|raw_tracepoint|tracing|lsm|kprobe) ' | sed 's/^/bpftool: /'
} > "$out/kernel.txt" 2>&1

start=$(uptime_s)
if "$bin" probe > "$out/probe.txt" 2>&1; then
    pass probe
else
    fail probe "exit status $?"
fi
say INFO probe_seconds "$(since "$start")"

mkdir -p "$root"
mkdir -p -m 0700 "$(dirname "$store")"
rm -f "$store" "$victim"
start=$(uptime_s)
"$bin" run --root "$root" --store "$store" > "$out/daemon.log" 2>&1 &
daemon=$!
# Loading and verifying the programs is slow under TCG: up to 10 minutes.
i=0
while ! grep -q 'ctrwatch: watching' "$out/daemon.log" && kill -0 "$daemon" 2> /dev/null &&
    [ "$i" -lt 600 ]; do
    sleep 1
    i=$((i + 1))
done
if grep -q 'ctrwatch: watching' "$out/daemon.log"; then
    pass watching "$(grep -o 'watching .*' "$out/daemon.log" | head -n 1)"
    say INFO start_seconds "$(since "$start")"

    # A file created, then deleted by a command the history must name.
    sh -c "echo vmtest > $victim"
    rm -f -- "$victim"
    # The events go through the ring buffer to the store in well under a second, even here.
    sleep 2
    kill -TERM "$daemon"
    i=0
    while kill -0 "$daemon" 2> /dev/null && [ "$i" -lt 120 ]; do
        sleep 1
        i=$((i + 1))
    done
    if kill -0 "$daemon" 2> /dev/null; then
        fail stopped "still running 120 s after SIGTERM"
        kill -KILL "$daemon"
    fi
    wait "$daemon"
    status=$?
    if [ "$status" -eq 0 ]; then pass stopped; else fail stopped "exit status $status"; fi

    "$bin" history "$victim" --store "$store" --json > "$out/history.json" 2>&1
    # One JSON object per line; the fields are those of `ctrwatch watch --json`.
    if grep '"op":"create"' "$out/history.json" | grep -q "\"path\":\"$victim\""; then
        pass history-create
    else
        fail history-create "no create of $victim in the history"
    fi
    if grep '"op":"unlink"' "$out/history.json" | grep -q "\"path\":\"$victim\""; then
        pass history-unlink
    else
        fail history-unlink "no unlink of $victim in the history"
    fi
    if grep '"op":"unlink"' "$out/history.json" |
        grep -qF "\"cmdline\":[\"rm\",\"-f\",\"--\",\"$victim\"]"; then
        pass history-command
    else
        fail history-command "the unlink does not name the command rm -f -- $victim"
    fi
elif kill -0 "$daemon" 2> /dev/null; then
    fail watching "no 'ctrwatch: watching' from run within 600 s (see daemon.log)"
    kill -KILL "$daemon"
    wait "$daemon"
else
    wait "$daemon"
    status=$?
    # The error's first line (a verifier log follows it).
    # A verifier's refusal: the log's last message, before its statistics.
    refusal=$(grep -B 1 -m 1 '^verification time' "$out/daemon.log" | head -n 1)
    fail watching "run exited with status $status before watching:" \
        "$(grep -m 1 'error:' "$out/daemon.log" | cut -c 1-300)${refusal:+ ... $refusal}"
fi

dmesg > "$out/dmesg.txt" 2>&1
exit "$failed"
