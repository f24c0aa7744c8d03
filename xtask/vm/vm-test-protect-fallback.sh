#!/bin/sh
# cargo xtask vm-test --scenario protect-fallback: protect = "enforce" on a kernel booted with
# `bpf` left out of `lsm=` (BPF LSM inactive: LSM programs would attach and never run). The
# daemon must start watch-only and say so loudly: an error line in its log, `status --json`
# (asked for enforce, in force off, why), and nothing blocked.
set -u
disk=$1
out=$2
bin=$disk/ctrwatch
root=/srv/root
blobs=$root/io.containerd.content.v1.content/blobs/sha256
store=/var/lib/ctrwatch-vmtest/events.db
results=$out/results.txt
failed=0
: > "$results"
# say, pass, fail, uptime_s, since, wait_for, wait_watching, desc, build_busybox_image.
. "$disk/lib.sh"
mkdir -p "$blobs" /etc/ctrwatch-vmtest
mkdir -p -m 0700 "$(dirname "$store")"
cat /sys/kernel/security/lsm > "$out/lsm.txt" 2>&1
cat > /etc/ctrwatch-vmtest/ctrwatch.toml <<CONF
[watch]
protect = "enforce"
CONF
chmod 0600 /etc/ctrwatch-vmtest/ctrwatch.toml
"$bin" run --config /etc/ctrwatch-vmtest/ctrwatch.toml --root "$root" --store "$store" \
    > "$out/daemon.log" 2>&1 &
daemon=$!
if wait_watching "$out/daemon.log" "$daemon"; then
    pass protect-fallback-started "lsm: $(cat "$out/lsm.txt")"
    line=$(grep 'protect = "enforce" asked for' "$out/daemon.log" | head -n 1)
    case $line in
    *ERROR*"lsm inactive"*"NOTHING IS BLOCKED"*) pass protect-fallback-logged "$(echo "$line" | cut -c 1-300)" ;;
    *) fail protect-fallback-logged "$(grep -i 'protect' "$out/daemon.log" | head -n 3 | cut -c 1-300)" ;;
    esac
    i=0
    while [ "$i" -lt 60 ]; do
        "$bin" status --store "$store" --json > "$out/status.json" 2> /dev/null
        grep -q '"protect_requested":"enforce"' "$out/status.json" && break
        sleep 1
        i=$((i + 1))
    done
    if grep -q '"protect_requested":"enforce","protect_in_force":"off","protect_unavailable":"[^"]*inactive' "$out/status.json"; then
        pass protect-fallback-status "$(grep -o '"protect_requested[^}]*"roots"' "$out/status.json" | cut -c 1-300)"
    else
        fail protect-fallback-status "$(cut -c 1-600 "$out/status.json")"
    fi
    echo blob > "$blobs/victim"
    if rm -f "$blobs/victim" 2> "$out/rm.err" && [ ! -e "$blobs/victim" ]; then
        pass protect-fallback-not-blocked
    else
        fail protect-fallback-not-blocked "$(cat "$out/rm.err")"
    fi
    kill -TERM "$daemon"
    wait "$daemon"
else
    fail protect-fallback-started "$(grep -m 1 -i 'error' "$out/daemon.log" | cut -c 1-300)"
    kill -KILL "$daemon" 2> /dev/null
fi
exit "$failed"
