#!/usr/bin/env bash
# `make demo`: the agent on config.example.yml (127.0.0.1:9000) and HAProxy 2.6 on
# etc/haproxy/haproxy.cfg (127.0.0.1:8080, with its demo application inside), both in the
# foreground with their logs interleaved; prints curl examples; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
PY=${PY:-.venv/bin/python}
CONFIG=${CONFIG:-config.example.yml}
FRONTEND=127.0.0.1:8080   # `bind` of frontend web in etc/haproxy/haproxy.cfg
AGENT=127.0.0.1:9000      # `bind` in config.example.yml

pids=()
running() { for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
wait_exit() { for _ in $(seq 1 $(($1 * 4))); do running || return 0; sleep 0.25; done; return 1; }
stop() {
  trap - INT TERM EXIT
  # Ctrl-C already reached both (same process group): give them time to stop on their own
  # first, so that the agent's graceful stop is not cut short by a second signal
  if [ "$1" = interrupted ] && wait_exit 3; then echo "demo stopped"; return; fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait_exit 12 || for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  echo "demo stopped"
}
trap 'stop interrupted' INT
trap 'stop' TERM EXIT

port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.2; done
  echo "nothing listens on $1" >&2; return 1
}
for addr in "$FRONTEND" "$AGENT"; do
  if port_open "$addr"; then echo "$addr is already in use: stop what runs there first" >&2; exit 1; fi
done

"$PY" -m coraza_spoa_py -config "$CONFIG" &
pids+=($!)
wait_port "$AGENT"
"$HAPROXY" -db -f etc/haproxy/haproxy.cfg &
pids+=($!)
wait_port "$FRONTEND"

cat <<TXT

coraza-spoa-py demo: HAProxy on http://$FRONTEND, the agent on $AGENT. Try:
  curl -i 'http://localhost:8080/'                               # 200: passes the WAF
  curl -i 'http://localhost:8080/?p=/etc/passwd'                 # 403: CRS 930120 -> 949110
  curl -i 'http://localhost:8080/?q=<script>alert(1)</script>'   # 403: XSS
  curl -i -d "user=admin' OR '1'='1" 'http://localhost:8080/login'  # 403: SQL injection
  curl -i -A 'Nikto/2.1.6' 'http://localhost:8080/'              # 403: scanner user agent
  curl -i 'http://localhost:8080/leak'                           # 403: blocked in the RESPONSE phase
HAProxy's log lines show the variables (waf: id=... fail=... action=... ruleid=...).
Ctrl-C stops both.

TXT
wait -n "${pids[@]}"
