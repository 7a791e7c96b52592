# shellcheck shell=bash
# Shared by the scripts: a virtual environment with logbook installed, made from nothing.
#
#   source scripts/_venv.sh
#   venv_ensure DIR EXTRAS   # reuse DIR when pyproject.toml and EXTRAS are unchanged, else rebuild
#   venv_create DIR EXTRAS   # always rebuild from nothing
#   "$VENV_PY" ...           # the environment's Python
#
# EXTRAS is "" (the runtime alone: what `scripts/demo` needs) or "dev" (tests,
# benchmarks).  PYTHON picks the Python that builds it (default python3, 3.11+).

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
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

_venv_stamp() {  # what the environment was built from
    local extras="$1"
    { cat "$REPO_ROOT/pyproject.toml"; echo "extras=$extras"; "${PYTHON:-python3}" -V; } \
        | sha256sum | cut -d' ' -f1
}

venv_create() {
    local dir="$1" extras="$2"
    _venv_check_python
    echo "scripts: building a fresh virtual environment in ${dir#"$REPO_ROOT"/}" >&2
    rm -rf "$dir"
    "${PYTHON:-python3}" -m venv "$dir"
    local target="$REPO_ROOT"
    [ -n "$extras" ] && target="$REPO_ROOT[$extras]"
    "$dir/bin/python" -m pip install -qq -e "$target"
    _venv_stamp "$extras" > "$dir/.logbook-stamp"
    VENV_PY="$dir/bin/python"
}

venv_ensure() {
    local dir="$1" extras="$2"
    if [ -x "$dir/bin/python" ] && [ -f "$dir/.logbook-stamp" ] \
        && [ "$(cat "$dir/.logbook-stamp")" = "$(_venv_stamp "$extras")" ]; then
        VENV_PY="$dir/bin/python"
        return
    fi
    venv_create "$dir" "$extras"
}
