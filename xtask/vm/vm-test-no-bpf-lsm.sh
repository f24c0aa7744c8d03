#!/bin/sh
# The no-bpf-lsm scenario of the VM test (cargo xtask vm-test --scenario no-bpf-lsm,
# xtask/src/vm.rs): the guest's kernel was booted with `bpf` left out of `lsm=`, so LSM
# programs load and attach but never run. `ctrwatch probe` must say so: the LSM family
# inactive, with the active list and the way to enable it. Usage and output files as
# vm-test.sh (results.txt: `PASS name [detail]` lines; probe.txt, probe.json, kernel.txt).
set -u
disk=$1
out=$2
bin=$disk/ctrwatch
results=$out/results.txt
failed=0
: > "$results"

# say, pass, fail, uptime_s, since, wait_for.
. "$disk/lib.sh"

{
    echo "release: $(uname -r)"
    echo "lsm: $(cat /sys/kernel/security/lsm 2>/dev/null)"
    echo "cmdline: $(cat /proc/cmdline)"
    grep -E '^CONFIG_(BPF_LSM|LSM)=' "/boot/config-$(uname -r)" 2>/dev/null | sed 's/^/config: /'
    bpftool feature probe kernel 2>/dev/null |
        grep -E 'program_type (tracing|lsm) ' | sed 's/^/bpftool: /'
} > "$out/kernel.txt" 2>&1

# The premise: the boot parameter took effect.
lsms=$(cat /sys/kernel/security/lsm 2>/dev/null)
case ",$lsms," in
    *,bpf,*) fail lsm-list-without-bpf "bpf is still active: $lsms (cmdline: $(cat /proc/cmdline))" ;;
    ,,) fail lsm-list-without-bpf "/sys/kernel/security/lsm is empty or unreadable" ;;
    *) pass lsm-list-without-bpf "$lsms" ;;
esac

if "$bin" probe > "$out/probe.txt" 2>&1; then
    pass probe
else
    fail probe "exit status $?"
fi
line=$(grep '^hook family lsm' "$out/probe.txt")
# Inactive, not refused: the test program attached; the reason names the list and lsm=.
if echo "$line" | grep -q '^hook family lsm: inactive (`bpf` is not in /sys/kernel/security/lsm' &&
    echo "$line" | grep -qF "\`$lsms\`" && echo "$line" | grep -q 'lsm='; then
    pass probe-lsm-inactive "$line"
else
    fail probe-lsm-inactive "${line:-no lsm line in probe}"
fi
"$bin" probe --json > "$out/probe.json" 2>&1
if grep -q '"lsm":{"family":"lsm","state":"inactive"' "$out/probe.json"; then
    pass probe-json-lsm-inactive
else
    fail probe-json-lsm-inactive "$(grep -o '"lsm":{[^}]*}' "$out/probe.json" | head -c 400)"
fi
# fentry does not depend on the LSM list.
if grep -q '^hook family fentry: usable' "$out/probe.txt"; then
    pass probe-fentry
else
    fail probe-fentry "$(grep '^hook family fentry' "$out/probe.txt" || echo 'no fentry line in probe')"
fi
exit "$failed"
