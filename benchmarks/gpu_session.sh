#!/usr/bin/env bash
# One session on a GPU machine that has torch but not ASE, pymatgen, gemmi or pydantic:
# the inference benchmark (bench_gpu.py), then training on the GPU (gpu_training.py): the profile of one
# member (compiled unless COMPILE=false), 5 members together, then the shipped members continued until the budget ends.
# It writes 8 files into OUT (the most that comes back): bench_gpu.log, gpu.json, profile.log, profile.json,
# profile.txt, training.log, gpu_training.json, members.tar.gz.
# Prepare here (see docs/performance.md, "Measuring on a GPU"):
#   .whl/   wheels of ase, gemmi, pydantic, pydantic_core, annotated_types, typing_inspection, typing_extensions
#   .bench/gpu_inputs.npz   python benchmarks/bench_gpu.py prepare --n 4000
#   .bench/mp46k.csv.xz     the formation-energy dataset (zcat ../shared/data/mp_cgcnn46k_kdmsit/data.csv.gz | xz -9)
# Run there from the repository root with OUT set:  bash benchmarks/gpu_session.sh
# Knobs: BUDGET_S (seconds until everything has ended, default 540), DEVICE (cuda), BENCH_S (130), BENCH_BATCHES
# (1024; 4096 measured slower end to end), PROFILE_S (90), COMPILE (true),
# BENCH_INPUTS (.bench/gpu_inputs.npz), BENCH_ARGS, PROFILE_ARGS (more options of gpu_training.py profile),
# TRAIN_ARGS (more options of gpu_training.py session),
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
if [ "${DEVICE:-cuda}" != cpu ] && ! python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA GPU here (torch sees none): set DEVICE=cpu for a check of this script" >&2
  exit 2
fi
STATUS=0  # non-zero when any step fails
DATA=../shared/data/mp_cgcnn46k_kdmsit/data.csv.gz
EXTRA=(); PEXTRA=()
if [ ! -f "$DATA" ]; then
  if ! mkdir -p "$(dirname "$DATA")" 2>/dev/null; then
    DATA=/tmp/mp46k/data.csv.gz; mkdir -p /tmp/mp46k; EXTRA=(--extra "data.path=$DATA"); PEXTRA=(--set "data.path=$DATA")
  fi
  python3 -c "import gzip, lzma, shutil, sys; shutil.copyfileobj(lzma.open('.bench/mp46k.csv.xz'), gzip.open(sys.argv[1], 'wb', compresslevel=1))" "$DATA"
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print('torch', torch.__version__)") > "$OUT/bench_gpu.log" 2>&1
timeout "${BENCH_S:-130}" python3 benchmarks/bench_gpu.py run "${BENCH_INPUTS:-.bench/gpu_inputs.npz}" --repeats 3 --json "$OUT/gpu.json" \
  --device "${DEVICE:-cuda}" --batch-sizes "${BENCH_BATCHES:-1024}" ${BENCH_ARGS:-} >> "$OUT/bench_gpu.log" 2>&1
RC=$?; [ $RC -eq 0 ] || STATUS=1
echo "bench_gpu exit $RC after $(( $(date +%s) - START )) s"; tail -n 30 "$OUT/bench_gpu.log"
# one member: where a step's time goes, whether it waits for the device, whole epochs (it also builds the graph cache)
BASE=pretrained_models/$(python3 -c "import sys; sys.path.insert(0, '.'); from cgcnn_ase.models.registry import model_folder; from pathlib import Path; print(Path(model_folder('formation_energy')).name)")
timeout "${PROFILE_S:-90}" python3 benchmarks/gpu_training.py profile --out "$OUT" --set device="${DEVICE:-cuda}" --set workers=16 \
  --set cache_dir=/tmp/gpu_runs/cache --set "elements=$PWD/$BASE/atom_init.json" --set "split.file=$PWD/$BASE/split.json" \
  --set compile="${COMPILE:-true}" --set output=/tmp/gpu_profile/out --set work_dir=/tmp/gpu_profile/work "${PEXTRA[@]}" \
  ${PROFILE_ARGS:-} > "$OUT/profile.log" 2>&1
RC=$?; [ $RC -eq 0 ] || STATUS=1
echo "profile exit $RC after $(( $(date +%s) - START )) s"; tail -n 30 "$OUT/profile.log" | cut -c1-300
python3 benchmarks/gpu_training.py session --end-at "$END" --out "$OUT" --device "${DEVICE:-cuda}" --steps together,continue \
  --timing-epochs 3 --extra compile="${COMPILE:-true}" "${EXTRA[@]}" ${TRAIN_ARGS:-} > "$OUT/training.log" 2>&1
RC=$?; [ $RC -eq 0 ] || STATUS=1
echo "training exit $RC after $(( $(date +%s) - START )) s"; tail -n 20 "$OUT/training.log" | cut -c1-1500
exit $STATUS
