#!/usr/bin/env bash
# Bench (not a test): exploding bulk mail to an upstream that is DELAY_MS x 2 of round trip
# away (a WAN relay), bccguard against Postfix at the same number of upstream connections.
#
# The upstream is Postfix's smtp-sink behind benches/delay_proxy.py, which delays every chunk
# by DELAY_MS in each direction, in order, without limiting bandwidth. MESSAGES messages of
# 100 recipients each, whose To shows all 100, are sent with smtp-source (20 sessions):
#   (1) to bccguard (upstream = the proxy, max_connections = CONNECTIONS), which explodes each
#       into 100 copies;
#   (2) to a local Postfix relay (relayhost = the proxy, default_process_limit =
#       smtp_destination_concurrency_limit = CONNECTIONS, smtp_destination_recipient_limit = 1,
#       so one delivery per recipient too).
# Each is timed from the first send until its queue is empty; the sink counts the copies. It
# prints copies/s for both, the ratio, and the ceiling CONNECTIONS / (2 x DELAY_MS) copies/s
# (one copy per round trip per connection).
#
# Usage (as root, Debian with postfix installed; it reconfigures the local Postfix, restores
# main.cf and master.cf and stops it afterwards):
#   benches/wan-bench.sh [MESSAGES] [CONNECTIONS] [DELAY_MS]      (defaults 20 20 10)
# BCCGUARD_BIN picks another binary (default: cargo build --release here). CONNECT_DELAY_MS
# (default 0) makes the proxy hold each new upstream connection back that long, to charge
# connection setup like a real TCP handshake. Loopback only; each phase is bounded (TIMEOUT
# seconds, default 60 + copies / 10). The proxy reports how late it forwarded chunks and its
# CPU use per phase: on a busy machine that is where the noise shows.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
messages=${1:-20}
conns=${2:-20}
delay_ms=${3:-10}
sessions=${SESSIONS:-20}
copies=$((messages * 100))
limit=${TIMEOUT:-$((60 + copies / 10))}
work=$(mktemp -d)
chmod 755 "$work"
sink_port=2810
proxy_port=2811
relay_port=2812
postfix_port=2813
pids=()
postfix_touched=
postfix_was_running=
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "$postfix_touched" ]; then
        # An interrupted run leaves its messages in Postfix's queue: delete those (by sender).
        postqueue -j 2>/dev/null | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("sender") == "wan-bench@example.com":
        print(m["queue_id"])' | postsuper -d - >/dev/null 2>&1 || true
        postfix stop >/dev/null 2>&1 || true
        for f in main.cf master.cf; do
            if [ -f "$work/postfix-backup/$f" ]; then
                cp -p "$work/postfix-backup/$f" "/etc/postfix/$f"
            else
                rm -f "/etc/postfix/$f"
            fi
        done
        if [ -n "$postfix_was_running" ]; then postfix start >/dev/null 2>&1 || true; fi
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${BCCGUARD_BIN:-}" ]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml"
    BCCGUARD_BIN=$root/target/release/bccguard
fi

now() { date +%s.%N; }
wait_port() { # port: wait up to 10 s for something to listen there
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}
wait_empty() { # deadline, directories: poll until no file is left in them, or the deadline
    local deadline=$1; shift
    while [ -n "$(find "$@" -type f ! -name '.*' 2>/dev/null | head -n 1)" ]; do
        if [ "$(echo "$(now) > $deadline" | bc)" = 1 ]; then return 1; fi
        sleep 0.02
    done
}
proxy_stats() { # how late the proxy forwarded chunks since the last call
    kill -USR1 "$proxy_pid"
    sleep 0.2
    tail -n 1 "$work/proxy.out"
}
sink_count() { # messages the sink has received so far
    sleep 0.2
    tr '\r' '\n' < "$work/sink.out" | grep -o 'mesg=[0-9]*' | tail -n 1 | cut -d= -f2 | grep . || echo 0
}

# The upstream: smtp-sink behind the delay proxy.
smtp-sink -c -u nobody "127.0.0.1:$sink_port" 1000 > "$work/sink.out" &
pids+=($!)
python3 "$root/benches/delay_proxy.py" "$proxy_port" "$sink_port" "$delay_ms" \
    "${CONNECT_DELAY_MS:-0}" > "$work/proxy.out" &
proxy_pid=$!
pids+=($proxy_pid)
wait_port "$sink_port"
wait_port "$proxy_port"

# A 4 KiB message whose To shows 100 customers; LF line ends, as smtp-source -F sends each
# line with CRLF. The envelope has 100 recipients too (smtp-source -r 100).
{
    printf 'From: shop@example.com\nTo: '
    for i in $(seq 100); do printf 'customer%03d@client.test' "$i"; [ "$i" -lt 100 ] && printf ',\n '; done
    printf '\nSubject: bench\n\n'
    head -c 1500 /dev/zero | tr '\0' 'x' | fold -w 76
    echo
} > "$work/b.eml"

run() { # label, port, directories to wait for: writes "elapsed delivered proxy-stats" to
    # $work/result, or fails. smtp-source runs in the background so that a signal's trap runs
    # at once (bash runs traps only between foreground commands).
    local label=$1 port=$2; shift 2
    local before t0 t1 after src
    before=$(sink_count)
    proxy_stats > /dev/null
    t0=$(now)
    timeout "$limit" smtp-source -s "$sessions" -m "$messages" -r 100 -F "$work/b.eml" \
        -f wan-bench@example.com -t rcpt@client.test "127.0.0.1:$port" &
    src=$!
    pids+=($src)
    wait "$src" || { echo "$label: smtp-source failed or timed out" >&2; return 1; }
    if ! wait_empty "$(echo "$t0 + $limit" | bc)" "$@"; then
        echo "$label: queue not empty after ${limit} s" >&2
        return 1
    fi
    t1=$(now)
    after=$(sink_count)
    echo "$(echo "$t1 - $t0" | bc -l) $((after - before)) $(proxy_stats)" > "$work/result"
}

echo "$messages messages x 100 recipients ($copies copies), $conns upstream connections," \
    "upstream round trip $((2 * delay_ms)) ms (smtp-sink behind a ${delay_ms} ms each-way proxy)"

# (1) bccguard.
cat > "$work/bccguard.toml" <<EOF
[server]
listen = ["127.0.0.1:$relay_port"]
max_recipients = 1000
max_connections_per_client = 0   # every session comes from 127.0.0.1
[upstream]
host = "127.0.0.1"
port = $proxy_port
tls = "none"
max_connections = $conns
[spool]
dir = "$work/spool"
[policy]
internal_domains = ["example.com"]
[log]
level = "warn"
EOF
"$BCCGUARD_BIN" serve --config "$work/bccguard.toml" 2>"$work/bccguard.log" &
bcc_pid=$!
pids+=($bcc_pid)
wait_port "$relay_port"
if ! run bccguard "$relay_port" "$work/spool/queue"; then
    tail -n 20 "$work/bccguard.log" >&2
    exit 1
fi
read -r bcc_secs bcc_count bcc_proxy < "$work/result"
kill "$bcc_pid" 2>/dev/null || true
wait "$bcc_pid" 2>/dev/null || true

# (2) Postfix, relaying everything to the proxy (Debian's "No configuration" has no main.cf).
if [ -n "$(find /var/spool/postfix/incoming /var/spool/postfix/active /var/spool/postfix/deferred \
    /var/spool/postfix/maildrop -type f 2>/dev/null | head -n 1)" ]; then
    echo "Postfix's queue is not empty; empty it first (postsuper -d ALL)" >&2
    exit 1
fi
postfix status >/dev/null 2>&1 && postfix_was_running=1
mkdir "$work/postfix-backup"
for f in main.cf master.cf; do
    if [ -f "/etc/postfix/$f" ]; then cp -p "/etc/postfix/$f" "$work/postfix-backup/$f"; fi
done
postfix_touched=1
[ -f /etc/postfix/main.cf ] || cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
postconf -e "inet_interfaces = 127.0.0.1" "inet_protocols = ipv4" "mydestination =" \
    "myhostname = bench.localdomain" "relayhost = [127.0.0.1]:$proxy_port" \
    "mynetworks = 127.0.0.0/8" "smtpd_relay_restrictions = permit_mynetworks, reject" \
    "default_process_limit = $conns" "smtp_destination_concurrency_limit = $conns" \
    "smtp_destination_recipient_limit = 1" \
    "maillog_file = /var/log/postfix-bench.log" "compatibility_level = 3.6"
postconf -F '*/*/chroot = n'
postconf -MX "smtp/inet" 2>/dev/null || true
postconf -M "127.0.0.1:$postfix_port/inet=127.0.0.1:$postfix_port inet n - n - - smtpd"
newaliases 2>/dev/null || true
if postfix status >/dev/null 2>&1; then postfix reload >/dev/null 2>&1; else postfix start >/dev/null 2>&1; fi
wait_port "$postfix_port"
sleep 1
postfix_queue=(/var/spool/postfix/incoming /var/spool/postfix/active /var/spool/postfix/deferred /var/spool/postfix/maildrop)
if ! run postfix "$postfix_port" "${postfix_queue[@]}"; then
    tail -n 20 /var/log/postfix-bench.log >&2 || true
    exit 1
fi
read -r pf_secs pf_count pf_proxy < "$work/result"

rate() { echo "($1) / ($2)" | bc -l | xargs printf '%.0f'; }
bcc_rate=$(rate "$copies" "$bcc_secs")
pf_rate=$(rate "$copies" "$pf_secs")
printf '  %-9s %6s copies/s  (%.2f s; the sink counted %s copies; proxy: %s)\n' \
    bccguard "$bcc_rate" "$bcc_secs" "$bcc_count" "$bcc_proxy" \
    postfix "$pf_rate" "$pf_secs" "$pf_count" "$pf_proxy"
printf '  bccguard / postfix: %.2fx\n' "$(echo "$bcc_rate / $pf_rate" | bc -l)"
if [ "$delay_ms" -gt 0 ]; then
    ceiling=$(rate "$conns * 1000" "2 * $delay_ms")
    printf '  ceiling %s connections / %s ms: %s copies/s; bccguard at %.2f of it, postfix at %.2f\n' \
        "$conns" "$((2 * delay_ms))" "$ceiling" "$(echo "$bcc_rate / $ceiling" | bc -l)" \
        "$(echo "$pf_rate / $ceiling" | bc -l)"
fi
