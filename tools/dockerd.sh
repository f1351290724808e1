#!/usr/bin/env bash
# A Docker engine for the deployment test on a machine where none runs (needs root and Debian's docker.io).
#
#   tools/dockerd.sh start   # an engine already answering is used as is (exit 0, nothing recorded);
#                            # otherwise start dockerd in the background, record its pid, wait until it answers
#   tools/dockerd.sh stop    # stop the dockerd that `start` started (its pid file), never any other
#   tools/dockerd.sh status  # "started <pid>", "external" (an engine this script did not start) or "none"
#
# The engine runs with --bridge=none --iptables=false: no docker0 bridge, no firewall rules. Builds and
# containers use the host's network (`--network host`, `network_mode: host`), so all their traffic stays on
# this machine's own addresses. Data root: Docker's default, so images built earlier (the local base) are
# reused by later runs.
set -euo pipefail

STATE_DIR=${DOCKERD_STATE_DIR:-/var/run/digits-dockerd}
PID_FILE=$STATE_DIR/dockerd.pid
LOG_FILE=$STATE_DIR/dockerd.log
WAIT_S=${DOCKERD_WAIT_S:-60}

answers() { docker info >/dev/null 2>&1; }

# Running, and not a zombie waiting for whichever process adopted it.
alive() { [ -r "/proc/$1/stat" ] && ! grep -q ') Z ' "/proc/$1/stat"; }

# The pid in the pid file, when that process is still a dockerd.
recorded_pid() {
    [ -f "$PID_FILE" ] || return 1
    local pid
    pid=$(cat "$PID_FILE")
    [ -n "$pid" ] && alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] && echo "$pid"
}

start() {
    if answers; then
        recorded_pid >/dev/null || echo "dockerd.sh: a Docker engine is already running; using it as is"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "dockerd.sh: no Docker engine answers, and starting one needs root" >&2
        return 1
    fi
    command -v dockerd >/dev/null || {
        echo "dockerd.sh: dockerd is not installed (apt-get install docker.io)" >&2
        return 1
    }
    mkdir -p "$STATE_DIR"
    # setsid: the engine outlives the shell (and the test process) that started it, until `stop`.
    setsid dockerd --bridge=none --iptables=false >>"$LOG_FILE" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PID_FILE"
    local deadline=$((SECONDS + WAIT_S))
    until answers; do
        if ! alive "$pid"; then
            echo "dockerd.sh: dockerd exited during start-up; the end of $LOG_FILE:" >&2
            tail -n 20 "$LOG_FILE" >&2
            rm -f "$PID_FILE"
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "dockerd.sh: dockerd (pid $pid) did not answer within ${WAIT_S}s; stopping it" >&2
            stop
            return 1
        fi
        sleep 0.5
    done
    echo "dockerd.sh: started dockerd (pid $pid, log $LOG_FILE)"
}

stop() {
    local pid
    if ! pid=$(recorded_pid); then
        rm -f "$PID_FILE"
        return 0
    fi
    kill -TERM "$pid"
    # dockerd stops its containers (10 s grace each) and its containerd before it exits.
    local deadline=$((SECONDS + WAIT_S))
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
    if alive "$pid"; then
        echo "dockerd.sh: dockerd (pid $pid) still running after ${WAIT_S}s; killing it" >&2
        kill -KILL "$pid"
    fi
    rm -f "$PID_FILE"
    echo "dockerd.sh: stopped dockerd (pid $pid)"
}

status() {
    local pid
    if pid=$(recorded_pid); then
        echo "started $pid"
    elif answers; then
        echo external
    else
        echo none
    fi
}

case "${1:-}" in
    start | stop | status) "$1" ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
