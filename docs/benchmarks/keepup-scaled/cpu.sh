#!/bin/bash
# per-process CPU seconds: name-pid cpu
TCK=$(getconf CLK_TCK)
for p in $(pgrep -f "orderflow|postgres|tansu|redis-server"); do
  n=$(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | awk '{c=$1; sub(".*/","",c); print c"_"$2}')
  [ -z "$n" ] && continue
  awk -v n="$n" -v p=$p -v t=$TCK '{print n"-"p, ($14+$15)/t}' /proc/$p/stat 2>/dev/null
done | sort
