#!/usr/bin/env bash
# User-space instructions the server executes per acknowledged HTTP write, counted by valgrind's
# callgrind: the same count for the same binary and requests whatever else the machine is doing,
# so a change to the write path is measured without this machine's timing noise (docs/
# BENCHMARKS.md, "CPU per HTTP write"). The kernel's share (sockets, scheduler) is not counted.
#
# Usage: bash bench/scripts/instructions-per-write.sh [writes] [connections]
# STATELINE_BIN=<path> measures another build (or target/release/examples/http_ceiling, the
# bare HTTP stack). The server runs `serve --memory`; the writes are the write benchmark's
# (`POST /bench/w<c>` with its 41-byte JSON body), sent one at a time over `connections`
# keep-alive connections in turn. 200 warm-up writes come first; callgrind's counters are
# zeroed after them, so start-up and first-touch costs are left out. WRITE_PATH='/bench/p{c}/*'
# measures pushes instead (`{c}` is the connection's number). READS=1 measures reads: the
# warm-up writes each connection's key, then every measured request is a `GET` of it.
# Needs valgrind (callgrind_control comes with it) and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
writes=${1:-2000}
conns=${2:-4}
bin=${STATELINE_BIN:-target/release/stateline}
[ -x "$bin" ] || { echo "build first: cargo build --release -p stateline-server" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
port=$((20000 + RANDOM % 20000))
out=$(mktemp -d)
STATELINE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" \
  "$bin" serve --memory --addr "127.0.0.1:$port" >"$out/log" 2>&1 &
vg=$!
trap 'kill "$vg" 2>/dev/null || true; wait "$vg" 2>/dev/null || true; if [ -n "${KEEP:-}" ]; then echo "callgrind output kept in $out"; else rm -rf "$out"; fi' EXIT
write_path='/bench/w{c}'
[ -n "${WRITE_PATH:-}" ] && write_path=$WRITE_PATH
python3 - "$port" "$writes" "$conns" "$vg" "$write_path" "${READS:-}" <<'EOF'
import http.client, subprocess, sys, time
port, writes, conns, pid = (int(a) for a in sys.argv[1:5])
path = sys.argv[5]
reads = sys.argv[6] == "1"
body = b'{"m":"a small value of about forty bytes"}'
# Under callgrind the server starts in seconds, not milliseconds: wait for it (bounded).
deadline = time.time() + 120
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/_health")
        c.getresponse().read()
        c.close()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("the server did not answer /_health within 120 s")
        time.sleep(0.5)
cs = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(conns)]
def run(n, read=False):
    for i in range(n):
        c = i % conns
        if read:
            cs[c].request("GET", path.replace("{c}", str(c)))
        else:
            cs[c].request("POST", path.replace("{c}", str(c)), body, {"Content-Type": "application/json"})
        r = cs[c].getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"write {i}: status {r.status}")
run(200)
if reads:
    run(200, read=True)
# Zero the counters after the warm-up, then dump what the measured writes cost.
subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
run(writes, read=reads)
subprocess.run(["callgrind_control", "--dump=measured", str(pid)], check=True, capture_output=True)
EOF
dump=$(grep -l '^desc: Trigger: dump measured' "$out"/cg.* | head -1)
[ -n "$dump" ] || { echo "callgrind wrote no dump of the measured writes ($out)" >&2; exit 1; }
total=$(grep -m1 '^summary:\|^totals:' "$dump" | awk '{print $2}')
what=write; [ "${READS:-}" = 1 ] && what=read
awk -v t="$total" -v n="$writes" -v b="$(basename "$bin")" -v w="$what" 'BEGIN {
  printf "%s: %d %ss, %.0f instructions per %s (user space, every thread)\n", b, n, w, t / n, w }'
