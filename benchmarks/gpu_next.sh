#!/usr/bin/env bash
# Issue 24's GPU measurements, one command per call of a lent machine (run from the repository root;
# installs nothing from the internet, only the carried wheel folders: see benchmarks/gpu_session.sh, which
# runs every step and writes its JSON and logs to $OUT). A lease is 15 minutes of device time in all and at
# most 10 minutes a call; the calls below are sized for it (~1.5 min machine start + ~1 + ~9.5 min).
#
#   call 1, carry .whl .whl2 .m68a:                bash benchmarks/gpu_next.sh 1
#       the GPU tests (Triton flow, I3D, train step, IAENet) and the first half of the landmark model
#   call 2, carry .whl3 .whl4 .m68b .ref .jr312:   bash benchmarks/gpu_next.sh 2
#       item 4: crop to evaluate capped at 20 GiB (tests/stages/test_gpu_memory_cap.py -> gpu_memory_cap.json);
#       item 3: every stage through `dvc repro` at a quarter of CAS(ME)^2's frames (24 videos x 87 s = 62.6k
#       frames at 640x480, 25% of 248k; the earlier leases' settings: features on the checked bf16 fast path,
#       train bf16 with 4 folds at once; the flow batch now auto within 20 GiB), no calibration reruns
#       -> e2e_gpu.json, with each stage's wall time, work and peak GPU memory (written after every stage, so a
#       run cut at T_E2E still reports the stages it finished). Estimated, not measured: memcap ~2 min, the
#       quarter-scale e2e 5-7 min; if the call runs out, run `STEPS=e2e ... gpu_session.sh` alone in a third call
#   later calls (items 1, 2 and 5, once their kernel work lands; carry .whl .whl_cv):
#                                                  bash benchmarks/gpu_next.sh kernels
#       TV-L1 (OpenCV on 1 core and all cores, the Triton kernel at batch 4096) and I3D (both streams, each alone)
#   item 5 (after call 1 on the same warm machine, which keeps .m68a in /tmp/m68p; carry .whl .m68b):
#                                                  bash benchmarks/gpu_next.sh cpu
#       the flow stage's OpenCV path on all 16 cores against one core (benchmarks/bench_flow_cpu.py, ~4 min)
#
# Results: $OUT/steps.txt (each step's exit code and seconds), $OUT/*.json, $OUT/*.log.
set -u
cd "$(dirname "$0")/.."
case "${1:-}" in
  1) STEPS="tests" WHEELS=".whl .whl2" T_TESTS=150 exec bash benchmarks/gpu_session.sh ;;
  2) STEPS="memcap e2e" WHEELS=".whl3 .whl4" T_MEMCAP=160 T_E2E=400 E2E_CALIBRATE=0 \
       E2E_SCALE="--subjects 12 --videos-per-subject 2 --duration-s 87" exec bash benchmarks/gpu_session.sh ;;
  kernels) STEPS="flow features" WHEELS=".whl .whl_cv" T_FLOW=240 T_FEAT=220 exec bash benchmarks/gpu_session.sh ;;
  cpu) STEPS="flowcpu" WHEELS=".whl" T_FLOWCPU=420 exec bash benchmarks/gpu_session.sh ;;
  *) echo "usage: bash benchmarks/gpu_next.sh 1 | 2 | kernels | cpu (see the comments at the top)" >&2; exit 2 ;;
esac
