#!/usr/bin/env bash
# Prints the path of a free-threaded CPython 3.13 interpreter (python3.13t,
# built with --disable-gil), building it first into a cache directory when it
# is not there yet.  The path is the last and only line on stdout; everything
# else (apt, configure, make) goes to stderr.  A second run prints the path at
# once.
#
#   PY=$(bash scripts/freethreaded-python.sh)
#
# Environment:
#   PENNY_FT_CACHE  the install prefix (default ~/.cache/penny/cpython-3.13t)
#   PENNY_FT_JOBS   make -j (default 2; the build takes about 6.5 minutes on
#                   2 cores)
#
# The source is the upstream tarball (python3.13_*.orig.tar.xz) of Debian
# trixie's python3.13 source package, fetched by apt-get with its own sources
# file, lists and cache under the build directory, so the system's apt state
# is not touched.  Build dependencies that are missing (a fresh Debian machine
# with only gcc, Python and pip) are installed with apt-get (as root, as CI
# runs).  The interpreter is checked before it counts as built: the GIL must
# be off, and the modules pip and the test suite need (ssl, ctypes, zlib, ...)
# must import.
set -euo pipefail
exec 3>&1 1>&2          # stdout is for the path alone
cd "$(dirname "$0")/.."

CACHE=${PENNY_FT_CACHE:-$HOME/.cache/penny/cpython-3.13t}
JOBS=${PENNY_FT_JOBS:-2}
PY=$CACHE/bin/python3.13t
MARK=$CACHE/.penny-built         # written last: a half-built prefix is rebuilt
CHECK='import sys, ssl, ctypes, zlib, bz2, lzma, sqlite3, _decimal, readline, venv
assert not sys._is_gil_enabled(), "the GIL is on"
assert sys.version_info[:2] == (3, 13), sys.version'

if [ -e "$MARK" ] && "$PY" -c "$CHECK" 2>/dev/null; then
    echo "$PY" >&3
    exit 0
fi

# Build dependencies: the headers of the optional modules above.  Only the
# missing ones are installed.
deps="make xz-utils pkg-config libffi-dev zlib1g-dev libssl-dev libbz2-dev liblzma-dev
      libsqlite3-dev libreadline-dev libncurses-dev libgdbm-dev uuid-dev libexpat1-dev"
missing=()
for d in $deps; do
    dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "install ok installed" || missing+=("$d")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "freethreaded-python: installing build dependencies: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

build=$CACHE.build
rm -rf "$CACHE" "$build"
mkdir -p "$build/apt/lists/partial" "$build/apt/cache/archives/partial" "$build/src"
trap 'rm -rf "$build"' EXIT

# The source tarball, through apt with a private state.
echo "deb-src http://deb.debian.org/debian trixie main" >"$build/apt/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$build/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
          -o "Dir::State::Lists=$build/apt/lists" -o "Dir::Cache=$build/apt/cache"
          -o Debug::NoLocking=1 -o APT::Sandbox::User=root)  # the private dirs are root's
apt-get "${apt_opts[@]}" update -qq
(cd "$build/src" && apt-get "${apt_opts[@]}" source --download-only python3.13/trixie)
tarball=$(ls "$build"/src/python3.13_*.orig.tar.xz | head -n 1)
echo "freethreaded-python: building $(basename "$tarball") into $CACHE"
tar -xJf "$tarball" -C "$build/src"
srcdir=$(ls -d "$build"/src/Python-3.13*/ | head -n 1)

cd "$srcdir"
./configure --disable-gil --prefix="$CACHE" --with-ensurepip=install >"$build/configure.log" 2>&1 \
    || { tail -n 40 "$build/configure.log"; exit 1; }
make -j"$JOBS" >"$build/make.log" 2>&1 || { tail -n 60 "$build/make.log"; exit 1; }
make install >"$build/install.log" 2>&1 || { tail -n 60 "$build/install.log"; exit 1; }

"$PY" -c "$CHECK"
touch "$MARK"
echo "freethreaded-python: built $("$PY" -VV | head -n 1)"
echo "$PY" >&3
