#!/bin/sh
# rsh-agent.sh - Open MPI plm_rsh_agent replacement for ssh, for the
# two-hosts.sh network-namespace harness.
#
# Open MPI 4.1 (plm rsh) invokes:   AGENT [plm_rsh_args...] HOST WORD WORD ...
#   e.g. argv = <10.77.0.2> < orted> <-mca> <ess> <"env"> ... <-mca> <pmix> <"^s1,s2,cray,isolated">
# i.e. the remote command arrives split over many argv words, still carrying
# shell quoting (the literal " chars), exactly as ssh would receive it; ssh
# joins them with spaces and hands the string to the remote shell.  We do
# the same: join with spaces and run it with `sh -c` inside the namespace.
#
# Host mapping (PREFIX from $NETNS_PREFIX, default "mp"; NET from $NETNS_SUBNET,
# default "10.77.0"):  NET.1 | PREFIX-hostA  -> netns PREFIXA
#                      NET.2 | PREFIX-hostB  -> netns PREFIXB
# The command runs under `unshare --uts` with hostname PREFIX-hostX so each
# "host" has its own hostname, like a real cluster (NETNS_UTS=0 disables).
#
# Env: RSH_AGENT_LOG=file  append argv / mapping to file (debug)
#      RSH_AGENT_CLEANENV=1  (default) start the remote side with a minimal
#      environment, like sshd would, instead of inheriting mpirun's.

PREFIX="${NETNS_PREFIX:-mp}"
NET="${NETNS_SUBNET:-10.77.0}"

# Skip ssh-style options Open MPI may put before the host (plm_rsh_args, e.g. -x, -l user).
# Our own options may also be embedded in the agent string:
#   --mca plm_rsh_agent "/path/rsh-agent.sh --ns-prefix=mpX --ns-subnet=10.78.0"
while [ $# -gt 0 ]; do
    case "$1" in
        --ns-prefix=*) PREFIX="${1#*=}"; NETNS_PREFIX="$PREFIX"; shift ;;
        --ns-subnet=*) NET="${1#*=}"; NETNS_SUBNET="$NET"; shift ;;
        -b|-c|-D|-E|-e|-F|-I|-i|-J|-L|-l|-m|-O|-o|-p|-Q|-R|-S|-W|-w) shift 2 ;;
        --) shift; break ;;
        -*) shift ;;
        *)  break ;;
    esac
done
[ $# -ge 1 ] || { echo "rsh-agent.sh: no host given" >&2; exit 255; }
host="${1#*@}"          # strip user@
shift

case "$host" in
    "$NET.1"|"${PREFIX}-hostA") ns="${PREFIX}A"; hn="${PREFIX}-hostA" ;;
    "$NET.2"|"${PREFIX}-hostB") ns="${PREFIX}B"; hn="${PREFIX}-hostB" ;;
    *) echo "rsh-agent.sh: unknown host '$host' (prefix $PREFIX, net $NET)" >&2; exit 255 ;;
esac

cmd="$*"
[ -n "$cmd" ] || { echo "rsh-agent.sh: no command for $host" >&2; exit 255; }

if [ -n "${RSH_AGENT_LOG:-}" ]; then
    {
        echo "=== $(date +%T) pid=$$ host=$host -> ns=$ns hostname=$hn argc=$#"
        i=0; for a in "$@"; do i=$((i+1)); printf '  argv[%d]=<%s>\n' "$i" "$a"; done
        echo "  cmd: $cmd"
    } >> "$RSH_AGENT_LOG"
fi

# Minimal environment like an ssh login would give (keep what the harness needs).
if [ "${RSH_AGENT_CLEANENV:-1}" = 1 ]; then
    set -- env -i PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}" HOME="${HOME:-/root}" \
        USER="${USER:-root}" LOGNAME="${LOGNAME:-root}" SHELL=/bin/sh \
        ${LD_LIBRARY_PATH:+LD_LIBRARY_PATH="$LD_LIBRARY_PATH"} \
        ${TMPDIR:+TMPDIR="$TMPDIR"} \
        ${OMPI_ALLOW_RUN_AS_ROOT:+OMPI_ALLOW_RUN_AS_ROOT="$OMPI_ALLOW_RUN_AS_ROOT"} \
        ${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:+OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="$OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"} \
        ${NETNS_UTS:+NETNS_UTS="$NETNS_UTS"} ${NETNS_PREFIX:+NETNS_PREFIX="$NETNS_PREFIX"} ${NETNS_SUBNET:+NETNS_SUBNET="$NETNS_SUBNET"}
else
    set --
fi

# exec chain keeps the agent's pid == the remote shell/orted, so signals from
# mpirun reach it directly.
if [ "${NETNS_UTS:-1}" = 1 ]; then
    exec "$@" ip netns exec "$ns" unshare --uts \
        sh -c 'hostname "$0" || exit 255; exec sh -c "$1"' "$hn" "$cmd"
else
    exec "$@" ip netns exec "$ns" sh -c "$cmd"
fi
