#!/usr/bin/env bash
# Bench (not a test): slow clients against `bccguard serve` (issue "never lose, never balloon").
# 1,000 connections from 127.0.0.1 each trickle one byte every 3 s (the idle timeout, 10 s,
# restarts at every byte and never fires). It prints:
#   - how many of them were greeted and how many got `421 4.7.0` at once (with the default
#     server.max_connections_per_client = 50: 50 and 950);
#   - whether the trickled sessions were still open after 12 s, longer than the idle timeout;
#   - how long a normal client from 127.0.0.2 took to be greeted, to have its message accepted
#     (250) and to see the copy in the outbox, meanwhile (it must be within 5 s);
#   - the reply to a 51st connection from 127.0.0.1.
# Loopback only; stops by itself within about a minute. Runs any binary (BIN=...), so an
# older build can be compared.
#
# Usage: benches/slow-clients.sh   (after `cargo build --release`, or with BIN=path)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN:-$root/target/release/bccguard}
[ -x "$bin" ] || { echo "no binary at $bin: run cargo build --release" >&2; exit 2; }
ulimit -n 4096
work=$(mktemp -d)
relay_pid=
cleanup() {
    [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/bccguard.toml" <<EOF
[server]
listen = ["127.0.0.1:$port"]
idle_timeout = "10s"
[upstream]
directory = "$work/outbox"
[spool]
dir = "$work/spool"
[log]
level = "warn"
EOF
"$bin" serve --config "$work/bccguard.toml" 2>"$work/bccguard.log" &
relay_pid=$!

timeout 90 python3 - "$port" "$work/outbox" <<'EOF'
import os, smtplib, socket, sys, time

port, outbox = int(sys.argv[1]), sys.argv[2]
addr = ("127.0.0.1", port)

def connect(source):
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(addr)
    return s

def first_line(s):
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = s.recv(512)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()

for _ in range(200):  # wait for the relay
    try:
        probe = connect("127.0.0.1")
        if first_line(probe).startswith("220"):
            probe.sendall(b"QUIT\r\n")
            probe.close()
            break
    except OSError:
        pass
    time.sleep(0.05)
else:
    sys.exit("the relay did not start")
time.sleep(0.5)  # let the probe's session end

# 1,000 tricklers from 127.0.0.1.
opened, greeted, refused, other = [], [], 0, []
for _ in range(1000):
    opened.append(connect("127.0.0.1"))
for s in opened:
    try:
        line = first_line(s)
    except OSError as e:
        line = f"error: {e}"
    if line.startswith("220"):
        greeted.append(s)
    else:
        if line.startswith("421 4.7.0"):
            refused += 1
        else:
            other.append(line)
        s.close()
print(f"1000 connections from 127.0.0.1: {len(greeted)} greeted, {refused} got 421 4.7.0 at once"
      + (f", {len(other)} other: {other[:3]}" if other else ""))

# Trickle one byte every 3 s for 12 s: longer than idle_timeout (10 s).
line = b"EHLO trickler.example.com\r\n"
for i in range(4):
    for s in greeted:
        try:
            s.send(line[i:i + 1])
        except OSError:
            pass
    time.sleep(3)
alive = 0
for s in greeted:
    s.setblocking(False)
    try:
        s.recv(1)  # a reply (421) or the end of the stream: no longer held
    except BlockingIOError:
        alive += 1  # nothing to read and not closed: still held
    except OSError:
        pass
    s.setblocking(True)
print(f"after 12 s of trickling: {alive} of {len(greeted)} trickled sessions still open")

# A normal client from 127.0.0.2, meanwhile.
t0 = time.monotonic()
try:
    with smtplib.SMTP(host="127.0.0.1", port=port, source_address=("127.0.0.2", 0), timeout=10) as c:
        greet = time.monotonic() - t0
        c.sendmail("app@example.com", ["customer@client.test"],
                   "From: app@example.com\r\nTo: customer@client.test\r\nSubject: hi\r\n\r\nHello!\r\n")
        accepted = time.monotonic() - t0
except (OSError, smtplib.SMTPException) as e:
    print(f"normal client from 127.0.0.2: FAILED after {time.monotonic() - t0:.3f} s: {e}")
    greet = accepted = None
def delivered_files():
    try:
        return [n for n in os.listdir(outbox) if not n.startswith(".")]
    except FileNotFoundError:
        return []
while not delivered_files() and time.monotonic() - t0 < 10:
    time.sleep(0.01)
delivered = time.monotonic() - t0
ok = bool(delivered_files()) and delivered < 5
if accepted is not None:
    print(f"normal client from 127.0.0.2: greeted in {greet:.3f} s, 250 in {accepted:.3f} s, "
          f"copy in the outbox in {delivered:.3f} s ({'within' if ok else 'NOT within'} 5 s)")

# One more from 127.0.0.1.
s = connect("127.0.0.1")
print(f"connection {len(greeted) + 1} from 127.0.0.1: {first_line(s)}")
s.close()
for s in greeted:
    s.close()
EOF
