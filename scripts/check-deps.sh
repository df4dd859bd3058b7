#!/usr/bin/env bash
# Checks (and where it can, installs) what Hotwire and its tests need on a fresh machine.
# Usage: scripts/check-deps.sh [--tests]
set -euo pipefail
need_tests=${1:-}
missing=()
command -v dotnet >/dev/null || { echo "hotwire: the .NET SDK (dotnet) is not on PATH; install .NET 10 SDK" >&2; exit 1; }
command -v gcc >/dev/null || missing+=(gcc)
# The native (NativeAOT) build of hotwire links with clang and zlib, as .NET's docs ask.
command -v clang >/dev/null || missing+=(clang)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
if [ "$need_tests" = "--tests" ]; then
  command -v g++ >/dev/null || missing+=(g++)
  command -v objdump >/dev/null || missing+=(binutils)
  command -v setpriv >/dev/null || missing+=(util-linux)
  command -v spin >/dev/null || missing+=(spin)   # the SPIN model checker: verify/run, ModelCheckTests
  command -v prometheus >/dev/null || missing+=(prometheus)   # a real Prometheus server scrapes hotwire metrics: MetricsTests
  command -v tmux >/dev/null || missing+=(tmux)               # a real terminal for hotwire top: TopCommandTests
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "hotwire: installing ${missing[*]} from Debian packages" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >&2 \
      || { echo "hotwire: could not install ${missing[*]}; install them and retry" >&2; exit 1; }
  else
    echo "hotwire: missing ${missing[*]} (clang and zlib1g-dev: to build hotwire as one native executable); install them (e.g. sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
