#!/bin/sh
# Keeps writing to every folder given (the mounted data disks), in this order for n = 1, 2, …:
#   when n is a multiple of 10: writes files/f<n> (one line "file <n> <id>" repeated 64 times)
#   and removes files/f<n-500>;
#   then appends the line "rec <n> <id>" to log (<id> is the content of the disk's file "id").
# So the log of any consistent image is "rec 1 …" … "rec k …" without a gap, and every file
# f<m> with m a multiple of 10 and k-500 < m <= k is there, whole. Every 20 records it prints
# "blockrep-writer <n>" on the console so that the host can see it is still writing.
n=0
for d in "$@"; do
  mkdir -p "$d/files"
  [ -f "$d/id" ] || echo "${d##*/}" >"$d/id"
done
while :; do
  n=$((n + 1))
  for d in "$@"; do
    read -r id <"$d/id"
    if [ $((n % 10)) -eq 0 ]; then
      line="file $n $id"
      body="$line"
      j=1
      while [ $j -lt 64 ]; do body="$body
$line"; j=$((j + 1)); done
      echo "$body" >"$d/files/f$n"
      rm -f "$d/files/f$((n - 500))"
    fi
    echo "rec $n $id" >>"$d/log"
  done
  [ $((n % 20)) -eq 0 ] && echo "blockrep-writer $n" >/dev/console
  usleep 10000
done
