"""tftune's benchmark suite: each module measures one part of tftune against a plain-Keras baseline.

Run one benchmark with `python -m bench.NAME [--smoke]`, all of them with `python -m bench`
(or `make bench`), and print the results table with `python -m bench --markdown`. Every
benchmark prints one JSON object and a one-line summary on stdout; progress goes to stderr.
See `bench/README.md` for what each one measures.

Example:

```sh
python -m bench.vectors --smoke
python -m bench --markdown
```
"""

import os

# Before TensorFlow is first imported by any benchmark module.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCHMARKS = ("lm_throughput", "rnn_stack", "finetune_throughput", "scaling", "vectors", "serving", "accuracy")
