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

venv_requirements() {  # what pyproject.toml asks for (the runtime, and EXTRAS), one line
    local extras="$1"
    "${PYTHON:-python3}" - "$REPO_ROOT/pyproject.toml" "$extras" <<'PY'
import re, sys, tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
wanted = list(project["dependencies"])
for extra in filter(None, sys.argv[2].split(",")):
    wanted += project["optional-dependencies"][extra]
names = dict.fromkeys(re.split(r"[\s<>=!~;\[]", w, maxsplit=1)[0] for w in wanted)
print(", ".join(names))
PY
}

venv_create() {
    local dir="$1" extras="$2" started=$SECONDS
    _venv_check_python
    local shown_dir="${dir#"$REPO_ROOT"/}" what="haiqu-logbook${extras:+[$extras]}"
    echo "scripts: building a fresh virtual environment in $shown_dir ($("${PYTHON:-python3}" -V 2>&1))" >&2
    rm -rf "$dir"
    "${PYTHON:-python3}" -m venv "$dir"
    local target="$REPO_ROOT"
    [ -n "$extras" ] && target="$REPO_ROOT[$extras]"
    echo "scripts: installing $what from this checkout, with: $(venv_requirements "$extras")" >&2
    [ -n "$extras" ] && echo "scripts: (the first time takes minutes: qiskit and its kin are most of it)" >&2
    "$dir/bin/python" -m pip install -qq -e "$target"
    _venv_stamp "$extras" > "$dir/.logbook-stamp"
    local count size
    count=$("$dir/bin/python" -m pip list --format freeze 2>/dev/null | wc -l)
    size=$(du -sh "$dir" 2>/dev/null | cut -f1)
    echo "scripts: $shown_dir ready: $count packages, $size, in $((SECONDS - started)) s" >&2
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
