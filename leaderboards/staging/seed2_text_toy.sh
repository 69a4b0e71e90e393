#!/usr/bin/env bash
# Seed 2 of every text and toy step of scripts/publish_small.sh (lane A's first steps), so the
# text and toy claims are tested on three seeds as in the 8ed1595 publication; digits stay at two.
#   leaderboards/staging/seed2_text_toy.sh OUT   (from the publication's clean clone, its venv on PATH)
set -uo pipefail
OUT=${1:?usage: seed2_text_toy.sh OUT}
export GMBENCH_CAP_SCALE=${GMBENCH_CAP_SCALE:-4}
run() { gmbench run --budget small --seeds 2 --jobs 1 --threads 1 --resume -q --allow-failures --out "$OUT" "$@"; }
gmbench floor --datasets 8gaussians,synthlang,digits --budget small --seeds 2 --out "$OUT"
run --plugins ar,bd3lm,d3pm,mdlm,sedd --datasets synthlang
run --plugins d3pm --datasets synthlang --set d3pm.transition=uniform
run --plugins sedd --datasets synthlang --set sedd.graph=uniform
run --plugins bd3lm --datasets synthlang --set bd3lm.block_size=16
run --plugins d3pm --datasets synthlang --set d3pm.bound_steps=20
run --plugins consistency,ddpm,ffjord,flow-matching,gan,glow,iddpm,ncsn,realnvp,rectified-flow,score-sde,vae --datasets 8gaussians
run --plugins flow-matching --datasets 8gaussians --set flow-matching.path=vp
run --plugins rectified-flow --datasets 8gaussians --set rectified-flow.reflow=false
run --plugins glow --datasets 8gaussians --set glow.coupling=additive
run --plugins realnvp --datasets 8gaussians --set realnvp.coupling=additive
run --plugins vae --datasets 8gaussians --set vae.iw_samples=64
run --plugins consistency --datasets 8gaussians --set consistency.mode=cd
