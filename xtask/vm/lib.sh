# Helpers shared by the VM test's guest scripts (vm-test.sh, vm-test-package.sh,
# vm-test-no-bpf-lsm.sh; cargo xtask vm-test, xtask/src/vm.rs puts this file beside them on
# the test disk). Sourced, not run: `. "$disk/lib.sh"` after the script has set `results`
# (the results file) and `failed=0`.

# A line for the host: into $results and on the console (`PASS name [detail]`, `FAIL ...`,
# `INFO key value`).
say() {
    echo "$*" >> "$results"
    echo "ctrwatch-vmtest: $*"
}
pass() { say PASS "$@"; }
# A failed check: the script's exit status becomes 1.
fail() {
    say FAIL "$@"
    failed=1
}
# Seconds since boot, and seconds since such a reading ($1), to a tenth.
uptime_s() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }'; }
# Waits up to $1 seconds for the command after it to succeed (looked at once a second);
# false when it never did.
wait_for() {
    limit=$1
    shift
    n=0
    while ! "$@" > /dev/null 2>&1; do
        n=$((n + 1))
        [ "$n" -ge "$limit" ] && return 1
        sleep 1
    done
    return 0
}
