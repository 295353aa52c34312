#!/bin/bash
# Fixed-work measurement of edge on this machine, immune to the noise of a shared 2-core box:
# an nginx origin (bench/configs/origin-nginx.conf), edge on POLICY (a bench template such as
# bench/configs/edge.yaml), 3000 warm-up requests, then exactly N requests with h2load --h1 -c50.
#
#   [PROTO=h1|https|h2] bench/tools/fixed_work.sh POLICY PATH N [MODE]
#     PROTO h1 (default): plain HTTP/1.1; https: HTTP/1.1 over TLS 1.3 (the bench's suite and group,
#           bench/tls.py); h2: HTTP/2 over TLS with h2load -m10 (as the bench's h2 test);
#           handshakes: bench.handshakes (a full handshake per request) for N *seconds*, the count
#           of requests in DIR/run.txt (divide the callgrind total or the CPU ticks by it)
#     MODE callgrind (default): instructions, counters zeroed after warm-up; then
#                               .venv/bin/python bench/tools/callgrind_self.py DIR/cg.out.PID.1 N
#     MODE ops:                 Python bytecodes and calls per function (sys.settrace; slow)
#     MODE perf:                perf stat of edge for the N requests (cycles, instructions, faults, syscalls)
#     MODE record:              perf record (cpu-clock samples, no PMU needed) of edge: DIR/perf.data
#     MODE plain:               user and system CPU ticks of edge for the N requests
# Prints the h2load summary and DIR (kept, for the outputs). Loopback only; stops by itself.
set -u
POLICY=$(realpath "$1"); URLPATH=$2; N=$3; MODE=${4:-callgrind}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=$ROOT/.venv/bin/python
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}  # every mode measures this tree's edge (a worktree too)
D=$(mktemp -d /tmp/edge-fixed-work.XXXX)
chmod 755 "$D"; mkdir -p "$D/www"
"$PY" -c "import sys; d=sys.argv[1]; open(d+'/www/small','wb').write((b'edge bench ' * 10)[:99] + b'\n'); \
open(d+'/www/64k','wb').write(bytes(range(256)) * 256)" "$D"
# four free ports from the kernel (not a guess that could take a port another process picked)
read -r P0 O1 O2 AD < <("$PY" -c "import socket; s=[socket.socket() for _ in range(4)]; \
[x.bind(('127.0.0.1', 0)) for x in s]; print(*[x.getsockname()[1] for x in s])")
sed -e "s#\${dir}#$D#g" -e "s#\${origin_port1}#$O1#g" -e "s#\${origin_port2}#$O2#g" \
    "$ROOT/bench/configs/origin-nginx.conf" > "$D/origin.conf"
PROTO=${PROTO:-h1}
sed -e "s#\${port}#$P0#g" -e "s#\${admin_port}#$AD#g" -e "s#\${origin_port1}#$O1#g" -e "s#\${origin_port2}#$O2#g" \
    -e "s#\${access_log}#$D/access.log#g" "$POLICY" > "$D/edge.yaml"
URL=http://127.0.0.1:$P0; CLIENT=(h2load --h1)
if [ "$PROTO" != h1 ]; then
  # the run's certificate and a TLS listener on a fifth port, as bench/peers.py renders it for --https
  TP=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  (cd "$ROOT" && "$PY" -c "
import sys; from pathlib import Path; from bench import tls, peers
d = Path(sys.argv[1]); files = tls.issue(d); tls.write_client_conf(d / 'client.cnf')
p = d / 'edge.yaml'; p.write_text(peers.with_tls_listener(p.read_text(),
    {'tls_port': int(sys.argv[2]), 'tls_cert': files.cert, 'tls_key': files.key}))" "$D" "$TP")
  URL=https://127.0.0.1:$TP
  [ "$PROTO" != h2 ] && CLIENT=(env "OPENSSL_CONF=$D/client.cnf" h2load --h1) \
    || CLIENT=(env "OPENSSL_CONF=$D/client.cnf" h2load -m10)
fi
nginx -c "$D/origin.conf" -g 'daemon off;' -e "$D/origin-error.log" & NGX=$!
case $MODE in
  callgrind) valgrind --tool=callgrind --callgrind-out-file="$D/cg.out.%p" "$PY" -m edge serve -c "$D/edge.yaml" \
               > "$D/edge.out" 2>&1 & EDGE=$! ;;
  ops) EDGE_OPS_OUT=$D/ops.txt "$PY" "$ROOT/bench/tools/opcount.py" serve -c "$D/edge.yaml" > "$D/edge.out" 2>&1 &
       EDGE=$! ;;
  *) "$PY" -m edge serve -c "$D/edge.yaml" > "$D/edge.out" 2>&1 & EDGE=$! ;;
esac
for _ in $(seq 1 600); do curl -s -o /dev/null "http://127.0.0.1:$P0/small" && break; sleep 0.2; done
"${CLIENT[@]}" -n 3000 -c 50 "$URL$URLPATH" > "$D/warm.txt"
[ "$MODE" = callgrind ] && callgrind_control -z $EDGE > /dev/null
[ "$MODE" = ops ] && kill -USR1 $EDGE && sleep 0.5
read -r U0 S0 < <(awk '{print $14, $15}' /proc/$EDGE/stat)
[ "$MODE" = record ] && { perf record -e cpu-clock -F 4999 -p $EDGE -o "$D/perf.data" > /dev/null 2>&1 & PERF=$!; sleep 0.5; }
[ "$MODE" = perf ] && { perf stat -e task-clock,cycles,instructions,page-faults,context-switches,syscalls:sys_enter_mmap,syscalls:sys_enter_munmap,syscalls:sys_enter_brk \
  -p $EDGE -o "$D/perf.txt" & PERF=$!; sleep 0.5; }
if [ "$PROTO" = handshakes ]; then
  (cd "$ROOT" && env "OPENSSL_CONF=$D/client.cnf" "$PY" -m bench.handshakes --url "$URL$URLPATH" -c 50 -d "$N") \
    > "$D/run.txt"
else
  "${CLIENT[@]}" -n "$N" -c 50 "$URL$URLPATH" > "$D/run.txt"
fi
read -r U1 S1 < <(awk '{print $14, $15}' /proc/$EDGE/stat)
[ "$MODE" = record ] && { kill -INT $PERF; wait $PERF; perf report -i "$D/perf.data" --sort dso --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -12; }
[ "$MODE" = perf ] && { kill -INT $PERF; wait $PERF; grep -E "[0-9]" "$D/perf.txt"; }
[ "$MODE" = callgrind ] && callgrind_control -d $EDGE > /dev/null
[ "$MODE" = ops ] && kill -USR2 $EDGE && sleep 1
grep -E "requests:|status codes|finished in|\"requests\"" "$D/run.txt" | cut -c1-200
echo "cpu ticks: user $((U1-U0)) sys $((S1-S0)) for $N $([ "$PROTO" = handshakes ] && echo seconds || echo requests)"
kill $EDGE; wait $EDGE 2>/dev/null; kill $NGX; wait $NGX 2>/dev/null
echo "DIR=$D"
