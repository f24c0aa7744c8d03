#!/bin/sh
# /usr/local/sbin/ctrwatch-vmtest-boot in the VM test's guest image (cargo xtask vm-test):
# mounts the host's test disk (/dev/vdb: the static ctrwatch, vm-test.sh, and out/ for the
# results), runs the test, and leaves the disk synced and unmounted, so that the host reads
# out/ once the guest has powered off.
set -u
echo "ctrwatch-vmtest: begin uptime=$(cut -d' ' -f1 /proc/uptime)"
i=0
while [ ! -b /dev/vdb ] && [ "$i" -lt 60 ]; do
    sleep 1
    i=$((i + 1))
done
mkdir -p /mnt/vmtest
if ! mount -t ext4 /dev/vdb /mnt/vmtest; then
    echo "ctrwatch-vmtest: FAIL mount the test disk /dev/vdb"
    exit 1
fi
mkdir -p /mnt/vmtest/out
# vm-test.sh bounds each of its waits; this bounds the whole.
timeout 20m sh /mnt/vmtest/vm-test.sh /mnt/vmtest /mnt/vmtest/out
status=$?
echo "$status" > /mnt/vmtest/out/exit-status
sync
umount /mnt/vmtest
echo "ctrwatch-vmtest: end status=$status uptime=$(cut -d' ' -f1 /proc/uptime)"
exit "$status"
