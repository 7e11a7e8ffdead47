#!/usr/bin/env bash
# Train ensemble members (same split, different seeds) as concurrent processes on one machine.
# This is how the shipped ensembles were trained (one H100, 16 cores); see each model card.
#
# usage:  configs/train_members.sh MEMBERS_DIR MINUTES CONFIG:SEEDS [CONFIG:SEEDS ...]
#   MEMBERS_DIR  members go to MEMBERS_DIR/<config name>/seed-<k> (model folders; checkpoints
#                in .../run, so an interrupted member resumes when the script is run again)
#   MINUTES      time limit of each member (training stops after the epoch that passes it)
#   CONFIG:SEEDS[:KEY=VALUE,...]  e.g. configs/formation_energy.yaml:1,2,3,4,5 or
#                configs/is_metal.yaml:1,2,3:epochs=40 (extra --set overrides for that config)
# Each member is `python -m cgcnn_ase train CONFIG --set seed=K --set output=... --set time_limit=MINUTES`.
# Graphs are built once per dataset first (in parallel), then every member starts at once; the
# script returns immediately, leaving the members running (logs: MEMBERS_DIR/<name>/seed-<k>.log).
set -euo pipefail
members_dir=$1; minutes=$2; shift 2
mkdir -p "$members_dir"
workers=${WORKERS:-$(nproc)}

# 1. graphs, once per distinct dataset (the cache is shared by every member)
declare -A seen=()
for job in "$@"; do
  IFS=: read -r config _ _ <<<"$job"
  data=$(python3 -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['data']['path'])" "$config")
  [[ -n ${seen[$data]:-} ]] && continue
  seen[$data]=1
  python3 -c "
import sys
from cgcnn_ase.train.config import load_config
from cgcnn_ase.train.data import prepare_data
prepare_data(load_config(sys.argv[1], ['workers=$workers']))
print('graphs ready:', sys.argv[1])" "$config" &
done
wait

# 2. every member at once, each with one CPU thread
for job in "$@"; do
  IFS=: read -r config seed_list settings <<<"$job"
  name=$(basename "$config" .yaml)
  IFS=, read -ra seeds <<<"$seed_list"
  IFS=, read -ra items <<<"${settings:-}"
  extra=()
  for item in ${items[@]+"${items[@]}"}; do extra+=(--set "$item"); done
  for seed in "${seeds[@]}"; do
    out="$members_dir/$name/seed-$seed"
    mkdir -p "$out"
    OMP_NUM_THREADS=1 TQDM_MININTERVAL=60 setsid nohup python3 -m cgcnn_ase train "$config" --threads 1 \
      --set seed="$seed" --set output="$out" --set work_dir="$out/run" --set time_limit="$minutes" \
      ${extra[@]+"${extra[@]}"} >"$out.log" 2>&1 </dev/null &
  done
done
echo "started $(jobs -p | wc -l) members under $members_dir"
