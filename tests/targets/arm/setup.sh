#!/bin/sh
# What the Arm tests run on (`make arm-env`; `make test-arm` runs it first): Debian's qemu-user, an arm64 Debian
# root with its python3 (debootstrap's first stage, its packages unpacked: nothing runs inside it at set-up) and
# the aarch64 wheels of the runtime's dependencies, at the versions this venv has, installed into a folder of
# their own by pip --platform. Everything lands in build/ (ignored). Idempotent; a failed step leaves nothing half
# made (each folder is built under a temporary name and moved into place). Never installs arm64 packages on the
# host itself (dpkg multiarch would replace the host's python3).
set -eu
cd "$(dirname "$0")/../../.."
ROOT=build/arm64-root
SITE=build/arm64-site
PY=${PY:-.venv/bin/python}
mkdir -p build

if ! command -v qemu-aarch64 >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq || true)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user debootstrap >/dev/null
  else
    echo "arm-env: needs Debian's qemu-user and debootstrap (apt-get install qemu-user debootstrap, as root)" >&2
    exit 1
  fi
fi

if [ ! -x "$ROOT/usr/bin/python3" ]; then
  # the host's own Debian release and mirror (from its apt sources), so no address is written here
  . /etc/os-release
  mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
  [ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list | head -n 1)
  rm -rf "$ROOT.tmp"
  echo "arm-env: debootstrap arm64 $VERSION_CODENAME (first stage) into $ROOT"
  debootstrap --arch=arm64 --variant=minbase --foreign --include=python3,libstdc++6 \
    "$VERSION_CODENAME" "$ROOT.tmp" "$mirror" >/dev/null
  for f in "$ROOT.tmp"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$f" "$ROOT.tmp"; done
  rm -f "$ROOT.tmp"/var/cache/apt/archives/*.deb
  mv "$ROOT.tmp" "$ROOT"
fi

if [ ! -f "$SITE/.complete" ]; then
  pins=$("$PY" -c "from importlib.metadata import version as v
print(' '.join(f'{p}=={v(p)}' for p in ('apache-tvm', 'apache-tvm-ffi', 'numpy', 'safetensors', 'tokenizers')))")
  pyver=$(qemu-aarch64 -L "$ROOT" "$ROOT/usr/bin/python3" -c "import sys; print('%d.%d' % sys.version_info[:2])")
  echo "arm-env: aarch64 wheels for Python $pyver into $SITE: $pins"
  rm -rf "$SITE.tmp"
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet --disable-pip-version-check --only-binary :all: \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --python-version "$pyver" \
    --implementation cp --target "$SITE.tmp" $pins
  touch "$SITE.tmp/.complete"
  rm -rf "$SITE"
  mv "$SITE.tmp" "$SITE"
fi
echo "arm-env: ready ($ROOT, $SITE)"
