#!/usr/bin/env bash
# Bench (not a test): throughput with Postfix's smtp-source as the mailer and smtp-sink as the
# upstream, in one run:
#   (a) single-recipient 4 KiB messages, messages/s;
#   (b) 100-recipient messages whose To shows all 100 (bccguard explodes each into 100 copies),
#       copies/s;
# each through bccguard, through a local Postfix relay (with smtp_destination_recipient_limit
# = 1 for (b), so it too makes one delivery per recipient), and straight into the sink.
# Throughput counts until the relay's queue is empty (everything delivered upstream).
# (a) runs ROUNDS times, bccguard and direct in turn, and reports the median of the rounds'
# ratios: on a shared 2-core machine one figure alone swings by 20% from run to run.
#
# Usage (as root, Debian with postfix installed; it reconfigures the local Postfix):
#   benches/smtp-bench.sh [MESSAGES_A] [MESSAGES_B] [SESSIONS] [ROUNDS]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
n_a=${1:-5000}
n_b=${2:-200}
sessions=${3:-20}
rounds=${4:-3}
conns=16
work=$(mktemp -d)
chmod 755 "$work"
sink_port=2790
relay_port=2791
postfix_port=2792
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    postfix stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet --manifest-path "$root/Cargo.toml"
bin=$root/target/release/bccguard

now() { date +%s.%N; }
rate() { echo "$1 / ($3 - $2)" | bc -l | xargs printf '%.0f'; }
wait_empty() { # directory glob to poll
    while [ -n "$(find "$@" -type f ! -name '.*' 2>/dev/null | head -n 1)" ]; do sleep 0.02; done
}

smtp-sink -u nobody "127.0.0.1:$sink_port" 1000 &
pids+=($!)

# bccguard, delivering to the sink.
cat > "$work/bccguard.toml" <<EOF
[server]
listen = ["127.0.0.1:$relay_port"]
max_recipients = 1000
max_connections_per_client = 0   # every session comes from 127.0.0.1
[upstream]
host = "127.0.0.1"
port = $sink_port
tls = "none"
max_connections = $conns
[spool]
dir = "$work/spool"
[policy]
internal_domains = ["example.com"]
[log]
level = "warn"
EOF
"$bin" serve --config "$work/bccguard.toml" 2>"$work/bccguard.log" &
pids+=($!)

# Postfix, relaying everything to the sink (Debian's "No configuration" has no main.cf).
[ -f /etc/postfix/main.cf ] || cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
postconf -e "inet_interfaces = 127.0.0.1" "inet_protocols = ipv4" "mydestination =" \
    "myhostname = bench.localdomain" "relayhost = [127.0.0.1]:$sink_port" \
    "mynetworks = 127.0.0.0/8" "smtpd_relay_restrictions = permit_mynetworks, reject" \
    "smtp_destination_concurrency_limit = $conns" "default_process_limit = 100" \
    "maillog_file = /var/log/postfix-bench.log" "compatibility_level = 3.6"
postconf -F '*/*/chroot = n'
postconf -MX "smtp/inet" 2>/dev/null || true
postconf -M "127.0.0.1:$postfix_port/inet=127.0.0.1:$postfix_port inet n - n - - smtpd"
newaliases 2>/dev/null || true
postfix status >/dev/null 2>&1 && postfix reload || postfix start
sleep 1
postfix_queue=(/var/spool/postfix/incoming /var/spool/postfix/active /var/spool/postfix/deferred /var/spool/postfix/maildrop)

# A 4 KiB message whose To shows 100 customers (for load b); LF line ends, as smtp-source -F
# sends each line with CRLF.
{
    printf 'From: shop@example.com\nTo: '
    for i in $(seq 100); do printf 'customer%03d@client.test' "$i"; [ "$i" -lt 100 ] && printf ',\n '; done
    printf '\nSubject: bench\n\n'
    head -c 1500 /dev/zero | tr '\0' 'x' | fold -w 76
    echo
} > "$work/b.eml"

run() { # label, target port, queue to wait for (or -), smtp-source args...
    local label=$1 port=$2 queue=$3; shift 3
    local t0 t1
    t0=$(now)
    smtp-source -s "$sessions" "$@" "127.0.0.1:$port"
    if [ "$queue" = bccguard ]; then wait_empty "$work/spool/queue"; fi
    if [ "$queue" = postfix ]; then wait_empty "${postfix_queue[@]}"; fi
    t1=$(now)
    echo "$label $t0 $t1"
}

median() { # numbers...
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

report() { # label count unit start end
    printf '  %-10s %8s %s/s\n' "$1" "$(rate "$2" "$4" "$5")" "$3"
}

echo "(a) $n_a single-recipient 4 KiB messages, $sessions sessions, $rounds rounds (bccguard and direct in turn; Postfix in the first)"
relay_rates=() direct_rates=() ratios=() postfix_rate=0
for r in $(seq "$rounds"); do
    targets=("bccguard $relay_port bccguard" "direct $sink_port -")
    [ "$r" = 1 ] && targets=("bccguard $relay_port bccguard" "postfix $postfix_port postfix" "direct $sink_port -")
    for target in "${targets[@]}"; do
        set -- $target
        read -r label t0 t1 < <(run "$1" "$2" "$3" -m "$n_a" -l 4096 -f sender@example.com -t rcpt@client.test)
        case $label in
            bccguard) relay_rates+=("$(rate "$n_a" "$t0" "$t1")") ;;
            postfix) postfix_rate=$(rate "$n_a" "$t0" "$t1") ;;
            direct) direct_rates+=("$(rate "$n_a" "$t0" "$t1")") ;;
        esac
    done
    ratios+=("$(echo "${relay_rates[-1]} / ${direct_rates[-1]}" | bc -l)")
    printf '  round %d:   bccguard %6s, direct %6s messages/s, ratio %.2f\n' "$r" "${relay_rates[-1]}" \
        "${direct_rates[-1]}" "${ratios[-1]}"
done
printf '  %-10s %8s messages/s (median)\n' bccguard "$(median "${relay_rates[@]}")"
printf '  %-10s %8s messages/s\n' postfix "$postfix_rate"
printf '  %-10s %8s messages/s (median)\n' direct "$(median "${direct_rates[@]}")"
printf '  bccguard / direct %.2f (median of the rounds), bccguard / postfix %.1f (first round)\n' \
    "$(median "${ratios[@]}")" "$(echo "${relay_rates[0]} / $postfix_rate" | bc -l)"

echo "(b) $n_b messages to 100 recipients each, To showing all 100 ($((n_b * 100)) copies), $sessions sessions"
postconf -e "smtp_destination_recipient_limit = 1" && postfix reload >/dev/null 2>&1 && sleep 1
for target in "bccguard $relay_port bccguard" "postfix $postfix_port postfix" "direct $sink_port -"; do
    set -- $target
    read -r label t0 t1 < <(run "$1" "$2" "$3" -m "$n_b" -r 100 -F "$work/b.eml" -f sender@example.com -t rcpt@client.test)
    report "$label" "$((n_b * 100))" copies "$t0" "$t1"
done
echo "(direct: one 100-recipient transaction per message into the sink, the ceiling)"
