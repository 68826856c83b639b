#!/usr/bin/env bash
# Bench (not a test): bccguard's peak memory (VmHWM) under the loads that used to balloon it,
# and its resident memory once the load has drained. Loopback only; stops by itself.
#
#   (a) burst:     SESSIONS concurrent clients each sending one BURST_MIB MiB message
#                  (directory upstream); peak RSS, then RSS once the spool is empty;
#   (b) blackhole: an upstream that accepts TCP and never greets, QUEUED messages of
#                  QUEUED_MIB MiB sent by SESSIONS clients; peak RSS;
#   (c) restart:   the relay restarted on that spool, no client at all, for 20 s; peak RSS;
#   (d) fan-out:   (run after (a)) 50 messages whose To: shows 1,000 external recipients, each
#                  exploded into 1,000 copies (50,000 files); peak RSS, RSS when drained and
#                  10 s later.
#
# Usage: benches/memory.sh [SESSIONS] [BURST_MIB] [QUEUED] [QUEUED_MIB]   (defaults 100 10 500 20)
# Needs python3 and about QUEUED x QUEUED_MIB of free disk. BCCGUARD_BIN picks another binary.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
sessions=${1:-100}
burst_mib=${2:-10}
queued=${3:-500}
queued_mib=${4:-20}
work=$(mktemp -d)
relay_port=2801
hole_port=2802
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${BCCGUARD_BIN:-}" ]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml"
    BCCGUARD_BIN=$root/target/release/bccguard
fi

config() { # upstream section
    cat > "$work/bccguard.toml" <<EOF
[server]
listen = ["127.0.0.1:$relay_port"]
max_message_size = "64MiB"
# Every client session comes from 127.0.0.1 here.
max_connections_per_client = 0
[spool]
dir = "$work/spool"
[upstream]
$1
[policy]
internal_domains = ["example.com"]
[log]
level = "warn"
EOF
}

start_relay() {
    "$BCCGUARD_BIN" serve --config "$work/bccguard.toml" 2>>"$work/relay.log" &
    relay=$!
    pids+=("$relay")
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $relay_port), 0.2)" 2>/dev/null && return
        sleep 0.1
    done
    echo "the relay did not start"; cat "$work/relay.log"; exit 1
}

kib() { awk -v k="$1" '/^'"$1"':/ { print $2 }' "/proc/$relay/status"; }
mib() { echo $(( $1 / 1024 )); }
spool_count() { find "$work/spool/queue" -name '*.msg' | wc -l; }

send() { # messages, MiB each, concurrent sessions[, recipients each, all shown in To:]
    python3 - "$relay_port" "$1" "$2" "$3" "${4:-1}" <<'PY'
import smtplib, sys, threading, queue
port, count, mib, sessions, nrcpt = (int(a) for a in sys.argv[1:])
line = b"x" * 76 + b"\r\n"
body = line * max(1, mib * 1024 * 1024 // len(line))
rcpts = ["customer@client.test"] if nrcpt == 1 else [f"c{i}@client{i % 7}.test" for i in range(nrcpt)]
to = ",\r\n ".join(rcpts).encode()
message = (b"From: app@example.com\r\nTo: " + to + b"\r\nSubject: big\r\n\r\n" + body)
todo = queue.Queue()
for _ in range(count):
    todo.put(1)
failed = []
def worker():
    while True:
        try:
            todo.get_nowait()
        except queue.Empty:
            return
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=600) as s:
                s.sendmail("app@example.com", rcpts, message)
        except Exception as e:
            failed.append(repr(e))
threads = [threading.Thread(target=worker) for _ in range(min(sessions, count))]
for t in threads: t.start()
for t in threads: t.join()
if failed:
    print(f"  {len(failed)} messages not accepted, e.g. {failed[0]}")
PY
}

echo "(a) burst: $sessions sessions x $burst_mib MiB, directory upstream"
config "directory = \"$work/outbox\""
start_relay
rss0=$(kib VmRSS)
send "$sessions" "$burst_mib" "$sessions"
while [ "$(spool_count)" -gt 0 ]; do sleep 0.2; done
sleep 2
printf '  RSS at start      %5d MiB\n  peak RSS          %5d MiB\n  RSS after drain   %5d MiB\n' \
    "$(mib "$rss0")" "$(mib "$(kib VmHWM)")" "$(mib "$(kib VmRSS)")"
echo "  delivered: $(find "$work/outbox" -name '*.eml' | wc -l) files"
kill "$relay"; wait "$relay" || true
rm -rf "$work/spool" "$work/outbox"

echo "(d) fan-out: 50 messages x 1,000 external recipients shown in To:, 10 sessions, exploded"
config "directory = \"$work/outbox\""
start_relay
send 50 0 10 1000
while [ "$(spool_count)" -gt 0 ]; do sleep 0.2; done
drained=$(kib VmRSS)
sleep 10
printf '  peak RSS          %5d MiB\n  RSS when drained  %5d MiB\n  RSS 10 s later    %5d MiB\n' \
    "$(mib "$(kib VmHWM)")" "$(mib "$drained")" "$(mib "$(kib VmRSS)")"
echo "  delivered: $(find "$work/outbox" -name '*.eml' | wc -l) files"
kill "$relay"; wait "$relay" || true
rm -rf "$work/spool" "$work/outbox"

echo "(b) blackhole: $queued messages x $queued_mib MiB queued, upstream never greets"
python3 - "$hole_port" <<'PY' &
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1024)
held = []
end = time.time() + 1800
s.settimeout(1)
while time.time() < end:
    try:
        c, _ = s.accept(); held.append(c)
    except socket.timeout:
        pass
PY
pids+=($!)
config "host = \"127.0.0.1\"
port = $hole_port
tls = \"none\"
timeout = \"30s\""
start_relay
send "$queued" "$queued_mib" "$sessions"
printf '  queued            %5d messages\n  peak RSS          %5d MiB\n' "$(spool_count)" "$(mib "$(kib VmHWM)")"
kill "$relay"; wait "$relay" || true

echo "(c) restart on that spool, no client, 20 s"
start_relay
sleep 20
printf '  peak RSS          %5d MiB\n  RSS now           %5d MiB\n' "$(mib "$(kib VmHWM)")" "$(mib "$(kib VmRSS)")"
