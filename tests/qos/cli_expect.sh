#!/bin/sh
# Runs a command and checks its exit code and output, for CTest entries that
# need both (CTest's PASS_REGULAR_EXPRESSION ignores the exit code).
#   cli_expect.sh EXIT_CODE REGEX COMMAND [ARG...]
set -u
want_code=$1
want_output=$2
shift 2
output=$("$@" 2>&1)
code=$?
printf '%s\n' "$output"
if [ "$code" -ne "$want_code" ]; then
  echo "cli_expect: exit code $code, expected $want_code" >&2
  exit 1
fi
if ! printf '%s\n' "$output" | grep -Eq -- "$want_output"; then
  echo "cli_expect: output does not match: $want_output" >&2
  exit 1
fi
