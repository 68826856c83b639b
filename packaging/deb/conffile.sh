#!/bin/sh
# The package's /etc/bccguard/bccguard.toml, made from config/bccguard.toml (on standard input,
# written to standard output) so that every key stays documented in one place. The package
# changes four things, each explained where it is: a header, spool.dir, the upstream (an SMTP
# relay to set instead of the outbox directory), and metrics.listen (on, loopback only). Fails
# when a line it changes is no longer in the input exactly once.
set -eu

input=$(cat)

# Each line the package changes, exactly as config/bccguard.toml has it.
for line in \
    'directory = "outbox"' \
    '# ...or an SMTP relay (remove `directory` above):' \
    '# host = "smtp.example.com"' \
    'dir = "spool"' \
    '# listen = "127.0.0.1:9325"' \
    '# Relative paths are relative to the directory bccguard is started in.'; do
    n=$(printf '%s\n' "$input" | grep -cxF -- "$line" || true)
    if [ "$n" != 1 ]; then
        echo "conffile.sh: expected the line '$line' once in config/bccguard.toml, found it $n times" >&2
        exit 1
    fi
done

cat <<'HEADER'
# /etc/bccguard/bccguard.toml: bccguard as installed by its Debian package.
#
# This is a conffile: your changes are kept across upgrades. It is the repository's
# config/bccguard.toml with four package defaults, each marked "Package default" below:
#   - spool.dir is /var/spool/bccguard (owned by the bccguard user; the only directory the
#     systemd unit lets the relay write to);
#   - the upstream is an SMTP relay, smtp.example.com: CHANGE it to your outgoing relay
#     (until then mail is accepted, queued and retried, and /readyz reports the upstream);
#   - metrics.listen is on, on loopback only (127.0.0.1:9325), for Prometheus;
#   - the service starts in /var/spool/bccguard, so relative paths are relative to it.
# Also CHANGE policy.internal_domains to your own domains.
#
# After editing: bccguard check-config, then `systemctl reload bccguard` ([policy] and
# [access]) or `systemctl restart bccguard` (every other section).
# Keys can also be overridden for the service with `systemctl edit bccguard`:
#   [Service]
#   Environment=BCCGUARD__UPSTREAM__HOST=smtp.example.net
#
HEADER
printf '%s\n' "$input" | sed \
    -e 's|^# Relative paths are relative to the directory bccguard is started in\.$|&\n# Package default: the service starts in /var/spool/bccguard (WorkingDirectory=).|' \
    -e 's|^directory = "outbox"$|# Package default: no outbox directory; an SMTP relay below instead.\n# directory = "outbox"|' \
    -e 's|^# \.\.\.or an SMTP relay (remove `directory` above):$|# ...or an SMTP relay. Package default: an SMTP relay. CHANGE host to your outgoing relay\n# (on a Postfix server, the relayhost Postfix used before it pointed at bccguard), and set\n# port, tls and credentials as that relay needs them.|' \
    -e 's|^# host = "smtp.example.com"$|host = "smtp.example.com"|' \
    -e 's|^dir = "spool"$|# Package default: /var/spool/bccguard (development default: "spool").\ndir = "/var/spool/bccguard"|' \
    -e 's|^# listen = "127.0.0.1:9325"$|# Package default: on, loopback only (alert rules and a dashboard: see the README).\nlisten = "127.0.0.1:9325"|'
