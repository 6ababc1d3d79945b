#!/usr/bin/env bash
# scripts/fetch_gpu_deps.sh [DIR]
#
# Downloads the Debian -dev packages dedpo builds against besides LibTorch (Boost, toml++,
# GoogleTest, nlohmann-json, stb, with the runtime libraries they link; fmt comes with LibTorch) as
# .deb files into DIR/debs and unpacks them into the prefix DIR (DIR/usr/...), never into /. For a
# GPU machine without network or these packages: copy DIR there (DIR/debs alone is enough, about
# 12 MB; gpu_check.sh unpacks it) and run `scripts/gpu_check.sh --deps DIR`. DIR defaults to build-gpu-deps/ in the
# repo (git-ignored like every build*/ folder).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$(realpath -m "${1:-$root/build-gpu-deps}")
packages=(libboost-dev libboost1.74-dev libboost-program-options-dev libboost-program-options1.74-dev
          libboost-program-options1.74.0 libtomlplusplus-dev libtomlplusplus3 libgtest-dev libgmock-dev googletest nlohmann-json3-dev libstb-dev libstb0)
mkdir -p "$dir/debs"
if ! log=$(cd "$dir/debs" && apt-get download "${packages[@]}" 2>&1); then
  echo "$log" >&2
  echo "fetch_gpu_deps: apt-get download failed; run 'apt-get update' first" >&2
  exit 1
fi
for deb in "$dir"/debs/*.deb; do
  dpkg -x "$deb" "$dir"
done
echo "fetch_gpu_deps: $(ls "$dir"/debs/*.deb | wc -l) packages ($(du -sh "$dir/debs" | cut -f1)) in $dir/debs, unpacked into $dir/usr"
