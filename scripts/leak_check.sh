#!/usr/bin/env bash
# Runs the Rust test binaries under valgrind's leak checker and fails on a definite leak or a
# memory error: the lib tests (all 79 take about 3 minutes under valgrind; arguments filter
# them by name) and the `leaks` integration test (UNet load + forward, loaders refusing
# damaged files).
#
#   scripts/leak_check.sh                 # every lib test
#   scripts/leak_check.sh cpu:: schedule::  # only tests whose names contain these
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "leak_check: valgrind is not installed" >&2; exit 2; }
filters=("$@")

# The test executables cargo builds, from its JSON messages.
exes=$(cargo test --release --lib --test leaks --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])
')
status=0
while read -r name exe; do
    args=(--test-threads=1)
    [ "$name" = "leaks" ] || args+=("${filters[@]}")
    echo "== valgrind $exe ${args[*]}"
    # Exit code 99 only for definite leaks (and memory errors), not for what rayon's and the
    # allocator's process-lifetime globals keep ("still reachable").
    log=$(mktemp)
    valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99 \
        --show-leak-kinds=definite "$exe" "${args[@]}" >"$log" 2>&1 && rc=0 || rc=$?
    grep -E "definitely lost|indirectly lost|ERROR SUMMARY|test result|Invalid" "$log" || true
    rm -f "$log"
    [ "$rc" -eq 0 ] || { echo "leak_check: $name exited with $rc"; status=1; }
done <<< "$exes"
exit $status
