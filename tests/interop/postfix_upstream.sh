#!/usr/bin/env bash
# Interoperability with the real Postfix smtpd as the upstream, which offers PIPELINING and
# CHUNKING (Postfix >= 3.4): bccguard delivers to Postfix, which relays everything to an
# smtp-sink whose dump files are checked. A small tee proxy between bccguard and Postfix records
# what the client writes (one line per read) to show which path was taken: BDAT when CHUNKING is
# offered, MAIL, RCPT and BDAT/DATA in one write.
#   1. a leaking message to 3 external recipients and 1 internal: 4 copies at the sink;
#   2. dot lines, an 8-bit (UTF-8) body and ~300 KiB (spilled, streamed from the spool file),
#      with CHUNKING: the body arrives byte for byte;
#   3. the same without CHUNKING (smtpd_discard_ehlo_keywords = chunking): pipelined DATA;
#   4. Postfix refuses one recipient with 550: that one fails (a bounce is queued, and delivered
#      through Postfix to the sender), the other is delivered.
# Run from the repository root after `cargo build`, as root: it reconfigures the local Postfix,
# and restores main.cf and master.cf and stops it afterwards (it refuses to start if Postfix's
# queue holds mail). Needs: postfix (>= 3.4), swaks, python3. Loopback only.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BCCGUARD_BIN:-$root/target/debug/bccguard}
work=$(mktemp -d)
chmod 755 "$work"
postfix_log=/var/log/postfix-interop.log
relay_pid=""
sink_pid=""
tee_pid=""
postfix_touched=
postfix_was_running=
cleanup() {
    [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null || true
    [ -n "$tee_pid" ] && kill "$tee_pid" 2>/dev/null || true
    [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null || true
    if [ -n "$postfix_touched" ]; then
        # What this run left in Postfix's queue (by its senders) goes, then the old config.
        postqueue -j 2>/dev/null | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("sender") in ("app@example.com", ""):
        print(m["queue_id"])' | postsuper -d - >/dev/null 2>&1 || true
        postfix stop >/dev/null 2>&1 || true
        for f in main.cf master.cf; do
            if [ -f "$work/postfix-backup/$f" ]; then
                cp -p "$work/postfix-backup/$f" "/etc/postfix/$f"
            else
                rm -f "/etc/postfix/$f"
            fi
        done
        rm -f "$postfix_log"
        if [ -n "$postfix_was_running" ]; then postfix start >/dev/null 2>&1 || true; fi
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
    echo "postfix-upstream interop: FAIL: $*" >&2
    tail -n 30 "$work/relay.log" >&2 || true
    echo "--- Postfix log:" >&2
    tail -n 20 "$postfix_log" >&2 || true
    exit 1
}
pass() { echo "postfix-upstream interop: ok: $*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # description, command...
    local what=$1; shift
    for _ in $(seq 300); do "$@" && return 0; sleep 0.1; done
    fail "timed out waiting for: $what"
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

[ "$(id -u)" = 0 ] || { echo "postfix-upstream interop: needs root (it reconfigures Postfix)" >&2; exit 1; }
version=$(postconf -dh mail_version)  # -d: main.cf may not exist yet
major=${version%%.*}
minor=${version#*.}
minor=${minor%%.*}
if [ "$major" -lt 3 ] || { [ "$major" = 3 ] && [ "$minor" -lt 4 ]; }; then
    echo "postfix-upstream interop: Postfix $version offers no CHUNKING (needs >= 3.4)" >&2
    exit 1
fi
if [ -n "$(find /var/spool/postfix/incoming /var/spool/postfix/active /var/spool/postfix/deferred \
    /var/spool/postfix/hold /var/spool/postfix/maildrop -type f 2>/dev/null | head -n 1)" ]; then
    echo "postfix-upstream interop: Postfix's queue is not empty; empty it first (postsuper -d ALL)" >&2
    exit 1
fi

port=$(free_port)
postfix_port=$(free_port)
tee_port=$(free_port)
sink_port=$(free_port)
mkdir -p "$work/dump"
chmod 777 "$work/dump"

# The sink behind Postfix.
smtp-sink -u nobody -d "$work/dump/%H%M%S." "127.0.0.1:$sink_port" 100 &
sink_pid=$!
wait_for "smtp-sink to listen" listening "$sink_port"

# Postfix from the packaged defaults (not whatever an earlier run left), relaying everything to
# the sink; one recipient refused with 550.
postfix status >/dev/null 2>&1 && postfix_was_running=1
mkdir "$work/postfix-backup"
for f in main.cf master.cf; do
    if [ -f "/etc/postfix/$f" ]; then cp -p "/etc/postfix/$f" "$work/postfix-backup/$f"; fi
done
postfix_touched=1
postfix stop >/dev/null 2>&1 || true
if [ -f /usr/share/postfix/main.cf.debian ]; then
    cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
else
    cp /etc/postfix/main.cf.proto /etc/postfix/main.cf
fi
if [ -f /usr/share/postfix/master.cf.dist ]; then
    cp /usr/share/postfix/master.cf.dist /etc/postfix/master.cf
else
    cp /etc/postfix/master.cf.proto /etc/postfix/master.cf
fi
printf 'refused@delta.test 550 5.1.1 refused by the interop test\n' > "$work/rcpt_access"
rm -f "$postfix_log"
postconf -e "inet_interfaces = 127.0.0.1" "inet_protocols = ipv4" "mydestination =" \
    "myhostname = interop.localdomain" "relayhost = [127.0.0.1]:$sink_port" \
    "mynetworks = 127.0.0.0/8" "smtpd_relay_restrictions = permit_mynetworks, reject" \
    "smtpd_recipient_restrictions = check_recipient_access texthash:$work/rcpt_access" \
    "smtpd_discard_ehlo_keywords =" "alias_maps =" "alias_database =" \
    "maillog_file = $postfix_log" "compatibility_level = 3.6"
postconf -F '*/*/chroot = n'
postconf -MX "smtp/inet" 2>/dev/null || true
postconf -M "127.0.0.1:$postfix_port/inet=127.0.0.1:$postfix_port inet n - n - - smtpd"
postfix start >/dev/null 2>&1 || fail "postfix start"
wait_for "Postfix to listen" listening "$postfix_port"
ehlo() { python3 -c 'import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1])); s.ehlo("probe.test"); print(s.ehlo_resp.decode()); s.quit()' "$postfix_port"; }
offers_chunking() { grep -qx CHUNKING <<<"$(ehlo)"; }
no_chunking() { ! offers_chunking; }
caps=$(ehlo)
grep -qx 'PIPELINING' <<<"$caps" || fail "Postfix offers no PIPELINING: $caps"
grep -qx 'CHUNKING' <<<"$caps" || fail "Postfix offers no CHUNKING: $caps"

# The tee proxy: bccguard -> proxy -> Postfix; every read from the client is one line of
# Python bytes repr in $work/client.log.
cat > "$work/tee.py" <<'EOF'
import asyncio, sys

listen, upstream, log = int(sys.argv[1]), int(sys.argv[2]), open(sys.argv[3], "a")

async def pipe(reader, writer, record):
    try:
        while data := await reader.read(1 << 20):
            if record:
                log.write(repr(data) + "\n")
                log.flush()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()

async def session(c_reader, c_writer):
    try:
        u_reader, u_writer = await asyncio.open_connection("127.0.0.1", upstream)
    except OSError:
        c_writer.close()
        return
    await asyncio.gather(pipe(c_reader, u_writer, True), pipe(u_reader, c_writer, False))

async def main():
    server = await asyncio.start_server(session, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()

asyncio.run(main())
EOF
: > "$work/client.log"
python3 "$work/tee.py" "$tee_port" "$postfix_port" "$work/client.log" &
tee_pid=$!
wait_for "the tee proxy to listen" listening "$tee_port"

cat > "$work/bccguard.toml" <<EOF
[server]
listen = ["127.0.0.1:$port"]
[upstream]
host = "127.0.0.1"
port = $tee_port
tls = "none"
timeout = "10s"
[spool]
dir = "$work/spool"
retry = ["1h"]
[policy]
internal_domains = ["example.com"]
EOF
start_relay() {
    "$bin" serve --config "$work/bccguard.toml" 2>>"$work/relay.log" &
    relay_pid=$!
    wait_for "bccguard to listen" listening "$port"
}
stop_relay() {
    kill -TERM "$relay_pid"
    wait "$relay_pid" || fail "bccguard's exit status after SIGTERM"
    relay_pid=""
}
start_relay

spool_empty() { [ -z "$(ls "$work/spool/queue")" ]; }
dumps() { ls "$work/dump" | wc -l; }
postfix_queue_empty() {
    [ -z "$(find /var/spool/postfix/incoming /var/spool/postfix/active \
        /var/spool/postfix/deferred /var/spool/postfix/maildrop -type f 2>/dev/null | head -n 1)" ]
}
dump_for() { # recipient (envelope): the one dump file for it
    local files
    files=$(grep -l "^X-Rcpt-Args: <$1>" "$work"/dump/* 2>/dev/null || true)
    [ "$(echo "$files" | grep -c .)" = 1 ] || fail "expected one copy at the sink for $1, got: $files"
    echo "$files"
}
client_lines_since() { # mark: what the client wrote since, in a file (grep -q on a pipe
    # would fail it under pipefail)
    tail -n +"$(($1 + 1))" "$work/client.log" > "$work/since"
    echo "$work/since"
}
mark() { wc -l < "$work/client.log"; }

# 1. A leaking message: 3 exploded copies (To shows one recipient each) and the original.
m=$(mark)
swaks --server "127.0.0.1:$port" --from app@example.com \
    --to one@alpha.test,two@beta.test,three@gamma.test,boss@example.com \
    --header "To: one@alpha.test, two@beta.test, three@gamma.test, boss@example.com" \
    --header "Subject: explode" --body "body of explode" --silent 2 || fail "swaks: explode"
wait_for "an empty spool" spool_empty
wait_for "4 copies at the sink" bash -c "[ \$(ls '$work/dump' | wc -l) = 4 ]"
for r in one@alpha.test two@beta.test three@gamma.test; do
    f=$(dump_for "$r")
    grep -q '^X-Bccguard: exploded' "$f" || fail "the copy for $r is not marked exploded"
    grep -q "^To: $r\$" "$f" || fail "the To of the copy for $r: $(grep '^To:' "$f")"
done
f=$(dump_for boss@example.com)
grep -q '^X-Bccguard: exploded' "$f" && fail "the internal copy was rewritten"
grep -q '^To: one@alpha.test, two@beta.test, three@gamma.test, boss@example.com' "$f" ||
    fail "the internal copy's To: $(grep '^To:' "$f")"
since=$(client_lines_since "$m")
grep -q "MAIL FROM:<app@example.com>.*RCPT TO:<[^>]*>.*BDAT [0-9]* LAST" "$since" ||
    fail "no copy went as MAIL, RCPT and BDAT LAST in one write: $(cut -c 1-300 "$since")"
grep -q "\\\\r\\\\nDATA\\\\r\\\\n\\|^b'DATA\\\\r\\\\n" "$since" &&
    fail "DATA was sent although Postfix offers CHUNKING"
one_write='MAIL FROM:<app@example.com>[^\\]*\\r\\nRCPT TO:<[^>]*>\\r\\nBDAT [0-9]* LAST'
[ "$(grep -o "$one_write" "$since" | wc -l)" = 4 ] ||
    fail "expected 4 copies as MAIL, RCPT, BDAT LAST in one write: $(grep -o "$one_write" "$since")"
pass "explode: 4 copies via Postfix (3 exploded, To showing one recipient each; 1 original), each MAIL+RCPT+BDAT LAST in one write"

# A message with dot lines, 8-bit UTF-8 and ~300 KiB (spilled beyond 128 KiB), sent with
# smtplib (which dot-stuffs); its body must come out of Postfix as it went in.
make_message() { # file subject recipient
    python3 - "$1" "$2" "$3" <<'EOF'
import base64, random, sys
path, subject, rcpt = sys.argv[1:]
rnd = random.Random(subject)
lines = [
    ".a line starting with a dot", "..two dots", ".", " .", "Grüße aus Köln, naïve café, ☃ €",
    "\tindented with a tab", "", "--frontier",
    "Content-Type: application/octet-stream", "Content-Transfer-Encoding: base64", "",
]
blob = base64.encodebytes(bytes(rnd.getrandbits(8) for _ in range(230_000))).decode()
lines += blob.splitlines()
lines += ["--frontier--", ".", ".end", "Ünïcödé at the end"]
body = "".join(l + "\r\n" for l in lines).encode()
head = (f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=frontier\r\n\r\n").encode()
open(path + ".body", "wb").write(body)
open(path, "wb").write(head + body)
EOF
}
send_file() { # file recipient
    python3 -c 'import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]))
s.sendmail("app@example.com", [sys.argv[3]], open(sys.argv[2], "rb").read())
s.quit()' "$port" "$1" "$2" || fail "smtplib: $1"
}
check_body() { # file recipient: the dump's body (the sink writes LF line ends and one more
    # LF at the end) is the sent body
    local f
    f=$(dump_for "$2")
    python3 - "$f" "$1.body" <<'EOF' || fail "the body for $2 differs from what was sent"
import sys
dump, sent = (open(p, "rb").read() for p in sys.argv[1:])
got = dump.split(b"\n\n", 1)[1]
want = sent.replace(b"\r\n", b"\n") + b"\n"
if got != want:
    i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    print(f"differs at byte {i}: got {got[i-40:i+40]!r}, want {want[i-40:i+40]!r}"
          f" ({len(got)} and {len(want)} bytes)", file=sys.stderr)
    sys.exit(1)
EOF
}

# 2. With CHUNKING.
m=$(mark)
make_message "$work/big1.eml" "big chunked" big1@alpha.test
[ "$(stat -c %s "$work/big1.eml.body")" -gt $((300 * 1024)) ] || fail "the big message is too small"
send_file "$work/big1.eml" big1@alpha.test
wait_for "an empty spool after the big message" spool_empty
wait_for "the big message at the sink" bash -c "grep -q '^X-Rcpt-Args: <big1@alpha.test>' '$work'/dump/*"
check_body "$work/big1.eml" big1@alpha.test
since=$(client_lines_since "$m")
grep -q "MAIL FROM:<app@example.com>.*RCPT TO:<big1@alpha.test>.*BDAT [0-9]* LAST" "$since" ||
    fail "the big message did not go as BDAT LAST: $(cut -c 1-300 "$since")"
grep -q '\\r\\n\.a line starting with a dot' "$since" && ! grep -q '\\r\\n\.\.a line starting' "$since" ||
    fail "the BDAT content was dot-stuffed (or the dot line is missing)"
pass "CHUNKING: dot lines, 8-bit UTF-8, $(stat -c %s "$work/big1.eml.body") bytes of body, sent as BDAT LAST, arrive byte for byte"

# 3. Without CHUNKING: stop bccguard (its idle connection knows the old EHLO), reload Postfix.
stop_relay
postconf -e "smtpd_discard_ehlo_keywords = chunking"
postfix reload >/dev/null 2>&1 || fail "postfix reload"
wait_for "Postfix to stop offering CHUNKING" no_chunking
caps=$(ehlo)
grep -qx 'PIPELINING' <<<"$caps" || fail "Postfix offers no PIPELINING after the reload: $caps"
start_relay
m=$(mark)
make_message "$work/big2.eml" "big data" big2@beta.test
send_file "$work/big2.eml" big2@beta.test
wait_for "an empty spool after the second big message" spool_empty
wait_for "the second big message at the sink" bash -c "grep -q '^X-Rcpt-Args: <big2@beta.test>' '$work'/dump/*"
check_body "$work/big2.eml" big2@beta.test
since=$(client_lines_since "$m")
grep -q "MAIL FROM:<app@example.com>.*RCPT TO:<big2@beta.test>[^']*DATA\\\\r\\\\n'" "$since" ||
    fail "MAIL, RCPT and DATA were not written together: $(cut -c 1-300 "$since")"
grep -q 'BDAT' "$since" && fail "BDAT sent although Postfix offers no CHUNKING"
grep -q '\\r\\n\.\.a line starting with a dot\\r\\n\.\.\.two dots\\r\\n\.\.\\r\\n \.\\r\\n' "$since" ||
    fail "the DATA content was not dot-stuffed as expected"
pass "no CHUNKING: the same sent as pipelined MAIL+RCPT+DATA (dot-stuffed), arrives byte for byte"

# 4. Postfix refuses one recipient with 550 (back to CHUNKING).
stop_relay
postconf -e "smtpd_discard_ehlo_keywords ="
postfix reload >/dev/null 2>&1 || fail "postfix reload"
wait_for "Postfix to offer CHUNKING again" offers_chunking
start_relay
before=$(dumps)
swaks --server "127.0.0.1:$port" --from app@example.com --to ok@alpha.test,refused@delta.test \
    --header "To: ok@alpha.test, refused@delta.test" --header "Subject: refusal" \
    --body "body of refusal" --silent 2 || fail "swaks: refusal"
wait_for "the refusal logged as failed" bash -c "grep -q 'failed.*to=r\*\*\*@delta.test.*reply=550' '$work/relay.log'"
wait_for "a bounce queued" bash -c "grep -q 'bounce queued' '$work/relay.log'"
wait_for "an empty spool after the refusal" spool_empty
wait_for "the accepted copy and the bounce at the sink" bash -c "[ \$(ls '$work/dump' | wc -l) = $((before + 2)) ]"
f=$(dump_for ok@alpha.test)
grep -q '^To: ok@alpha.test$' "$f" || fail "the To of the copy for ok@alpha.test"
f=$(dump_for app@example.com)
grep -q '^X-Mail-Args: <>' "$f" || fail "the bounce's sender is not null: $(grep '^X-Mail-Args' "$f")"
grep -q 'refused@delta.test' "$f" || fail "the bounce does not name the refused recipient"
grep -q 'ok@alpha.test' "$f" && fail "the bounce names the delivered recipient"
pass "550 to one RCPT: that recipient failed, bounce delivered to the sender through Postfix, the other delivered"

stop_relay
wait_for "Postfix's queue to empty" postfix_queue_empty
echo "postfix-upstream interop: all passed"
