#!/bin/bash
# Fixed-work measurement of edge on this machine, immune to the noise of a shared 2-core box:
# an nginx origin (bench/configs/origin-nginx.conf), edge on POLICY (a bench template such as
# bench/configs/edge.yaml), 3000 warm-up requests, then exactly N requests with h2load --h1 -c50.
#
#   bench/tools/fixed_work.sh POLICY PATH N [MODE]
#     MODE callgrind (default): instructions, counters zeroed after warm-up; then
#                               .venv/bin/python bench/tools/callgrind_self.py DIR/cg.out.PID.1 N
#     MODE ops:                 Python bytecodes and calls per function (sys.settrace; slow)
#     MODE plain:               user and system CPU ticks of edge for the N requests
# Prints the h2load summary and DIR (kept, for the outputs). Loopback only; stops by itself.
set -u
POLICY=$(realpath "$1"); URLPATH=$2; N=$3; MODE=${4:-callgrind}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=$ROOT/.venv/bin/python
D=$(mktemp -d /tmp/edge-fixed-work.XXXX)
chmod 755 "$D"; mkdir -p "$D/www"
"$PY" -c "import sys; d=sys.argv[1]; open(d+'/www/small','wb').write((b'edge bench ' * 10)[:99] + b'\n'); \
open(d+'/www/64k','wb').write(bytes(range(256)) * 256)" "$D"
# four free ports from the kernel (not a guess that could take a port another process picked)
read -r P0 O1 O2 AD < <("$PY" -c "import socket; s=[socket.socket() for _ in range(4)]; \
[x.bind(('127.0.0.1', 0)) for x in s]; print(*[x.getsockname()[1] for x in s])")
sed -e "s#\${dir}#$D#g" -e "s#\${origin_port1}#$O1#g" -e "s#\${origin_port2}#$O2#g" \
    "$ROOT/bench/configs/origin-nginx.conf" > "$D/origin.conf"
sed -e "s#\${port}#$P0#g" -e "s#\${admin_port}#$AD#g" -e "s#\${origin_port1}#$O1#g" -e "s#\${origin_port2}#$O2#g" \
    -e "s#\${access_log}#$D/access.log#g" "$POLICY" > "$D/edge.yaml"
nginx -c "$D/origin.conf" -g 'daemon off;' -e "$D/origin-error.log" & NGX=$!
case $MODE in
  callgrind) valgrind --tool=callgrind --callgrind-out-file="$D/cg.out.%p" "$PY" -m edge serve -c "$D/edge.yaml" \
               > "$D/edge.out" 2>&1 & EDGE=$! ;;
  ops) EDGE_OPS_OUT=$D/ops.txt "$PY" "$ROOT/bench/tools/opcount.py" serve -c "$D/edge.yaml" > "$D/edge.out" 2>&1 &
       EDGE=$! ;;
  *) "$PY" -m edge serve -c "$D/edge.yaml" > "$D/edge.out" 2>&1 & EDGE=$! ;;
esac
for _ in $(seq 1 600); do curl -s -o /dev/null "http://127.0.0.1:$P0/small" && break; sleep 0.2; done
h2load --h1 -n 3000 -c 50 "http://127.0.0.1:$P0$URLPATH" > "$D/warm.txt"
[ "$MODE" = callgrind ] && callgrind_control -z $EDGE > /dev/null
[ "$MODE" = ops ] && kill -USR1 $EDGE && sleep 0.5
read -r U0 S0 < <(awk '{print $14, $15}' /proc/$EDGE/stat)
h2load --h1 -n "$N" -c 50 "http://127.0.0.1:$P0$URLPATH" > "$D/run.txt"
read -r U1 S1 < <(awk '{print $14, $15}' /proc/$EDGE/stat)
[ "$MODE" = callgrind ] && callgrind_control -d $EDGE > /dev/null
[ "$MODE" = ops ] && kill -USR2 $EDGE && sleep 1
grep -E "requests:|status codes|finished in" "$D/run.txt"
echo "cpu ticks: user $((U1-U0)) sys $((S1-S0)) for $N requests"
kill $EDGE; wait $EDGE 2>/dev/null; kill $NGX; wait $NGX 2>/dev/null
echo "DIR=$D"
