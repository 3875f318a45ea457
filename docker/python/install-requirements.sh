#!/bin/sh
# Install the app's requirements into /opt/venv during the image build.
# Offline when the wheelhouse (/wheels, from scripts/wheelhouse.sh) has wheels:
# pip never touches an index then. Otherwise from the index, pinned by
# requirements.lock when the build context has one. REQUIRE_WHEELHOUSE=1 turns an
# empty wheelhouse into an error instead of a network install.
set -eu
src=/build
python3 -m venv /opt/venv
python3 "$src/requirements.py" requirements "$src/pyproject.toml" > "$src/requirements.txt"
set -- -r "$src/requirements.txt"
if ls /wheels/*.whl >/dev/null 2>&1; then
    echo "install-requirements: offline, from the wheelhouse ($(ls /wheels/*.whl | wc -l) wheels)"
    set -- --no-index --find-links /wheels "$@"
elif [ "${REQUIRE_WHEELHOUSE:-0}" = 1 ]; then
    echo "install-requirements: docker/wheels/ is empty and REQUIRE_WHEELHOUSE=1: run scripts/wheelhouse.sh" >&2
    exit 1
else
    echo "install-requirements: no wheelhouse, installing from the package index"
fi
if [ -f /wheels/constraints.txt ]; then
    cp /wheels/constraints.txt "$src/constraints.txt"
    set -- "$@" -c "$src/constraints.txt"
elif [ -f "$src/requirements.lock" ]; then
    python3 "$src/requirements.py" constraints "$src/requirements.lock" > "$src/constraints.txt"
    set -- "$@" -c "$src/constraints.txt"
fi
/opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-compile "$@"
/opt/venv/bin/python -m compileall -q /opt/venv/lib
