#!/usr/bin/env bash
# Bench (not a test): a flood of wrong passwords against `bccguard serve`. 200 concurrent
# connections (from 127.0.0.1 to 127.0.0.4, 50 each, within the per-client limit) each send
# AUTH PLAIN with a wrong password until the relay closes them (three failures), against one
# user with an argon2 hash from `bccguard hash-password` and access.allow_plaintext_auth =
# true. It prints the replies counted, the time taken, and the relay's peak resident memory
# (VmHWM from /proc/PID/status) before and after; the target is below 256 MiB.
# Loopback only; bounded by a 120 s timeout.
#
# Usage: benches/auth-flood.sh [CONNECTIONS]   (after `cargo build --release`, or with BIN=path)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN:-$root/target/release/bccguard}
[ -x "$bin" ] || { echo "no binary at $bin: run cargo build --release" >&2; exit 2; }
connections=${1:-200}
ulimit -n 4096
work=$(mktemp -d)
relay_pid=
cleanup() {
    [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

hash=$(echo s3cret | "$bin" hash-password)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/bccguard.toml" <<EOF
[server]
listen = ["127.0.0.1:$port"]
[access]
allow_plaintext_auth = true
[[access.users]]
name = "app"
password_hash = "$hash"
[upstream]
directory = "$work/outbox"
[spool]
dir = "$work/spool"
[log]
level = "warn"
EOF
"$bin" serve --config "$work/bccguard.toml" 2>"$work/bccguard.log" &
relay_pid=$!

timeout 120 python3 - "$port" "$connections" "$relay_pid" <<'EOF'
import base64, socket, sys, threading, time

port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
wrong = base64.b64encode(b"\0app\0wrong").decode()

def hwm():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return 0.0

def reader(s):
    buf = b""
    def reply():
        nonlocal buf
        while True:
            lines = buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) < 4 or line[3:4] != b"-":
                    buf = b"\r\n".join(lines[i + 1:])
                    return line.decode(errors="replace")
            chunk = s.recv(4096)
            if not chunk:
                return ""
            buf += chunk
    return reply

for _ in range(200):  # wait for the relay
    try:
        probe = socket.create_connection(("127.0.0.1", port), timeout=1)
        if reader(probe)().startswith("220"):
            probe.close()
            break
    except OSError:
        pass
    time.sleep(0.05)
else:
    sys.exit("the relay did not start")
print(f"relay peak RSS before the flood: {hwm():.1f} MiB")

counts, lock = {}, threading.Lock()
def count(key):
    with lock:
        counts[key] = counts.get(key, 0) + 1

ready = threading.Barrier(n)
def client(i):
    try:
        s = socket.socket()
        s.bind((f"127.0.0.{1 + i % 4}", 0))
        s.settimeout(100)
        s.connect(("127.0.0.1", port))
        reply = reader(s)
        if not reply().startswith("220"):
            return count("not greeted")
        s.sendall(b"EHLO flood\r\n")
        reply()
        ready.wait()
        while True:
            s.sendall(f"AUTH PLAIN {wrong}\r\n".encode())
            r = reply()
            if not r:
                break
            count(r[:9])
            if r.startswith("421"):
                break
        s.close()
    except (OSError, threading.BrokenBarrierError) as e:
        count(f"error {type(e).__name__}")

t0 = time.monotonic()
threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
took = time.monotonic() - t0
print(f"{n} connections, wrong AUTH PLAIN until closed: {dict(sorted(counts.items()))} in {took:.1f} s")
print(f"relay peak RSS (VmHWM) after the flood: {hwm():.1f} MiB (target: below 256 MiB)")
EOF
