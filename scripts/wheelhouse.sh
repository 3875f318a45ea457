#!/usr/bin/env bash
# Prepare the app image's wheelhouse (docker/wheels/) on the host, where pip reaches the
# package index, so that the image build installs with the index switched off.
#
# The requirements come from pyproject.toml (docker/python/requirements.py picks them),
# the versions from requirements.lock (or, before the lock exists, a `pip freeze` of
# .venv). pip runs under Debian's own python3 and pip (python3-pip), the very
# interpreter the image installs: dependencies behind markers such as
# `python_full_version < "3.11.3"` (redis -> async-timeout) resolve for Debian's
# 3.11.2, not for a newer host Python, and the wheels' platform tags fit glibc 2.36.
# Skipped when the wheelhouse already matches the requirements and pins.
#
# Usage: scripts/wheelhouse.sh     (PYTHON=... for another CPython 3.11 on glibc >= 2.36)
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-/usr/bin/python3}
out=docker/wheels
pick=docker/python/requirements.py
log() { printf '[wheelhouse] %s\n' "$*" >&2; }

version=$("$py" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo none)
case "$version" in
  3.11.*) ;;
  *) log "$py is Python $version; the image's is Debian bookworm's 3.11: set PYTHON"; exit 1 ;;
esac
if ! "$py" -m pip --version >/dev/null 2>&1; then
  log "$py has no pip: apt-get install python3-pip (Debian's, the image's pip)"
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -f requirements.lock ]; then
  lock=requirements.lock
else
  lock=$tmp/freeze.txt
  log "no requirements.lock: pinning to a pip freeze of .venv"
  .venv/bin/python -m pip freeze --exclude-editable > "$lock"
fi
"$py" "$pick" requirements pyproject.toml > "$tmp/requirements.txt"
"$py" "$pick" constraints "$lock" > "$tmp/constraints.txt"

stamp=$( (echo "$version"; cat "$tmp/requirements.txt" "$tmp/constraints.txt") | cksum | cut -d" " -f1)
if [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ] && ls "$out"/*.whl >/dev/null 2>&1; then
  log "up to date ($(ls "$out"/*.whl | wc -l) wheels in $out)"
  exit 0
fi

# Start empty: a wheel left from older pins would be a candidate for the offline install.
rm -f "$out"/*.whl "$out"/*.tar.gz "$out/.stamp"
# `pip wheel` keeps the wheels it downloads and builds one for any sdist-only package.
"$py" -m pip wheel -qq --disable-pip-version-check --wheel-dir "$out" \
  -r "$tmp/requirements.txt" -c "$tmp/constraints.txt"
cp "$tmp/constraints.txt" "$out/constraints.txt"
echo "$stamp" > "$out/.stamp"
log "$(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1) in $out"
