#!/usr/bin/env bash
# Interoperability with a real upstream: Postfix's smtp-sink, in its normal mode and its fault
# modes (-r . : 4xx at the end of data; -f RCPT : 5xx to RCPT; -q . : drop the connection).
# Run from the repository root after `cargo build`. Needs: smtp-sink (Debian postfix), swaks.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BCCGUARD_BIN:-$root/target/debug/bccguard}
work=$(mktemp -d)
relay_pid=""
sink_pid=""
cleanup() {
    [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null || true
    [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "smtp-sink interop: FAIL: $*" >&2; tail -n 30 "$work/relay.log" >&2 || true; exit 1; }
pass() { echo "smtp-sink interop: ok: $*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # description, command...
    local what=$1; shift
    for _ in $(seq 300); do "$@" && return 0; sleep 0.1; done
    fail "timed out waiting for: $what"
}

port=$(free_port)
sink_port=$(free_port)
mkdir -p "$work/dump"
chmod 755 "$work"
chmod 777 "$work/dump"

start_sink() { # extra smtp-sink options
    [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null && wait "$sink_pid" 2>/dev/null || true
    smtp-sink -u nobody -d "$work/dump/%H%M%S." "$@" "127.0.0.1:$sink_port" 100 &
    sink_pid=$!
    wait_for "smtp-sink to listen" bash -c "exec 3<>/dev/tcp/127.0.0.1/$sink_port" 2>/dev/null
}

cat > "$work/bccguard.toml" <<EOF
[server]
listen = ["127.0.0.1:$port"]
[upstream]
host = "127.0.0.1"
port = $sink_port
tls = "none"
timeout = "5s"
[spool]
dir = "$work/spool"
retry = ["1h"]
[policy]
internal_domains = ["example.com"]
EOF

start_sink
"$bin" serve --config "$work/bccguard.toml" 2>"$work/relay.log" &
relay_pid=$!
wait_for "bccguard to listen" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null

queue() { "$bin" queue "$@" --config "$work/bccguard.toml"; }
spool_empty() { [ -z "$(ls "$work/spool/queue")" ]; }
dumps() { ls "$work/dump" | wc -l; }
send() { # rcpts subject
    swaks --server "127.0.0.1:$port" --from app@example.com --to "$1" \
        --header "To: $1" --header "Subject: $2" --body "body of $2" --silent 2 || fail "swaks: $2"
}

# 1. Normal: a leaking message explodes into one transaction per external recipient.
send "one@alpha.test,two@beta.test,boss@example.com" "normal"
wait_for "three copies at the sink" bash -c "[ \$(ls '$work/dump' | wc -l) = 3 ]"
wait_for "an empty spool" spool_empty
one=$(grep -l "one@alpha.test" "$work"/dump/* | xargs grep -l '^X-Bccguard: exploded' | sed -n 1p)
[ -n "$one" ] || fail "no exploded copy for one@alpha.test"
grep -q '^To: one@alpha.test' "$one" || fail "To of the exploded copy"
grep -q 'two@beta.test' "$one" && fail "the copy for one@ shows two@"
pass "normal: 3 transactions, exploded copies addressed to one recipient each"

# 2. 4xx at the end of data: deferred, listed, delivered after `queue retry`.
start_sink -r .
send "late@gamma.test" "soft"
wait_for "a deferral in the queue" bash -c "'$bin' queue list --config '$work/bccguard.toml' | grep -q ' 4[0-9][0-9] '"
grep -q "1 message, 1 transaction pending" <<<"$(queue list)" || fail "queue list after 4xx: $(queue list)"
start_sink
before=$(dumps)
grep -q "Retrying 1 message now." <<<"$(queue retry)" || fail "queue retry"
wait_for "an empty spool after retry" spool_empty
[ "$(dumps)" = $((before + 1)) ] || fail "delivered after retry"
pass "-r . (4xx at end of data): deferred, listed, delivered after queue retry"

# 3. 5xx to RCPT: failed for good, bounced to the sender. The bounce itself fails at the same
#    sink: having the null sender it is not bounced again, but kept in the queue as a failed
#    bounce (never dropped) until an operator retries or deletes it.
start_sink -f RCPT
send "nobody@delta.test" "hard"
failed_bounce() { grep -q "failed bounce" <<<"$(queue list)"; }
wait_for "the bounce kept as a failed bounce" failed_bounce
grep -q 'failed.*to=n\*\*\*@delta.test.*reply=5' "$work/relay.log" || fail "the 5xx was not logged as failed"
grep -q 'bounce queued' "$work/relay.log" || fail "no bounce was queued"
grep -q 'a bounce cannot be delivered' "$work/relay.log" || fail "the failed bounce was not logged"
grep -q "1 message, 0 transactions pending, 1 failed bounce" <<<"$(queue list)" || fail "queue list: $(queue list)"
dsn=$(queue list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
grep -q "Deleted $dsn." <<<"$(queue delete "$dsn")" || fail "queue delete of the failed bounce"
wait_for "an empty spool after the delete" spool_empty
pass "-f RCPT (5xx): failed, DSN queued to the sender, the failed DSN kept until deleted"

# 4. Connection dropped after the data: deferred, then delivered.
start_sink -q .
send "drop@epsilon.test" "dropped"
wait_for "a deferral after the drop" bash -c "grep -q 'deferred.*to=d\*\*\*@epsilon.test' '$work/relay.log'"
spool_empty && fail "a dropped connection must leave the message spooled"
start_sink
before=$(dumps)
queue retry >/dev/null
wait_for "an empty spool after the drop" spool_empty
[ "$(dumps)" -ge $((before + 1)) ] || fail "delivered after the drop"
pass "-q . (connection dropped): deferred, delivered on retry"

kill -TERM "$relay_pid"
wait "$relay_pid" || fail "exit status after SIGTERM"
relay_pid=""
echo "smtp-sink interop: all passed"
