#!/bin/bash
# perfwatch.sh SAMPLES OUT: when the order step starts (workers busy, API done registering), perf the whole machine 6 s
S=$1; O=$2
for i in $(seq 1 600); do
  l=$(tail -1 $S); w=$(echo "$l" | grep -o "worker=[0-9]*" | cut -d= -f2); a=$(echo "$l" | grep -o "api=[0-9]*" | cut -d= -f2)
  if [ -n "$w" ] && [ "$w" -gt 25 ] && [ "${a:-100}" -lt 60 ]; then sleep 1; perf record -a -F 499 -g -o $O -- sleep 6 > $O.log 2>&1; exit 0; fi
  sleep 0.5
done
