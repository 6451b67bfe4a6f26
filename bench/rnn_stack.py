"""Training throughput of a 2-layer recurrent stack: plain Keras layers vs `tftune.fast_rnn`.

Times one forward + backward pass (gradients w.r.t. the inputs and all weights) of two stacked
`return_sequences=True` layers, for LSTM, GRU and SimpleRNN, with the same weights in both
implementations, on a right-padded mask like the training batches (`--no-mask` to drop it).
The default shape is the issue's: 256 units on 100-d inputs, batch 64, 70 steps.

Repetitions are interleaved across the configurations so that load from other processes
spreads evenly over them. Each configuration reports its median step time, its fastest step
and the process CPU time per step (the steadier figure on a busy machine). FLOP per token counts
the matmuls only: `2 * gates * units * (input_dim + units)` per layer forward (4 gates for LSTM,
3 for GRU, 1 for SimpleRNN), times 3 for forward + backward. The achieved share of the machine is
measured against the machine's practical float32 matmul peak: the better of TensorFlow's and
numpy's (BLAS) square matmul in this process, timed the same way; the share of TensorFlow's own
peak is reported beside it.

PyTorch's `nn.LSTM` / `nn.GRU` / `nn.RNN` run beside them on the same shapes, in the same
run and on as many threads as TensorFlow (see `bench.pytorch`), when PyTorch is installed (the
`bench` extra); it runs the padded batch as a plain tensor, its fast path. Without PyTorch its
column says "not installed". The CPU's vector flags (AVX2, AVX-512, ...) are in the result's
`machine.cpu_flags`, and TensorFlow's 2048² matmul peak is printed in the summary.

Two ceilings run beside them: the same stack's matmuls alone, at the same shapes and with the
same step-to-step dependency (each step's recurrent matmul waits for the previous one, forward
and backward), but without any gate math, once compiled with XLA (TensorFlow's kernels, as the
fast path runs them) and once in numpy (BLAS). No implementation of the cell built on those
kernels can beat its ceiling, so the ceiling's share of the peak bounds what the fast path can
reach.

Example:

```sh
python -m bench.rnn_stack                   # all three cells, about a minute and a half on 2 cores
python -m bench.rnn_stack --cells lstm      # one cell, under a minute
python -m bench.rnn_stack --smoke           # tiny shapes, a few seconds
```
"""

import statistics
import time

from bench import common, pytorch

NAME = "rnn_stack"
GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}
IMPLEMENTATIONS = ("keras", "fast")


def add_arguments(parser):
    parser.add_argument("--cells", nargs="+", choices=sorted(GATES), default=["lstm", "gru", "simple_rnn"])
    parser.add_argument("--no-mask", dest="mask", action="store_false", help="run without a padding mask")


def flop_per_token(gates, input_dim, units, layers):
    """Matmul FLOP per token of forward + backward through the stack."""
    forward = sum(2 * gates * units * ((input_dim if i == 0 else units) + units) for i in range(layers))
    return 3 * forward


def numpy_matmul_peak_gflops(size, repeats):
    """Float32 GFLOP/s of a `size` × `size` numpy (BLAS) matmul in this process: the machine's practical peak."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.random((size, size), dtype="float32") for _ in range(2))
    a @ b
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        timings.append(time.perf_counter() - start)
    return 2 * size**3 / min(timings) / 1e9


def _layer_classes(cell):
    import keras

    from tftune.fast_rnn import FastGRU, FastLSTM, FastSimpleRNN

    return {
        "lstm": (keras.layers.LSTM, FastLSTM),
        "gru": (keras.layers.GRU, FastGRU),
        "simple_rnn": (keras.layers.SimpleRNN, FastSimpleRNN),
    }[cell]


def _stack(layer_class, shape):
    """`shape["layers"]` built layers of `layer_class`, bottom first."""
    stack, width = [], shape["input_dim"]
    for _ in range(shape["layers"]):
        layer = layer_class(shape["units"], return_sequences=True)
        layer.build((shape["batch"], shape["time"], width))
        stack.append(layer)
        width = shape["units"]
    return stack


def _training_step(stack, shape, masked):
    """A compiled forward + backward step through `stack` on fixed inputs, as a no-argument callable."""
    import numpy as np
    import tensorflow as tf

    batch, steps = shape["batch"], shape["time"]
    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.normal(size=(batch, steps, shape["input_dim"])).astype("float32"))
    # Right-padded like the training batches: the last sequence is half padding.
    lengths = np.full(batch, steps)
    lengths[-1] = steps // 2
    mask = tf.constant(np.arange(steps)[None, :] < lengths[:, None]) if masked else None
    variables = [v for layer in stack for v in layer.trainable_variables]

    @tf.function
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            hidden = inputs
            for layer in stack:
                hidden = layer(hidden, mask=mask)
            loss = tf.reduce_mean(tf.square(hidden))
        return loss, tape.gradient(loss, [inputs] + variables)

    return lambda: step(inputs)[0].numpy()


def _pytorch_step(cell, shape):
    """PyTorch's stack on `shape` (see `bench.pytorch`), or None when PyTorch is not installed."""
    if pytorch.version() is None:
        return None
    return pytorch.stack_step(cell, shape, pytorch.tensorflow_threads())


def _ceiling_operands(gates, shape):
    """Time-major inputs `[time * batch, input_dim]` and each layer's (input, recurrent) kernels, in numpy."""
    import numpy as np

    rng = np.random.default_rng(0)
    units = shape["units"]
    inputs = rng.normal(size=(shape["time"] * shape["batch"], shape["input_dim"])).astype("float32")
    widths = [shape["input_dim"]] + [units] * (shape["layers"] - 1)
    kernels = [(rng.normal(size=(width, gates * units)).astype("float32") * 0.05,
                rng.normal(size=(units, gates * units)).astype("float32") * 0.05) for width in widths]
    return inputs, kernels


def _matmuls_only_xla(gates, shape):
    """The stack's matmuls alone, compiled with XLA, as a no-argument callable."""
    import tensorflow as tf

    batch, steps, units = shape["batch"], shape["time"], shape["units"]
    inputs, kernels = _ceiling_operands(gates, shape)
    inputs = tf.constant(inputs)
    kernels = [(tf.constant(input_kernel), tf.constant(recurrent_kernel)) for input_kernel, recurrent_kernel in kernels]

    def loop(body, start):
        """`steps` dependent applications of `body`, stacked time-major into `[steps * batch, ...]`."""
        def step(t, state, outputs):
            state = body(state)
            return t + 1, state, outputs.write(t, state)

        _, _, outputs = tf.while_loop(lambda t, *_: t < steps, step,
                                      (0, start, tf.TensorArray(tf.float32, steps)))
        return tf.reshape(outputs.stack(), (steps * batch, -1))

    @tf.function(jit_compile=True)
    def step(inputs):
        hidden, gradients = inputs, []
        for input_kernel, recurrent_kernel in kernels:
            projected = tf.reshape(hidden @ input_kernel, (steps, batch, gates * units))
            # Forward: each step's recurrent matmul needs the previous step's output (summed over
            # the gates, so that every output column is used and none of the matmul can be dropped).
            states = loop(lambda h: tf.reduce_sum(tf.reshape(h @ recurrent_kernel, (batch, gates, units)), axis=1),
                          tf.zeros((batch, units)))
            states += tf.reshape(projected[..., :units], (steps * batch, units))
            # Backward: the gate gradients of a step need the next step's.
            gate_gradients = loop(lambda g: tf.tile(g @ tf.transpose(recurrent_kernel), (1, gates)),
                                  tf.fill((batch, gates * units), 1e-3))
            gradients += [tf.reduce_sum(tf.transpose(states) @ gate_gradients),
                          tf.reduce_sum(tf.transpose(hidden) @ gate_gradients)]
            inputs_gradient = gate_gradients @ tf.transpose(input_kernel)
            gradients.append(tf.reduce_sum(inputs_gradient))
            hidden = states
        return tf.add_n(gradients)

    return lambda: step(inputs).numpy()


def _matmuls_only_blas(gates, shape):
    """The stack's matmuls alone in numpy (BLAS), as a no-argument callable."""
    import numpy as np

    batch, steps, units = shape["batch"], shape["time"], shape["units"]
    inputs, kernels = _ceiling_operands(gates, shape)

    def run():
        hidden = inputs
        for input_kernel, recurrent_kernel in kernels:
            projected = hidden @ input_kernel
            state, states = np.zeros((batch, units), "float32"), []
            for t in range(steps):
                gate_sum = (state @ recurrent_kernel).reshape(batch, gates, units).sum(axis=1)
                state = gate_sum + projected[t * batch:(t + 1) * batch, :units]
                states.append(state)
            gate_gradient, gate_gradients = np.full((batch, gates * units), 1e-3, "float32"), []
            transposed = np.ascontiguousarray(recurrent_kernel.T)
            for _ in range(steps):
                gate_gradient = np.tile(gate_gradient @ transposed, (1, gates))
                gate_gradients.append(gate_gradient)
            states, gate_gradients = np.concatenate(states), np.concatenate(gate_gradients)
            # The weight and input gradients: computed for their time, not used.
            states.T @ gate_gradients, hidden.T @ gate_gradients, gate_gradients @ input_kernel.T
            hidden = states

    return run


# Ceilings timed beside the implementations: the stack's matmuls alone, in each library's kernels.
CEILINGS = {"matmuls_xla": _matmuls_only_xla, "matmuls_blas": _matmuls_only_blas}


def measure(args):
    if args.smoke:
        shape = {"layers": 2, "units": 16, "input_dim": 8, "batch": 4, "time": 6}
        schedule = {"warmup": 1, "rounds": 1, "steps": 2, "peak": {"size": 64, "repeats": 2}}
    else:
        shape = {"layers": 2, "units": 256, "input_dim": 100, "batch": 64, "time": 70}
        schedule = {"warmup": 2, "rounds": 3, "steps": 3, "peak": {"size": 2048, "repeats": 10}}

    runs = {}
    pytorch_threads = pytorch.tensorflow_threads() if pytorch.version() else None
    for cell in args.cells:
        common.log(f"building {cell}")
        keras_stack, fast_stack = (_stack(layer_class, shape) for layer_class in _layer_classes(cell))
        for keras_layer, fast_layer in zip(keras_stack, fast_stack):
            fast_layer.set_weights(keras_layer.get_weights())
        for implementation, stack in zip(IMPLEMENTATIONS, (keras_stack, fast_stack)):
            run = _training_step(stack, shape, args.mask)
            for _ in range(schedule["warmup"]):
                run()
            runs[cell, implementation] = {
                "run": run,
                "fast_path": all(getattr(layer, "uses_fast_path", False) for layer in stack),
                "wall": [],
                "cpu": [],
            }
        peers = {"pytorch": lambda gates, shape: _pytorch_step(cell, shape), **CEILINGS}
        for peer, build in peers.items():
            run = build(GATES[cell], shape)
            if run is None:
                continue
            for _ in range(schedule["warmup"]):
                run()
            runs[cell, peer] = {"run": run, "fast_path": False, "wall": [], "cpu": []}

    common.log("timing")
    for _ in range(schedule["rounds"]):
        for timings in runs.values():
            for _ in range(schedule["steps"]):
                wall, cpu = time.perf_counter(), time.process_time()
                timings["run"]()
                timings["wall"].append(time.perf_counter() - wall)
                timings["cpu"].append(time.process_time() - cpu)

    common.log("timing the matmul peaks")
    tensorflow_peak = common.tensorflow_matmul_peak_gflops(**schedule["peak"])
    numpy_peak = numpy_matmul_peak_gflops(**schedule["peak"])
    peak = max(tensorflow_peak, numpy_peak)  # the machine's practical peak: the best either library reaches
    tokens = shape["batch"] * shape["time"]
    cells = {}
    for (cell, implementation), timings in runs.items():
        flop = flop_per_token(GATES[cell], shape["input_dim"], shape["units"], shape["layers"])
        wall, cpu = statistics.median(timings["wall"]), statistics.median(timings["cpu"])
        cells.setdefault(cell, {"flop_per_token": flop})[implementation] = {
            "fast_path": timings["fast_path"],
            "step_ms": round(1000 * wall, 2),
            "fastest_step_ms": round(1000 * min(timings["wall"]), 2),
            "cpu_ms_per_step": round(1000 * cpu, 2),
            "tokens_per_second": round(tokens / wall),
            "gflop_per_second": round(flop * tokens / wall / 1e9, 1),
            "share_of_matmul_peak": common.significant(flop * tokens / wall / 1e9 / peak, 3),
            "share_of_tensorflow_matmul_peak": common.significant(flop * tokens / wall / 1e9 / tensorflow_peak, 3),
        }
    for result in cells.values():
        keras_result, fast_result = result["keras"], result["fast"]
        result["ratios"] = {
            "tokens_per_second": common.ratio(fast_result["tokens_per_second"], keras_result["tokens_per_second"]),
            "fastest_step": common.ratio(keras_result["fastest_step_ms"], fast_result["fastest_step_ms"]),
            "cpu_per_step": common.ratio(keras_result["cpu_ms_per_step"], fast_result["cpu_ms_per_step"]),
        }
        if "pytorch" in result:
            result["ratios"]["fast_vs_pytorch_tokens_per_second"] = common.ratio(
                fast_result["tokens_per_second"], result["pytorch"]["tokens_per_second"])
        else:
            result["pytorch"] = pytorch.NOT_INSTALLED
    return {"config": {**shape, "mask": args.mask, **schedule, "pytorch_threads": pytorch_threads},
            "matmul_peak_gflop_per_second": round(peak, 1),
            "tensorflow_matmul_peak_gflop_per_second": round(tensorflow_peak, 1),
            "numpy_matmul_peak_gflop_per_second": round(numpy_peak, 1), "cells": cells}


def _pytorch_tokens(cell_result):
    """PyTorch's tokens/s as the tables show it, or "not installed"."""
    peer = cell_result.get("pytorch", pytorch.NOT_INSTALLED)
    return peer if isinstance(peer, str) else f"{peer['tokens_per_second']:,}"


def summary(result):
    machine = result["machine"]
    return (
        f"rnn_stack (Keras -> tftune.fast_rnn, forward + backward; CPU flags "
        f"{' '.join(machine.get('cpu_flags', [])) or 'unknown'}, TensorFlow {result['config']['peak']['size']}² "
        f"matmul {result['tensorflow_matmul_peak_gflop_per_second']} GFLOP/s): " + "; ".join(
            f"{cell} {r['keras']['tokens_per_second']:,} -> {r['fast']['tokens_per_second']:,} tokens/s "
            f"(x{r['ratios']['tokens_per_second']:.2f}, x{r['ratios']['cpu_per_step']:.2f} CPU time, "
            f"{r['fast']['gflop_per_second']} GFLOP/s = {r['fast']['share_of_matmul_peak']:.0%} of the practical "
            f"matmul peak; its matmuls alone: XLA {r['matmuls_xla']['share_of_matmul_peak']:.0%}, "
            f"BLAS {r['matmuls_blas']['share_of_matmul_peak']:.0%}; PyTorch {_pytorch_tokens(r)} tokens/s)"
            for cell, r in result["cells"].items()
        )
    )


def markdown(result):
    config = result["config"]
    lines = [
        "### Recurrent stack (`python -m bench.rnn_stack`)",
        "",
        f"{config['layers']} layers of {config['units']} units on {config['input_dim']}-d inputs, batch "
        f"{config['batch']} × {config['time']} steps{', right-padded mask' if config['mask'] else ''}; "
        "forward + backward (gradients w.r.t. inputs and weights), median step. Float32 "
        f"{config['peak']['size']}² matmul peaks measured in the same process: TensorFlow "
        f"{result.get('tensorflow_matmul_peak_gflop_per_second', result['matmul_peak_gflop_per_second'])} GFLOP/s, "
        f"numpy {result.get('numpy_matmul_peak_gflop_per_second', '—')} GFLOP/s; the practical peak is the "
        f"better of the two, {result['matmul_peak_gflop_per_second']} GFLOP/s. CPU flags: "
        f"{', '.join(result['machine'].get('cpu_flags', [])) or 'not recorded'}. PyTorch: "
        + (f"{result['machine']['torch']}, `nn.LSTM/GRU/RNN` on {config['pytorch_threads']} threads, as many as "
           "TensorFlow's." if config.get("pytorch_threads") else f"{pytorch.NOT_INSTALLED}."),
        "",
        "| cell | Keras tokens/s | fast tokens/s | ratio | CPU-time ratio | PyTorch tokens/s | fast / PyTorch | "
        "fast GFLOP/s | share of practical peak (Keras → fast) | share of TensorFlow's peak (fast) | its matmuls "
        "alone, share of practical peak (XLA / BLAS) | FLOP/token |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cell, r in result["cells"].items():
        versus_pytorch = r["ratios"].get("fast_vs_pytorch_tokens_per_second")
        lines.append(
            f"| {cell} | {r['keras']['tokens_per_second']:,} | {r['fast']['tokens_per_second']:,} | "
            f"{r['ratios']['tokens_per_second']:.2f}× | {r['ratios']['cpu_per_step']:.2f}× | {_pytorch_tokens(r)} | "
            f"{'—' if versus_pytorch is None else f'{versus_pytorch:.2f}×'} | "
            f"{r['fast']['gflop_per_second']} | {r['keras']['share_of_matmul_peak']:.0%} → "
            f"{r['fast']['share_of_matmul_peak']:.0%} | "
            f"{r['fast'].get('share_of_tensorflow_matmul_peak', r['fast']['share_of_matmul_peak']):.0%} | "
            f"{r['matmuls_xla']['share_of_matmul_peak']:.0%} / {r['matmuls_blas']['share_of_matmul_peak']:.0%} | "
            f"{r['flop_per_token']:,} |"
        )
    return "\n".join(lines)


def main(argv=None):
    return common.main(NAME, "Keras vs tftune.fast_rnn recurrent stacks, forward + backward.", measure, summary,
                       add_arguments, argv=argv)


if __name__ == "__main__":
    main()
