#!/bin/sh
# trustedlaunch in-guest agent: /init of the node initramfs (busybox sh, PID 1).
#
# Protocol on /dev/ttyS1 (raw): the host writes one request per line, "COMMAND ID [ARGUMENT]", the agent
# answers each with one line of JSON that echoes the request's ID (binary fields in base64) followed by the
# line "END <sha256 hex of the JSON line and its newline>". The ID (1-32 of [0-9A-Za-z_-], else "") lets the
# host tell the answer to its request from answers left on the link.
#   PING <id>             -> {"id":"<id>","reply":"PONG"}
#   TPM <id> <command>    -> {"id":"<id>","reply":"TPM","response":"<b64>"}  (or ...,"error":"no TPM" ...)
#                            <command>: the TPM command's bytes, each as \xHH (lowercase hex)
#   EVENTLOG <id>         -> {"id":"<id>","reply":"EVENTLOG","eventLog":"<b64>"}  (empty without a log)
#   ROOTFS <id>           -> {"id":"<id>","reply":"ROOTFS","state":"<state>","containerd":"<b64>","detail":"<b64>"}
#                            the root filesystem's outcome at boot. <state>: "absent" (the command line names
#                            no root hash), "verified" (every block read back under dm-verity, mounted
#                            read-only at /sysroot; containerd: its `--version` output run from there),
#                            "corrupted" (dm-verity failed a read: a block differs from the root hash) or
#                            "failed" (the modules, disk or device mapper table did not come up); detail:
#                            the tools' and kernel's messages.
#   KUBELET <id> <b64>    -> {"id":"<id>","reply":"KUBELET","state":"started","detail":"<b64>"}
#                            <b64>: base64 of the join bundle (trustedlaunch.node.kubelet: a tar of node-name,
#                            hosts, kubelet.conf, ca.crt, config.yaml, cni.conflist and the credential files
#                            kubelet-{client,server}.{crt,key}). Once, on a verified root
#                            filesystem: places the files on its tmpfs, mounts cgroup2, brings up lo and eth0,
#                            starts containerd from /sysroot, imports the pre-loaded images pinned, starts
#                            kubelet; detail: what it did (or ...,"error":... with the tools' messages)
#   KUBELETCERTS <id> <b64> -> {"id":"<id>","reply":"KUBELETCERTS","replaced":"<files>","clientSha256":"<hex>",
#                            "servingSha256":"<hex>"}
#                            <b64>: base64 of a tar of the credential files (renewed by the control plane);
#                            only once kubelet was started: each written beside the old one on the tmpfs,
#                            then renamed over it (kubelet reads the old or the new file, never a part of
#                            one; it reloads them itself). <files>: those replaced; the sha256 of the client
#                            and serving certificates now in place
#   KUBELETSTATUS <id>    -> {"id":"<id>","reply":"KUBELETSTATUS","kubelet":"<state>","containerd":"<state>",
#                            "memoryKiB":"<total>,<available>","kubeletLog":"<b64>","containerdLog":"<b64>"}
#                            <state>: "absent" (not started), "running" or "exited"; memory: the guest's
#                            MemTotal and MemAvailable; logs: the last 2 KiB of each
#   anything else         -> {"id":"<id>","reply":"UNKNOWN","error":"unknown request","detail":""}
#
# The agent runs no TPM software: it relays TPM commands to /dev/tpm0, and the host's TSS
# (trustedlaunch.tpm.node_tpm) builds them and checks the answers. It relays only the commands attestation
# needs (reading keys, PCRs and the EK certificate, quoting, making and persisting the AK, credential
# activation); nothing that extends PCRs, writes NV, deletes a persistent key or changes a hierarchy
# passes.

export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
mkdir -p /tmp/agent
cd /tmp/agent || exec sh

AGENT=/dev/ttyS1
# The root filesystem disk (the first virtio disk): squashfs data blocks, then its dm-verity hash tree.
ROOTFS_DISK=/dev/vda
# What must be writable on the read-only root (state, credentials and CNI configuration the node receives).
ROOTFS_TMPFS="run var etc/kubernetes etc/cni/net.d"
EVENT_LOG=/sys/kernel/security/tpm0/binary_bios_measurements
# A joining node (trustedlaunch.node.kubelet): its address on QEMU's user network, the files of its join
# bundle, the largest bundle it takes (base64 characters), the label that pins pre-loaded images in the CRI
# (trustedlaunch.node.container_images.PRELOADED_IMAGE_LABELS).
NODE_ADDRESS=10.0.2.15/24
NODE_GATEWAY=10.0.2.2
CREDENTIAL_FILES="kubelet-client.crt kubelet-client.key kubelet-server.crt kubelet-server.key"
JOIN_FILES="node-name hosts kubelet.conf ca.crt config.yaml cni.conflist $CREDENTIAL_FILES"
CREDENTIALS_DIR=/sysroot/etc/kubernetes/pki
MAX_BUNDLE_CHARS=65536
MAX_CERTS_CHARS=16384
PINNED_LABEL=io.cri-containerd.pinned=pinned
IMAGES_DIR=/usr/share/trustedlaunch/images
kubelet_pid="" containerd_pid=""
# TPM_CC of GetCapability ReadPublic NV_ReadPublic NV_Read Quote PCR_Read StartAuthSession PolicySecret
# ActivateCredential FlushContext CreateLoaded EvictControl
RELAYED="0000017a 00000173 00000169 0000014e 00000158 0000017e 00000176 00000151 00000147 00000165 00000191 00000120"

b64() {
    base64 -w 0 "$1"
}

reply() {
    # $1: the answer's fields after the id. The line, then END and the sha256 of the line with its
    # newline (one process: the shell writes the here-document itself)
    line="{\"id\":\"$request_id\",$1}"
    printf '%s\n' "$line" >&3
    sum=$(sha256sum <<EOF
$line
EOF
)
    printf 'END %s\n' "${sum%% *}" >&3
}

fail() {
    # $1: request, $2: short error, $3: file with the tool's diagnostics (optional)
    detail=""
    [ -n "$3" ] && [ -s "$3" ] && detail=$(b64 "$3")
    reply "\"reply\":\"$1\",\"error\":\"$2\",\"detail\":\"$detail\""
}

tpm_command() {
    # $1: the command's bytes, each as \xHH: the shell's own printf turns them into bytes (no decoding
    # process; any other printf escape only changes the bytes, and the code is checked on the bytes).
    if [ "$tpm" != present ]; then
        fail TPM "no TPM"
        return
    fi
    case $1 in
        "" | *[!\\x0-9a-f]*)
            fail TPM "the command is not written as bytes in the form xHH, each after a backslash"
            return
            ;;
    esac
    printf "$1" >command.bin
    # The command code (bytes 6-9 after tag and size), read from the bytes that go to the TPM.
    set -- $(od -An -tx1 -j6 -N4 command.bin)
    case " $RELAYED " in
        *" $1$2$3$4 "*) ;;
        *)
            fail TPM "command code 0x$1$2$3$4 is not relayed: the agent passes only attestation commands"
            return
            ;;
    esac
    # EvictControl persists a loaded (transient, 0x80......) key; on a persistent handle it would delete
    # that key (the EK): refused. The object handle follows the auth handle (bytes 14-17).
    if [ "$1$2$3$4" = 00000120 ] && [ "$(od -An -tx1 -j14 -N1 command.bin)" != " 80" ]; then
        fail TPM "EvictControl is relayed only to persist a transient key, never to delete a persistent one"
        return
    fi
    # The device takes a command in one write() only: dd makes one, the shell's printf may not.
    if ! dd if=command.bin bs=4096 count=1 >&4 2>err.txt; then
        fail TPM "the TPM device refused the command" err.txt
        return
    fi
    # The device answers the one read after the write, then reads end (EOF).
    response=$(base64 -w 0 <&4)
    if [ -z "$response" ]; then
        fail TPM "the TPM device did not answer"
        return
    fi
    reply "\"reply\":\"TPM\",\"response\":\"$response\""
}

open_rootfs() {
    # Sets rootfs_state; messages go to rootfs.log. The arguments come from the measured command line.
    roothash="" salt="" blocks=""
    for arg in $(cat /proc/cmdline); do
        case $arg in
            trustedlaunch.verity_roothash=*) roothash=${arg#*=} ;;
            trustedlaunch.verity_salt=*) salt=${arg#*=} ;;
            trustedlaunch.verity_blocks=*) blocks=${arg#*=} ;;
        esac
    done
    rootfs_state=absent
    [ -n "$roothash$salt$blocks" ] || return
    rootfs_state=failed
    read -r started _ </proc/uptime
    if [ ${#roothash} -ne 64 ] || [ ${#salt} -ne 64 ]; then
        echo "root hash and salt must be 64 hex digits" >>rootfs.log
        return
    fi
    case $roothash$salt in *[!0-9a-f]*) echo "root hash or salt is not hex" >>rootfs.log; return ;; esac
    case $blocks in "" | *[!0-9]*) echo "bad block count $blocks" >>rootfs.log; return ;; esac
    [ ${#blocks} -le 12 ] || { echo "bad block count $blocks" >>rootfs.log; return; }
    while read -r module; do
        insmod "/lib/modules/$module" 2>>rootfs.log || { echo "insmod $module failed" >>rootfs.log; return; }
    done </etc/modules
    waited=0
    while [ ! -b $ROOTFS_DISK ] && [ $waited -lt 100 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    [ -b $ROOTFS_DISK ] || { echo "no root filesystem disk $ROOTFS_DISK" >>rootfs.log; return; }
    # 4096-byte blocks; the hash tree starts right after the data blocks (no superblock).
    table="0 $((blocks * 8)) verity 1 $ROOTFS_DISK $ROOTFS_DISK 4096 4096 $blocks $blocks sha256 $roothash $salt"
    DM_DISABLE_UDEV=1 dmsetup create --readonly rootfs --table "$table" >>rootfs.log 2>&1 || return
    # Read every block once, past the page cache: dm-verity fails the read of a block that differs.
    if ! dd if=/dev/mapper/rootfs of=/dev/null bs=1M iflag=direct 2>dd.txt; then
        rootfs_state=corrupted
        cat dd.txt >>rootfs.log
        dmesg | grep -i verity | tail -n 5 >>rootfs.log
        echo "trustedlaunch: root filesystem corrupted (dm-verity)" >/dev/console
        return
    fi
    mount -t squashfs -o ro /dev/mapper/rootfs /sysroot 2>>rootfs.log || return
    for dir in proc sys dev; do
        mount --bind "/$dir" "/sysroot/$dir" 2>>rootfs.log || return
    done
    for dir in $ROOTFS_TMPFS; do
        mount -t tmpfs -o mode=0755 tmpfs "/sysroot/$dir" 2>>rootfs.log || return
    done
    mount -t tmpfs -o mode=1777 tmpfs /sysroot/tmp 2>>rootfs.log || return
    chroot /sysroot /usr/bin/containerd --version >containerd.txt 2>>rootfs.log || return
    rootfs_state=verified
    read -r finished _ </proc/uptime
    echo "trustedlaunch: root filesystem verified (uptime $started s -> $finished s)" >/dev/console
}

rootfs_report() {
    version="" detail=""
    [ -s containerd.txt ] && version=$(head -c 1024 containerd.txt | base64 -w 0)
    [ -s rootfs.log ] && detail=$(tail -c 4096 rootfs.log | base64 -w 0)
    reply "\"reply\":\"ROOTFS\",\"state\":\"$rootfs_state\",\"containerd\":\"$version\",\"detail\":\"$detail\""
}

uptime_stamp() {
    read -r seconds _ </proc/uptime
    echo "[$seconds s] $*"
}

join_node() {
    # Messages to stdout/stderr (join.log), each step stamped with the uptime; returns non-zero at the
    # first step that fails.
    uptime_stamp "joining"
    hostname "$node_name" || return
    mkdir -p /sysroot/etc/kubernetes/pki /sysroot/var/lib/kubelet /sysroot/var/log /sysroot/run/trustedlaunch || return
    cp join/kubelet.conf join/config.yaml /sysroot/etc/kubernetes/ || return
    chmod 600 /sysroot/etc/kubernetes/kubelet.conf
    cp join/ca.crt $CREDENTIALS_DIR/ca.crt || return
    for file in $CREDENTIAL_FILES; do
        cp "join/$file" "$CREDENTIALS_DIR/$file" && chmod 600 "$CREDENTIALS_DIR/$file" || return
    done
    cp join/cni.conflist /sysroot/etc/cni/net.d/10-pods.conflist || return
    # /etc is read-only: the cluster FQDN goes into a copy of /etc/hosts on tmpfs, bound over it
    cat /sysroot/etc/hosts join/hosts >/sysroot/run/trustedlaunch/hosts || return
    mount --bind /sysroot/run/trustedlaunch/hosts /sysroot/etc/hosts || return
    mount -t cgroup2 cgroup2 /sysroot/sys/fs/cgroup || return
    ip link set lo up || return
    ip addr add $NODE_ADDRESS dev eth0 || return
    ip link set eth0 up || return
    ip route add default via $NODE_GATEWAY || return
    uptime_stamp "network: eth0 $NODE_ADDRESS via $NODE_GATEWAY; cgroup2 mounted"
    # (neither gets the agent's serial port or TPM: 3>&- 4>&-)
    chroot /sysroot /usr/bin/containerd >/sysroot/var/log/containerd.log 2>&1 3>&- 4>&- &
    containerd_pid=$!
    waited=0
    while [ ! -S /sysroot/run/containerd/containerd.sock ] && [ $waited -lt 600 ]; do
        kill -0 $containerd_pid 2>/dev/null || { echo "containerd exited"; tail -c 1024 /sysroot/var/log/containerd.log; return 1; }
        sleep 0.1
        waited=$((waited + 1))
    done
    [ -S /sysroot/run/containerd/containerd.sock ] || { echo "containerd did not listen within 60 s"; return 1; }
    uptime_stamp "containerd started (pid $containerd_pid)"
    for archive in /sysroot$IMAGES_DIR/*.tar; do
        [ -f "$archive" ] || continue
        chroot /sysroot /usr/bin/ctr -n k8s.io images import --label $PINNED_LABEL "$IMAGES_DIR/${archive##*/}" || return
    done
    chroot /sysroot /usr/bin/kubelet --config=/etc/kubernetes/config.yaml --kubeconfig=/etc/kubernetes/kubelet.conf \
        --hostname-override="$node_name" --cloud-provider=external >/sysroot/var/log/kubelet.log 2>&1 3>&- 4>&- &
    kubelet_pid=$!
    uptime_stamp "images imported; kubelet started (pid $kubelet_pid) as node $node_name"
}

unpack_bundle() {
    # $1: request, $2: what the bundle is, $3: its base64, $4: most base64 characters, $5: directory to
    # unpack it into (its log: $5.log), $6: the files it must hold, none empty. Answers the failure itself.
    if [ -z "$3" ] || [ ${#3} -gt "$4" ]; then
        fail "$1" "$2 is empty or longer than $4 base64 characters"
        return 1
    fi
    mkdir "$5"
    if ! printf '%s' "$3" | base64 -d >"$5.tar" 2>"$5.log" || ! tar -xf "$5.tar" -C "$5" 2>>"$5.log"; then
        fail "$1" "$2 is not base64 of a tar archive" "$5.log"
        return 1
    fi
    for file in $6; do
        [ -s "$5/$file" ] || { fail "$1" "$2 has no $file"; return 1; }
    done
}

start_kubelet() {
    # $1: base64 of the join bundle
    rm -rf join join.log
    if [ "$rootfs_state" != verified ]; then
        fail KUBELET "the root filesystem is $rootfs_state: nothing to run kubelet from"
        return
    fi
    if [ -n "$kubelet_pid" ]; then
        fail KUBELET "kubelet was already started"
        return
    fi
    unpack_bundle KUBELET "the join bundle" "$1" $MAX_BUNDLE_CHARS join "$JOIN_FILES" || return
    node_name=$(head -c 64 join/node-name)
    case $node_name in "" | *[!a-z0-9.-]*) fail KUBELET "the join bundle's node name is not [a-z0-9.-]"; return ;; esac
    if ! join_node >>join.log 2>&1; then
        fail KUBELET "the node did not start kubelet" join.log
        return
    fi
    echo "trustedlaunch: kubelet started as node $node_name" >/dev/console
    reply "\"reply\":\"KUBELET\",\"state\":\"started\",\"detail\":\"$(tail -c 4096 join.log | base64 -w 0)\""
}

renew_credentials() {
    # $1: base64 of the credentials bundle
    rm -rf renew renew.log
    if [ -z "$kubelet_pid" ]; then
        fail KUBELETCERTS "kubelet was not started: there are no credentials to replace"
        return
    fi
    unpack_bundle KUBELETCERTS "the credentials bundle" "$1" $MAX_CERTS_CHARS renew "$CREDENTIAL_FILES" || return
    # Written beside the old files on the same tmpfs first, then each renamed over its old file.
    for file in $CREDENTIAL_FILES; do
        if ! cp "renew/$file" "$CREDENTIALS_DIR/.$file.new" 2>>renew.log || ! chmod 600 "$CREDENTIALS_DIR/.$file.new"; then
            fail KUBELETCERTS "the new credentials could not be written" renew.log
            return
        fi
    done
    for file in $CREDENTIAL_FILES; do
        mv -f "$CREDENTIALS_DIR/.$file.new" "$CREDENTIALS_DIR/$file" 2>>renew.log || { fail KUBELETCERTS "$file was not replaced" renew.log; return; }
    done
    client=$(sha256sum "$CREDENTIALS_DIR/kubelet-client.crt")
    serving=$(sha256sum "$CREDENTIALS_DIR/kubelet-server.crt")
    echo "trustedlaunch: kubelet credentials renewed" >/dev/console
    reply "\"reply\":\"KUBELETCERTS\",\"replaced\":\"$CREDENTIAL_FILES\",\"clientSha256\":\"${client%% *}\",\"servingSha256\":\"${serving%% *}\""
}

process_state() {
    # $1: pid (empty: never started); a zombie (state Z, not reaped yet by this shell) has exited
    if [ -z "$1" ]; then
        echo absent
        return
    fi
    stat=$(cat "/proc/$1/stat" 2>/dev/null)
    case ${stat##*) } in "" | Z* | X*) echo exited ;; *) echo running ;; esac
}

kubelet_status() {
    kubelet_log="" containerd_log=""
    [ -s /sysroot/var/log/kubelet.log ] && kubelet_log=$(tail -c 2048 /sysroot/var/log/kubelet.log | base64 -w 0)
    [ -s /sysroot/var/log/containerd.log ] && containerd_log=$(tail -c 2048 /sysroot/var/log/containerd.log | base64 -w 0)
    memory=$(awk '/^MemTotal:/ { total = $2 } /^MemAvailable:/ { available = $2 } END { print total "," available }' /proc/meminfo)
    reply "\"reply\":\"KUBELETSTATUS\",\"kubelet\":\"$(process_state "$kubelet_pid")\",\"containerd\":\"$(process_state "$containerd_pid")\",\"memoryKiB\":\"$memory\",\"kubeletLog\":\"$kubelet_log\",\"containerdLog\":\"$containerd_log\""
}

event_log() {
    log=""
    [ -r "$EVENT_LOG" ] && cat "$EVENT_LOG" >eventlog.bin && log=$(b64 eventlog.bin)
    reply "\"reply\":\"EVENTLOG\",\"eventLog\":\"$log\""
}

handle() {
    # $1: command, $2: request id, $3: argument
    request_id=$2
    case $request_id in *[!0-9a-zA-Z_-]*) request_id="" ;; esac
    [ ${#request_id} -le 32 ] || request_id=""
    case $1 in
        PING) reply "\"reply\":\"PONG\"" ;;
        TPM) tpm_command "$3" ;;
        EVENTLOG) event_log ;;
        ROOTFS) rootfs_report ;;
        KUBELET) start_kubelet "$3" ;;
        KUBELETCERTS) renew_credentials "$3" ;;
        KUBELETSTATUS) kubelet_status ;;
        "") ;;
        *) fail UNKNOWN "unknown request" ;;
    esac
}

open_rootfs

# Keep the port open from here on: closing it (as `stty -F` does) would drop the input already received.
exec 3<>"$AGENT"
stty raw -echo 115200 <&3
# /dev/tpm0 without a resource manager: the agent is the TPM's only user, the host flushes what it loads.
tpm="absent"
# (`command exec`: a failed open must not end PID 1)
[ -c /dev/tpm0 ] && command exec 4<>/dev/tpm0 && tpm="present"
echo "trustedlaunch-agent ready (TPM $tpm)" >/dev/console

# While the node booted, the host sent a PING every second and gave up on each but the last: they wait
# in the serial port. Answer only the newest one (the host waits for that one) instead of the whole
# backlog. Only the wait for a line's first byte is timed: busybox times a whole `read -t`, so a slow
# guest would cut a line it is still receiving (a blank line reads as an empty first byte).
pinged=""
while IFS= read -r -t 0.2 -n 1 first <&3; do
    [ -n "$first" ] || continue
    IFS= read -r line <&3
    read -r command id arg1 rest <<EOF
$first$line
EOF
    if [ "$command" = PING ]; then
        pinged=1
        newest_id=$id
    else
        handle "$command" "$id" "$arg1"
    fi
done
[ -n "$pinged" ] && handle PING "$newest_id"

while :; do
    read -r command id arg1 rest <&3 || { sleep 1; continue; }
    handle "$command" "$id" "$arg1"
done
