# Resident memory of a process, for the memory scripts (sourced).

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
peak_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# RSS once it has settled (a snapshot image being written is transient, and an allocator
# gives freed pages back a second or two later): three samples 1 s apart within 1% of each
# other, at most 30 s.
settled_rss_kb() {
  local a b c
  a=$(rss_kb "$1")
  sleep 1
  b=$(rss_kb "$1")
  for _ in $(seq 30); do
    sleep 1
    c=$(rss_kb "$1")
    if [ $((a > b ? a - b : b - a)) -le $((c / 100)) ] && [ $((b > c ? b - c : c - b)) -le $((c / 100)) ]; then break; fi
    a=$b
    b=$c
  done
  echo "$c"
}
