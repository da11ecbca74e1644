#!/usr/bin/env bash
# Refresh requirements.lock: exact versions of every package setup.sh and CI install.
# Run after changing dependencies in pyproject.toml, then re-run scripts/setup.sh and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  python3 -m pip install -q --user uv
  uv=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts", "posix_user"))')/uv
fi
"$uv" pip compile pyproject.toml --extra tf --extra gcp --extra aws --extra hosts --extra dev \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header -q -o requirements.lock
echo "requirements.lock refreshed ($(grep -c '^[a-zA-Z]' requirements.lock) packages)"
