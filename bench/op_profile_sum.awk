# Sums an APUS_CUDA_PROFILE table (stderr of any apus command run with APUS_CUDA_PROFILE=1) by op,
# split into steps of at least BIG rows ("big", default 16384) and the rest ("small"); decode
# attention (max_q=1) and qkv (n=4608, the Qwen2.5-7B shape) get their own lines.
#   APUS_CUDA_PROFILE=1 apus bench throughput ... 2> prof.txt; awk -f bench/op_profile_sum.awk prof.txt
BEGIN { if (BIG == "") BIG = 16384 }
/ calls / {
  op = $1; rows = $2; sub("rows=", "", rows)
  for (i = 1; i <= NF; i++) if ($i == "calls") { calls = $(i - 1); ms = $(i + 1) }
  if ($0 ~ / max_q=1 /) op = op "(q1)"
  if ($0 ~ / n=4608 /) op = op "(qkv)"
  key = sprintf("%-24s %s", op, rows + 0 >= BIG ? "big" : "small")
  T[key] += ms; C[key] += calls; all += ms
}
END {
  for (k in T) printf "%-32s %8d calls %10.1f ms %5.1f%%\n", k, C[k], T[k], 100 * T[k] / all | "sort -k5 -n -r"
}
