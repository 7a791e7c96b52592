# shellcheck shell=bash
# A command shown as it can be typed (or pasted) back: each argument quoted when the shell
# needs it, and only then.
#
#   source scripts/_shown.sh
#   shown logbook record --name "bell, hand-typed"   # prints: logbook record --name 'bell, hand-typed'

quote() {
    if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"
    else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

shown() {
    local line="$1" a
    shift
    for a in "$@"; do line+=" $(quote "$a")"; done
    printf '%s' "$line"
}
