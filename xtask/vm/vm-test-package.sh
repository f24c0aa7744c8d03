#!/bin/sh
# The package scenario of the VM test (cargo xtask vm-test --scenario package, xtask/src/vm.rs):
# the .deb installed with dpkg in a guest with systemd as PID 1, then what its service does with
# the pinned programs on restart, on a crash, on stop and on removal (docs/operations.md, "Stop,
# restart, uninstall"). Usage: vm-test-package.sh DISK_DIR OUT_DIR (DISK_DIR holds ctrwatch.deb).
# Writes OUT_DIR/results.txt (`PASS name [detail]`, `FAIL ...`, `INFO key value`), journal.txt,
# history.json, dmesg.txt. Every wait is bounded and ends on a condition, never on a fixed
# sleep alone. Exits 0 when every check passed.
set -u
disk=$1
out=$2
pins=/sys/fs/bpf/ctrwatch
# The service watches /var/lib/containerd (discovery's usual root) without any containerd.
dir=/var/lib/containerd/vmtest
state=/run/vmtest
results=$out/results.txt
failed=0
: > "$results"

# say, pass, fail, uptime_s, since, wait_for.
. "$disk/lib.sh"
active() { [ "$(systemctl is-active ctrwatch.service)" = active ]; }
main_pid() { systemctl show -p MainPID --value ctrwatch.service; }
pin_count() { find "$pins" -mindepth 1 2> /dev/null | wc -l; }
# Links of the kinds ctrwatch attaches (tracepoints, raw tracepoints, tp_btf); systemd's own
# cgroup programs are of other kinds.
our_links() { bpftool link show 2> /dev/null | grep -cE '^[0-9]+: (perf_event|raw_tracepoint|tracing) '; }
unpinned() { [ "$(pin_count)" -eq 0 ] && [ "$(our_links)" -eq 0 ]; }
has_new_pid() { p=$(main_pid); [ "$p" != 0 ] && [ "$p" != "$1" ] && active; }
journal_has() { journalctl -u ctrwatch.service --no-pager -o cat 2> /dev/null | grep -qF "$1"; }
# The loop that keeps writing under the watched root while the service restarts: file N is
# created, then deleted; the last N done is in $state/count (outside the watched root).
writer_start() {
    (
        n=0
        while [ ! -e "$state/stop" ]; do
            n=$((n + 1))
            echo "$n" > "$dir/f$n"
            rm -f -- "$dir/f$n"
            echo "$n" > "$state/count"
            sleep 0.05
        done
    ) &
    writer=$!
}
writer_stop() {
    touch "$state/stop"
    wait "$writer"
    rm -f "$state/stop"
}
# Every create and unlink of f1..fN in the history (JSON lines of `ctrwatch history`).
crash_gap_recorded() {
    ctrwatch gaps --json > "$out/gaps.json" 2>&1 || return 1
    grep -q '"reason":"unclean_stop"' "$out/gaps.json"
}

history_complete() {
    ctrwatch query --path "$dir/*" --json --limit 1000000 > "$out/history.json" 2>&1 || return 1
    count=$(cat "$state/count")
    creates=$(grep '"op":"create"' "$out/history.json" | grep -oE "\"path\":\"$dir/f[0-9]+\"" | sort -u | wc -l)
    unlinks=$(grep '"op":"unlink"' "$out/history.json" | grep -oE "\"path\":\"$dir/f[0-9]+\"" | sort -u | wc -l)
    [ "$creates" -eq "$count" ] && [ "$unlinks" -eq "$count" ]
}

# The guest runs the programs under TCG: loading them took up to a minute here, more than the
# unit's TimeoutStartSec (90 s) leaves room for on a loaded host. This drop-in, the test's
# only change to the unit, lengthens the start timeout; the stop and restart logic is the
# package's.
mkdir -p /etc/systemd/system/ctrwatch.service.d "$dir" "$state"
printf '[Service]\nTimeoutStartSec=15min\n' > /etc/systemd/system/ctrwatch.service.d/vmtest.conf

start=$(uptime_s)
if dpkg -i "$disk/ctrwatch.deb" > "$out/dpkg.txt" 2>&1; then
    pass dpkg-install
else
    fail dpkg-install "exit status $? (see dpkg.txt)"
fi
# postinst starts the service (Type=notify: active once READY=1).
if wait_for 900 active; then
    pass active "$(systemctl show -p ActiveState,SubState --value ctrwatch.service | tr '\n' ' ')"
else
    fail active "$(systemctl is-active ctrwatch.service) after 900 s"
fi
say INFO install_to_active_seconds "$(since "$start")"
if [ "$(pin_count)" -gt 0 ] && [ "$(our_links)" -gt 0 ]; then
    pass pinned "$(pin_count) pins, $(our_links) links"
else
    fail pinned "$(pin_count) pins in $pins, $(our_links) links"
fi

# A restart while files come and go: the pins stay, the history has every operation.
writer_start
wait_for 60 test -s "$state/count"
pid=$(main_pid)
start=$(uptime_s)
systemctl restart ctrwatch.service
wait_for 900 has_new_pid "$pid"
say INFO restart_seconds "$(since "$start")"
writer_stop
if journal_has "has a restart job queued: keeping the pins" && [ "$(pin_count)" -gt 0 ]; then
    pass restart-kept "$(pin_count) pins, $(our_links) links"
else
    fail restart-kept "$(pin_count) pins; ExecStopPost in the journal: $(journalctl -u ctrwatch.service --no-pager -o cat | grep -E 'job queued|cannot tell' | tail -n 1)"
fi
if journal_has "adopted the programs pinned in $pins"; then
    pass restart-adopted "$(journalctl -u ctrwatch.service --no-pager -o cat | grep -m 1 'adopted the programs' | cut -c 1-200)"
else
    fail restart-adopted "the new daemon did not adopt the pinned programs (journal.txt)"
fi
if wait_for 120 history_complete; then
    pass restart-history "all $(cat "$state/count") files created and deleted across the restart are in the history"
else
    fail restart-history "$(cat "$state/count") files; creates $creates, unlinks $unlinks in the history"
fi

# A crash (kill -9): Restart=always, no job queued while ExecStopPost runs: the pins stay.
pid=$(main_pid)
start=$(uptime_s)
kill -KILL "$pid"
wait_for 900 has_new_pid "$pid"
say INFO crash_restart_seconds "$(since "$start")"
if journal_has "has no job queued (Restart= starts it again): keeping the pins" &&
    [ "$(pin_count)" -gt 0 ]; then
    pass crash-kept "$(pin_count) pins, $(our_links) links"
else
    fail crash-kept "$(pin_count) pins; ExecStopPost in the journal: $(journalctl -u ctrwatch.service --no-pager -o cat | grep -E 'job queued|cannot tell' | tail -n 1)"
fi

# The crash is on record: the next daemon records the window from the crashed one's last
# heartbeat to its own start as an `unclean_stop` gap (docs/operations.md, "Restarts").
if wait_for 120 crash_gap_recorded; then
    pass crash-gap "$(grep -m 1 -o '"kind":"[a-z_]*"[^}]*"reason":"unclean_stop"' "$out/gaps.json" | cut -c 1-160)"
else
    fail crash-gap "no unclean_stop gap in \`ctrwatch gaps --json\` (gaps.json)"
fi

# The package's upgrade (a reinstall runs the same maintainer scripts): postinst restarts the
# service; the pins stay and the new daemon adopts them.
pid=$(main_pid)
dpkg -i "$disk/ctrwatch.deb" >> "$out/dpkg.txt" 2>&1
wait_for 900 has_new_pid "$pid"
restarts=$(journalctl -u ctrwatch.service --no-pager -o cat | grep -cF "has a restart job queued: keeping the pins")
adoptions=$(journalctl -u ctrwatch.service --no-pager -o cat | grep -cF "adopted the programs pinned in $pins")
if [ "$restarts" -ge 2 ] && [ "$adoptions" -ge 3 ] && [ "$(pin_count)" -gt 0 ]; then
    pass upgrade-kept "$(pin_count) pins, $(our_links) links"
else
    fail upgrade-kept "$restarts restarts keeping the pins, $adoptions adoptions in the journal, $(pin_count) pins"
fi

# An explicit stop: the pins go, nothing stays attached.
systemctl stop ctrwatch.service
# The kernel releases the links once their last pin is gone, not necessarily at once.
if journal_has "has a stop job queued: it stays stopped, removing the pins" &&
    wait_for 60 unpinned; then
    pass stop-unpinned "$pins empty, no tracing links"
else
    fail stop-unpinned "$(pin_count) pins in $pins, $(our_links) links: $(ls -A "$pins" 2>&1 | tr '\n' ' ')"
fi

# Started again, then the package removed: no pins left.
systemctl start ctrwatch.service
wait_for 900 active
if [ "$(pin_count)" -gt 0 ]; then
    dpkg -r ctrwatch >> "$out/dpkg.txt" 2>&1
    if wait_for 60 unpinned; then
        pass remove-unpinned "$pins empty, no tracing links"
    else
        fail remove-unpinned "$(pin_count) pins in $pins, $(our_links) links after dpkg -r"
    fi
else
    fail remove-unpinned "the service did not pin again after a start"
fi

journalctl -u ctrwatch.service --no-pager > "$out/journal.txt" 2>&1
grep -E 'job queued|cannot tell' "$out/journal.txt" | sed 's/^/ctrwatch-vmtest: journal: /'
dmesg > "$out/dmesg.txt" 2>&1
exit "$failed"
