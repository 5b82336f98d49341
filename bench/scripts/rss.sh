# Resident memory of a process, for the memory scripts (sourced).

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
peak_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# RSS once it has settled (a snapshot image being written is transient): two samples 1 s
# apart within 1%, at most 30 s.
settled_rss_kb() {
  local a b
  a=$(rss_kb "$1")
  for _ in $(seq 30); do
    sleep 1
    b=$(rss_kb "$1")
    if [ $((a > b ? a - b : b - a)) -le $((b / 100)) ]; then break; fi
    a=$b
  done
  echo "$b"
}
