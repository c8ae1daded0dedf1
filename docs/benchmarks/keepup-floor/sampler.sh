#!/bin/bash
# sampler.sh OUT: every second, per-role CPU% (orderflow role, tansu, postgres, redis)
TCK=$(getconf CLK_TCK)
snap() { for p in $(pgrep -f "orderflow[^ ]* (api|relay|worker)|postgres|tansu broker|redis-server"); do
  r=$(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | awk '{c=$1; sub(".*/","",c); if (c ~ /orderflow/) print $2; else print c}')
  awk -v r="$r" '{print r, $14+$15}' /proc/$p/stat 2>/dev/null; done | awk '{s[$1]+=$2} END {for (k in s) print k, s[k]}' | sort; }
prev=$(snap)
while true; do sleep 1; cur=$(snap)
  echo "$(date +%H:%M:%S) $(join <(echo "$prev") <(echo "$cur") | awk -v t=$TCK '{printf "%s=%.0f%% ", $1, 100*($3-$2)/t}')"
  prev=$cur; done
