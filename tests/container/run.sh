#!/usr/bin/env bash
# The container image, built from docker/Dockerfile with podman and run as a sidecar would be:
# a leaking message sent into it comes out exploded in the outbox volume, its health command
# passes, and `podman stop` (SIGTERM) ends it cleanly with exit status 0.
#
# These machines reach no container registry, so the base image is made locally: a minimal
# Debian bookworm (the host's release, so the host-built binary's glibc matches) from
# debootstrap, imported with podman. The Dockerfile's final stage is built as it is; only its
# base and the binary's origin are build arguments.
# Needs (as root): podman, runc, debootstrap, swaks, curl; run after `cargo build --release`.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
base=localhost/debian:bookworm-slim
image=localhost/bccguard:ci
name=bccguard-ci
work=$(mktemp -d /var/tmp/bccguard-ci.XXXXXX)
cleanup() {
    podman rm -f "$name" >/dev/null 2>&1 || true
    podman volume rm -f "$name-spool" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "container: FAIL: $*" >&2; podman logs "$name" 2>&1 | tail -n 20 >&2 || true; exit 1; }
pass() { echo "container: ok: $*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Podman as these machines need it: runc, no default ulimits.
mkdir -p /etc/containers
grep -q default_ulimits /etc/containers/containers.conf 2>/dev/null ||
    printf '[containers]\ndefault_ulimits = []\n' >> /etc/containers/containers.conf

if ! podman image exists "$base"; then
    mirror=$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)
    debootstrap --variant=minbase bookworm "$work/rootfs" "${mirror:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 ||
        { tail -n 20 "$work/debootstrap.log"; fail "debootstrap"; }
    tar -C "$work/rootfs" -c . | podman import - "$base" >/dev/null
    rm -rf "$work/rootfs"
fi
pass "base image $base"

[ -x "$root/target/release/bccguard" ] || fail "build target/release/bccguard first"
podman build --quiet --format docker --build-arg BINARY_FROM=prebuilt --build-arg RUNTIME_IMAGE="$base" \
    -f "$root/docker/Dockerfile" -t "$image" "$root" >/dev/null || fail "podman build"
[ "$(podman image inspect "$image" --format '{{.Config.User}}')" = "bccguard:bccguard" ] || fail "not a non-root user"
[ -n "$(podman image inspect "$image" --format '{{.Config.Healthcheck}}')" ] || fail "no HEALTHCHECK"
pass "image built from docker/Dockerfile (non-root user, HEALTHCHECK)"

smtp_port=$(free_port)
metrics_port=$(free_port)
mkdir -p "$work/outbox"
chmod 777 "$work/outbox"
podman run -d --name "$name" --runtime runc --network host \
    -v "$work/outbox:/var/lib/bccguard/outbox" -v "$name-spool:/var/lib/bccguard/spool" \
    -e BCCGUARD__SERVER__LISTEN="[\"0.0.0.0:$smtp_port\"]" \
    -e BCCGUARD__METRICS__LISTEN="\"127.0.0.1:$metrics_port\"" \
    "$image" >/dev/null 2>&1 || fail "podman run"
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$smtp_port") 2>/dev/null && break
    sleep 0.1
done

swaks --server "127.0.0.1:$smtp_port" --from app@example.com --to one@alpha.test,two@beta.test,boss@example.com \
    --header "To: one@alpha.test, two@beta.test, boss@example.com" --header "Subject: container" \
    --silent 2 || fail "swaks"
for _ in $(seq 100); do [ "$(ls "$work/outbox" | wc -l)" -ge 3 ] && break; sleep 0.1; done
[ "$(ls "$work/outbox" | wc -l)" = 3 ] || fail "expected 3 files in the outbox volume"
[ "$(grep -l '^X-Bccguard: exploded' "$work"/outbox/*.eml | wc -l)" = 2 ] || fail "two exploded copies"
grep -l '^Delivered-To: one@alpha.test' "$work"/outbox/*.eml | xargs grep -q '^To: one@alpha.test' ||
    fail "the copy for one@ is addressed to it alone"
pass "a leaking message came out exploded in the outbox volume"

podman exec "$name" bccguard health >/dev/null || fail "bccguard health in the container"
podman healthcheck run "$name" 2>/dev/null || fail "the image's HEALTHCHECK"
curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null || fail "/readyz"
metrics=$(curl -fsS "http://127.0.0.1:$metrics_port/metrics") || fail "/metrics"
grep -q '^bccguard_messages_total{action="explode",leak="true"} 1$' <<<"$metrics" ||
    fail "/metrics counts the message"
pass "health command, HEALTHCHECK, /readyz and /metrics"

podman stop -t 30 "$name" >/dev/null 2>&1
[ "$(podman inspect "$name" --format '{{.State.ExitCode}}')" = 0 ] || fail "exit status after podman stop"
grep -q '"message":"stopped"' <<<"$(podman logs "$name" 2>&1)" || fail "no clean stop in the log"
pass "podman stop (SIGTERM): clean shutdown, exit status 0"
echo "container: all passed"
