#!/usr/bin/env bash
# The Debian package, installed and run as a mail daemon would be: build it from the release
# binary (packaging/deb/build.sh), install it with dpkg -i, check the bccguard user, the paths,
# the conffile, the man pages, the completion scripts and the systemd unit (systemd-analyze
# verify), run the installed binary as the bccguard user with the installed configuration
# (pointed at an smtp-sink upstream through environment overrides, as `systemctl edit` would)
# and send a leaking message through it, reload it as the unit does, upgrade over an edited
# conffile, then remove and purge: purge leaves a spool that still holds mail and nothing
# else; an empty spool goes too.
#
# Run as root after `cargo build --release`, on a machine without a bccguard package, user or
# spool (it refuses otherwise, and leaves none behind). Needs: dpkg, adduser, systemd (for
# systemd-analyze), man-db, smtp-sink (postfix), swaks, curl, python3, util-linux (setpriv).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
spool=/var/spool/bccguard
conffile=/etc/bccguard/bccguard.toml
unit=/usr/lib/systemd/system/bccguard.service
work=$(mktemp -d /var/tmp/bccguard-package.XXXXXX)
chmod 0755 "$work"
sink_pid=""
relay_pid=""

pass() { echo "package: ok: $*"; }
fail() {
    echo "package: FAIL: $*" >&2
    tail -n 20 "$work/relay.log" 2>/dev/null >&2 || true
    exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # description, command...
    local what=$1
    shift
    for _ in $(seq 150); do
        "$@" && return 0
        sleep 0.1
    done
    fail "timed out waiting for $what"
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# With systemd running, postinst starts (or restarts) the service on the package defaults:
# stop it, so that the relay run below has the spool to itself.
stop_service() { if [ -d /run/systemd/system ]; then systemctl stop bccguard; fi; }
installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' bccguard 2>/dev/null)" = installed ]; }
known() { dpkg-query -W -f='${db:Status-Status}' bccguard >/dev/null 2>&1 && [ "$(dpkg-query -W -f='${db:Status-Status}' bccguard)" != not-installed ]; }
cleanup() {
    [ -n "$relay_pid" ] && kill -KILL "$relay_pid" 2>/dev/null
    [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null
    if known; then dpkg --purge bccguard >/dev/null 2>&1 || true; fi
    rm -rf "$spool"
    if getent passwd bccguard >/dev/null; then userdel bccguard 2>/dev/null || true; fi
    if getent group bccguard >/dev/null; then groupdel bccguard 2>/dev/null || true; fi
    rm -rf "$work"
}

[ "$(id -u)" = 0 ] || fail "run as root"
# Never touch a bccguard someone else installed.
if known || getent passwd bccguard >/dev/null || getent group bccguard >/dev/null || [ -e "$spool" ] ||
    [ -e /etc/bccguard ]; then
    echo "package: FAIL: this machine already has a bccguard package, user, group, spool or /etc/bccguard" >&2
    rm -rf "$work"
    exit 1
fi
trap cleanup EXIT

# 1. Build the package and look inside.
deb=$("$root/packaging/deb/build.sh" "$root/target/release/bccguard" "$work/out")
dpkg-deb --contents "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$work/contents"
for path in /usr/bin/bccguard "$conffile" "$unit" /usr/share/man/man8/bccguard.8.gz \
    /usr/share/man/man8/bccguard-serve.8.gz /usr/share/man/man8/bccguard-queue-list.8.gz \
    /usr/share/bash-completion/completions/bccguard /usr/share/zsh/vendor-completions/_bccguard \
    /usr/share/fish/vendor_completions.d/bccguard.fish /usr/share/doc/bccguard/copyright \
    /usr/share/doc/bccguard/examples/prometheus/bccguard-rules.yaml; do
    grep -qx "$path" "$work/contents" || fail "$path is not in the package"
done
grep -q "^$spool" "$work/contents" && fail "the spool is made by postinst, not shipped"
[ "$(dpkg-deb -f "$deb" Package)" = bccguard ] || fail "control: Package"
grep -q 'adduser' <<<"$(dpkg-deb -f "$deb" Depends)" || fail "control: Depends adduser"
grep -qx "$conffile" <<<"$(dpkg-deb -I "$deb" conffiles)" || fail "the configuration is not a conffile"
pass "built $(basename "$deb"): binary, conffile, unit, man pages, completions, docs"

# 2. Install: the user, the spool, the paths.
dpkg -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -i"; }
installed || fail "not installed"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd bccguard) || fail "no bccguard user"
[ "$uid" -lt 1000 ] || fail "bccguard is not a system user (uid $uid)"
[ "$(getent group bccguard | cut -d: -f3)" = "$gid" ] || fail "bccguard's primary group is not bccguard"
[ "$home" = "$spool" ] || fail "bccguard's home is $home"
case "$shell" in */nologin | */false) ;; *) fail "bccguard can log in ($shell)" ;; esac
[ "$(stat -c '%U:%G %a' "$spool")" = "bccguard:bccguard 750" ] || fail "spool: $(stat -c '%U:%G %a' "$spool")"
[ "$(stat -c '%U:%G %a' /usr/bin/bccguard)" = "root:root 755" ] || fail "/usr/bin/bccguard"
[ "$(stat -c '%U:%G %a' "$conffile")" = "root:root 644" ] || fail "$conffile"
grep -q "^ $conffile " <<<"$(dpkg-query -W -f='${Conffiles}\n' bccguard)" || fail "dpkg does not list the conffile"
pass "installed: system user bccguard (uid $uid, no login, home $spool), spool bccguard:bccguard 0750"

# 3. The configuration: valid, the package defaults, found without --config.
grep -qx "$conffile: configuration is valid" <<<"$(cd / && bccguard check-config)" ||
    fail "check-config without --config does not read $conffile"
grep -qx "dir = \"$spool\"" "$conffile" || fail "spool.dir in the conffile"
grep -qx 'host = "smtp.example.com"' "$conffile" || fail "upstream.host in the conffile"
grep -qx 'listen = "127.0.0.1:9325"' "$conffile" || fail "metrics.listen in the conffile"
grep -q '^# Package default' "$conffile" || fail "the package defaults are not explained"
pass "conffile: valid, package defaults explained, read by default"

# 4. Manual pages and completion scripts. A machine whose dpkg excludes /usr/share/man (some
#    container images do) gets the package's pages from the build's staging tree instead.
mandir=/usr/share/man/man8
if [ ! -e "$mandir/bccguard.8.gz" ]; then
    echo "package: note: dpkg excludes the man pages here; checking the package's own copies"
    export MANPATH="$work/out/stage/usr/share/man"
    mandir=$MANPATH/man8
fi
man -w bccguard >/dev/null || fail "man bccguard finds no page"
pages=0
for page in "$mandir"/bccguard*.8.gz; do
    errors=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null)
    [ -z "$errors" ] || fail "man -l $page: $errors"
    grep -q '^NAME' <<<"$(MANWIDTH=80 man -l "$page" 2>/dev/null)" || fail "man -l $page renders no NAME"
    pages=$((pages + 1))
done
[ "$pages" -ge 10 ] || fail "only $pages man pages"
grep -q 'bccguard-queue(8)' <<<"$(MANWIDTH=80 man -l "$mandir/bccguard.8.gz")" || fail "bccguard(8) names the subcommand pages"
bash -n /usr/share/bash-completion/completions/bccguard || fail "bash -n on the completion script"
bash -c 'source /usr/share/bash-completion/completions/bccguard && complete -p bccguard' >/dev/null ||
    fail "the bash completion does not register"
if command -v zsh >/dev/null; then zsh -n /usr/share/zsh/vendor-completions/_bccguard || fail "zsh -n"; fi
if command -v fish >/dev/null; then fish -n /usr/share/fish/vendor_completions.d/bccguard.fish || fail "fish -n"; fi
pass "$pages man pages render (man -l), the bash completion loads (bash -n, complete -p)"

# 5. The systemd unit.
systemd-analyze verify "$unit" >"$work/verify.log" 2>&1 || { cat "$work/verify.log"; fail "systemd-analyze verify"; }
[ -s "$work/verify.log" ] && { cat "$work/verify.log"; fail "systemd-analyze verify has warnings"; }
grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$unit" || fail "ExecReload does not send SIGHUP"
grep -qx 'Restart=on-failure' "$unit" || fail "Restart="
grep -qx 'CapabilityBoundingSet=' "$unit" || fail "CapabilityBoundingSet is not empty"
grep -qx "ReadWritePaths=$spool" "$unit" || fail "ReadWritePaths"
if [ -d /run/systemd/system ]; then
    # With systemd running, postinst started the service on the package defaults: stop it, so
    # the run below has the spool to itself.
    systemctl is-active --quiet bccguard || fail "the service did not start on install"
    stop_service
    pass "systemd runs here: bccguard.service was started by postinst (now stopped)"
fi
pass "systemd-analyze verify $unit: no warnings"

# 6. Run the installed binary as the bccguard user with the installed configuration, an
#    smtp-sink as the upstream (environment overrides), and send a leaking message.
sink_port=$(free_port)
smtp_port=$(free_port)
metrics_port=$(free_port)
mkdir -p "$work/dump"
chown nobody "$work/dump"
smtp-sink -u nobody -d "$work/dump/%H%M%S." "127.0.0.1:$sink_port" 100 &
sink_pid=$!
wait_for "smtp-sink" listening "$sink_port"
relay_env=(BCCGUARD__UPSTREAM__HOST=127.0.0.1 BCCGUARD__UPSTREAM__PORT="$sink_port" BCCGUARD__UPSTREAM__TLS=none
    BCCGUARD__UPSTREAM__TIMEOUT=5s BCCGUARD__SERVER__LISTEN="[\"127.0.0.1:$smtp_port\"]"
    BCCGUARD__METRICS__LISTEN="127.0.0.1:$metrics_port" BCCGUARD__SPOOL__RETRY='["1h"]')
as_bccguard() { (cd "$spool" && env "${relay_env[@]}" setpriv --reuid=bccguard --regid=bccguard --init-groups -- "$@"); }
# As the unit runs it: in the spool, as bccguard (setpriv execs: $! is the relay itself).
cd "$spool"
env "${relay_env[@]}" setpriv --reuid=bccguard --regid=bccguard --init-groups -- \
    /usr/bin/bccguard serve --config "$conffile" >"$work/relay.log" 2>&1 &
relay_pid=$!
cd "$work"
wait_for "bccguard to listen" listening "$smtp_port"
[ "$(stat -c %U "/proc/$relay_pid")" = bccguard ] || fail "the relay does not run as bccguard"

swaks --server "127.0.0.1:$smtp_port" --from app@example.com --to one@alpha.test,two@beta.test,boss@example.com \
    --header "To: one@alpha.test, two@beta.test, boss@example.com" --header "Subject: packaged" \
    --body "sent through the installed package" --silent 2 || fail "swaks"
wait_for "three transactions at the sink" bash -c "[ \$(ls '$work/dump' | wc -l) = 3 ]"
[ "$(grep -l '^X-Bccguard: exploded' "$work"/dump/* | wc -l)" = 2 ] || fail "two exploded copies"
one=$(grep -l '^X-Bccguard: exploded' "$work"/dump/* | xargs grep -l '^To: one@alpha.test' | sed -n 1p)
[ -n "$one" ] || fail "no copy addressed to one@alpha.test alone"
grep -q 'two@beta.test' "$one" && fail "the copy for one@ shows two@"
pass "a leaking message through the installed relay: 2 exploded copies and the original at the upstream"

leaks=$(curl -fsS "http://127.0.0.1:$metrics_port/metrics" | grep -c '^bccguard_messages_total{action="explode",leak="true"} 1$' || true)
[ "$leaks" = 1 ] || fail "/metrics does not count the leak"
curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null || fail "/readyz"
stray=$(find "$spool" ! -user bccguard)
[ -z "$stray" ] || fail "files in the spool not owned by bccguard: $stray"
grep -q 'The queue is empty.' <<<"$(cd / && bccguard queue list)" || fail "queue list (as root, no --config) on the running relay"
pass "/metrics counts it, /readyz, the spool is bccguard's, queue list reaches the relay"

# 7. Reload as the unit does: its ExecReload lines, as the bccguard user.
sed -n 's/^ExecReload=//p' "$unit" | sed "s/\$MAINPID/$relay_pid/" >"$work/reload"
[ "$(wc -l <"$work/reload")" = 2 ] || fail "expected two ExecReload lines"
while read -r -a command; do
    as_bccguard "${command[@]}" >/dev/null || fail "ExecReload: ${command[*]}"
done <"$work/reload"
wait_for "the reload" grep -q 'configuration reloaded' "$work/relay.log"
pass "systemctl reload's commands: check-config, then SIGHUP (configuration reloaded)"

# 8. Upgrade (reinstall) over an edited conffile: the edit stays, nobody is asked.
echo '# edited by the administrator' >>"$conffile"
dpkg -i "$deb" >"$work/dpkg.log" 2>&1 </dev/null || { cat "$work/dpkg.log"; fail "dpkg -i over an edited conffile"; }
stop_service
tail -n 1 "$conffile" | grep -qx '# edited by the administrator' || fail "the conffile edit was lost"
[ "$(stat -c '%U:%G %a' "$spool")" = "bccguard:bccguard 750" ] || fail "spool after upgrade"
pass "upgrade: the edited conffile is kept, the user and spool reused"

# 9. A message that cannot be delivered stays in the spool; SIGTERM stops the relay cleanly.
kill "$sink_pid"
wait "$sink_pid" 2>/dev/null || true
sink_pid=""
swaks --server "127.0.0.1:$smtp_port" --from app@example.com --to late@gamma.test --header "Subject: waiting" \
    --silent 2 || fail "swaks (second message)"
wait_for "a deferral" grep -q 'deferred' "$work/relay.log"
kill -TERM "$relay_pid"
wait "$relay_pid" || fail "exit status after SIGTERM"
relay_pid=""
queued=$(find "$spool/queue" -name '*.msg' | wc -l)
[ "$queued" = 1 ] || fail "expected one queued message, found $queued"
pass "an undeliverable message waits in the spool; SIGTERM: exit status 0"

# 10. Remove, then purge: purge keeps a spool holding mail, and only that.
dpkg -r bccguard >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -r"; }
[ -e /usr/bin/bccguard ] && fail "dpkg -r left the binary"
[ -f "$conffile" ] || fail "dpkg -r removed the conffile (only purge does)"
dpkg --purge bccguard >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg --purge"; }
grep -q "$spool still holds messages; kept" "$work/dpkg.log" || fail "purge did not say it kept the spool"
[ -e /etc/bccguard ] && fail "purge left /etc/bccguard"
[ -e "$unit" ] && fail "purge left the unit"
for gone in lock control.sock; do [ -e "$spool/$gone" ] && fail "purge left $spool/$gone"; done
[ "$(find "$spool/queue" -name '*.msg' | wc -l)" = 1 ] || fail "purge lost the queued message"
owned=$(find /etc /usr /var /run /tmp -xdev -user bccguard 2>/dev/null | grep -v "^$spool" || true)
[ -z "$owned" ] || fail "files of the bccguard user outside the spool: $owned"
getent passwd bccguard >/dev/null || fail "purge removed the user (its spool is still there)"
pass "purge: binary, conffile, unit, lock and socket gone; the spool with its message kept, and the user"

# 11. Reinstall on the kept spool and user, then purge with an empty spool: it goes.
dpkg -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -i on a kept spool"; }
stop_service
[ "$(find "$spool/queue" -name '*.msg' | wc -l)" = 1 ] || fail "reinstalling touched the queued message"
rm -f "$spool"/queue/*
dpkg --purge bccguard >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg --purge (empty spool)"; }
[ -e "$spool" ] && fail "purge left an empty spool"
pass "reinstall keeps the spool; purge with an empty spool removes it"

echo "package: all passed"
