#!/usr/bin/env bash
# vendor/rumqttd is rumqttd 0.20.0 as released on crates.io with vendor/rumqttd.patch
# applied, and nothing else: download the release, check it against the checksum
# crates.io's index lists for it, apply the patch, compare the trees. Run by .ci/run.
#
# After changing vendor/rumqttd, write the patch again:
#   here=$PWD; cd "$(mktemp -d)" && curl -sfL https://static.crates.io/crates/rumqttd/rumqttd-0.20.0.crate | tar xz
#   diff -ruN -x .cargo-ok -x Cargo.lock rumqttd-0.20.0 "$here/vendor/rumqttd" |
#     sed -E "s#^--- rumqttd-0.20.0/([^\t]*).*#--- a/\1#; s#^\+\+\+ $here/vendor/rumqttd/([^\t]*).*#+++ b/\1#" \
#     >"$here/vendor/rumqttd.patch"
set -euo pipefail
cd "$(dirname "$0")"
sha256=32399b9dee6e96350790223dd7356bf7f8f15009d7e58e20f4093f1137213e16
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -sfL --retry 3 https://static.crates.io/crates/rumqttd/rumqttd-0.20.0.crate -o "$work/rumqttd.crate"
echo "$sha256  $work/rumqttd.crate" | sha256sum --check --quiet
tar xzf "$work/rumqttd.crate" -C "$work"
here=$PWD
(cd "$work/rumqttd-0.20.0" && git apply -p1 --whitespace=nowarn "$here/rumqttd.patch")
if diff -r -x .cargo-ok -x Cargo.lock -x target "$work/rumqttd-0.20.0" rumqttd; then
    echo "vendor/rumqttd is rumqttd 0.20.0 with vendor/rumqttd.patch"
else
    echo "vendor/rumqttd differs from rumqttd 0.20.0 with vendor/rumqttd.patch: write the patch again (see the top of this script)" >&2
    exit 1
fi
