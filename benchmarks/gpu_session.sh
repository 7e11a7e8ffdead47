#!/usr/bin/env bash
# One session on a GPU machine that has torch but not ASE, pymatgen, gemmi or pydantic:
# the inference benchmark (bench_gpu.py), then training on the GPU (gpu_training.py).
# Prepare here (see docs/performance.md, "Measuring on a GPU"):
#   .whl/   wheels of ase, gemmi, pydantic, pydantic_core, annotated_types, typing_inspection, typing_extensions
#   .bench/gpu_inputs.npz   python benchmarks/bench_gpu.py prepare --n 4000
#   .bench/mp46k.csv.xz     the formation-energy dataset (zcat ../shared/data/mp_cgcnn46k_kdmsit/data.csv.gz | xz -9)
# Run there from the repository root with OUT set:  bash benchmarks/gpu_session.sh
# Knobs: BUDGET_S (seconds until everything has ended, default 540), DEVICE (cuda), BENCH_S (150),
# BENCH_INPUTS (.bench/gpu_inputs.npz), BENCH_ARGS, TRAIN_ARGS (more options of gpu_training.py session),
# SKIP_WHEELS=1 (a check on a machine that has the packages).
set -u
START=$(date +%s)
END=$((START + ${BUDGET_S:-540}))
OUT=${OUT:?set OUT to the folder for the results}
export PYTHONUNBUFFERED=1
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print('torch', torch.__version__)") > "$OUT/machine.txt" 2>&1
DATA=../shared/data/mp_cgcnn46k_kdmsit/data.csv.gz
EXTRA=()
if [ ! -f "$DATA" ]; then
  if ! mkdir -p "$(dirname "$DATA")" 2>/dev/null; then DATA=/tmp/mp46k/data.csv.gz; mkdir -p /tmp/mp46k; EXTRA=(--extra "data.path=$DATA"); fi
  python3 -c "import gzip, lzma, shutil, sys; shutil.copyfileobj(lzma.open('.bench/mp46k.csv.xz'), gzip.open(sys.argv[1], 'wb', compresslevel=1))" "$DATA"
fi
timeout "${BENCH_S:-150}" python3 benchmarks/bench_gpu.py run "${BENCH_INPUTS:-.bench/gpu_inputs.npz}" --repeats 3 --json "$OUT/gpu.json" \
  --device "${DEVICE:-cuda}" ${BENCH_ARGS:-} > "$OUT/bench_gpu.log" 2>&1
echo "bench_gpu exit $? after $(( $(date +%s) - START )) s"; tail -n 40 "$OUT/bench_gpu.log"
python3 benchmarks/gpu_training.py session --end-at "$END" --out "$OUT" --device "${DEVICE:-cuda}" "${EXTRA[@]}" ${TRAIN_ARGS:-} \
  > "$OUT/training.log" 2>&1
echo "training exit $? after $(( $(date +%s) - START )) s"; tail -n 20 "$OUT/training.log" | cut -c1-1500
