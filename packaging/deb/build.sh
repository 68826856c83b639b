#!/usr/bin/env bash
# Build the Debian package from a release binary: stage the tree, then `dpkg-deb --build`.
#
#   packaging/deb/build.sh [BINARY] [OUTDIR]
#
# BINARY defaults to target/release/bccguard (run `cargo build --release` first), OUTDIR to
# target/debian; prints the path of the .deb. Needs dpkg-deb, gzip, objdump and strip
# (binutils, which the Rust toolchain's linker brings).
#
# Why not cargo-deb: this is a handful of files whose every line we want to read (the
# maintainer scripts decide about the user, the spool and purging), dpkg-deb is part of dpkg
# on every Debian machine, and CI would otherwise compile cargo-deb from crates.io on each
# fresh machine. The man pages and completion scripts come from the binary being packaged.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/packaging/deb"
binary=${1:-$root/target/release/bccguard}
outdir=${2:-$root/target/debian}
[ -x "$binary" ] || { echo "build.sh: no binary at $binary (cargo build --release)" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
revision=${DEB_REVISION:-1}
arch=$(dpkg --print-architecture)
stage="$outdir/stage"
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"

# Files, as a mail daemon lays them out.
install -D -m 0755 "$binary" "$stage/usr/bin/bccguard"
strip --strip-unneeded "$stage/usr/bin/bccguard"
install -d -m 0755 "$stage/etc/bccguard"
"$here/conffile.sh" <"$root/config/bccguard.toml" >"$stage/etc/bccguard/bccguard.toml"
chmod 0644 "$stage/etc/bccguard/bccguard.toml"
install -D -m 0644 "$here/bccguard.service" "$stage/usr/lib/systemd/system/bccguard.service"
"$binary" man-pages "$stage/usr/share/man/man8" >/dev/null
chmod 0644 "$stage"/usr/share/man/man8/*.8
gzip -9n "$stage"/usr/share/man/man8/*.8
install -d -m 0755 "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
    "$stage/usr/share/fish/vendor_completions.d"
"$binary" completions bash >"$stage/usr/share/bash-completion/completions/bccguard"
"$binary" completions zsh >"$stage/usr/share/zsh/vendor-completions/_bccguard"
"$binary" completions fish >"$stage/usr/share/fish/vendor_completions.d/bccguard.fish"
doc="$stage/usr/share/doc/bccguard"
install -D -m 0644 "$here/copyright" "$doc/copyright"
gzip -9n <"$root/README.md" >"$doc/README.md.gz"
# Debian wants a changelog in every binary package: this one points at the repository's history.
when=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}")
printf '%s\n' "bccguard ($version-$revision) unstable; urgency=medium" "" \
    "  * Built from the bccguard repository with packaging/deb/build.sh; its git history is the" \
    "    changelog." "" " -- bccguard developers <postmaster@bccguard.localdomain>  $when" |
    gzip -9n >"$doc/changelog.Debian.gz"
install -D -m 0644 "$root/docker/prometheus/bccguard-rules.yaml" "$doc/examples/prometheus/bccguard-rules.yaml"
install -D -m 0644 "$root/docker/grafana/bccguard.json" "$doc/examples/grafana/bccguard.json"
find "$stage" -type d -exec chmod 0755 {} +
find "$stage/usr/share" -type f -exec chmod 0644 {} +

# Control files. The C library the binary needs: the newest GLIBC_ symbol version it uses.
glibc=$(objdump -T "$stage/usr/bin/bccguard" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version-$revision/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    -e "s/@DEPENDS@/libc6 (>= $glibc), libgcc-s1, adduser/" "$here/control.in" >"$stage/DEBIAN/control"
echo /etc/bccguard/bccguard.toml >"$stage/DEBIAN/conffiles"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$stage/DEBIAN/"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
    >"$stage/DEBIAN/md5sums"

deb="$outdir/bccguard_${version}-${revision}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
