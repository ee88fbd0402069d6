#!/usr/bin/env bash
# Everything the GPU machine does, in one device call: configure and build (Release, CUDA, ninja),
# run the `gpu` tests (CUDA ops against the CPU backend, golden fixtures and engine suites on the
# GPU), then time the Qwen2.5-7B shape with dummy weights: prefill of 2,048 tokens and decode at
# ~1k context. Logs go to $OUT (the device tool's folder) or bench/out; a summary is printed last.
#
# The GPU machine has CUDA, CMake, ninja and a compiler but no Debian packages and no network:
# run scripts/pack-gpu-deps.sh here first and carry .gpu-deps (device tool: carry [".gpu-deps"]).
# The device tool brings back at most 8 files from $OUT: where a part writes more (int4, serve),
# pack them in the call: `APUS_GPU_PARTS=int4 bash bench/gpu.sh > /tmp/o.txt 2>&1; cp /tmp/o.txt $OUT;
# cd $OUT && tar czf /tmp/l.tgz . && rm -f ./* && mv /tmp/l.tgz .`. The build is for sm_90a only
# (APUS_CUDA_ARCH to change it; CI builds sm_80 and sm_90a): about a minute on 16 cores.
# APUS_GPU_MEMCHECK=1 also runs the op tests under compute-sanitizer (slower).
# APUS_GPU_PARTS picks what runs after the build: test, bench, serve (default: all three), lora
# (the LoRA suites on the GPU and decode throughput with 0, 1 and 4 adapters at batch 32; with
# APUS_GPU_LORA_QUICK=1 without the transformers check of the merged export and the runs with
# APUS_LORA_OVERLAP=0), tp
# (tensor parallelism on every GPU of the machine: its tests, greedy parity and the Qwen2.5-7B shape's
# figures at TP 1, 2 and 4, peer-to-peer sums on and off), tpquick (its tests and offline throughput
# at TP 1 and 2 only, TP 2 also with APUS_TP_OVERLAP_TOKENS=4096, with APUS_TP_CE=0, and with the decode
# steps' sums on the copy engines, whole and split; APUS_GPU_TP_VARIANTS=0: TP 1 and 2 only),
# tpprofile (the op profiles of TP 1 and 2, summed, in tp_profile.log), tpnodes (Llama-3-70B at TP 4, two
# processes as two "nodes", and a rank that fails or is killed; one call each: together they run
# longer than a device call may), int4
# (the quantized-model suites on the GPU, the int4 kernels alone per layer shape, then int4 GPTQ
# against bf16 decode at batch 1 and 32), decode (decode attention on tensor cores, the default;
# APUS_CUDA_FLASH_DECODE=0 turns it off: the op tests, memcheck, the golden, engine and graph suites
# with it off (the CUDA-core kernel), then decode and throughput with it off and on, and the
# attention op's device time at batch 256), ab (the decode figures with and without one environment
# switch, APUS_GPU_AB, default APUS_CUDA_PDL=0, in one run on one card: bf16 decode at ~1k context,
# then bf16 against int4 GPTQ single-stream at 512 context and at batch 32), skip (each decode op's
# marginal cost inside the captured step: single-stream decode at 512 context, int4 GPTQ and bf16,
# with APUS_CUDA_SKIP set to one op at a time; bench/RESULTS.md session 10 has the table).
set -uo pipefail
PARTS=",${APUS_GPU_PARTS:-test,bench,serve},"
part() { [[ $PARTS == *",$1,"* ]]; }
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
if [ -d .gpu-deps ]; then
  D=$PWD/.gpu-deps/usr
  export CMAKE_PREFIX_PATH=$D${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
  export CPATH=$D/include:$D/include/x86_64-linux-gnu${CPATH:+:$CPATH}
  export LIBRARY_PATH=$D/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}
  export LD_LIBRARY_PATH=$D/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
export PATH=$PATH:/usr/local/cuda/bin
export NCCL_NVLS_ENABLE=0  # never NVLink multicast on a shared host
# NCCL (opened by apus with dlopen): the CUDA toolkit's, else the one PyTorch's wheel brings.
if ! ls /usr/local/cuda/lib64/libnccl.so.2 >/dev/null 2>&1; then
  NCCL_DIR=$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))" 2>/dev/null)
  [ -n "$NCCL_DIR" ] && export LD_LIBRARY_PATH=$NCCL_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader
  nvcc --version | tail -1; cmake --version | head -1; c++ --version | head -1; nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

B=build-gpu
t0=$(date +%s)
if ! cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DAPUS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${APUS_CUDA_ARCH:-90a-real} > "$OUT/configure.log" 2>&1; then
  tail -40 "$OUT/configure.log"; exit 1
fi
TARGETS="apus"
part test && TARGETS="$TARGETS test_backend_ops test_decode_graphs test_golden_gpu test_engine_gpu"
part lora && TARGETS="$TARGETS test_backend_ops test_lora_gpu"
part int4 && TARGETS="$TARGETS test_backend_ops test_golden_gpu test_quant_model_gpu"
(part tp || part tpquick || part tpprofile) && TARGETS="$TARGETS test_tensor_parallel_gpu test_golden_gpu"
part decode && TARGETS="$TARGETS test_backend_ops test_decode_graphs test_golden_gpu test_engine_gpu"
# The int4 decode kernels alone (bench/quant_kernel_bench.cu, not a CMake target), built beside.
if part int4; then
  mkdir -p $B
  nvcc -std=c++17 -O3 -arch=native -Isrc -Iinclude bench/quant_kernel_bench.cu -o $B/quant_kernel_bench \
    > "$OUT/int4_kernels.log" 2>&1 &
  QB=$!
fi
if ! cmake --build $B -j$(nproc) --target $TARGETS > "$OUT/build.log" 2>&1; then
  grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1
fi
echo "configure + build: $(( $(date +%s) - t0 )) s"

if part test; then
t0=$(date +%s)
(cd $B && timeout 300 ctest -L gpu -V --timeout 200) > "$OUT/ctest.log" 2>&1
echo "ctest -L gpu: $(( $(date +%s) - t0 )) s"

# The newest kernels under memcheck every time (a few seconds); everything with APUS_GPU_MEMCHECK=1.
timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_backend_ops \
  --gtest_filter='*Gemv*:*StoreKv*:*RopeStoreKv*:*Overstated*:*RmsNorm*:*ManyDecodes*:*Argmax*:*PrefillDecodeAndMixed*:*LongDecodes*' \
  > "$OUT/memcheck_new.log" 2>&1
echo "memcheck (new kernels): exit $? ($(grep -c 'Invalid\|ERROR SUMMARY: [1-9]' "$OUT/memcheck_new.log") problem lines)"
if [ "${APUS_GPU_MEMCHECK:-0}" = 1 ]; then
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_backend_ops > "$OUT/memcheck.log" 2>&1
  echo "memcheck: exit $? ($(grep -c 'Invalid\|ERROR SUMMARY: [1-9]' "$OUT/memcheck.log") problem lines)"
  timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 $B/tests/test_backend_ops \
    --gtest_filter='*Attention*BF16*' > "$OUT/racecheck.log" 2>&1
  echo "racecheck: exit $? ($(grep -c 'ERROR SUMMARY: [1-9]\|Race reported' "$OUT/racecheck.log") problem lines)"
fi

fi

if part bench; then
LAT="$B/apus bench latency --device cuda --load-format dummy --config-preset qwen2.5-7b"
timeout 150 $LAT --input-len 2048 --output-len 2 --num-iters 3 > "$OUT/bench_prefill.log" 2>&1
timeout 150 $LAT --input-len 1024 --output-len 128 --num-iters 2 > "$OUT/bench_decode.log" 2>&1
# The same decode op by op (no CUDA graphs), and op by op with cuBLAS for every linear layer (the
# first increment's configuration): before and after in one run, on one card.
APUS_CUDA_GRAPHS=0 timeout 150 $LAT --input-len 1024 --output-len 128 > "$OUT/bench_decode_eager.log" 2>&1
APUS_CUDA_GRAPHS=0 APUS_CUDA_GEMV=0 timeout 150 $LAT --input-len 1024 --output-len 128 \
  > "$OUT/bench_decode_cublas.log" 2>&1
# Offline throughput at the issue's shape (1,000 requests, 512 in / 256 out), with the KV cache
# sized by --gpu-memory-utilization (the default 0.9) and the default batch limits (on an 80 GB
# card vLLM V1's: 1,024 sequences, 16,384 tokens a step).
timeout 200 $B/apus bench throughput --device cuda --load-format dummy --config-preset qwen2.5-7b \
  --num-prompts 1000 --input-len 512 --output-len 256 > "$OUT/bench_throughput.log" 2>&1
# The same with the smaller limits (256 sequences, 2,048 tokens: the default before session 8).
timeout 200 $B/apus bench throughput --device cuda --load-format dummy --config-preset qwen2.5-7b \
  --num-prompts 1000 --input-len 512 --output-len 256 --max-num-seqs 256 --max-num-batched-tokens 2048 \
  >> "$OUT/bench_throughput.log" 2>&1
# Where a step's time goes: device time per op (decode at ~1k context), with our GEMV and with cuBLAS.
APUS_CUDA_PROFILE=1 timeout 150 $LAT --input-len 1024 --output-len 64 > "$OUT/bench_profile.log" 2>&1
APUS_CUDA_PROFILE=1 APUS_CUDA_GEMV=0 timeout 150 $LAT --input-len 1024 --output-len 64 > "$OUT/bench_profile_cublas.log" 2>&1

fi

if part lora; then
(cd $B && timeout 200 ./tests/test_lora_gpu && timeout 100 ./tests/test_backend_ops --gtest_filter='*Lora*') \
  > "$OUT/lora_tests.log" 2>&1
echo "LoRA GPU tests: exit $?"
timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_backend_ops --gtest_filter='*Lora*' \
  > "$OUT/lora_memcheck.log" 2>&1
echo "LoRA memcheck: exit $?"
# The merged export loads in transformers and runs as PEFT's merge_and_unload (CPU, float32);
# APUS_GPU_LORA_QUICK=1 skips it (for a kernel-only change, when device time is short).
if [ "${APUS_GPU_LORA_QUICK:-0}" != 1 ]; then
  PYTHONUNBUFFERED=1 timeout 120 python3 tools/lora/check_merged_in_transformers.py --apus $B/apus \
    > "$OUT/lora_transformers.log" 2>&1
  echo "LoRA merged export in transformers: exit $?"
fi
# Decode-dominated throughput at batch 32 (Qwen2.5-7B shape, dummy bf16 weights): the base alone,
# then every request through one adapter, then through 4 adapters mixed (rank 16, all linear layers);
# then the adapters again with APUS_LORA_OVERLAP=0 (the shrink after the base GEMM, not beside it),
# and the device time per op with one adapter (the op profile times shrink and expand apart).
LORA_TPT="$B/apus bench throughput --device cuda --load-format dummy --config-preset qwen2.5-7b --num-prompts 64 --max-num-seqs 32 --input-len 128 --output-len 256"
for n in 0 1 4; do
  timeout 150 $LORA_TPT --num-loras $n > "$OUT/lora_bench_$n.log" 2>&1
done
[ "${APUS_GPU_LORA_QUICK:-0}" != 1 ] && for n in 1 4; do
  APUS_LORA_OVERLAP=0 timeout 150 $LORA_TPT --num-loras $n > "$OUT/lora_bench_serial_$n.log" 2>&1
done
APUS_CUDA_PROFILE=1 timeout 150 $B/apus bench throughput --device cuda --load-format dummy --config-preset qwen2.5-7b \
  --num-prompts 32 --max-num-seqs 32 --input-len 128 --output-len 64 --num-loras 1 > "$OUT/lora_profile.log" 2>&1
fi

if part int4; then
wait $QB && timeout 120 $B/quant_kernel_bench >> "$OUT/int4_kernels.log" 2>&1
echo "int4 kernel bench: exit $?"
: > "$OUT/int4_tests.log"
for t in "test_backend_ops --gtest_filter=*Quant*" test_quant_model_gpu "test_golden_gpu --gtest_filter=*GoldenQuant*"; do
  (cd $B && timeout 120 ./tests/$t) >> "$OUT/int4_tests.log" 2>&1
done
echo "int4 GPU tests: $(grep -c '^\[       OK' "$OUT/int4_tests.log") OK, $(grep -c '^\[  FAILED  \]' "$OUT/int4_tests.log") failed lines"
timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_backend_ops --gtest_filter='*Quant*BF16*' \
  > "$OUT/int4_memcheck.log" 2>&1
echo "int4 memcheck: exit $?"
# `apus export --quant_bits 4` checkpoints in transformers (needs third_party/tokenizers/qwen3
# carried): a small random Qwen2 exported with GPTQ and with AWQ, each checked by
# tools/quant/check_export_in_transformers.py against Apus's greedy tokens (float32, CPU).
if [ -f third_party/tokenizers/qwen3/tokenizer.json ]; then
  X=$(mktemp -d)
  python3 tools/quant/random_qwen2.py "$X/model" --hidden 128 --inter 256 --layers 2 > /dev/null
  for m in gptq awq; do
    echo "==== export check: $m"
    timeout 200 $B/apus export --model "$X/model" --quant_bits 4 --quant_method $m --group_size 32 \
      --output_dir "$X/$m" > "$X/$m.log" 2>&1 || tail -5 "$X/$m.log"
    timeout 60 $B/apus generate --model "$X/$m" --device cpu --dtype float32 --prompt-ids 9707,11,1879,0,3555 \
      --max-tokens 12 --temperature 0 --ignore-eos --logprobs 5 --json > "$X/$m.json"
    timeout 300 python3 tools/quant/check_export_in_transformers.py "$X/$m" "$X/$m.json" 9707,11,1879,0,3555
    echo "exit $?"
  done >> "$OUT/int4_tests.log" 2>&1
  echo "export checks in transformers: $(grep -c '^OK' "$OUT/int4_tests.log") of 2 OK"
fi
# Qwen2.5-7B shape, dummy weights: bf16, then GPTQ 4-bit group 128 (--quantization gptq), single
# stream (latency) and decode-dominated batches of 32 (throughput).
LAT="$B/apus bench latency --device cuda --load-format dummy --config-preset qwen2.5-7b --input-len 512 --output-len 128"
TPT="$B/apus bench throughput --device cuda --load-format dummy --config-preset qwen2.5-7b --num-prompts 64 --max-num-seqs 32 --input-len 128 --output-len 256"
for q in bf16 gptq; do
  Q=""; [ $q = gptq ] && Q="--quantization gptq"
  timeout 150 $LAT $Q --num-iters 2 > "$OUT/int4_latency_$q.log" 2>&1
  timeout 150 $TPT $Q > "$OUT/int4_batch32_$q.log" 2>&1
done
# Device time per op of the int4 decode (what is left between the kernels and the byte floor).
APUS_CUDA_PROFILE=1 timeout 100 $B/apus bench latency --device cuda --load-format dummy --config-preset qwen2.5-7b --input-len 512 --output-len 32 --quantization gptq > "$OUT/int4_profile.log" 2>&1
fi

if part decode; then
DL="$OUT/decode_tests.log"; DB="$OUT/decode_bench.log"
{
  for t in "test_backend_ops --gtest_filter=*Attention*" test_decode_graphs test_golden_gpu test_engine_gpu; do
    echo "==== APUS_CUDA_FLASH_DECODE=0 $t"
    (cd $B && APUS_CUDA_FLASH_DECODE=0 timeout 200 ./tests/$t); echo "exit $?"
  done
  echo "==== memcheck"
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_backend_ops \
    --gtest_filter='*GqaDecode*:*Overstated*:*LongDecodes*'; echo "exit $?"
} > "$DL" 2>&1
echo "flash decode tests: $(grep -c '^exit 0' "$DL") of 5 passed"
LAT="$B/apus bench latency --device cuda --load-format dummy --config-preset qwen2.5-7b"
TPT="$B/apus bench throughput --device cuda --load-format dummy --config-preset qwen2.5-7b"
for fd in 0 1; do
  E="APUS_CUDA_FLASH_DECODE=$fd"
  { echo "==== flash decode $fd: decode 1k / 4k context, throughput 1000 x 512/256, attention at batch 256"
    env $E timeout 150 $LAT --input-len 1024 --output-len 128 --num-iters 2
    env $E timeout 150 $LAT --input-len 4096 --output-len 128
    env $E timeout 200 $TPT --num-prompts 1000 --input-len 512 --output-len 256
    env $E APUS_CUDA_PROFILE=1 timeout 200 $TPT --num-prompts 256 --input-len 512 --output-len 256 | grep -E "attention|batched"
  } >> "$DB" 2>&1
done
fi

if part ab; then
AB=${APUS_GPU_AB:-APUS_CUDA_PDL=0}
LAT="$B/apus bench latency --device cuda --load-format dummy --config-preset qwen2.5-7b"
TPT="$B/apus bench throughput --device cuda --load-format dummy --config-preset qwen2.5-7b --num-prompts 64 --max-num-seqs 32 --input-len 128 --output-len 256"
for e in "" "$AB"; do
  { echo "==== ${e:-default}: bf16 decode at 1k context; bf16, int4 at 512 context; bf16, int4 at batch 32"
    env $e timeout 150 $LAT --input-len 1024 --output-len 128 --num-iters 2
    for q in "" "--quantization gptq"; do
      env $e timeout 150 $LAT --input-len 512 --output-len 128 --num-iters 2 $q
      env $e timeout 150 $TPT $q
    done
  } >> "$OUT/ab.log" 2>&1
done
fi

if part skip; then
LAT="$B/apus bench latency --device cuda --load-format dummy --config-preset qwen2.5-7b --input-len 512 --output-len 128 --num-iters 2"
for k in "" add_rms_norm rope_store_kv attention "linear n=4608" "linear n=3584 k=3584" linear_silu_mul \
    "linear n=3584 k=18944" "linear n=152064" ""; do
  for q in "--quantization gptq" ""; do
    echo "==== skip '$k' ${q:-bf16}"
    APUS_CUDA_SKIP="$k" timeout 100 $LAT $q 2>&1 | grep -E "^decode  |rror"
  done
done > "$OUT/skip.log" 2>&1
fi

NG=$(nvidia-smi -L | wc -l)
TB="$OUT/tp_bench.log"
run() { echo "==== $*" >> "$TB"; "$@" >> "$TB" 2>&1; echo "exit $?" >> "$TB"; }
Q7="--device cuda --load-format dummy --config-preset qwen2.5-7b"
export APUS_TP_TIMEOUT=${APUS_TP_TIMEOUT:-45}  # a step that hangs ends as an error
# Runs a command for at most $1 seconds. One still running then is taken for a hang: where its
# threads wait (kernel wait channels; host stacks where cuda-gdb is) and the GPUs' load are printed
# before it is killed.
bounded() {
  local limit=$1 waited=0; shift
  "$@" &
  local pid=$!
  while kill -0 $pid 2>/dev/null && [ $waited -lt "$limit" ]; do sleep 1; waited=$((waited + 1)); done
  if kill -0 $pid 2>/dev/null; then
    echo "HANG: $* still running after $limit s"
    for t in /proc/$pid/task/*; do echo "thread $(cat $t/comm) $(cut -d' ' -f3 $t/stat) $(cat $t/wchan)"; done
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader
    command -v cuda-gdb > /dev/null && timeout 60 cuda-gdb -p $pid -batch -ex "thread apply all bt 12" 2>&1 \
      | grep -E "^#|^Thread" | head -200
    kill -9 $pid
    sleep 3
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader
  fi
  wait $pid
}
TL="$OUT/tp_tests.log"
tp_tests() {
  (cd $B && APUS_TP_TIMEOUT=60 bounded 150 ./tests/test_tensor_parallel_gpu \
    && APUS_TP_TIMEOUT=60 bounded 150 ./tests/test_golden_gpu --gtest_filter='*tp*')
}
if part tpquick; then  # the tests, then offline throughput at TP 1 and 2 (a few minutes of two GPUs)
  if [ "${APUS_GPU_TP_TESTS:-1}" != 0 ]; then  # =0: the figures only
    tp_tests > "$TL" 2>&1
    echo "tensor-parallel GPU tests ($NG GPUs): exit $?"
  fi
  for tp in 1 2; do
    run timeout -k 5 120 $B/apus bench throughput $Q7 --tensor-parallel-size $tp --num-prompts 1000 --input-len 512 --output-len 256
  done
  # TP=2 with prefill chunks as two overlapped halves (DecoderModel::split_tokens, off by default),
  # and with the large sums through NCCL instead of the copy engines (APUS_GPU_TP_VARIANTS=0: not).
  if [ "${APUS_GPU_TP_VARIANTS:-1}" != 0 ]; then
    run env APUS_TP_OVERLAP_TOKENS=4096 timeout -k 5 120 $B/apus bench throughput $Q7 --tensor-parallel-size 2 \
      --num-prompts 1000 --input-len 512 --output-len 256
    run env APUS_TP_CE=0 timeout -k 5 120 $B/apus bench throughput $Q7 --tensor-parallel-size 2 \
      --num-prompts 1000 --input-len 512 --output-len 256
    # The eager decode steps' sums (~1,000 rows, 7 MB) through the copy engines too (the peer-to-peer
    # kernel kept for graph-sized steps, up to 2 MB), unsplit and with those steps as two halves.
    for split in 0 512; do
      run env APUS_TP_P2P_MAX_BYTES=2097152 APUS_TP_OVERLAP_TOKENS=$split timeout -k 5 120 $B/apus bench throughput \
        $Q7 --tensor-parallel-size 2 --num-prompts 1000 --input-len 512 --output-len 256
    done
  fi
fi
if part tpprofile; then
  # Where TP=2's time goes against TP=1's: device time per op (eager, one stream), 300 requests,
  # summed by op (bench/op_profile_sum.awk) into tp_profile.log; at TP=2 over both ranks' tables
  # (each rank's backend prints one), so a rank's own time is half.
  for tp in 1 2; do
    echo "==== op profile, TP=$tp" >> "$OUT/tp_profile.log"
    APUS_CUDA_PROFILE=1 timeout -k 5 150 $B/apus bench throughput $Q7 --tensor-parallel-size $tp --num-prompts 300 \
      --input-len 512 --output-len 256 2> /tmp/tp_profile_$tp.txt | grep -E "^batched" >> "$OUT/tp_profile.log"
    awk -f bench/op_profile_sum.awk /tmp/tp_profile_$tp.txt >> "$OUT/tp_profile.log"
  done
fi
if part tp; then
export APUS_TP_P2P=${APUS_TP_P2P:-1}  # the peer-to-peer all-reduce (the default) under test; off below for comparison
tp_tests > "$TL" 2>&1
st=$?
echo "tensor-parallel GPU tests ($NG GPUs): exit $st"
if [ $st -ne 0 ]; then  # the rest without the peer-to-peer kernel, the tests again so
  export APUS_TP_P2P=0
  echo "==== again with APUS_TP_P2P=0 (the rest of the run too)" >> "$TL"
  tp_tests >> "$TL" 2>&1
  echo "tensor-parallel GPU tests, APUS_TP_P2P=0: exit $?"
fi
# Greedy parity on the 7B dummy model, two prompts, 128 tokens (bench/compare_greedy.py: equal
# tokens, or a split only at a near tie of the reference). In F32 (reductions in another order
# move logits by ~1e-5) TP 2 and 4 must give TP=1's tokens. In BF16 a random 7B model turns tiny
# differences into other tokens within a few steps whatever changes the order of its sums (a
# control in bench/RESULTS.md: TP=1 with cuBLAS instead of the GEMV kernel splits as early).
G=$(mktemp -d)
PROMPTS=("9707,11,1879,0,3555,374,279,6722,315,9625,30" "$(seq -s, 100 37 7500)")
greedy() {  # name, generate options...
  local name=$1; shift
  for i in 0 1; do
    timeout -k 5 90 $B/apus generate $Q7 "$@" --prompt-ids "${PROMPTS[$i]}" --max-tokens 128 --temperature 0 \
      --ignore-eos --logprobs 5 --json > "$G/${name}_$i.json" 2>> "$TB"
  done
}
compare() {  # reference, other, tolerance
  for i in 0 1; do
    { echo "==== greedy parity $2 vs $1 prompt $i"; python3 bench/compare_greedy.py --tol "$3" "$G/$1_$i.json" "$G/$2_$i.json"
      echo "exit $?"; } >> "$TB" 2>&1
  done
}
for tp in 1 2 4; do
  [ "$tp" -le "$NG" ] || continue
  greedy f32_tp$tp --dtype float32 --tensor-parallel-size $tp
  greedy bf16_tp$tp --tensor-parallel-size $tp
  [ "$tp" -gt 1 ] && { compare f32_tp1 f32_tp$tp 0.01; compare bf16_tp1 bf16_tp$tp 0.1; }
done
for tp in 1 2 4; do
  [ "$tp" -le "$NG" ] || continue
  run timeout -k 5 90 $B/apus bench latency $Q7 --tensor-parallel-size $tp --input-len 1024 --output-len 128
  run timeout -k 5 120 $B/apus bench throughput $Q7 --tensor-parallel-size $tp --num-prompts 1000 --input-len 512 --output-len 256
  if [ "$tp" -gt 1 ] && [ "${APUS_TP_P2P:-1}" != 0 ]; then  # the same with NCCL for every sum
    run env APUS_TP_P2P=0 timeout -k 5 90 $B/apus bench latency $Q7 --tensor-parallel-size $tp --input-len 1024 --output-len 128
    [ "$tp" = 2 ] && run env APUS_TP_P2P=0 timeout -k 5 120 $B/apus bench throughput $Q7 --tensor-parallel-size $tp \
      --num-prompts 1000 --input-len 512 --output-len 256
    # Peer-to-peer for decode-sized sums only (NCCL for prefill chunks' 14.7 MB).
    [ "$tp" = 2 ] && run env APUS_TP_P2P_MAX_BYTES=2097152 timeout -k 5 120 $B/apus bench throughput $Q7 \
      --tensor-parallel-size $tp --num-prompts 1000 --input-len 512 --output-len 256
  fi
done
fi
if part tpnodes; then
if [ "$NG" -ge 4 ]; then
  L70="--device cuda --load-format dummy --config-preset llama-3-70b --tensor-parallel-size 4"
  run env APUS_TP_P2P=1 timeout 200 $B/apus bench latency $L70 --input-len 1024 --output-len 128
  run env APUS_TP_P2P=0 timeout 200 $B/apus bench latency $L70 --input-len 1024 --output-len 128
  run timeout 200 $B/apus bench throughput $L70 --num-prompts 128 --input-len 512 --output-len 256
fi
if [ "$NG" -ge 2 ]; then
  # Two processes, one GPU each, as two nodes (the multi-node path: TCP rendezvous, NCCL between them).
  N2="$Q7 --tensor-parallel-size 2 --nnodes 2 --master-port 29611"
  CUDA_VISIBLE_DEVICES=1 timeout 120 $B/apus bench latency $N2 --node-rank 1 --input-len 1024 --output-len 64 \
    > "$OUT/tp_node1.log" 2>&1 &
  run env CUDA_VISIBLE_DEVICES=0 timeout 120 $B/apus bench latency $N2 --node-rank 0 --input-len 1024 --output-len 64
  wait; echo "node 1 exit $? (log:)" >> "$TB"; cat "$OUT/tp_node1.log" >> "$TB"
  # A rank that fails mid-run, and a node process killed mid-run: a clear error, no hang.
  run env APUS_TP_FAULT=1:20 timeout 120 $B/apus bench latency $Q7 --tensor-parallel-size 2 --input-len 256 --output-len 64
  LONG="--num-prompts 4000 --input-len 512 --output-len 512"
  (CUDA_VISIBLE_DEVICES=1 exec $B/apus bench throughput $N2 --node-rank 1 $LONG > "$OUT/tp_node1.log" 2>&1) &
  K=$!  # the apus process itself (exec), killed below
  (sleep 25; kill -9 $K) &
  t0=$(date +%s)
  run env CUDA_VISIBLE_DEVICES=0 APUS_TP_TIMEOUT=30 timeout 150 $B/apus bench throughput $N2 --node-rank 0 $LONG
  echo "node 0 ended $(( $(date +%s) - t0 )) s after start (node 1 killed at 25 s)" >> "$TB"
  wait
fi
fi

# Serving: apus deploy (Qwen2.5-7B shape, dummy weights, the real Qwen tokenizer: carry
# third_party/tokenizers/qwen3) and apus bench serve at 32 concurrent streams of 512-token prompts.
if part serve && [ -f third_party/tokenizers/qwen3/tokenizer.json ]; then
  M=$(mktemp -d)
  cp third_party/tokenizers/qwen3/tokenizer*.json "$M"/
    cat > "$M/config.json" <<'JSON'
{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
 "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
 "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": false,
 "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu", "torch_dtype": "bfloat16"}
JSON
  healthy() { exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && head -1 <&3 | grep -q ' 200'; } 2>/dev/null
  SB="$B/apus bench serve --url http://127.0.0.1:8000 --vocab-size 151000 --input-len 512 --output-len 128"
  # serve_runs SUFFIX [deploy options]: a server, 32 then 256 streams (serve_c32SUFFIX.log, ...).
  serve_runs() {
    local suffix=$1 t0; shift
    t0=$(date +%s.%N)
    $B/apus deploy --model "$M" --load-format dummy --device cuda --port 8000 --served-model-name qwen7b-dummy \
      "$@" > "$OUT/serve_server$suffix.log" 2>&1 &
    local sp=$!
    for _ in $(seq 600); do healthy && break; sleep 0.1; done
    [ -z "$suffix" ] && echo "server ready (dummy 7B, until GET /health = 200): $(awk "BEGIN {print $(date +%s.%N) - $t0}") s" \
      > "$OUT/serve_ready.txt"
    timeout 200 $SB --num-prompts 256 --max-concurrency 32 > "$OUT/serve_c32$suffix.log" 2>&1
    timeout 200 $SB --num-prompts 512 --max-concurrency 256 > "$OUT/serve_c256$suffix.log" 2>&1
    kill -TERM $sp; wait $sp
  }
  serve_runs "" --log-interval 5
  # APUS_SERVE_BUDGETS="2048 512": 32 and 256 streams again with those --max-num-batched-tokens.
  for nb in ${APUS_SERVE_BUDGETS:-}; do serve_runs "_mnbt$nb" --max-num-batched-tokens "$nb"; done
fi

echo "==== summary"
part ab && grep -E "^====|^decode  |batched|rror" "$OUT/ab.log"
part skip && paste - - < "$OUT/skip.log" | sed -E 's/decode +127 tokens in [0-9.]+ s = //'

if part decode; then
  grep -E "^====|^exit|FAILED|PASSED" "$OUT/decode_tests.log" | head -40
  grep -E "^====|decode  |prefill  |batched|attention" "$OUT/decode_bench.log"
fi
if part tp || part tpnodes || part tpquick || part tpprofile; then
  [ -f "$OUT/tp_tests.log" ] && grep -E "PASSED|FAILED|largest errors" "$OUT/tp_tests.log" | head -60
  grep -E "^====|^exit|greedy tokens|tensor parallel|parallel   |backend|^load|prefill  |decode  |batched|KV cache|rror|node 0 ended" "$OUT/tp_bench.log"
  [ -f "$OUT/tp_profile.log" ] && cat "$OUT/tp_profile.log"
fi
if part lora; then
  grep -E "tests passed|PASSED|FAILED|largest" "$OUT/lora_tests.log"; grep -E "ERROR SUMMARY" "$OUT/lora_memcheck.log"
  [ -f "$OUT/lora_transformers.log" ] && grep -E "^a[0-9]:|Error" "$OUT/lora_transformers.log"
  for n in 0 1 4; do echo "---- $n adapters"; grep -E "LoRA|batched|rror" "$OUT/lora_bench_$n.log"; done
  for n in 1 4; do
    [ -f "$OUT/lora_bench_serial_$n.log" ] || continue
    echo "---- $n adapters, APUS_LORA_OVERLAP=0"; grep -E "batched|rror" "$OUT/lora_bench_serial_$n.log"
  done
  echo "---- device time per op, 1 adapter (lora_profile.log)"; grep -A16 "APUS_CUDA_PROFILE" "$OUT/lora_profile.log"
fi
if [ -f "$OUT/serve_ready.txt" ]; then
  cat "$OUT/serve_ready.txt"; echo "---- 32 streams"; cat "$OUT/serve_c32.log"; echo "---- 256 streams"; cat "$OUT/serve_c256.log"
  for nb in ${APUS_SERVE_BUDGETS:-}; do
    for c in 32 256; do echo "---- $c streams, --max-num-batched-tokens $nb"; grep -E "Output token|TTFT|TPOT" "$OUT/serve_c${c}_mnbt$nb.log"; done
  done
  grep -E "error|Error" "$OUT/serve_server.log" | head -5
fi
if part int4; then
  grep -E "FAILED|Failure|largest" "$OUT/int4_tests.log" | head -20; grep -E "ERROR SUMMARY" "$OUT/int4_memcheck.log"
  cat "$OUT/int4_kernels.log"
  for f in latency_bf16 latency_gptq batch32_bf16 batch32_gptq; do
    echo "---- $f"; grep -E "^prefill  |^decode  |^load  |batched|rror" "$OUT/int4_$f.log"
  done
  echo "---- int4 decode, device time per op"; grep -A24 "APUS_CUDA_PROFILE" "$OUT/int4_profile.log"
fi
if part test; then
grep -E "tests passed|tests failed|\(Failed\)|\(Timeout\)|\*\*\*" "$OUT/ctest.log"
grep -E "FAILED|Failure" "$OUT/ctest.log" | sort | uniq | head -30
grep -E "largest errors" "$OUT/ctest.log"
fi
if part bench; then
echo "---- prefill 2048 (bench_prefill.log)"; grep -E "backend|load|prefill|matmul|Error|error" "$OUT/bench_prefill.log"
echo "---- decode at ~1k context (bench_decode.log: CUDA graphs + GEMV)"
grep -E "decode|bandwidth|bytes per|Error|error" "$OUT/bench_decode.log"
echo "---- decode op by op (bench_decode_eager.log)"; grep -E "decode  |Error|error" "$OUT/bench_decode_eager.log"
echo "---- decode op by op, cuBLAS only (bench_decode_cublas.log)"; grep -E "decode  |Error|error" "$OUT/bench_decode_cublas.log"
echo "---- throughput (bench_throughput.log)"; grep -E "KV cache|workload|batched|Error|error" "$OUT/bench_throughput.log"
echo "---- device time per op, 1024-token prefill + 63 decode steps (bench_profile.log)"
grep -A24 "APUS_CUDA_PROFILE" "$OUT/bench_profile.log"
echo "---- linear layers with cuBLAS only (bench_profile_cublas.log)"
grep -A24 "APUS_CUDA_PROFILE" "$OUT/bench_profile_cublas.log" | grep -E "APUS|linear"
fi
