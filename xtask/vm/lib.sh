# Helpers shared by the VM test's guest scripts (vm-test.sh, vm-test-package.sh,
# vm-test-no-bpf-lsm.sh, vm-test-protect.sh, vm-test-protect-fallback.sh; cargo xtask
# vm-test, xtask/src/vm.rs puts this file beside them on the test disk). Sourced, not run:
# `. "$disk/lib.sh"` after the script has set `results` (the results file), `failed=0` and,
# for build_busybox_image, `out`.

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

# Waits up to $2 seconds, while the process $1 lives, for the command after them to succeed
# (a daemon started in the background to answer: containerd); false when it never did.
wait_answer() {
    _wa_pid=$1
    _wa_limit=$2
    shift 2
    _wa=0
    while ! "$@" > /dev/null 2>&1 && kill -0 "$_wa_pid" 2> /dev/null && [ "$_wa" -lt "$_wa_limit" ]; do
        sleep 1
        _wa=$((_wa + 1))
    done
    "$@" > /dev/null 2>&1
}

# Waits up to 600 s (loading and verifying the programs is slow under TCG) for the daemon
# whose pid is $2 to log, in $1, that it is watching; false when it did not (it exited, or
# the time ran out).
wait_watching() {
    _ww=0
    while ! grep -q 'ctrwatch: watching' "$1" && kill -0 "$2" 2> /dev/null && [ "$_ww" -lt 600 ]; do
        sleep 1
        _ww=$((_ww + 1))
    done
    grep -q 'ctrwatch: watching' "$1"
}

# The file $1's digest and size as an OCI descriptor's JSON fields.
desc() { printf '"digest":"sha256:%s","size":%s' "$(sha256sum "$1" | cut -d' ' -f1)" "$(stat -c %s "$1")"; }
# The OCI archive $1 of the image named $2 (built in $out/oci-build, removed after): one
# uncompressed layer with /bin/busybox (busybox-static) and /bin/sh -> busybox; config,
# manifest and index written here, digests by sha256sum.
build_busybox_image() {
    b=$out/oci-build
    rm -rf "$b"
    mkdir -p "$b/layer/bin" "$b/archive/blobs/sha256"
    cp /bin/busybox "$b/layer/bin/busybox"
    ln -s busybox "$b/layer/bin/sh"
    tar -C "$b/layer" --numeric-owner --owner=0 --group=0 -cf "$b/layer.tar" bin
    printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$(sha256sum "$b/layer.tar" | cut -d' ' -f1)" > "$b/config.json"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json",%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar",%s}]}' \
        "$(desc "$b/config.json")" "$(desc "$b/layer.tar")" > "$b/manifest.json"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"1"}}]}' \
        "$(desc "$b/manifest.json")" "$2" > "$b/archive/index.json"
    for f in layer.tar config.json manifest.json; do
        cp "$b/$f" "$b/archive/blobs/sha256/$(sha256sum "$b/$f" | cut -d' ' -f1)"
    done
    echo '{"imageLayoutVersion":"1.0.0"}' > "$b/archive/oci-layout"
    tar -C "$b/archive" -cf "$1" oci-layout index.json blobs
    rm -rf "$b"
}
