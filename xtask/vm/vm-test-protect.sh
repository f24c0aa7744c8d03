#!/bin/sh
# Issue 15, protect mode: cargo xtask vm-test --scenario protect.
# A containerd-shaped root without containerd: the daemon protects the content store's
# blobs directory (by its (dev, ino)) and trusts the executables of `trust_exes`; a foreign
# rm, setxattr and open-for-write below it are denied with EPERM in enforce; a copy of rm
# listed in trust_exes is allowed; after the stop nothing is blocked; dry-run blocks nothing.
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
say() {
    echo "$*" >> "$results"
    echo "ctrwatch-vmtest: $*"
}
pass() { say PASS "$@"; }
fail() {
    say FAIL "$@"
    failed=1
}
mkdir -p "$blobs" /etc/ctrwatch-vmtest
mkdir -p -m 0700 "$(dirname "$store")"
cp /usr/bin/rm /usr/local/bin/trusted-rm
# Starts `run` with protect = $1; its pid in $daemon, its log $out/daemon-$1.log.
start() {
    cat > /etc/ctrwatch-vmtest/ctrwatch.toml <<CONF
[watch]
protect = "$1"
trust_exes = ["/usr/local/bin/trusted-rm"]
CONF
    chmod 0600 /etc/ctrwatch-vmtest/ctrwatch.toml
    rm -f "$store"
    "$bin" run --config /etc/ctrwatch-vmtest/ctrwatch.toml --root "$root" --store "$store" \
        > "$out/daemon-$1.log" 2>&1 &
    daemon=$!
    i=0
    while ! grep -q 'ctrwatch: watching' "$out/daemon-$1.log" && kill -0 "$daemon" 2> /dev/null &&
        [ "$i" -lt 600 ]; do
        sleep 1
        i=$((i + 1))
    done
    grep -q 'ctrwatch: watching' "$out/daemon-$1.log"
}
stop() {
    kill -TERM "$daemon"
    wait "$daemon"
}
# Waits (up to 60 s) until `status --json` says protect mode $1 is in force.
status_in_force() {
    i=0
    while [ "$i" -lt 60 ]; do
        "$bin" status --store "$store" --json > "$out/status-$1.json" 2> /dev/null
        grep -q "\"protect_in_force\":\"$1\"" "$out/status-$1.json" && return 0
        sleep 1
        i=$((i + 1))
    done
    return 1
}
setxattr() {
    perl -e 'my ($p, $n, $v) = ($ARGV[0], "trusted.overlay.opaque", "y");
        syscall(188, $p, $n, $v, 1, 0) == 0 or die "setxattr: $!\n"' "$1"
}

echo blob > "$blobs/victim"
echo blob > "$blobs/trusted-victim"
if start enforce; then
    pass enforce-watching "$(grep -o 'lsm [a-z]* ([^)]*)[^;]*' "$out/daemon-enforce.log" | head -n 1)"
    if status_in_force enforce && grep -q '"protect_unavailable":null' "$out/status-enforce.json"; then
        pass enforce-status "$(grep -o 'protect mode [a-z-]* in force[^)]*)' "$out/daemon-enforce.log")"
    else
        fail enforce-status "$(cut -c 1-400 "$out/status-enforce.json")"
    fi
    if rm -f "$blobs/victim" 2> "$out/rm.err"; then
        fail enforce-rm-denied "rm succeeded"
    elif [ -e "$blobs/victim" ] && grep -q 'Operation not permitted' "$out/rm.err"; then
        pass enforce-rm-denied "$(cat "$out/rm.err")"
    else
        fail enforce-rm-denied "$(cat "$out/rm.err")"
    fi
    if setxattr "$blobs" 2> "$out/setxattr.err"; then
        fail enforce-setxattr-denied "setxattr succeeded"
    elif grep -q 'Operation not permitted' "$out/setxattr.err"; then
        pass enforce-setxattr-denied "$(cat "$out/setxattr.err")"
    else
        fail enforce-setxattr-denied "$(cat "$out/setxattr.err")"
    fi
    if sh -c "echo more >> '$blobs/victim'" 2> "$out/write.err"; then
        fail enforce-write-denied "open for writing succeeded"
    else
        pass enforce-write-denied "$(cat "$out/write.err")"
    fi
    if cat "$blobs/victim" > /dev/null; then pass enforce-read-allowed; else fail enforce-read-allowed; fi
    if /usr/local/bin/trusted-rm -f "$blobs/trusted-victim" && [ ! -e "$blobs/trusted-victim" ]; then
        pass enforce-trusted-allowed
    else
        fail enforce-trusted-allowed "the trusted rm was blocked"
    fi
    echo outside > "$root/outside"
    if rm -f "$root/outside"; then pass enforce-outside-allowed; else fail enforce-outside-allowed; fi
    stop
    if rm -f "$blobs/victim"; then pass released; else fail released "rm still denied after the stop"; fi
else
    fail enforce-watching "$(grep -m 1 -i 'error' "$out/daemon-enforce.log" | cut -c 1-300)"
    kill -KILL "$daemon" 2> /dev/null
fi

echo blob > "$blobs/victim"
if start dry-run; then
    pass dry-run-watching
    if status_in_force dry-run; then pass dry-run-status; else fail dry-run-status "$(cut -c 1-400 "$out/status-dry-run.json")"; fi
    if rm -f "$blobs/victim" && [ ! -e "$blobs/victim" ]; then
        pass dry-run-allows
    else
        fail dry-run-allows "rm was blocked in dry-run"
    fi
    stop
else
    fail dry-run-watching "$(grep -m 1 -i 'error' "$out/daemon-dry-run.log" | cut -c 1-300)"
    kill -KILL "$daemon" 2> /dev/null
fi
dmesg > "$out/dmesg.txt" 2>&1
exit "$failed"
