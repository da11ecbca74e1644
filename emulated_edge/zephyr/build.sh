#!/usr/bin/env bash
# Builds the Zephyr edge image: emulated_edge/build/zephyr.elf (run by `make -C emulated_edge zephyr`).
#
# The Zephyr tree comes from ../shared/zephyr/zephyr-*-qemu_x86.tar.gz beside the repository (or
# $ZEPHYR_TARBALL) and is extracted into build/zephyr/; the toolchain is Debian's i686 cross gcc, and
# Zephyr's Python scripts run in .venv-zephyr (both installed by scripts/setup.sh). The image is
# cached under a key hashed from the app, the shared client, the tarball and the toolchain: when
# nothing changed this script only compares the key.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd -P)
edge=$(dirname "$here")
root=$(dirname "$edge")
build=$edge/build
out=$build/zephyr.elf

fail() { echo "zephyr build: $*" >&2; exit 1; }

tarball=${ZEPHYR_TARBALL:-}
if [ -z "$tarball" ]; then
  for t in "$root"/../shared/zephyr/zephyr-*-qemu_x86.tar.gz; do tarball=$t; done
fi
[ -n "$tarball" ] && [ -f "$tarball" ] ||
  fail "the Zephyr tree is missing: expected ../shared/zephyr/zephyr-*-qemu_x86.tar.gz beside the repository ($(cd "$root/.." && pwd -P)/shared/zephyr/), or set ZEPHYR_TARBALL"
cross=${CROSS_COMPILE:-/usr/bin/i686-linux-gnu-}
python=${ZEPHYR_PYTHON:-$root/.venv-zephyr/bin/python}
for tool in cmake ninja dtc "${cross}gcc"; do
  command -v "$tool" >/dev/null || fail "$tool not found (run scripts/setup.sh: cmake ninja-build device-tree-compiler gcc-i686-linux-gnu)"
done
"$python" -c "import elftools, yaml, pykwalify, packaging" 2>/dev/null ||
  fail "$python lacks Zephyr's script dependencies (run scripts/setup.sh, which creates .venv-zephyr)"

key=$(
  {
    sha256sum "$tarball" | cut -d' ' -f1
    "${cross}gcc" --version | head -1
    cmake --version | head -1
    cd "$edge" && find zephyr guest -type f \( -name '*.c' -o -name '*.h' -o -name '*.txt' -o -name '*.conf' -o -name '*.sh' \) \
      -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
)
if [ -f "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
  exit 0
fi

tree=$build/zephyr
stamp=$(sha256sum "$tarball" | cut -c1-16)
if [ "$(cat "$tree/.tarball" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$tree"
  mkdir -p "$tree"
  tar xzf "$tarball" -C "$tree"
  echo "$stamp" >"$tree/.tarball"
fi

export ZEPHYR_BASE=$tree/zephyr XDG_CACHE_HOME=$tree/cache ZEPHYR_TOOLCHAIN_VARIANT=cross-compile CROSS_COMPILE=$cross
app=$build/zephyr-app
log=$build/zephyr-build.log
if ! { cmake -B "$app" -S "$here" -GNinja -DBOARD=qemu_x86 -DPython3_EXECUTABLE="$python" \
  -DBUILD_VERSION="fedkeeper-edge-$key" && ninja -C "$app"; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  fail "failed; full log in $log"
fi
# Copy under a temporary name and rename, so a concurrent reader never sees a half-written image.
cp "$app/zephyr/zephyr.elf" "$out.tmp"
mv "$out.tmp" "$out"
echo "$key" >"$out.key"
