#!/bin/sh
# Issue 15, protect mode: cargo xtask vm-test --scenario protect.
# A containerd-shaped root without containerd: the daemon protects the content store's
# blobs directory (by its (dev, ino)) and trusts the executables of `trust_exes`; a foreign
# rm, setxattr and open-for-write below it are denied with EPERM in enforce; a copy of rm
# listed in trust_exes is allowed; each denial is a record of its own in the history and a
# protect-denied alert; after the stop nothing is blocked; dry-run blocks nothing and records
# would-deny (and a protect-would-deny alert).
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
# say, pass, fail, uptime_s, since, wait_for, wait_answer, wait_watching, desc, build_busybox_image.
. "$disk/lib.sh"
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
    wait_watching "$out/daemon-$1.log" "$daemon"
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
# Protect's own record in the history $1 (query --json): op $2 on path $3 by comm $4, verdict
# $5 (denied, would_deny).
protect_record() {
    grep -F "\"op\":\"$2\",\"path\":\"$3\"," "$1" | grep -F "\"protect\":\"$5\"" |
        grep -qF "\"comm\":\"$4\""
}
# Queries the history and the alerts of the run with protect = $1 (after its stop) into
# $out/history-$1.json and $out/alerts-$1.json.
history_and_alerts() {
    "$bin" query --store "$store" --limit 1000000 --json > "$out/history-$1.json" 2>&1
    "$bin" alerts --store "$store" --json > "$out/alerts-$1.json" 2>&1
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
    # A figure, not a check: what the kernel verified of each LSM and fentry program (they
    # build their paths with an inlined walk): verified_insns of bpf_prog_info (offset 216),
    # by BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID and BPF_OBJ_GET_INFO_BY_FD (bpftool 7.1
    # does not show it).
    perl -MPOSIX -e '
        my $id = 0;
        while (1) {
            my $next = pack("LLL", $id, 0, 0) . ("\0" x 116);
            last if syscall(321, 11, $next, 128) != 0;
            $id = unpack("x4 L", $next);
            my $fd = syscall(321, 13, pack("LLL", $id, 0, 0) . ("\0" x 116), 128);
            next if $fd < 0;
            my $info = "\0" x 232;
            my $get = pack("LLQ", $fd, 232, unpack("Q", pack("p", $info))) . ("\0" x 112);
            if (syscall(321, 15, $get, 128) == 0) {
                my $name = unpack("Z16", substr($info, 64, 16));
                printf "%s %u\n", $name, unpack("L", substr($info, 216, 4))
                    if $name =~ /^(lsm_|fentry_|fexit_)/;
            }
            POSIX::close($fd);
        }' > "$out/lsm-verified-insns.txt" 2>&1
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
    # Every denial is an event (protect's own record: op, path, process, verdict) and an
    # alert (protect-denied, critical; written to the outbox at the latest at the stop).
    history_and_alerts enforce
    missing=""
    protect_record "$out/history-enforce.json" unlink "$blobs/victim" rm denied || missing="$missing unlink"
    protect_record "$out/history-enforce.json" setxattr "$blobs" perl denied || missing="$missing setxattr"
    protect_record "$out/history-enforce.json" open_write "$blobs/victim" sh denied || missing="$missing open_write"
    if [ -z "$missing" ]; then
        pass enforce-denials-recorded "$(grep -c '"protect":"denied"' "$out/history-enforce.json") denied record(s)"
    else
        fail enforce-denials-recorded "no denied record for:$missing (history-enforce.json)"
    fi
    if grep -F '"rule":"protect-denied"' "$out/alerts-enforce.json" | grep -qF '"severity":"critical"'; then
        pass enforce-denied-alert "$(grep -o '"summary":"[^"]*"' "$out/alerts-enforce.json" | grep 'protect mode denied' | head -n 1 | cut -c 1-300)"
    else
        fail enforce-denied-alert "$(cut -c 1-400 "$out/alerts-enforce.json")"
    fi
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
    history_and_alerts dry-run
    if protect_record "$out/history-dry-run.json" unlink "$blobs/victim" rm would_deny &&
        ! grep -q '"protect":"denied"' "$out/history-dry-run.json"; then
        pass dry-run-would-deny-recorded
    else
        fail dry-run-would-deny-recorded "no would_deny record for the rm, or a denied one (history-dry-run.json)"
    fi
    if grep -F '"rule":"protect-would-deny"' "$out/alerts-dry-run.json" | grep -qF '"severity":"warning"' &&
        ! grep -qF '"rule":"protect-denied"' "$out/alerts-dry-run.json"; then
        pass dry-run-would-deny-alert
    else
        fail dry-run-would-deny-alert "$(cut -c 1-400 "$out/alerts-dry-run.json")"
    fi
else
    fail dry-run-watching "$(grep -m 1 -i 'error' "$out/daemon-dry-run.log" | cut -c 1-300)"
    kill -KILL "$daemon" 2> /dev/null
fi

# A real containerd installed the way k3s and rke2 install theirs: its executable, shim and
# runc in one directory outside /usr (/var/lib/rancher/k3s/data/<hash>/bin there), copied
# here to /opt/k3s-like/data/1111/bin, with /usr's copies moved aside so the fixed /usr fallback
# cannot be what trusts it. Under enforce, containerd's own work on its protected store
# (remove + garbage collection, import, run) must go through; a foreign write or rm of a
# blob must not.
k3s_bin=/opt/k3s-like/data/1111/bin
k3s_root=/var/lib/ctrwatch-vmtest-k3s
k3s_state=/run/ctrwatch-vmtest-k3s
k3s_sock=$k3s_state/containerd.sock
k3s_image=docker.io/ctrwatch/vmtest-busybox:1
k3s_aside=/var/lib/ctrwatch-vmtest-aside
kctr() { ctr --address "$k3s_sock" --namespace default "$@"; }
# Starts `run` with protect = "enforce" on $k3s_root (the config already written); its pid
# in $daemon, its log $out/daemon-k3s-$1.log.
start_k3s_daemon() {
    rm -f "$store"
    "$bin" run --config /etc/ctrwatch-vmtest/ctrwatch.toml --root "$k3s_root" --store "$store" \
        > "$out/daemon-k3s-$1.log" 2>&1 &
    daemon=$!
    wait_watching "$out/daemon-k3s-$1.log" "$daemon"
}
k3s_run() {
    ran=$(kctr run --rm --snapshotter overlayfs "$k3s_image" "vmtest-$1" /bin/sh -c 'echo ran-in-busybox' < /dev/null 2>&1)
    if [ "$ran" = ran-in-busybox ]; then
        pass "$1"
    else
        fail "$1" "$(echo "$ran" | tr '\n' ' ' | cut -c 1-300)"
    fi
}
mkdir -p "$k3s_bin" "$k3s_aside" "$k3s_root" "$k3s_state"
: > "$k3s_aside/moved"
for exe in containerd containerd-shim-runc-v2 runc; do
    installed=$(command -v "$exe")
    cp "$installed" "$k3s_bin/$exe"
    mv "$installed" "$k3s_aside/$exe"
    echo "$installed" >> "$k3s_aside/moved"
done
cat > "$k3s_state/config.toml" << CONF
version = 2
root = "$k3s_root"
state = "$k3s_state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$k3s_sock"
CONF
# Starts the containerd of the bin directory $1 (and its shims and runc: first on PATH) on
# $k3s_root, its output to $2; its pid in $k3s_ctrd. Waits up to 120 s for it to answer.
start_k3s_containerd() {
    PATH=$1:$PATH "$1/containerd" --config "$k3s_state/config.toml" --root "$k3s_root" \
        --state "$k3s_state" --address "$k3s_sock" > "$2" 2>&1 &
    k3s_ctrd=$!
    wait_answer "$k3s_ctrd" 120 kctr version
}
start_k3s_containerd "$k3s_bin" "$out/k3s-containerd.log"
build_busybox_image "$out/busybox-oci.tar" "$k3s_image"
k3s_blobs=$k3s_root/io.containerd.content.v1.content/blobs/sha256
# An image already there when the daemon starts: its blobs and its committed layer are
# protected from the start.
if kctr images import --snapshotter overlayfs "$out/busybox-oci.tar" > "$out/k3s-import-before.txt" 2>&1 &&
    [ -n "$(ls "$k3s_blobs")" ]; then
    # The blob of the image's manifest: one the image references. Not any file of the
    # directory: the import also stores the archive's index.json as a blob, which no image
    # references and containerd's garbage collector removes, at a time of its own, once the
    # import's lease is gone (issue 15: picked as the first listed, it was gone by the time of
    # the foreign write, whose denied open had created an empty file in its place).
    k3s_blob=$k3s_blobs/$(kctr images ls | awk -v r="$k3s_image" '$1 == r { sub(/^sha256:/, "", $3); print $3 }')
    k3s_blob_sum=$(sha256sum "$k3s_blob")
    # The archive's index.json, which the import stores as a blob that no image references.
    k3s_index=$(tar -xOf "$out/busybox-oci.tar" index.json | sha256sum | cut -d' ' -f1)
    cat > /etc/ctrwatch-vmtest/ctrwatch.toml << CONF
[watch]
protect = "enforce"
CONF
    rm -f "$store"
    "$bin" run --config /etc/ctrwatch-vmtest/ctrwatch.toml --root "$k3s_root" --store "$store" \
        > "$out/daemon-k3s.log" 2>&1 &
    daemon=$!
    if wait_watching "$out/daemon-k3s.log" "$daemon"; then
        # Trusted because they are the discovered containerd's and its directory's, not by
        # a fixed path (/usr's copies are aside).
        trusted=$(grep -o 'protect mode: trusting /[^ ]*' "$out/daemon-k3s.log" | cut -d' ' -f4 | tr '\n' ' ')
        if grep -q "protect mode: trusting $k3s_bin/containerd " "$out/daemon-k3s.log" &&
            grep -q "protect mode: trusting $k3s_bin/containerd-shim-runc-v2 " "$out/daemon-k3s.log" &&
            grep -q "protect mode: trusting $k3s_bin/runc " "$out/daemon-k3s.log"; then
            pass k3s-trusted "$trusted"
        else
            fail k3s-trusted "trusted: $trusted"
        fi
        # The inode containerd runs (/proc/PID/exe), trusted also when its path is replaced;
        # and the mode set in the kernel only after the trust (not at load: containerd's
        # writes would be denied in between).
        if grep -q "protect mode: trusting the running executable of containerd pid [0-9]*$" "$out/daemon-k3s.log" &&
            grep -n 'protect mode: trusting \|protect mode enforce set in the kernel' "$out/daemon-k3s.log" |
            tail -n 1 | grep -q 'set in the kernel'; then
            pass k3s-running-exe-trusted-before-enforce
        else
            fail k3s-running-exe-trusted-before-enforce "$(grep 'protect mode' "$out/daemon-k3s.log" | tr '\n' ' ' | cut -c 1-400)"
        fi
        k3s_layer=$(grep -o "protect mode: protecting [^ ]*/snapshots/[0-9]*/fs\$" "$out/daemon-k3s.log" | head -n 1 | cut -d' ' -f4)
        if sh -c "echo x >> '$k3s_blob'" 2> "$out/k3s-write.err"; then
            fail k3s-foreign-write-denied "open for writing succeeded"
        elif grep -q 'Operation not permitted' "$out/k3s-write.err"; then
            pass k3s-foreign-write-denied "$(cat "$out/k3s-write.err")"
        else
            fail k3s-foreign-write-denied "$(cat "$out/k3s-write.err")"
        fi
        if rm -f "$k3s_blob" 2> "$out/k3s-rm.err"; then
            fail k3s-foreign-rm-denied "rm succeeded"
        elif grep -q 'Operation not permitted' "$out/k3s-rm.err"; then
            pass k3s-foreign-rm-denied "$(cat "$out/k3s-rm.err")"
        else
            fail k3s-foreign-rm-denied "$(cat "$out/k3s-rm.err")"
        fi
        if [ "$(sha256sum "$k3s_blob" 2>&1)" = "$k3s_blob_sum" ]; then
            pass k3s-blob-intact
        else
            fail k3s-blob-intact "$(sha256sum "$k3s_blob" 2>&1)"
        fi
        # The index.json blob, once containerd's garbage collector removed it (or containerd
        # removes it now): a foreign open(O_CREAT) of its name is denied before the file is
        # made. The open's create comes before its file_open check: without the create hook
        # an empty file with the blob's name was left behind, and the check above, when the
        # blob it picked was this one (it picked the first listed), found it empty.
        [ -e "$k3s_blobs/$k3s_index" ] && kctr content rm "sha256:$k3s_index" > /dev/null 2>&1
        if [ -e "$k3s_blobs/$k3s_index" ]; then
            fail k3s-foreign-create-denied "containerd did not remove the index.json blob $k3s_index"
        elif sh -c "echo x >> '$k3s_blobs/$k3s_index'" 2> "$out/k3s-create.err"; then
            fail k3s-foreign-create-denied "open(O_CREAT) succeeded"
        elif [ -e "$k3s_blobs/$k3s_index" ]; then
            fail k3s-foreign-create-denied "denied ($(cat "$out/k3s-create.err")) but left $(stat -c '%s bytes' "$k3s_blobs/$k3s_index") named $k3s_index"
        elif grep -q 'Operation not permitted' "$out/k3s-create.err"; then
            pass k3s-foreign-create-denied "$(cat "$out/k3s-create.err")"
        else
            fail k3s-foreign-create-denied "$(cat "$out/k3s-create.err")"
        fi
        # The other ways to make a name in the store (mkdir, symlink, mknod, a hard link in),
        # and a hard link of a blob out of it (a protected inode written then through an
        # unprotected path): each denied, nothing but blobs left in the directory.
        made=""
        mkdir "$k3s_blobs/d" 2> /dev/null && made="$made mkdir"
        ln -s x "$k3s_blobs/s" 2> /dev/null && made="$made symlink"
        mknod "$k3s_blobs/p" p 2> /dev/null && made="$made mknod"
        echo y > /var/tmp/ctrwatch-vmtest-y
        ln /var/tmp/ctrwatch-vmtest-y "$k3s_blobs/l" 2> /dev/null && made="$made link-in"
        ln "$k3s_blob" /var/tmp/ctrwatch-vmtest-link 2> /dev/null && made="$made link-out"
        rm -f /var/tmp/ctrwatch-vmtest-y /var/tmp/ctrwatch-vmtest-link
        others=$(ls -A "$k3s_blobs" | grep -vx '[0-9a-f]\{64\}' | tr '\n' ' ')
        if [ -z "$made" ] && [ -z "$others" ]; then
            pass k3s-foreign-names-denied "mkdir, symlink, mknod, link in and out"
        else
            fail k3s-foreign-names-denied "allowed:$made; in the directory: $others"
        fi
        # open(O_RDONLY|O_TRUNC) (perl's sysopen, flags 512 = O_TRUNC): file_open lets a
        # read-only open through; from 6.2 its truncation calls file_truncate (6.1:
        # path_truncate). Then chmod, chown, touch -d (inode_setattr) and rmdir in the layer
        # (inode_rmdir; its check comes before the emptiness test: an unguarded rmdir of the
        # non-empty bin fails with ENOTEMPTY, not EPERM): each denied, the blob unchanged.
        k3s_blob_stat=$(stat -c '%a %u %g %Y %s' "$k3s_blob")
        denied=""
        allowed=""
        perl -e 'sysopen(F, $ARGV[0], 512) or die "$!\n"' "$k3s_blob" 2> "$out/k3s-trunc.err" &&
            allowed="$allowed O_TRUNC"
        grep -q 'Operation not permitted' "$out/k3s-trunc.err" && denied="$denied O_TRUNC"
        for op in "chmod 600" "chown 1:1" "touch -d 2000-01-01"; do
            $op "$k3s_blob" 2> "$out/k3s-setattr.err" && allowed="$allowed ${op%% *}"
            grep -q 'Operation not permitted' "$out/k3s-setattr.err" && denied="$denied ${op%% *}"
        done
        if [ -n "$k3s_layer" ]; then
            rmdir "$k3s_layer/bin" 2> "$out/k3s-rmdir.err" && allowed="$allowed rmdir"
            grep -q 'Operation not permitted' "$out/k3s-rmdir.err" && denied="$denied rmdir"
        fi
        k3s_blob_after=$(stat -c '%a %u %g %Y %s' "$k3s_blob")
        if [ "$denied" = " O_TRUNC chmod chown touch rmdir" ] &&
            [ "$(sha256sum "$k3s_blob" 2>&1)" = "$k3s_blob_sum" ] &&
            [ "$k3s_blob_after" = "$k3s_blob_stat" ] && [ -e "$k3s_layer/bin/busybox" ]; then
            pass k3s-foreign-truncate-setattr-rmdir-denied "$denied"
        else
            fail k3s-foreign-truncate-setattr-rmdir-denied "denied:$denied; allowed:$allowed; blob $k3s_blob_stat -> $k3s_blob_after; layer '$k3s_layer'; $(cat "$out/k3s-trunc.err" "$out/k3s-rmdir.err" 2> /dev/null | tr '\n' ' ')"
        fi
        k3s_run k3s-run
        # The layer's key in the PROTECTED map (InodeKey: the kernel's dev_t, padding, ino),
        # as bpftool -j prints key bytes.
        layer_key=$(perl -e '@s = lstat($ARGV[0]) or exit 1; my $d = $s[0];
            my $k = ((($d >> 8) & 0xfff) << 20) | (($d & 0xff) | (($d >> 12) & 0xfff00));
            print join(",", map { sprintf("\"0x%02x\"", $_) } unpack("C*", pack("L<L<Q<", $k, 0, $s[1])))' "$k3s_layer")
        bpftool -j map dump name PROTECTED > "$out/k3s-protected-before.json" 2>&1
        # --sync runs the garbage collector before returning: containerd removes the blobs
        # and the committed layer it protects.
        rm_out=$(kctr images rm --sync "$k3s_image" 2>&1)
        rm_status=$?
        # At once, not at the daemon's next look a second later: the trusted rmdir of the
        # layer's `fs` took its key out (ext4 hands the inode number out again at once).
        bpftool -j map dump name PROTECTED > "$out/k3s-protected-after.json" 2>&1
        if [ -n "$layer_key" ] && grep -qF "[$layer_key]" "$out/k3s-protected-before.json" &&
            ! grep -qF "[$layer_key]" "$out/k3s-protected-after.json"; then
            pass k3s-gc-unprotects-at-once
        else
            fail k3s-gc-unprotects-at-once "key [$layer_key] of '$k3s_layer'; before: $(grep -cF "[$layer_key]" "$out/k3s-protected-before.json"), after: $(grep -cF "[$layer_key]" "$out/k3s-protected-after.json"); $(head -c 300 "$out/k3s-protected-after.json" | tr '\n' ' ')"
        fi
        content=$(kctr content ls -q 2>&1)
        snapshots=$(kctr snapshots --snapshotter overlayfs ls 2>&1 | tail -n +2)
        leftover=$(find "$k3s_root/io.containerd.snapshotter.v1.overlayfs/snapshots" -mindepth 1 -maxdepth 1 2> /dev/null)
        if [ "$rm_status" -eq 0 ] && [ -z "$content" ] && [ -z "$snapshots" ] && [ -z "$leftover" ]; then
            pass k3s-rm-gc
        else
            fail k3s-rm-gc "images rm: $rm_status $(echo "$rm_out" | tr '\n' ' ' | cut -c 1-200); content left: $(echo "$content" | tr '\n' ' ' | cut -c 1-200); snapshots left: $(echo "$snapshots" | tr '\n' ' ' | cut -c 1-200); directories left: $leftover"
        fi
        if kctr images import --snapshotter overlayfs "$out/busybox-oci.tar" > "$out/k3s-import.txt" 2>&1 &&
            kctr images ls -q | grep -qxF "$k3s_image"; then
            pass k3s-import "$(tr '\n' ' ' < "$out/k3s-import.txt" | cut -c 1-200)"
        else
            fail k3s-import "$(tr '\n' ' ' < "$out/k3s-import.txt" | cut -c 1-300)"
        fi
        # The removed layer's inode is no longer protected (ext4 reuses inode numbers: a new
        # snapshot's `fs` would be protected by mistake), and a container of the image
        # imported again writes to its rootfs (a new file, and a copy-up of the layer's /bin:
        # the image has no /etc).
        i=0
        while ! grep -q "protect mode: no longer protecting $k3s_layer (gone)" "$out/daemon-k3s.log" && [ "$i" -lt 10 ]; do
            sleep 1
            i=$((i + 1))
        done
        if [ -n "$k3s_layer" ] && grep -q "protect mode: no longer protecting $k3s_layer (gone)" "$out/daemon-k3s.log"; then
            pass k3s-removed-layer-unprotected "$k3s_layer"
        else
            fail k3s-removed-layer-unprotected "layer '$k3s_layer': $(grep 'no longer protecting' "$out/daemon-k3s.log" | tr '\n' ' ' | cut -c 1-300)"
        fi
        k3s_run k3s-run-after-import
        wrote=$(kctr run --rm --snapshotter overlayfs "$k3s_image" vmtest-rootfs-write \
            /bin/sh -c 'echo x > /new-file && mkdir /bin/x && echo x > /bin/new-file && echo wrote' < /dev/null 2>&1)
        if [ "$wrote" = wrote ]; then
            pass k3s-rootfs-write-after-gc
        else
            fail k3s-rootfs-write-after-gc "$(echo "$wrote" | tr '\n' ' ' | cut -c 1-300)"
        fi
        # A k3s upgrade: a new data hash directory is unpacked beside the running one (new
        # inodes), then containerd restarts from it. Its containerd, shim and runc must be
        # trusted once they are there, before containerd starts and opens meta.db for
        # writing (denied otherwise: containerd would not start).
        k3s_bin2=/opt/k3s-like/data/2222/bin
        mkdir -p /opt/k3s-like/data/.tmp-2222/bin
        for exe in containerd containerd-shim-runc-v2 runc; do
            cp "$k3s_bin/$exe" "/opt/k3s-like/data/.tmp-2222/bin/$exe"
        done
        mv /opt/k3s-like/data/.tmp-2222 /opt/k3s-like/data/2222
        i=0
        while ! grep -q "protect mode: trusting $k3s_bin2/runc " "$out/daemon-k3s.log" && [ "$i" -lt 60 ]; do
            sleep 1
            i=$((i + 1))
        done
        trusted=$(grep -o "protect mode: trusting $k3s_bin2/[^ ]*" "$out/daemon-k3s.log" | cut -d' ' -f4 | tr '\n' ' ')
        if grep -q "protect mode: trusting $k3s_bin2/containerd " "$out/daemon-k3s.log" &&
            grep -q "protect mode: trusting $k3s_bin2/containerd-shim-runc-v2 " "$out/daemon-k3s.log" &&
            grep -q "protect mode: trusting $k3s_bin2/runc " "$out/daemon-k3s.log"; then
            pass k3s-upgrade-trusted "within ${i} s of unpacking, before containerd starts from it: $trusted"
        else
            fail k3s-upgrade-trusted "not within ${i} s of unpacking; trusted from $k3s_bin2: $trusted"
        fi
        kill -TERM "$k3s_ctrd"
        wait "$k3s_ctrd"
        start_k3s_containerd "$k3s_bin2" "$out/k3s-containerd-2.log"
        rm_out=$(kctr images rm --sync "$k3s_image" 2>&1)
        rm_status=$?
        leftover=$(find "$k3s_root/io.containerd.snapshotter.v1.overlayfs/snapshots" -mindepth 1 -maxdepth 1 2> /dev/null)
        if [ "$rm_status" -eq 0 ] && [ -z "$(kctr content ls -q 2>&1)" ] && [ -z "$leftover" ] &&
            kctr images import --snapshotter overlayfs "$out/busybox-oci.tar" > "$out/k3s-import-2.txt" 2>&1 &&
            kctr images ls -q | grep -qxF "$k3s_image"; then
            pass k3s-upgrade-rm-gc-import
        else
            fail k3s-upgrade-rm-gc-import "images rm: $rm_status $(echo "$rm_out" | tr '\n' ' ' | cut -c 1-200); directories left: $leftover; import: $(tr '\n' ' ' < "$out/k3s-import-2.txt" | cut -c 1-300)"
        fi
        stop
        # What an operator sees of the denials: the failed calls, as the watch recorded them
        # (no denial event of its own yet); and containerd's own calls were never denied.
        "$bin" query --store "$store" --limit 1000000 --json > "$out/k3s-history.json" 2>&1
        denied=$(grep -F "$(basename "$k3s_blob")" "$out/k3s-history.json" | grep '"result":"EPERM"' |
            grep '"verdict":"foreign"' | grep -o '"op":"[a-z_]*"' | sort -u | tr '\n' ' ')
        owner_denied=$(grep '"result":"EPERM"' "$out/k3s-history.json" | grep -c '"verdict":"owner"')
        if echo "$denied" | grep -q '"op":"unlink"' && echo "$denied" | grep -q '"op":"open_write"' &&
            [ "$owner_denied" -eq 0 ]; then
            pass k3s-denials-recorded "foreign calls recorded with result EPERM: $denied; owner calls denied: 0"
        else
            fail k3s-denials-recorded "foreign calls recorded with result EPERM: $denied; owner calls denied: $owner_denied (k3s-history.json)"
        fi
        # A package upgrade with a deferred restart: containerd's executable replaced at its
        # path (a rename over it) while containerd runs on; a daemon started now must trust
        # the inode containerd runs, not only the new file at the path, or containerd's
        # garbage collection (its unlinks) is denied.
        cp "$k3s_bin2/containerd" "$k3s_bin2/.containerd.new"
        mv "$k3s_bin2/.containerd.new" "$k3s_bin2/containerd"
        if start_k3s_daemon replaced; then
            rm_out=$(kctr images rm --sync "$k3s_image" 2>&1)
            rm_status=$?
            leftover=$(find "$k3s_root/io.containerd.snapshotter.v1.overlayfs/snapshots" -mindepth 1 -maxdepth 1 2> /dev/null)
            if [ "$rm_status" -eq 0 ] && [ -z "$(kctr content ls -q 2>&1)" ] && [ -z "$leftover" ]; then
                pass k3s-replaced-exe-rm-gc "$(grep -o 'trusting the running executable of containerd pid [0-9]*' "$out/daemon-k3s-replaced.log")"
            else
                fail k3s-replaced-exe-rm-gc "images rm: $rm_status $(echo "$rm_out" | tr '\n' ' ' | cut -c 1-200); directories left: $leftover"
            fi
            stop
        else
            fail k3s-replaced-exe-rm-gc "the daemon did not start: $(grep -m 1 -i 'error' "$out/daemon-k3s-replaced.log" | cut -c 1-300)"
            kill -KILL "$daemon" 2> /dev/null
        fi
    else
        fail k3s-trusted "run --root $k3s_root did not start: $(grep -m 1 -i 'error' "$out/daemon-k3s.log" | cut -c 1-300)"
        kill -KILL "$daemon" 2> /dev/null
    fi
else
    fail k3s-trusted "containerd in $k3s_bin: the import before the daemon failed: $(tr '\n' ' ' < "$out/k3s-import-before.txt" | cut -c 1-300) $(tail -n 3 "$out/k3s-containerd.log" | cut -c 1-300)"
fi
kill -TERM "$k3s_ctrd" 2> /dev/null
wait "$k3s_ctrd" 2> /dev/null
for exe in containerd containerd-shim-runc-v2 runc; do
    installed=$(grep "/$exe\$" "$k3s_aside/moved" | head -n 1)
    [ -n "$installed" ] && mv "$k3s_aside/$exe" "$installed"
done
rm -f "$out/busybox-oci.tar"
dmesg > "$out/dmesg.txt" 2>&1
exit "$failed"
