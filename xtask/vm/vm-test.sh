#!/bin/sh
# The VM test proper (cargo xtask vm-test, xtask/src/vm.rs), run inside a guest booted with
# another kernel, as root, by ctrwatch-vmtest-boot. Usage: vm-test.sh DISK_DIR OUT_DIR
# (DISK_DIR holds the static ctrwatch). Writes to OUT_DIR, which the host reads afterwards:
#   results.txt   PASS/FAIL/INFO lines, one per check: `PASS name [detail]`
#   probe.txt     what `ctrwatch probe` printed
#   kernel.txt    uname -r, the active LSMs, the kernel's BPF-related config, what bpftool
#                 says the kernel can load
#   daemon.log, history.json, dmesg.txt   for when a check fails
#   containerd.log, daemon-containerd.log, containerd-layer.json, containerd-history.json
#                 the same for the checks with a real containerd
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

# say, pass, fail, uptime_s, since, wait_for, wait_answer, wait_watching, desc, build_busybox_image.
. "$disk/lib.sh"

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
# The fentry probe: a test program loaded and attached on vfs_setxattr.
if grep -q '^hook family fentry: usable' "$out/probe.txt"; then
    pass probe-fentry "$(grep '^hook family fentry' "$out/probe.txt")"
else
    fail probe-fentry "$(grep '^hook family fentry' "$out/probe.txt" || echo 'no fentry line in probe')"
fi
# The LSM probe: a test program loaded and attached on bpf_lsm_inode_setxattr, and `bpf` an
# active LSM (both Debian kernels have it in their default list).
if grep -q '^hook family lsm: usable' "$out/probe.txt"; then
    pass probe-lsm "$(grep '^hook family lsm' "$out/probe.txt")"
else
    fail probe-lsm "$(grep '^hook family lsm' "$out/probe.txt" || echo 'no lsm line in probe')"
fi

# An overlay under the root whose lower layer has a directory that the merged mount removes
# and creates again: overlayfs then sets trusted.overlay.opaque=y on the new directory itself
# (in its work directory, before renaming it into the upper one). `$1`: its directory name.
overlay_setup() {
    o=$root/$1
    mkdir -p "$o/lower/gone/sub" "$o/lower/dir" "$o/upper" "$o/work" "$o/merged"
    echo lower > "$o/lower/gone/sub/f"
    echo lower > "$o/lower/dir/f"
    echo lower > "$o/lower/rmme"
    ln -s rmme "$o/lower/sym"
    mount -t overlay overlay -o "lowerdir=$o/lower,upperdir=$o/upper,workdir=$o/work" "$o/merged"
}
# The operations, each by a process whose pid is written to $out/$1-*.pid first (exec keeps it).
overlay_ops() {
    o=$root/$1
    # A lower file removed: overlayfs makes the mount's first whiteout (a 0/0 device in work/)
    # and renames it (a link of it) over the name in upper/.
    sh -c 'echo $$ > "$0"; exec rm -- "$1"' "$out/$1-whiteout.pid" "$o/merged/rmme"
    # A file created in a lower directory: the directory is copied up (made in work/, renamed
    # into upper/), the file created in upper/.
    sh -c 'echo $$ > "$0"; exec touch -- "$1"' "$out/$1-copyup.pid" "$o/merged/dir/new"
    # A lower file opened for writing: copied up (an O_TMPFILE in work/ linked into upper/,
    # or a file made in work/ and renamed).
    sh -c 'echo $$ > "$0"; exec touch -- "$1"' "$out/$1-copyfile.pid" "$o/merged/dir/f"
    # A lower symlink's owner changed: the symlink is copied up (made in work/, renamed).
    sh -c 'echo $$ > "$0"; exec chown -h 1:1 -- "$1"' "$out/$1-copysym.pid" "$o/merged/sym"
    # A file only in the upper layer removed: overlayfs unlinks the upper file.
    sh -c 'echo $$ > "$0"; exec rm -- "$1"' "$out/$1-unlink.pid" "$o/merged/dir/new"
    rm -rf -- "$o/merged/gone"
    sh -c 'echo $$ > "$0"; exec mkdir -- "$1"' "$out/$1-opaque.pid" "$o/merged/gone"
}
# The kernel-internal records of `$1`'s overlay (ovl-auto: from $out/overlay-auto.json) by the
# pid in $out/$1-$2.pid, of op $3.
overlay_internal() {
    grep '"kernel_internal"' "$out/overlay-${1#ovl-}.json" | grep "\"pid\":$(cat "$out/$1-$2.pid")[,}]" |
        grep "\"op\":\"$3\""
}
# The daemon's history of `$1`'s overlay: kernel-internal setxattrs of the opaque mkdir's pid.
overlay_opaque_records() {
    pid=$(cat "$out/$1-opaque.pid")
    "$bin" query --store "$store" --op setxattr --pid "$pid" --path "$root/$1/**" --json |
        grep '"trusted.overlay.opaque"' | grep '"kernel_internal"'
}
# Waits (up to 60 s) for a line in the daemon's log.
wait_log() {
    i=0
    while ! grep -q "$1" "$2" && [ "$i" -lt 60 ]; do
        sleep 1
        i=$((i + 1))
    done
}
# Stops the daemon $1 (SIGTERM, then up to 120 s); `pass`/`fail` check $2.
stop_daemon() {
    kill -TERM "$1"
    i=0
    while kill -0 "$1" 2> /dev/null && [ "$i" -lt 120 ]; do
        sleep 1
        i=$((i + 1))
    done
    if kill -0 "$1" 2> /dev/null; then
        fail "$2" "still running 120 s after SIGTERM"
        kill -KILL "$1"
    fi
    wait "$1"
    status=$?
    if [ "$status" -eq 0 ]; then pass "$2"; else fail "$2" "exit status $status"; fi
}
modprobe overlay 2> /dev/null

mkdir -p "$root"
mkdir -p -m 0700 "$(dirname "$store")"
rm -f "$store" "$victim"
start=$(uptime_s)
"$bin" run --root "$root" --store "$store" > "$out/daemon.log" 2>&1 &
daemon=$!
if wait_watching "$out/daemon.log" "$daemon"; then
    pass watching "$(grep -o 'watching .*' "$out/daemon.log" | head -n 1)"
    say INFO start_seconds "$(since "$start")"

    if grep -q 'hook families: .*fentry usable .*, 20 programs attached' "$out/daemon.log"; then
        pass fentry-attached "$(grep -o 'hook families: .*' "$out/daemon.log" | head -n 1)"
    else
        fail fentry-attached "no 'fentry usable ..., 20 programs attached' in the daemon's log"
    fi
    # The start log reports the LSM probe's result with the other families.
    if grep -q 'hook families: .*; lsm usable (' "$out/daemon.log"; then
        pass lsm-logged "$(grep -o 'lsm usable ([^)]*)' "$out/daemon.log" | head -n 1)"
    else
        fail lsm-logged "no 'lsm usable (...)' in the daemon's 'hook families:' line"
    fi

    # A file created, then deleted by a command the history must name.
    sh -c "echo vmtest > $victim"
    # An xattr set by the system call (perl's syscall: setxattr is 188 on x86_64): the
    # tracepoints report it, the fentry programs must not report it again.
    echo x > "$root/vmtest-xattr"
    perl -e 'my ($p, $n, $v) = ($ARGV[0], "user.ctrwatch", "v");
        syscall(188, $p, $n, $v, 1, 0) == 0 or die "setxattr: $!\n"' "$root/vmtest-xattr"
    overlay_setup ovl-auto && overlay_ops ovl-auto
    # Each namespace system call on the root's own filesystem (one VFS call of a hooked
    # function each: mknod of a regular file is vfs_create, of a FIFO vfs_mknod): the
    # tracepoints report it, the fentry programs must not report it again.
    ns=$root/vmtest-ns
    mkdir -p "$ns/d"
    perl -e 'syscall(133, $ARGV[0], 0100644, 0) == 0 or die "mknod: $!\n"' "$ns/reg"
    mknod "$ns/fifo" p
    ln "$ns/reg" "$ns/hard"
    ln -s reg "$ns/soft"
    mv "$ns/hard" "$ns/moved"
    rm -- "$ns/moved"
    rmdir "$ns/d"
    rm -f -- "$victim"
    # Stopped once the last operation, the unlink, is in the store: the ring buffer hands the
    # records over in order, so the ones before it are there too.
    victim_unlinked() { "$bin" history "$victim" --store "$store" --json | grep -q '"op":"unlink"'; }
    wait_for 60 victim_unlinked || say INFO store_wait "no unlink of $victim in the store after 60 s"
    stop_daemon "$daemon" stopped

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

    # The system call's setxattr: once, not labelled kernel-internal.
    "$bin" history "$root/vmtest-xattr" --store "$store" --json > "$out/xattr.json" 2>&1
    n=$(grep '"op":"setxattr"' "$out/xattr.json" | grep -c '"user.ctrwatch"')
    internal=$(grep '"op":"setxattr"' "$out/xattr.json" | grep -c '"kernel_internal"')
    if [ "$n" -eq 1 ] && [ "$internal" -eq 0 ]; then
        pass xattr-once
    else
        fail xattr-once "$n setxattr record(s) of user.ctrwatch, $internal kernel-internal"
    fi

    # The namespace system calls: each op once, none kernel-internal.
    "$bin" query --store "$store" --path "$ns/**" --json > "$out/namespace-once.json" 2>&1
    counts=""
    for op in mkdir mknod symlink link rename unlink rmdir; do
        counts="$counts $op=$(grep "\"path\":\"$ns/" "$out/namespace-once.json" | grep -c "\"op\":\"$op\"")"
    done
    # Below $ns: the mkdir of d, the mknods of reg and fifo, one of each other.
    want=" mkdir=1 mknod=2 symlink=1 link=1 rename=1 unlink=1 rmdir=1"
    internal=$(grep -c '"kernel_internal"' "$out/namespace-once.json")
    if [ "$counts" = "$want" ] && [ "$internal" -eq 0 ]; then
        pass namespace-once "$counts"
    else
        fail namespace-once "records:$counts (want$want), $internal kernel-internal (want 0)"
    fi

    # The overlay: everything ctrwatch has of it, for a look; then the opaque directory's
    # xattr, kernel-internal and attributed to the mkdir.
    "$bin" query --store "$store" --path "$root/ovl-auto/**" --json > "$out/overlay-auto.json" 2>&1
    if overlay_opaque_records ovl-auto > "$out/opaque-auto.json"; then
        pass opaque-kernel-internal "$(head -c 400 "$out/opaque-auto.json")"
    else
        fail opaque-kernel-internal "no kernel-internal setxattr of trusted.overlay.opaque by pid $(cat "$out/ovl-auto-opaque.pid") (overlay-auto.json has what was recorded)"
    fi
    copyup_pid=$(cat "$out/ovl-auto-copyup.pid")
    say INFO copyup_kernel_internal "$(grep '"kernel_internal"' "$out/overlay-auto.json" |
        grep "\"pid\":$copyup_pid[,}]" | grep -o '"xattr":{"name":"[^"]*"' | sort | uniq -c | tr '\n' ' ')"
    # The namespace operations overlayfs made itself (fentry_namespace.rs), each attributed to
    # the process whose system call made it do them.
    say INFO namespace_kernel_internal "$(grep '"kernel_internal"' "$out/overlay-auto.json" |
        grep -v '"xattr"' | grep -o '"op":"[a-z_]*"' | sort | uniq -c | tr -s ' \n' ' ')"
    u=$root/ovl-auto/upper
    if ! overlay_internal ovl-auto whiteout mknod | grep -q '"whiteout":true'; then
        fail whiteout-kernel-internal "no kernel-internal whiteout mknod by the rm's pid $(cat "$out/ovl-auto-whiteout.pid")"
    elif ! overlay_internal ovl-auto whiteout rename | grep -q "\"new_path\":\"$u/rmme\""; then
        fail whiteout-kernel-internal "no kernel-internal rename onto $u/rmme by the rm's pid"
    else
        pass whiteout-kernel-internal "$(overlay_internal ovl-auto whiteout mknod | head -c 300)"
    fi
    if ! overlay_internal ovl-auto copyup mkdir | grep -q "\"path\":\"$root/ovl-auto/work/"; then
        fail copyup-dir-kernel-internal "no kernel-internal mkdir in work/ by the touch's pid $copyup_pid"
    elif ! overlay_internal ovl-auto copyup rename | grep -q "\"new_path\":\"$u/dir\""; then
        fail copyup-dir-kernel-internal "no kernel-internal rename onto $u/dir by the touch's pid"
    elif ! overlay_internal ovl-auto copyup create | grep -q "\"path\":\"$u/dir/new\""; then
        fail copyup-dir-kernel-internal "no kernel-internal create of $u/dir/new by the touch's pid"
    else
        pass copyup-dir-kernel-internal "$(overlay_internal ovl-auto copyup rename | head -c 300)"
    fi
    if ! overlay_internal ovl-auto copysym symlink | grep -q "\"new_path\":\"rmme\""; then
        fail copyup-symlink-kernel-internal "no kernel-internal symlink to rmme by the chown's pid $(cat "$out/ovl-auto-copysym.pid")"
    elif ! overlay_internal ovl-auto copysym rename | grep -q "\"new_path\":\"$u/sym\""; then
        fail copyup-symlink-kernel-internal "no kernel-internal rename onto $u/sym by the chown's pid"
    else
        pass copyup-symlink-kernel-internal "$(overlay_internal ovl-auto copysym symlink | head -c 300)"
    fi
    if { overlay_internal ovl-auto copyfile link; overlay_internal ovl-auto copyfile rename; } |
        grep -q "\"new_path\":\"$u/dir/f\""; then
        pass copyup-file-kernel-internal "$({ overlay_internal ovl-auto copyfile link; overlay_internal ovl-auto copyfile rename; } | head -c 300)"
    else
        fail copyup-file-kernel-internal "no kernel-internal link or rename onto $u/dir/f by the touch's pid $(cat "$out/ovl-auto-copyfile.pid")"
    fi
    # The rm's own unlink: once, by its system call; the upper file's: kernel-internal.
    unlink_pid=$(cat "$out/ovl-auto-unlink.pid")
    own=$(grep '"op":"unlink"' "$out/overlay-auto.json" | grep "\"pid\":$unlink_pid[,}]" |
        grep -c "\"path\":\"$root/ovl-auto/merged/dir/new\"")
    own_internal=$(grep '"op":"unlink"' "$out/overlay-auto.json" | grep "\"pid\":$unlink_pid[,}]" |
        grep "\"path\":\"$root/ovl-auto/merged/dir/new\"" | grep -c '"kernel_internal"')
    if [ "$own" -ne 1 ] || [ "$own_internal" -ne 0 ]; then
        fail unlink-kernel-internal "$own unlink record(s) of merged/dir/new by pid $unlink_pid, $own_internal kernel-internal (want 1, 0)"
    elif ! overlay_internal ovl-auto unlink unlink | grep -q "\"path\":\"$u/dir/new\""; then
        fail unlink-kernel-internal "no kernel-internal unlink of $u/dir/new by the rm's pid $unlink_pid"
    else
        pass unlink-kernel-internal "$(overlay_internal ovl-auto unlink unlink | head -c 300)"
    fi

    # The same with the syscall tracepoints alone: the kernel's own change is not seen.
    rm -f "$store"
    start=$(uptime_s)
    "$bin" run --backend tracepoint --root "$root" --store "$store" > "$out/daemon-tracepoint.log" 2>&1 &
    daemon=$!
    if wait_watching "$out/daemon-tracepoint.log" "$daemon"; then
        pass tracepoint-watching
        say INFO tracepoint_start_seconds "$(since "$start")"
        overlay_setup ovl-tp && overlay_ops ovl-tp
        # The last operation, the opaque directory's mkdir, in the store (see above).
        tp_mkdir_stored() {
            "$bin" query --store "$store" --op mkdir --pid "$(cat "$out/ovl-tp-opaque.pid")" \
                --path "$root/ovl-tp/**" --json | grep -q '"op":"mkdir"'
        }
        wait_for 60 tp_mkdir_stored || say INFO store_wait "no mkdir of ovl-tp/merged/gone in the store after 60 s"
        stop_daemon "$daemon" tracepoint-stopped
        "$bin" query --store "$store" --path "$root/ovl-tp/**" --json > "$out/overlay-tp.json" 2>&1
        opaque_pid=$(cat "$out/ovl-tp-opaque.pid")
        if ! grep '"op":"mkdir"' "$out/overlay-tp.json" | grep -q "\"pid\":$opaque_pid[,}]"; then
            fail tracepoint-not-kernel-internal "the mkdir by pid $opaque_pid is not recorded either: the run saw nothing"
        elif overlay_opaque_records ovl-tp > /dev/null; then
            fail tracepoint-not-kernel-internal "the tracepoint backend recorded the kernel's own setxattr"
        elif grep -q '"kernel_internal"' "$out/overlay-tp.json"; then
            fail tracepoint-not-kernel-internal "a kernel-internal record with --backend tracepoint"
        elif ! grep '"op":"unlink"' "$out/overlay-tp.json" | grep -q "\"pid\":$(cat "$out/ovl-tp-whiteout.pid")[,}]"; then
            fail tracepoint-not-kernel-internal "the rm of merged/rmme is not recorded: the run saw nothing of it"
        else
            pass tracepoint-not-kernel-internal "the mkdir and the rm are recorded; the opaque xattr, whiteout and copy-ups are not"
        fi
    else
        fail tracepoint-watching "run --backend tracepoint: $(grep -m 1 'error' "$out/daemon-tracepoint.log" | cut -c 1-300)"
        kill -KILL "$daemon" 2> /dev/null
        wait "$daemon"
    fi
    umount "$root/ovl-auto/merged" "$root/ovl-tp/merged" 2> /dev/null
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

# A real containerd (Debian's, its unit masked in the image) on its own root, watched by
# ctrwatch: import a one-layer busybox image built here, run it, remove it and collect the
# garbage; containerd's own writes of the layer must have the owner verdict, nothing foreign.
ctrd_root=/var/lib/ctrwatch-vmtest-containerd
ctrd_state=/run/ctrwatch-vmtest-containerd
ctrd_sock=$ctrd_state/containerd.sock
ctrd_store=/var/lib/ctrwatch-vmtest/containerd.db
ctrd_image=docker.io/ctrwatch/vmtest-busybox:1
ctrd_snapshots=$ctrd_root/io.containerd.snapshotter.v1.overlayfs/snapshots
ctr_() { ctr --address "$ctrd_sock" --namespace default "$@"; }
rm -rf "$ctrd_root" "$ctrd_state"
mkdir -p "$ctrd_root" "$ctrd_state"
rm -f "$ctrd_store"
# CRI is not needed (it would want CNI).
cat > "$ctrd_state/config.toml" << EOF
version = 2
root = "$ctrd_root"
state = "$ctrd_state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$ctrd_sock"
EOF
containerd --config "$ctrd_state/config.toml" --root "$ctrd_root" --state "$ctrd_state" \
    --address "$ctrd_sock" > "$out/containerd.log" 2>&1 &
ctrd=$!
wait_answer "$ctrd" 120 ctr_ version
if ! ctr_ version > "$out/ctr-version.txt" 2>&1; then
    fail containerd-started "no answer on $ctrd_sock within 120 s: $(tail -n 3 "$out/containerd.log" | cut -c 1-300)"
else
    pass containerd-started "$(grep -m 1 Version "$out/ctr-version.txt" | tr -s ' ')"
    start=$(uptime_s)
    "$bin" run --root "$ctrd_root" --store "$ctrd_store" > "$out/daemon-containerd.log" 2>&1 &
    daemon=$!
    if wait_watching "$out/daemon-containerd.log" "$daemon"; then
        say INFO containerd_watch_start_seconds "$(since "$start")"
        build_busybox_image "$out/busybox-oci.tar" "$ctrd_image"
        if ctr_ images import --snapshotter overlayfs "$out/busybox-oci.tar" > "$out/ctr-import.txt" 2>&1 &&
            ctr_ images ls -q | grep -qxF "$ctrd_image"; then
            pass containerd-import "$(tr '\n' ' ' < "$out/ctr-import.txt" | cut -c 1-200)"
        else
            fail containerd-import "$(tr '\n' ' ' < "$out/ctr-import.txt" | cut -c 1-300)"
        fi
        ran=$(ctr_ run --rm --snapshotter overlayfs "$ctrd_image" vmtest-run /bin/sh -c 'echo ran-in-busybox' < /dev/null 2>&1)
        if [ "$ran" = ran-in-busybox ]; then
            pass containerd-run
        else
            fail containerd-run "$(echo "$ran" | tr '\n' ' ' | cut -c 1-300)"
        fi
        # The image's record goes, and --sync runs the garbage collector before returning:
        # the content and the layer's snapshot (record and directory) must be gone with it.
        # The snapshot directories the garbage collector is to remove (their ids).
        snapshot_ids=$(ls "$ctrd_snapshots" 2> /dev/null)
        rm_out=$(ctr_ images rm --sync "$ctrd_image" 2>&1)
        rm_status=$?
        content=$(ctr_ content ls -q 2>&1)
        snapshots=$(ctr_ snapshots --snapshotter overlayfs ls 2>&1 | tail -n +2)
        leftover=$(find "$ctrd_snapshots" -mindepth 1 -maxdepth 1 2> /dev/null)
        if [ "$rm_status" -eq 0 ] && [ -z "$content" ] && [ -z "$snapshots" ] && [ -z "$leftover" ]; then
            pass containerd-rm-gc
        else
            fail containerd-rm-gc "images rm: $rm_status $(echo "$rm_out" | tr '\n' ' ' | cut -c 1-200); content left: $(echo "$content" | tr '\n' ' ' | cut -c 1-200); snapshots left: $(echo "$snapshots" | tr '\n' ' ' | cut -c 1-200); directories left: $leftover"
        fi
        # Stopped once the last operations, the removal of the snapshots' directories
        # (RemoveAll: the directory itself last), are in the store.
        snapshots_removed() {
            "$bin" query --store "$ctrd_store" --op rmdir --path "$ctrd_snapshots/*" --json > "$out/rmdir.json" || return 1
            for id in $snapshot_ids; do
                grep -qF "\"path\":\"$ctrd_snapshots/$id\"" "$out/rmdir.json" || return 1
            done
        }
        wait_for 60 snapshots_removed ||
            say INFO store_wait "not every rmdir of snapshots $(echo $snapshot_ids) in the store after 60 s"
        rm -f "$out/rmdir.json"
        stop_daemon "$daemon" containerd-watch-stopped
        # The layer's busybox, created by containerd's unpacking (pid $ctrd) through its
        # temporary mount of the snapshot (root/tmpmounts/containerd-mount*): the record
        # names the path inside it (the layer's digest only when the snapshot's record was
        # already readable then).
        "$bin" query --store "$ctrd_store" --op create --path "$ctrd_root/**/bin/busybox" --json > "$out/containerd-layer.json" 2>&1
        "$bin" query --store "$ctrd_store" --limit 1000000 --json > "$out/containerd-history.json" 2>&1
        owner=$(grep '"verdict":"owner"' "$out/containerd-layer.json" | grep '"path":"/bin/busybox"' |
            grep -c "\"pid\":$ctrd[,}]")
        if [ "$owner" -ge 1 ]; then
            pass containerd-owner "$(grep -o '"reason":"[^"]*"' "$out/containerd-layer.json" | head -n 1)"
        else
            fail containerd-owner "$owner owner create(s) of the layer's /bin/busybox by containerd pid $ctrd (containerd-layer.json)"
        fi
        # Nothing containerd, its clients and the kernel did for them is foreign: that
        # includes overlayfs's own bookkeeping in an active snapshot's work directory while
        # `ctr run` mounts it (the kernel probes trusted.overlay.* and ACL xattrs there, on
        # behalf of the mounting client), issue 15.
        foreign=$(grep -c '"verdict":"foreign"' "$out/containerd-history.json")
        if [ "$foreign" -eq 0 ]; then
            pass containerd-no-foreign "$(grep -o '"reason":"overlayfs[^"]*"' "$out/containerd-history.json" | sed 's/ [0-9]\+/ N/g' | sort | uniq -c | tr -s ' \n' ' ' | cut -c 1-300)"
        else
            fail containerd-no-foreign "$foreign foreign event(s) in containerd-history.json: $(grep '"verdict":"foreign"' "$out/containerd-history.json" |
                sed 's/.*"op":"\([a-z]*\)".*"path":"\([^"]*\)".*"process":{"pid":[0-9]*,"tid":[0-9]*,"ppid":[0-9]*,"comm":"\([^"]*\)".*/\1 \2 by \3,/' |
                sed 's|/io.containerd.snapshotter.v1.overlayfs/snapshots/|/…/snapshots/|' |
                sort | uniq -c | tr -s ' \n' ' ' | cut -c 1-600)"
        fi
    else
        fail containerd-watch-stopped "run --root $ctrd_root did not start: $(grep -m 1 'error' "$out/daemon-containerd.log" | cut -c 1-300)"
        kill -KILL "$daemon" 2> /dev/null
        wait "$daemon"
    fi
fi
kill -TERM "$ctrd" 2> /dev/null
wait "$ctrd" 2> /dev/null
rm -f "$out/busybox-oci.tar"

dmesg > "$out/dmesg.txt" 2>&1
exit "$failed"
