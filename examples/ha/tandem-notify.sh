#!/bin/bash
# keepalived notify hook for a tandem active/standby pair (examples/ha/README.md).
#
# keepalived runs it once, as `vrrp_notify_fifo_script`, with the FIFO it writes every transition
# to as the last argument; this script reads the FIFO and handles the transitions one at a time,
# in the order keepalived made them:
#
#   tandem-notify.sh [OPTIONS] FIFO
#
# keepalived's per-transition `notify` forks one process per transition, and two of them (BACKUP,
# then MASTER, as at startup) can reach tandemd in the opposite order: that once left a node
# standby while keepalived held its VIPs. Run by hand (or as a `notify` script) it takes one
# transition:
#
#   tandem-notify.sh [OPTIONS] TYPE NAME STATE PRIORITY
#     TYPE      GROUP or INSTANCE
#     NAME      the group's or instance's name
#     STATE     MASTER, BACKUP, FAULT, STOP or DELETED
#     PRIORITY  the priority (0 for a group)
#
# and tells the local tandemd:
#   MASTER -> tandemctl ha set-state active   (a standby takes over every mirrored SA at once)
#   BACKUP -> tandemctl ha set-state standby  (a no-op on a standby; an active node steps down:
#                                              it drops its SAs without a Delete and the other
#                                              node syncs it again; a node handing over after
#                                              `tandemctl ha switchover` steps down now)
#   FAULT  -> tandemctl ha set-state fault    (logged by tandemd)
#   STOP, DELETED and anything else are logged and ignored.
#
# Options (each also from the environment):
#   -g, --group NAME      act only on TYPE GROUP with this NAME: tandem's `[ha] listen-ha-group`
#                         ($TANDEM_HA_GROUP; unset: act on every group and instance)
#   -s, --socket PATH     tandemd's control socket ($TANDEM_SOCKET, default /run/tandem/tandemd.sock)
#   -c, --tandemctl PATH  the tandemctl binary ($TANDEMCTL, default: tandemctl on PATH)
#   -t, --timeout SECS    give up on tandemctl after this long ($TANDEM_NOTIFY_TIMEOUT, default 5)
#   -l, --log-file FILE   append log lines here ($TANDEM_NOTIFY_LOG; default: syslog via
#                         logger -t tandem-notify, or stderr when logger fails)
#
# The MASTER path runs one process besides bash (timeout, which execs tandemctl): each fork on a
# loaded host costs milliseconds of outage. keepalived ends the script with SIGTERM when it exits.
#
# Exit status: tandemctl's, 0 for an ignored event, 2 for a usage error. keepalived ignores it;
# it is for running the script by hand.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}

group=${TANDEM_HA_GROUP:-}
socket=${TANDEM_SOCKET:-/run/tandem/tandemd.sock}
tandemctl=${TANDEMCTL:-tandemctl}
timeout=${TANDEM_NOTIFY_TIMEOUT:-5}
logfile=${TANDEM_NOTIFY_LOG:-}

log() {
    if [ -n "$logfile" ]; then
        # Epoch with microseconds (bash's own clock: no fork), to time transitions against the
        # other clocks of the host.
        printf '%s tandem-notify[%s]: %s\n' "$EPOCHREALTIME" "$$" "$*" >>"$logfile"
    elif ! logger -t tandem-notify -- "$*" 2>/dev/null; then
        printf 'tandem-notify[%s]: %s\n' "$$" "$*" >&2
    fi
}

usage() {
    log "usage: $0 [-g GROUP] [-s SOCKET] [-c TANDEMCTL] [-t SECS] [-l FILE] FIFO | TYPE NAME STATE PRIORITY (got: $*)"
    exit 2
}

# One transition; $1..$4 as keepalived gives them, $5 when it was received (epoch).
transition() {
    local type=$1 name=${2//\"/} state=$3 prio=$4 received=$5 target out rc
    if [ -n "$group" ] && { [ "$type" != GROUP ] || [ "$name" != "$group" ]; }; then
        log "$type $name $state $prio: not group $group, ignored"
        return 0
    fi
    case $state in
        MASTER) target=active ;;
        BACKUP) target=standby ;;
        FAULT) target=fault ;;
        *) log "$type $name $state $prio: nothing to do"; return 0 ;;
    esac
    # Before tandemctl only into a log file (logger would be one more fork on the takeover path).
    [ -z "$logfile" ] || log "$type $name $state $prio: tandemctl ha set-state $target"
    out=$(timeout -k 1 "$timeout" "$tandemctl" --socket "$socket" ha set-state "$target" 2>&1 >/dev/null)
    rc=$?
    if [ $rc -eq 0 ]; then
        log "$type $name $state $prio: tandemd is $target (notified at $received)"
    else
        log "$type $name $state $prio: set-state $target failed (exit $rc, notified at $received): ${out//$'\n'/ }"
    fi
    return $rc
}

all="$*"
while [ $# -gt 0 ]; do
    case $1 in
        -g|--group) [ $# -ge 2 ] || usage "$all"; group=$2; shift 2 ;;
        -s|--socket) [ $# -ge 2 ] || usage "$all"; socket=$2; shift 2 ;;
        -c|--tandemctl) [ $# -ge 2 ] || usage "$all"; tandemctl=$2; shift 2 ;;
        -t|--timeout) [ $# -ge 2 ] || usage "$all"; timeout=$2; shift 2 ;;
        -l|--log-file) [ $# -ge 2 ] || usage "$all"; logfile=$2; shift 2 ;;
        --) shift; break ;;
        -*) usage "$all" ;;
        *) break ;;
    esac
done

if [ $# -eq 4 ]; then
    transition "$1" "$2" "$3" "$4" "$EPOCHREALTIME"
    exit $?
fi
[ $# -eq 1 ] && [ -p "$1" ] || usage "$all"
fifo=$1
trap 'log "stopping (SIGTERM)"; exit 0' TERM
log "reading transitions from $fifo"
# keepalived keeps the FIFO open for writing while it runs; should it close and reopen it, the
# inner loop ends and the FIFO is opened again (the open waits for a writer: no busy loop).
while [ -p "$fifo" ]; do
    while read -r type name state prio _; do
        received=$EPOCHREALTIME
        transition "$type" "$name" "$state" "$prio" "$received"
    done <"$fifo"
done
log "$fifo is gone: exiting"
