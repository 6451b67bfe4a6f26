#!/bin/bash
# Trains one of the shipped general-domain language models (see general_corpus.py for its corpus).
#
#   python pretrained/general_corpus.py SOURCE_DIR CORPUS_DIR
#   bash pretrained/train_general.sh lstm|gru CORPUS_DIR OUT_DIR [--set SECTION.KEY=VALUE ...]
#
# Extra arguments go to `tftune pretrain` after the fixed settings, so they win: the size sweep in
# pretrained/README.md ran `... --set encoder.units=128 --set pretrain.epochs=2`.
# Run again with the same arguments to resume an interrupted run (it adds --resume when a
# checkpoint exists beside OUT_DIR). Then `python -c "from tftune.pretrained_models import publish; ..."`
# copies the run into pretrained/CELL-glove-general (see the model card there).
set -euo pipefail
CELL=$1 CORPUS=$2 OUT=$3
shift 3
TFTUNE=${TFTUNE:-tftune}
RESUME=()
[ -d "$(dirname "$OUT")/.$(basename "$OUT").checkpoint" ] && RESUME=(--resume)
"$TFTUNE" pretrain --recipe "$CELL-glove" --corpus "$CORPUS/train.txt" --valid "$CORPUS/valid.txt" \
  --set vocab.max_size=20000 --set vocab.min_freq=3 \
  --set encoder.units=256 --set encoder.layers=2 --set encoder.dropout=0 \
  --set encoder.weight_dropout=0.1 --set encoder.input_dropout=0.05 --set encoder.hidden_dropout=0.1 \
  --set encoder.output_dropout=0.1 --set encoder.embedding_dropout=0 \
  --set pretrain.ar=2 --set pretrain.tar=1 --set pretrain.output=sampled --set pretrain.num_sampled=1024 \
  --set pretrain.seq_len=70 --set pretrain.batch_size=64 --set pretrain.learning_rate=0.005 \
  --set pretrain.epochs=10 --set pretrain.checkpoint_every=400 --set precision.policy=float32 \
  "$@" --out "$OUT" "${RESUME[@]}"
