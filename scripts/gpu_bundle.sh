#!/usr/bin/env bash
# scripts/gpu_bundle.sh BUILD_DIR OUT_DIR
#
# Packs what scripts/gpu_check.sh --no-build needs from a build made on this machine, for a GPU
# machine that has the same torch wheel (the build links its LibTorch) but none of the Debian
# libraries dedpo links (Boost, toml++, libcurl, protobuf-lite, Cairo and what they pull in):
#   OUT_DIR/build/bin   dedpo, dedpo_make_tiny_sd, test_sd, dedpo_bench_dpo_step, dedpo_bench_allreduce
#   OUT_DIR/build/lib   libdedpo*.so and the plugins (the layout the programs look for plugins in)
#   OUT_DIR/syslib      the shared libraries these load besides LibTorch, CUDA and the C/C++ runtime
# There, with T the torch package folder (python3 -c 'import torch; print(torch.__path__[0])'):
#   LD_LIBRARY_PATH=OUT_DIR/build/lib:OUT_DIR/syslib:$T/lib:$T/../nvidia/cu13/lib:$T/../nvidia/cudnn/lib \
#     scripts/gpu_check.sh --no-build --build OUT_DIR/build --golden GOLDEN_DIR
# (the programs' run paths name this machine's folders). The C library and libstdc++ stay the other
# machine's own, at least as new as this one's (up to GLIBC_2.35, GCC 12's libstdc++): checked on
# Ubuntu 24.04 with torch 2.11.0+cu130, where the bundle is 40 MB.
set -euo pipefail
(($# == 2)) || { sed -n '2,3p' "${BASH_SOURCE[0]}" | sed 's/^# //' >&2; exit 2; }
build=$(realpath "$1")
out=$(realpath -m "$2")
programs=(dedpo dedpo_make_tiny_sd test_sd dedpo_bench_dpo_step dedpo_bench_allreduce)
for program in "${programs[@]}"; do
  [[ -x $build/bin/$program ]] || { echo "gpu_bundle: $build/bin/$program is not built" >&2; exit 1; }
done
rm -rf "$out"
mkdir -p "$out/build/bin" "$out/build/lib" "$out/syslib"
for program in "${programs[@]}"; do cp "$build/bin/$program" "$out/build/bin/"; done
# -L: the sonames travel as files (a link to a file outside the bundle would not travel).
cp -rL "$build/lib/." "$out/build/lib/"
objects=("$out"/build/bin/* "$out"/build/lib/*.so* "$out"/build/lib/dedpo/plugins/*.so)
# Everything ldd resolves outside the build and LibTorch's wheel, less the C and C++ runtime.
ldd "${objects[@]}" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u |
  grep -v -e "$build" -e '/site-packages/' -e '/cuda' \
    -e '/lib\(c\|m\|dl\|rt\|pthread\|util\|resolv\|stdc++\|gcc_s\)\.so' |
  while read -r library; do cp -L "$library" "$out/syslib/"; done
echo "gpu_bundle: $(ls "$out/syslib" | wc -l) libraries, $(du -sh "$out" | cut -f1) in $out"
