#!/bin/sh
# Downstream accuracy of every shipped recipe: `bench.accuracy` rows on TREC-6 and SST-2 over
# three seeds, each recipe into a folder of its own, most valuable first:
#
#   gru-glove-general   tftune, no_lm_finetune, keras (GRU on GloVe), then scratch
#   rnn-glove           small_lm, scratch, keras (SimpleRNN on GloVe)
#   lstm-word2vec       small_lm, scratch, keras (LSTM on word2vec)
#   gru-word2vec        small_lm, scratch, keras (GRU on word2vec)
#
# The three recipes without a general LM start from a small LM of their own (`small_lm`), and
# their `scratch` and `keras` rows follow the recipe (`--baselines-from recipe`). Every result is
# saved as soon as it is done (`--resume-dir`): run the same command again to resume after a
# stop; finished results are skipped. Each folder ends with `accuracy.json`, which
# `python -m bench --markdown --results-dir FOLDER` turns into the table.
#
# Usage, from the repository root:
#   bench/recipe_rows.sh            # into runs/recipe-rows/NAME/ (about 5-6 h on 2 idle cores)
#   bench/recipe_rows.sh --smoke    # every command at --smoke sizes, into runs/recipe-rows-smoke/NAME/
# Environment: PYTHON (default .venv/bin/python), OUT (the parent folder), SEEDS (default 0,1,2).
set -u
cd "$(dirname "$0")/.." || exit 1
PYTHON=${PYTHON:-.venv/bin/python}
SMOKE=
case "${1:-}" in
    --smoke) SMOKE=--smoke; OUT=${OUT:-runs/recipe-rows-smoke} ;;
    "") OUT=${OUT:-runs/recipe-rows} ;;
    *) echo "error: unknown argument $1; expected --smoke or nothing" >&2; exit 2 ;;
esac
SEEDS=${SEEDS:-0,1,2}
FAILED=

# rows NAME ARGS...: bench.accuracy on both tasks into $OUT/NAME, resumable.
rows() {
    name=$1
    shift
    echo "recipe_rows: $name: $*" >&2
    nice -n 19 "$PYTHON" -m bench.accuracy --tasks trec6,sst2 --seeds "$SEEDS" $SMOKE \
        --resume-dir "$OUT/$name" --results-dir "$OUT/$name" "$@" || FAILED="$FAILED $name"
}

# --recipe gru-glove only matters under --smoke, where a tiny LM of that recipe stands in for the preset.
rows gru-glove-general --general gru-glove-general --recipe gru-glove --rows tftune,no_lm_finetune,keras
for recipe in rnn-glove lstm-word2vec gru-word2vec; do
    rows "$recipe" --recipe "$recipe" --baselines-from recipe --rows small_lm,scratch,keras
done
# Last, the preset's no-LM row; the rows above are read back from the folder, not run again.
rows gru-glove-general --general gru-glove-general --recipe gru-glove --rows tftune,no_lm_finetune,scratch,keras

if [ -n "$FAILED" ]; then
    echo "error: bench.accuracy failed for:$FAILED (rerun to resume)" >&2
    exit 1
fi
