"""PyTorch as a peer in the benchmarks: what a user would pick instead of tftune, timed in the same run.

`bench.rnn_stack` times `nn.LSTM` / `nn.GRU` / `nn.RNN` (2 stacked layers in one module, as a
PyTorch user writes it; on a CPU they run oneDNN's RNN primitive) on the same shapes and
weights-free random inputs; `bench.lm_throughput` trains a PyTorch language model with
`nn.AdaptiveLogSoftmaxWithLoss`, PyTorch's own cheap output layer, on the same windows of the
same ids. PyTorch is an optional extra (`pip install -e .[bench]`): without it these columns say
"not installed" and nothing else changes.

PyTorch runs on as many threads as TensorFlow's intra-op pool (`torch.set_num_threads`), so
neither library gets more cores than the other.

Example:

```python
from bench import pytorch

if pytorch.version() is None:
    print(pytorch.NOT_INSTALLED)
```
"""

import importlib.metadata
import importlib.util
import math
import os
import time

NOT_INSTALLED = "not installed"
MODULES = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "RNN"}
# AdaptiveLogSoftmaxWithLoss' clusters: the most frequent words in the head, as in its paper's
# setting for vocabularies of tens of thousands of words; ids are ordered by frequency.
ADAPTIVE_CUTOFFS = (2000, 10000)


def version():
    """PyTorch's version, or None when it is not installed (without importing it)."""
    try:
        if importlib.util.find_spec("torch") is None:
            return None
    except ImportError:
        return None
    return importlib.metadata.version("torch")


def tensorflow_threads():
    """The threads of TensorFlow's intra-op pool: its setting, or the cores this process may use."""
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0))


def load(threads):
    """Imports PyTorch on `threads` threads, with the parts its optimizers load on first use.

    Call it before TensorFlow is imported: `torch.optim` loads `torch._dynamo`, which loads
    Triton's LLVM, and that crashes a process whose TensorFlow (XLA) has loaded its own.
    """
    import torch
    import torch._dynamo  # noqa: F401  (loaded here, before TensorFlow; see above)

    torch.set_num_threads(threads)
    return torch


def _torch(threads):
    import torch

    torch.set_num_threads(threads)
    return torch


def stack_step(cell, shape, threads):
    """A forward + backward step of a PyTorch stack on `shape`, as a no-argument callable.

    The batch goes in as a plain tensor, padding included: a `PackedSequence` (PyTorch's way of
    skipping padding) leaves oneDNN's RNN primitive and ran 2.8 times slower on the bench's
    shapes, far more than the padded steps cost (under 1% of them in `bench.rnn_stack`'s batch).
    """
    torch = _torch(threads)
    torch.manual_seed(0)
    module = getattr(torch.nn, MODULES[cell])(shape["input_dim"], shape["units"], num_layers=shape["layers"],
                                              batch_first=True)
    inputs = torch.randn(shape["batch"], shape["time"], shape["input_dim"], requires_grad=True)

    def step():
        module.zero_grad(set_to_none=True)
        inputs.grad = None
        outputs, _ = module(inputs)
        loss = outputs.square().mean()
        loss.backward()
        return float(loss)

    return step


class _LanguageModel:
    """Frozen embeddings → a PyTorch recurrent stack → `nn.AdaptiveLogSoftmaxWithLoss`."""

    def __init__(self, torch, cell, matrix, units, layers):
        vocabulary = matrix.shape[0]
        self.embedding = torch.nn.Embedding.from_pretrained(torch.from_numpy(matrix), freeze=True)
        self.recurrent = getattr(torch.nn, MODULES[cell])(matrix.shape[1], units, num_layers=layers, batch_first=True)
        # A small vocabulary (the smoke runs') gets one cluster split in the middle.
        cutoffs = [cutoff for cutoff in ADAPTIVE_CUTOFFS if cutoff < vocabulary - 1] or [vocabulary // 2]
        self.cutoffs = cutoffs
        self.output = torch.nn.AdaptiveLogSoftmaxWithLoss(units, vocabulary, cutoffs=cutoffs)
        self.parameters = [*self.recurrent.parameters(), *self.output.parameters()]
        self.modules = (self.recurrent, self.output)

    def loss(self, inputs, targets):
        """The mean negative log-likelihood of `targets`, under the adaptive softmax's full distribution."""
        hidden, _ = self.recurrent(self.embedding(inputs))
        return self.output(hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)).loss

    def train(self, mode):
        for module in self.modules:
            module.train(mode)


def train_language_model(cell, data, settings, budget_seconds, threads):
    """Trains the PyTorch LM on `data` (the bench's windows) for `budget_seconds`; the worker's result.

    Args:
        cell: "lstm", "gru" or "simple_rnn".
        data: `{"matrix", "x", "y", "valid_x", "valid_y"}`: the aligned vectors and the windows.
        settings: the shared settings (`batch_size`, `units`, `layers`, `learning_rate`, `seed`).
        budget_seconds: wall-clock training time, checked after every step (at least 3 steps).
        threads: PyTorch's thread count.
    """
    import numpy as np

    torch = _torch(threads)
    torch.manual_seed(settings["seed"])
    model = _LanguageModel(torch, cell, data["matrix"].astype("float32"), settings["units"], settings["layers"])
    optimizer = torch.optim.Adam(model.parameters, lr=settings["learning_rate"])
    x, y = torch.from_numpy(data["x"].astype("int64")), torch.from_numpy(data["y"].astype("int64"))
    batch_size, n_windows = settings["batch_size"], len(x)
    steps_per_epoch = math.ceil(n_windows / batch_size)
    generator = torch.Generator().manual_seed(settings["seed"])
    steps, timed_tokens, order = 0, 0, None
    started = time.perf_counter()
    model.train(True)
    while steps < 3 or time.perf_counter() - started < budget_seconds:
        if steps % steps_per_epoch == 0:
            order = torch.randperm(n_windows, generator=generator)
        rows = order[(steps % steps_per_epoch) * batch_size:][:batch_size]
        optimizer.zero_grad(set_to_none=True)
        model.loss(x[rows], y[rows]).backward()
        optimizer.step()
        steps += 1
        if steps == 1:  # the first step, which sets everything up, is never timed (as on the Keras side)
            timer, cpu_timer = time.perf_counter(), time.process_time()
        else:
            timed_tokens += rows.numel() * x.shape[1]
    train_seconds, cpu_seconds = time.perf_counter() - timer, time.process_time() - cpu_timer
    elapsed = time.perf_counter() - started
    model.train(False)
    valid_x, valid_y = torch.from_numpy(data["valid_x"].astype("int64")), torch.from_numpy(data["valid_y"].astype("int64"))
    with torch.no_grad():
        losses = [float(model.loss(valid_x[i:i + batch_size], valid_y[i:i + batch_size])) * len(valid_x[i:i + batch_size])
                  for i in range(0, len(valid_x), batch_size)]
    return {
        "tokens_per_second": timed_tokens / train_seconds,
        "tokens_per_cpu_second": timed_tokens / cpu_seconds,
        "valid_perplexity": math.exp(min(float(np.sum(losses)) / len(valid_x), 700.0)),
        "lm_output": f"adaptive softmax, cutoffs {model.cutoffs}",
        "threads": threads,
        "steps": steps,
        "epochs": round(steps / steps_per_epoch, 2),
        "train_seconds": round(elapsed, 1),
    }
