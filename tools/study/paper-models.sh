#!/usr/bin/env bash
# Runs the study (examples/study.cpp) for the seed paper's models, ResNet-18 and MobileNet-V2,
# with the paper's recipe — SGD with momentum and weight decay, linear warm-up then cosine
# annealing, random crop and horizontal flip — on a GPU machine. Each model's study is resumable:
# rerun the script after an interruption and it continues with the runs not yet finished.
#
#   STUDY=build-cuda/examples/igrad_study bash tools/study/paper-models.sh
#
# Settings come from the environment (defaults in brackets):
#   STUDY     the igrad_study binary [build-cuda/examples/igrad_study, else build/examples/igrad_study]
#   OUT       where the two studies go [./paper-models]
#   DEVICE    cuda or cpu [cuda]
#   DATASET   fashion-mnist, cifar10, cifar100 or folder:PATH [fashion-mnist]
#   DATA_DIR  the CIFAR binary files (cifar10 / cifar100 only)
#   MODELS    [resnet18,mobilenet_v2]   EPOCHS [30]   SEEDS [1,2,3]   LR [0.1]
#   LAMBDAS   [0,0.0075,0.001,0.03,0.1,0.3]   OTHER_ERRORS [sigmoid,centered-sigmoid,histogram,mae,mse]
#   EVAL [2000]   LOCALISATION [1000]   METHODS [GradCam,GradCamPlusPlus,ScoreCam]   THREADS [4]
#   TINY=1    a CPU check of the whole script in minutes: tiny data, one epoch, Grad-CAM only
#             (the ctest examples.paper_models_script runs this)
set -euo pipefail
cd "$(dirname "$0")/../.."
study=${STUDY:-}
if [[ -z $study ]]; then
  study=build-cuda/examples/igrad_study
  [[ -x $study ]] || study=build/examples/igrad_study
fi
[[ -x $study ]] || { echo "no igrad_study binary at '$study': build the examples or set STUDY" >&2; exit 2; }
out=${OUT:-$PWD/paper-models}
[[ ${TINY:-0} == 1 ]] && rm -rf "$out"   # a check starts from nothing; real studies resume
mkdir -p "$out"

args=(--dataset "${DATASET:-fashion-mnist}" --optimizer sgd --learning-rate "${LR:-0.1}"
      --momentum 0.9 --weight-decay 5e-4 --schedule cosine --warmup-epochs 1 --augment)
[[ -n ${DATA_DIR:-} ]] && args+=(--data-dir "$DATA_DIR")
if [[ ${TINY:-0} == 1 ]]; then
  # Every step of the real study, on a few images: checks the script and the recipe on the CPU.
  args+=(--device cpu --threads 1 --epochs 1 --train-samples 64 --batch-size 32 --seeds 1
         --lambdas 0,0.0075 --other-errors mse --eval-samples 4 --localisation-samples 4
         --test-samples 64 --methods GradCam --resamples 100)
else
  args+=(--device "${DEVICE:-cuda}" --threads "${THREADS:-4}" --epochs "${EPOCHS:-30}"
         --seeds "${SEEDS:-1,2,3}" --lambdas "${LAMBDAS:-0,0.0075,0.001,0.03,0.1,0.3}"
         --other-errors "${OTHER_ERRORS:-sigmoid,centered-sigmoid,histogram,mae,mse}"
         --eval-samples "${EVAL:-2000}" --localisation-samples "${LOCALISATION:-1000}"
         --methods "${METHODS:-GradCam,GradCamPlusPlus,ScoreCam}")
fi

IFS=, read -ra models <<< "${MODELS:-resnet18,mobilenet_v2}"
for model in "${models[@]}"; do
  echo "=== $(date -u +%FT%TZ) study of $model -> $out/$model"
  start=$(date +%s)
  "$study" --model "$model" "${args[@]}" --output "$out/$model" 2>&1 | tee -a "$out/$model.log"
  echo "=== $model: $(( $(date +%s) - start )) s; report $out/$model/report.md"
done
