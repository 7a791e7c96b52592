# shellcheck shell=bash
# Shared by scripts/test and scripts/bench: the test virtualenv and how to make it.
#
#   source scripts/_venv.sh
#   venv_create        # always fresh: remove and rebuild .venv-test, install .[dev]
#   venv_ensure        # create it only when missing
#   "$VENV_PY" ...     # run its Python
#
# LOGBOOK_TEST_VENV overrides where the virtualenv lives; PYTHON which Python
# builds it (default: python3, which must be 3.11 or newer).

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${LOGBOOK_TEST_VENV:-$REPO_ROOT/.venv-test}"
VENV_PY="$VENV_DIR/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

_venv_check_python() {
    local py="${PYTHON:-python3}"
    if ! command -v "$py" >/dev/null 2>&1; then
        echo "scripts: $py not found; set PYTHON to a Python 3.11+ interpreter" >&2
        exit 2
    fi
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "scripts: $py is $("$py" -V 2>&1); logbook needs Python 3.11 or newer (set PYTHON)" >&2
        exit 2
    fi
}

venv_create() {
    _venv_check_python
    local py="${PYTHON:-python3}"
    echo "scripts: creating a fresh virtualenv in $VENV_DIR" >&2
    rm -rf "$VENV_DIR"
    "$py" -m venv "$VENV_DIR"
    "$VENV_PY" -m pip install -qq -e "$REPO_ROOT[dev]"
    touch "$VENV_DIR/.logbook-ready"
}

venv_ensure() {
    if [ ! -x "$VENV_PY" ] || [ ! -e "$VENV_DIR/.logbook-ready" ]; then
        venv_create
    fi
}
