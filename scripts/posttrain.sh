#!/usr/bin/env bash
# The chat model's post-training end to end (issue #15), as one rerunnable sequence: the verifiable domains'
# data, a general SFT of the base on all three domains (the student), one teacher per domain (the student
# fine-tuned further on that domain alone), MOPD from the student with the three teachers, the two Fig.-6
# baselines (the outcome reward alone; distillation alone), held-out evaluation of every model, and the report
# (scripts/posttrain_report.py: Table-7-style table, Fig.-6-style plot). Every stage resumes where it stopped
# (rerun the script after an interruption); a training stage whose final/training_state.json reached its steps, or an
# evaluation whose JSON exists, is skipped (training exports final/ at every checkpoint, so its presence alone is not
# the end). Wall time per stage goes to $OUT/stage_seconds.json. Tools are also scored under the server's tool-call
# grammar (eval/*-tool-grammar.json) and through `mimo serve` with and without it (eval/openai-tools*.json).
#
#   BASE=runs/nano-v2/final OUT=runs/post bash scripts/posttrain.sh
#
# Settings (environment, defaults in brackets): BASE [models/mimo-nano], OUT [runs/post], TRAIN [6000] and
# HELDOUT [300] examples per domain, SFT_STEPS [1000], TEACHER_STEPS [300], MOPD_STEPS [50], EVAL_N [50]
# held-out examples per domain, SFT_ARGS [--batch-size 8 --max-len 1536 --lr 5e-4 --dtype bf16], TEACHER_ARGS [same],
# MOPD_ARGS [--dtype bf16], TOOLS_N [100] held-out tool requests scored through `mimo serve` and the openai client,
# SHIP [empty: ship nothing; a directory, e.g. models/mimo-nano-chat: the MOPD model is shipped there with its card
# by scripts/ship_chat_model.py, if its tool calls reach 80%], CORPUS_MANIFEST [empty: the base corpus's
# MANIFEST.json, named in the card], MIMO [.venv/bin/mimo], PY [.venv/bin/python].
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${BASE:-models/mimo-nano}
OUT=${OUT:-runs/post}
MIMO=${MIMO:-.venv/bin/mimo}
PY=${PY:-.venv/bin/python}
TRAIN=${TRAIN:-6000}
HELDOUT=${HELDOUT:-300}
SFT_STEPS=${SFT_STEPS:-1000}
TEACHER_STEPS=${TEACHER_STEPS:-300}
MOPD_STEPS=${MOPD_STEPS:-50}
EVAL_N=${EVAL_N:-50}
SFT_ARGS=${SFT_ARGS:---batch-size 8 --max-len 1536 --lr 5e-4 --dtype bf16}
TEACHER_ARGS=${TEACHER_ARGS:-$SFT_ARGS}
MOPD_ARGS=${MOPD_ARGS:---dtype bf16}
TOOLS_N=${TOOLS_N:-100}
SHIP=${SHIP:-}
CORPUS_MANIFEST=${CORPUS_MANIFEST:-}
DOMAINS=(tools arithmetic code)

[ -d "$BASE" ] || { echo "posttrain.sh: BASE=$BASE is not a model directory" >&2; exit 2; }
mkdir -p "$OUT/eval"
TIMES="$OUT/stage_seconds.json"
[ -f "$TIMES" ] || echo "{}" > "$TIMES"

finished() {  # finished DIR STEPS: DIR/final exists and its training_state.json says it reached STEPS (a run
  # exports final/ at every checkpoint, so final/ alone does not mean the stage ended)
  "$PY" - "$1/final/training_state.json" "$2" <<'EOF'
import json, os, sys
path, steps = sys.argv[1], int(sys.argv[2])
sys.exit(0 if os.path.exists(path) and json.load(open(path)).get("step", 0) >= steps else 1)
EOF
}

stage() {  # stage NAME DONE COMMAND...: run COMMAND unless DONE is done (a path that exists, or "DIR@STEPS", a
  # training run that reached STEPS); record its wall time
  local name=$1 done=$2
  shift 2
  if { [[ $done == *@* ]] && finished "${done%@*}" "${done##*@}"; } || { [[ $done != *@* ]] && [ -e "$done" ]; }; then
    echo "== $name: done ($done)"
    return
  fi
  echo "== $name"
  local start=$SECONDS
  "$@"
  "$PY" - "$TIMES" "$name" "$((SECONDS - start))" <<'EOF'
import json, sys
path, name, secs = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = json.load(open(path))
times[name] = times.get(name, 0) + secs
json.dump(times, open(path, "w"), indent=1)
EOF
}

stage data "$OUT/data/manifest.json" "$MIMO" domains --out "$OUT/data" --train "$TRAIN" --heldout "$HELDOUT"
# shellcheck disable=SC2086  # the *_ARGS are word lists
stage sft "$OUT/sft@$SFT_STEPS" "$MIMO" sft --data "$OUT/data" --from "$BASE" --out "$OUT/sft" --resume \
  --steps "$SFT_STEPS" --no-progress $SFT_ARGS
teachers=()
for d in "${DOMAINS[@]}"; do
  # shellcheck disable=SC2086
  stage "teacher-$d" "$OUT/teacher-$d@$TEACHER_STEPS" "$MIMO" sft --data "$OUT/data/$d" --from "$OUT/sft/final" \
    --out "$OUT/teacher-$d" --resume --steps "$TEACHER_STEPS" --no-progress $TEACHER_ARGS
  teachers+=(--teacher "$d=$OUT/teacher-$d/final")
done
common=(--student "$OUT/sft/final" --prompts "$OUT/data" --resume --steps "$MOPD_STEPS" --no-progress)
# shellcheck disable=SC2086
stage mopd "$OUT/mopd@$MOPD_STEPS" "$MIMO" mopd "${common[@]}" "${teachers[@]}" --out "$OUT/mopd" $MOPD_ARGS
# shellcheck disable=SC2086
stage orm-only "$OUT/orm@$MOPD_STEPS" "$MIMO" mopd "${common[@]}" --kl-weight 0 --domains tools,arithmetic,code \
  --out "$OUT/orm" $MOPD_ARGS
# shellcheck disable=SC2086
stage mopd-no-orm "$OUT/mopd-noorm@$MOPD_STEPS" "$MIMO" mopd "${common[@]}" "${teachers[@]}" --alpha 0 \
  --out "$OUT/mopd-noorm" $MOPD_ARGS

evaluate() {  # evaluate NAME MODEL
  stage "eval-$1" "$OUT/eval/$1.json" "$PY" scripts/eval_domains.py --model "$2" --data "$OUT/data" \
    --per-domain "$EVAL_N" --json-out "$OUT/eval/$1.json"
}
evaluate sft "$OUT/sft/final"
for d in "${DOMAINS[@]}"; do evaluate "teacher-$d" "$OUT/teacher-$d/final"; done
evaluate mopd "$OUT/mopd/final"
# tool calls under the grammar `mimo serve` applies (names and argument types held to the offered schemas)
for m in sft teacher-tools mopd; do
  dir="$OUT/$m/final"
  stage "eval-$m-tool-grammar" "$OUT/eval/$m-tool-grammar.json" "$PY" scripts/eval_domains.py --model "$dir" \
    --data "$OUT/data" --per-domain "$EVAL_N" --domains tools --tool-grammar --json-out "$OUT/eval/$m-tool-grammar.json"
done

"$PY" scripts/posttrain_report.py --before "$OUT/eval/sft.json" --after "$OUT/eval/mopd.json" \
  --teacher "tools=$OUT/eval/teacher-tools.json" --teacher "arithmetic=$OUT/eval/teacher-arithmetic.json" \
  --teacher "code=$OUT/eval/teacher-code.json" \
  --run "MOPD=$OUT/mopd" --run "outcome reward only=$OUT/orm" --run "MOPD without ORM=$OUT/mopd-noorm" \
  --out "$OUT/report"
stage eval-openai-tools "$OUT/eval/openai-tools.json" "$PY" scripts/eval_tools_openai.py --model "$OUT/mopd/final" \
  --data "$OUT/data" --limit "$TOOLS_N" --json-out "$OUT/eval/openai-tools.json"
stage eval-openai-tools-unconstrained "$OUT/eval/openai-tools-unconstrained.json" "$PY" scripts/eval_tools_openai.py \
  --model "$OUT/mopd/final" --data "$OUT/data" --limit "$TOOLS_N" --no-constrained-decoding \
  --json-out "$OUT/eval/openai-tools-unconstrained.json"
echo "stage seconds: $(cat "$TIMES")"
if [ -n "$SHIP" ]; then
  "$PY" scripts/ship_chat_model.py --model "$OUT/mopd/final" --run "$OUT" --tools-eval "$OUT/eval/openai-tools.json" \
    ${CORPUS_MANIFEST:+--corpus-manifest "$CORPUS_MANIFEST"} --out "$SHIP" --force
fi
