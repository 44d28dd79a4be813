#!/usr/bin/env bash
# Runs the CUDA kernels' emulated tests (`cargo test --lib cuda`: every kernel in kernels/,
# compiled as C++ for the host and run on host threads) under gcc's sanitizers, the checks
# compute-sanitizer would make on a GPU:
#
#   * AddressSanitizer + UndefinedBehaviorSanitizer: reads and writes past a buffer (each
#     shared-memory array sits between poisoned gaps, src/cuda/emulate/host.cpp), misaligned
#     vector loads, signed index overflow, float-to-int conversions out of range (which a
#     GPU saturates and the host does not); the first error aborts the run;
#   * ThreadSanitizer: data races between a block's threads, i.e. a missing __syncthreads or
#     __syncwarp (lanes are separate threads, as under Volta's independent scheduling).
#     Only races inside the kernels count: the Rust side is not instrumented (stable Rust has
#     no sanitizers), so its own synchronisation (rayon, the test harness) shows up as noise,
#     which is filtered out here.
#
# Rebuilds the crate's lib tests twice (RDIFF_SANITIZE, build.rs) and needs g++ with its
# sanitizer runtimes (Debian's g++ brings them). Arguments replace the test filter `cuda`.
#
#   scripts/sanitize_kernels.sh                  # every emulated kernel test
#   scripts/sanitize_kernels.sh attention        # only tests whose names contain it
set -euo pipefail
cd "$(dirname "$0")/.."
filters=("$@")
[ ${#filters[@]} -gt 0 ] || filters=(cuda)

# The lib test executable built with RDIFF_SANITIZE=$1, from cargo's JSON messages.
build() {
    RDIFF_SANITIZE=$1 cargo test --release --lib --no-run --message-format=json |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])
'
}
runtime() { g++ -print-file-name="$1"; }

status=0
exe=$(build address)
echo "== AddressSanitizer + UndefinedBehaviorSanitizer: $exe ${filters[*]}"
LD_PRELOAD=$(runtime libasan.so) ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
    "$exe" "${filters[@]}" -q || status=1

exe=$(build thread)
echo "== ThreadSanitizer: $exe ${filters[*]}"
log=$(mktemp -d)
LD_PRELOAD=$(runtime libtsan.so) TSAN_OPTIONS="exitcode=0 report_signal_unsafe=0 log_path=$log/tsan" \
    "$exe" "${filters[@]}" -q --test-threads=2 || status=1
# A report counts when one of its two accesses is in kernel code: the first frame of each that
# is not the sanitizer's own (memcpy, memset), where the kernels' and the emulator's functions
# are named rd_* / rdiff_* (Rust's are _rdiff::...).
python3 - "$log" <<'PY' || status=1
import pathlib, re, sys
reports = [r for f in pathlib.Path(sys.argv[1]).glob("tsan*")
           for r in f.read_text().split("WARNING: ThreadSanitizer")[1:]]

def in_kernel(report):
    body = report.split("\n", 1)[-1].split("Thread T")[0]  # past ": data race (pid=...)"
    for access in re.split(r"\n\s*\n", body):
        if not re.match(r"\s*(previous )?(atomic )?(read|write)", access, re.I):
            continue  # the location's allocation, a mutex's creation
        frames = [f for f in re.findall(r"#\d+ ([^\n]*)", access) if "libsanitizer" not in f]
        if frames and re.search(r"\brd(iff)?_", frames[0]):
            return True
    return False

kernel = [r for r in reports if in_kernel(r)]
print(f"ThreadSanitizer: {len(reports)} reports, {len(kernel)} in kernel code")
for r in kernel[:3]:
    print("WARNING: ThreadSanitizer" + r[:3000])
sys.exit(1 if kernel else 0)
PY
rm -rf "$log"
exit $status
