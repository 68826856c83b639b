#!/usr/bin/env bash
# Interoperability: real mailers (swaks, Python's smtplib) send through the running relay
# binary; the delivered files are checked. Run from the repository root after `cargo build`.
# Needs: swaks, openssl, python3.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BCCGUARD_BIN:-$root/target/debug/bccguard}
work=$(mktemp -d)
relay_pid=""
cleanup() {
    [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null || true
    [ -n "${KEEP_INTEROP:-}" ] && cp "$work/relay.log" /tmp/interop-relay.log; rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "interop: FAIL: $*" >&2; [ -f "$work/relay.log" ] && tail -n 30 "$work/relay.log" >&2; exit 1; }
pass() { echo "interop: ok: $*"; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# A test certificate for localhost, and one user.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
hash=$(echo 's3cret' | "$bin" hash-password)

cat > "$work/bccguard.toml" <<EOF
[server]
listen = ["127.0.0.1:$port"]
[server.tls]
cert = "$work/cert.pem"
key = "$work/key.pem"
[access]
relay_networks = ["127.0.0.1/32"]
[[access.users]]
name = "app"
password_hash = "$hash"
[upstream]
directory = "$work/outbox"
[spool]
dir = "$work/spool"
[policy]
internal_domains = ["example.com"]
EOF

"$bin" check-config --config "$work/bccguard.toml" >/dev/null || fail "check-config"
"$bin" serve --config "$work/bccguard.toml" 2>"$work/relay.log" &
relay_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

swaks_common=(--server "127.0.0.1:$port" --from app@example.com --h-From app@example.com --silent 2)
swaks "${swaks_common[@]}" --to swaks-plain@client.test --header "Subject: swaks plain" \
    --body "plain body" || fail "swaks plain"
pass "swaks plain"
swaks "${swaks_common[@]}" --pipeline --to swaks-piped1@client.test,swaks-piped2@client.test \
    --header "Subject: swaks pipelined" --body "pipelined body" || fail "swaks pipelined"
pass "swaks pipelined"
swaks --server "localhost:$port" --local-interface 127.0.0.2 --from app@example.com \
    --to swaks-tls@client.test --header "Subject: swaks starttls auth" --body "tls body" \
    -tls --tls-ca-path "$work/cert.pem" --auth PLAIN --auth-user app --auth-password s3cret \
    --silent 2 || fail "swaks STARTTLS + AUTH"
pass "swaks STARTTLS + AUTH PLAIN"
if swaks --server "localhost:$port" --local-interface 127.0.0.2 --from app@example.com \
    --to swaks-bad@client.test -tls --tls-ca-path "$work/cert.pem" --auth LOGIN \
    --auth-user app --auth-password wrong --silent 2 >/dev/null 2>&1; then
    fail "swaks with a wrong password was accepted"
fi
pass "swaks wrong password refused"

python3 "$root/tests/interop/smtplib_client.py" "$port" "$work/cert.pem" app s3cret || fail "smtplib"
pass "smtplib plain, STARTTLS + AUTH, relay denial, pipelined"

# Delivery follows the 250 (from the spool): wait for the files.
wait_files() { # count
    for _ in $(seq 200); do
        [ "$(ls "$work"/outbox/*.eml 2>/dev/null | wc -l)" -ge "$1" ] && return 0
        sleep 0.05
    done
    fail "expected $1 files in the outbox, found $(ls "$work"/outbox/*.eml 2>/dev/null | wc -l)"
}
wait_files 7

# Every accepted recipient has exactly one file, with the right envelope lines and subject.
check_file() { # recipient subject
    local files
    files=$(grep -l "^Delivered-To: $1" "$work"/outbox/*.eml 2>/dev/null || true)
    [ "$(echo "$files" | grep -c .)" = 1 ] || fail "expected one file for $1, got: $files"
    head -n 1 "$files" | grep -q '^Return-Path: <app@example.com>' || fail "Return-Path for $1"
    sed -n 3p "$files" | grep -q '^Received: from ' || fail "Received: for $1"
    grep -q "^Subject: $2" "$files" || fail "subject for $1"
    if grep -q $'[^\r]$' <(sed -n '1,/^\r$/p' "$files"); then fail "bare LF in $1"; fi
}
check_file swaks-plain@client.test "swaks plain"
check_file swaks-piped1@client.test "swaks pipelined"
check_file swaks-piped2@client.test "swaks pipelined"
check_file swaks-tls@client.test "swaks starttls auth"
check_file py-plain@client.test "smtplib plain"
check_file py-tls@client.test "smtplib starttls auth"
check_file py-piped@client.test "smtplib pipelined"
count=$(ls "$work"/outbox/*.eml | wc -l)
[ "$count" = 7 ] || fail "expected 7 delivered files, found $count"
grep -q 'with ESMTPSA' "$(grep -l '^Delivered-To: swaks-tls@' "$work"/outbox/*.eml)" || fail "ESMTPSA"
pass "7 files delivered, one per recipient"

kill -TERM "$relay_pid"
wait "$relay_pid" || fail "relay exit status $? after SIGTERM"
relay_pid=""
grep -q 'stopped' "$work/relay.log" || fail "no clean stop in the log"
if grep -E '[a-z0-9.-]+@client\.test' "$work/relay.log" | grep -v '\*\*\*@' >/dev/null; then
    fail "a full customer address was logged"
fi
pass "SIGTERM: clean exit 0, no full address in the log"
echo "interop: all passed"
