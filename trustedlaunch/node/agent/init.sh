#!/bin/sh
# trustedlaunch in-guest agent: /init of the node initramfs (busybox sh, PID 1).
#
# Protocol on /dev/ttyS1 (raw): the host writes one request per line, the agent answers each with one
# line of JSON (binary fields in base64) followed by the line "END <sha256 hex of the JSON line>".
#   PING [token]          -> {"reply":"PONG","token":"..."}
#   QUOTE <hex nonce>     -> {"reply":"QUOTE", akPublic, akName, ekPublic, quote, signature, pcrs,
#                             pcrValues, eventLog}   (or {"reply":"QUOTE","error":"no TPM"} ...)
#   ACTIVATE <b64 TPM2B_ID_OBJECT> <b64 TPM2B_ENCRYPTED_SECRET> -> {"reply":"ACTIVATE","secret":"..."}
#   EKCERT                -> {"reply":"EKCERT","certificate":"..."}  (DER, from NV index 0x01c00002)

export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
mkdir -p /tmp/agent
cd /tmp/agent || exec sh

AGENT=/dev/ttyS1
EVENT_LOG=/sys/kernel/security/tpm0/binary_bios_measurements
PCRS=sha256:0,1,2,3,4,5,6,7,8,9,14
# /dev/tpm0 without a resource manager: the agent is the TPM's only user and flushes what it loads.
export TPM2TOOLS_TCTI=device:/dev/tpm0

b64() {
    base64 -w 0 "$1"
}

reply() {
    printf '%s\n' "$1" >&3
    printf 'END %s\n' "$(printf '%s' "$1" | sha256sum | cut -d ' ' -f 1)" >&3
}

fail() {
    # $1: request, $2: short error, $3: file with the tool's diagnostics (optional)
    detail=""
    [ -n "$3" ] && [ -s "$3" ] && detail=$(b64 "$3")
    reply "{\"reply\":\"$1\",\"error\":\"$2\",\"detail\":\"$detail\"}"
}

ensure_keys() {
    [ -f keys.ok ] && return 0
    tpm2 createek -c ek.ctx -G rsa -u ek.pub >/dev/null 2>err.txt || return 1
    tpm2 createak -C ek.ctx -c ak.ctx -G rsa -g sha256 -s rsassa -u ak.pub -n ak.name \
        >/dev/null 2>err.txt || return 1
    tpm2 flushcontext -t 2>err.txt || return 1
    touch keys.ok
}

quote() {
    nonce=$1
    case $nonce in
        "" | *[!0-9a-fA-F]*) fail QUOTE "nonce must be hexadecimal"; return ;;
    esac
    if [ ! -c /dev/tpm0 ]; then
        fail QUOTE "no TPM"
        return
    fi
    if ! ensure_keys; then
        fail QUOTE "creating the EK and AK failed" err.txt
        return
    fi
    if ! tpm2 quote -c ak.ctx -l "$PCRS" -q "$nonce" -g sha256 -m quote.msg -s quote.sig -o quote.pcrs \
        >pcrs.yaml 2>err.txt; then
        tpm2 flushcontext -t 2>/dev/null
        fail QUOTE "tpm2_quote failed" err.txt
        return
    fi
    tpm2 flushcontext -t 2>/dev/null
    log=""
    [ -r "$EVENT_LOG" ] && cat "$EVENT_LOG" >eventlog.bin && log=$(b64 eventlog.bin)
    reply "{\"reply\":\"QUOTE\",\"nonce\":\"$nonce\",\"akPublic\":\"$(b64 ak.pub)\",\"akName\":\"$(b64 ak.name)\",\
\"ekPublic\":\"$(b64 ek.pub)\",\"quote\":\"$(b64 quote.msg)\",\"signature\":\"$(b64 quote.sig)\",\
\"pcrs\":\"$(b64 quote.pcrs)\",\"pcrValues\":\"$(b64 pcrs.yaml)\",\"eventLog\":\"$log\"}"
}

activate() {
    if [ ! -c /dev/tpm0 ]; then
        fail ACTIVATE "no TPM"
        return
    fi
    if [ ! -f keys.ok ]; then
        fail ACTIVATE "no AK yet: request a QUOTE first"
        return
    fi
    # The credential file format of tpm2-tools: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT,
    # TPM2B_ENCRYPTED_SECRET.
    printf '\272\334\300\336\000\000\000\001' >cred.bin
    if ! { printf '%s' "$1" | base64 -d && printf '%s' "$2" | base64 -d; } >>cred.bin 2>err.txt; then
        fail ACTIVATE "the credential is not valid base64" err.txt
        return
    fi
    rm -f secret.bin
    tpm2 startauthsession --policy-session -S session.ctx 2>err.txt \
        && tpm2 policysecret -S session.ctx -c e >/dev/null 2>>err.txt \
        && tpm2 activatecredential -c ak.ctx -C ek.ctx -i cred.bin -o secret.bin -P session:session.ctx \
            >/dev/null 2>>err.txt
    tpm2 flushcontext -t 2>/dev/null
    tpm2 flushcontext session.ctx 2>/dev/null
    if [ ! -f secret.bin ]; then
        fail ACTIVATE "tpm2_activatecredential failed" err.txt
        return
    fi
    reply "{\"reply\":\"ACTIVATE\",\"secret\":\"$(b64 secret.bin)\"}"
}

ek_certificate() {
    if [ ! -c /dev/tpm0 ]; then
        fail EKCERT "no TPM"
        return
    fi
    # TCG EK credential profile: the RSA 2048 EK certificate is provisioned at NV index 0x01c00002.
    if ! tpm2 nvread 0x01c00002 -C o -o ekcert.der >/dev/null 2>err.txt; then
        fail EKCERT "reading the EK certificate from NV index 0x01c00002 failed" err.txt
        return
    fi
    reply "{\"reply\":\"EKCERT\",\"certificate\":\"$(b64 ekcert.der)\"}"
}

pong() {
    case $1 in *[!0-9a-zA-Z_-]*) set -- "" ;; esac
    reply "{\"reply\":\"PONG\",\"token\":\"$1\"}"
}

handle() {
    case $1 in
        PING) pong "$2" ;;
        QUOTE) quote "$2" ;;
        ACTIVATE) activate "$2" "$3" ;;
        EKCERT) ek_certificate ;;
        "") ;;
        *) fail UNKNOWN "unknown request" ;;
    esac
}

# Keep the port open from here on: closing it (as `stty -F` does) would drop the input already received.
exec 3<>"$AGENT"
stty raw -echo 115200 <&3
tpm="absent"
[ -c /dev/tpm0 ] && tpm="present"
echo "trustedlaunch-agent ready (TPM $tpm)" >/dev/console

# While the node booted, the host sent a PING every second and gave up on each but the last: they wait
# in the serial port. Answer only the newest one (the host waits for that one) instead of the whole
# backlog. A line cut by the 0.2 s timeout is lost like one sent before boot: the host pings again.
pinged=""
while read -r -t 0.2 command arg1 arg2 <&3; do
    if [ "$command" = PING ]; then
        pinged=1
        newest_token=$arg1
    else
        handle "$command" "$arg1" "$arg2"
    fi
done
[ -n "$pinged" ] && pong "$newest_token"

while :; do
    read -r command arg1 arg2 <&3 || { sleep 1; continue; }
    handle "$command" "$arg1" "$arg2"
done
