#!/usr/bin/env bash
# two-hosts.sh - simulate two MPI "hosts" on one machine with network namespaces.
#
# Usage: two-hosts.sh [-p PREFIX] {up|down|run -- CMD...|runb -- CMD...|bytes|status|env}
#   PREFIX   : namespace/device name prefix (default $NETNS_PREFIX or "mp").
#              Namespaces are ${PREFIX}A and ${PREFIX}B, veth ends ${PREFIX}vA / ${PREFIX}vB.
#   NETNS_SUBNET : first three octets (default $NETNS_SUBNET or "10.77.0"); A=.1, B=.2
#   NETNS_UTS    : 1 (default) give each "host" its own hostname via unshare --uts;
#                  0 = keep the real hostname in both (to reproduce the same-hostname case)
#
#   up     create both namespaces + veth pair (idempotent: tears down first)
#   down   remove everything (idempotent, always exits 0); also kills any
#          process still living in our namespaces (stray orted / ranks)
#   run -- CMD...   run CMD in namespace A (the head node), UTS-unshared with
#                   hostname ${PREFIX}-hostA
#   runb -- CMD...  same for namespace B (debugging)
#   bytes  print rx/tx byte counters of both veth ends
#   env    print shell assignments (NS_A, NS_B, IP_A, IP_B, SUBNET...) for eval
#
# Requires root, iproute2, util-linux unshare.
set -u

PREFIX="${NETNS_PREFIX:-mp}"
if [[ "${1:-}" == "-p" ]]; then PREFIX="$2"; shift 2; fi
NET="${NETNS_SUBNET:-10.77.0}"

NS_A="${PREFIX}A"; NS_B="${PREFIX}B"
DEV_A="${PREFIX}vA"; DEV_B="${PREFIX}vB"     # IFNAMSIZ=15 -> keep prefix <= 12 chars
IP_A="${NET}.1"; IP_B="${NET}.2"; SUBNET="${NET}.0/24"
HOST_A="${PREFIX}-hostA"; HOST_B="${PREFIX}-hostB"

die() { echo "two-hosts.sh: $*" >&2; exit 1; }

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }

# Kill every process whose network namespace is NS (by pid, never by name).
kill_ns_procs() {
    local ns="$1" sig pids
    ns_exists "$ns" || return 0
    for sig in TERM KILL; do
        pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
        [[ -z "${pids// }" ]] && return 0
        # shellcheck disable=SC2086
        kill -"$sig" $pids 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
            [[ -z "${pids// }" ]] && return 0
            sleep 0.2
        done
    done
}

cmd_down() {
    local ns
    for ns in "$NS_A" "$NS_B"; do kill_ns_procs "$ns"; done
    # deleting a namespace destroys the veth end inside it (and its peer)
    for ns in "$NS_A" "$NS_B"; do
        ns_exists "$ns" && ip netns del "$ns" 2>/dev/null
    done
    # veth left in root ns if 'up' died half-way
    ip link del "$DEV_A" 2>/dev/null
    ip link del "$DEV_B" 2>/dev/null
    return 0
}

cmd_up() {
    [[ $EUID -eq 0 ]] || die "must be root"
    (( ${#DEV_A} <= 15 )) || die "prefix too long for interface names"
    cmd_down
    local step
    for step in \
        "ip netns add $NS_A" \
        "ip netns add $NS_B" \
        "ip link add $DEV_A type veth peer name $DEV_B" \
        "ip link set $DEV_A netns $NS_A" \
        "ip link set $DEV_B netns $NS_B" \
        "ip -n $NS_A addr add $IP_A/24 dev $DEV_A" \
        "ip -n $NS_B addr add $IP_B/24 dev $DEV_B" \
        "ip netns exec $NS_A sysctl -qw net.ipv6.conf.$DEV_A.disable_ipv6=1" \
        "ip netns exec $NS_B sysctl -qw net.ipv6.conf.$DEV_B.disable_ipv6=1" \
        "ip -n $NS_A link set lo up" \
        "ip -n $NS_B link set lo up" \
        "ip -n $NS_A link set $DEV_A up" \
        "ip -n $NS_B link set $DEV_B up"; do
        $step || { echo "two-hosts.sh: up failed at: $step" >&2; cmd_down; exit 1; }
    done
    # wait for carrier on both ends (veth reports LOWER_UP once both are up)
    local ok=0
    for _ in $(seq 50); do
        if ip -n "$NS_A" link show "$DEV_A" | grep -q LOWER_UP &&
           ip -n "$NS_B" link show "$DEV_B" | grep -q LOWER_UP; then ok=1; break; fi
        sleep 0.1
    done
    (( ok )) || { echo "two-hosts.sh: veth never came up" >&2; cmd_down; exit 1; }
    echo "up: $NS_A($DEV_A $IP_A) <-> $NS_B($DEV_B $IP_B)"
}

# Run in namespace with a private UTS namespace so `hostname` differs per "host".
ns_run() {
    local ns="$1" host="$2"; shift 2
    [[ "${1:-}" == "--" ]] && shift
    [[ $# -gt 0 ]] || die "run: no command"
    ns_exists "$ns" || die "namespace $ns does not exist (run 'up' first)"
    if [[ "${NETNS_UTS:-1}" == 1 ]]; then
        exec ip netns exec "$ns" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$host" "$@"
    else
        exec ip netns exec "$ns" "$@"     # shares the machine's hostname (pitfall demo)
    fi
}

cmd_bytes() {
    local ns dev
    for pair in "$NS_A:$DEV_A" "$NS_B:$DEV_B"; do
        ns="${pair%%:*}"; dev="${pair#*:}"
        if ns_exists "$ns"; then
            # 'ip netns exec' remounts /sys for the namespace, so this reads its devices
            ip netns exec "$ns" sh -c "printf '%s %s rx_bytes=%s tx_bytes=%s rx_packets=%s tx_packets=%s\n' \
                $ns $dev \$(cat /sys/class/net/$dev/statistics/rx_bytes) \$(cat /sys/class/net/$dev/statistics/tx_bytes) \
                \$(cat /sys/class/net/$dev/statistics/rx_packets) \$(cat /sys/class/net/$dev/statistics/tx_packets)"
        else
            echo "$ns missing"
        fi
    done
}

cmd_env() {
    printf 'NS_A=%q\nNS_B=%q\nDEV_A=%q\nDEV_B=%q\nIP_A=%q\nIP_B=%q\nSUBNET=%q\nHOST_A=%q\nHOST_B=%q\n' \
        "$NS_A" "$NS_B" "$DEV_A" "$DEV_B" "$IP_A" "$IP_B" "$SUBNET" "$HOST_A" "$HOST_B"
}

case "${1:-}" in
    up)     cmd_up ;;
    down)   cmd_down; exit 0 ;;
    run)    shift; ns_run "$NS_A" "$HOST_A" "$@" ;;
    runb)   shift; ns_run "$NS_B" "$HOST_B" "$@" ;;
    bytes)  cmd_bytes ;;
    env)    cmd_env ;;
    status) ip netns list | grep -E "^(${NS_A}|${NS_B})( |$)"; for ns in "$NS_A" "$NS_B"; do ns_exists "$ns" && ip -n "$ns" -br addr; done; true ;;
    *)      sed -n '2,20p' "$0"; exit 2 ;;
esac
