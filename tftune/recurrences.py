"""The recurrences behind `tftune.fast_rnn`'s layers: each cell's loop, forward and backward.

Each `*_recurrence` takes the inputs already projected by the input kernel (time-major,
`[time, batch, gates * units]`), the recurrent kernel, the initial states and an optional
`[time, batch, 1]` boolean mask, and returns `(outputs, final states)`. Its gradient is explicit
(`tf.custom_gradient`): the backward pass runs the loop in reverse with only
`grad @ recurrent_kernel.T` inside, and the recurrent kernel's gradient is one matmul over all
steps after it. With `compiled=True` (a number of steps known while tracing) both passes are
compiled with XLA; see `tftune.fast_rnn` for when the layers take this path.

Example:

>>> import tensorflow as tf
>>> from tftune.recurrences import simple_rnn_recurrence
>>> projected, kernel = tf.random.normal([5, 2, 3]), tf.random.normal([3, 3])
>>> outputs, (h,) = simple_rnn_recurrence(projected, kernel, tf.zeros([2, 3]), None)
>>> outputs.shape, h.shape
(TensorShape([5, 2, 3]), TensorShape([2, 3]))
"""

import inspect

import tensorflow as tf


def _scan(step, sequences, carry, output_widths, reverse=False):
    """Runs `step` over the leading (time) axis, like a lean `tf.scan`.

    Args:
        step: `step(step_inputs, carry) -> (carry, step_outputs)`. `step_inputs` holds one time
            step of each sequence (`None` where the sequence is `None`); `step_outputs` is a
            tuple of `[batch, width]` tensors.
        sequences: tuple of time-major tensors `[time, ...]` or `None`.
        carry: tuple of loop-carried tensors, the first one `[batch, units]`.
        output_widths: the width of each step output.
        reverse: run from the last step to the first.

    Returns:
        `(carry, outputs)`: the final carry and the step outputs stacked to `[time, batch, width]`.
    """
    present = [s for s in sequences if s is not None]
    length = tf.shape(present[0])[0]
    readers = [
        None if s is None else tf.TensorArray(s.dtype, size=length, element_shape=s.shape[1:]).unstack(s)
        for s in sequences
    ]
    batch = carry[0].shape[0]
    writers = tuple(
        tf.TensorArray(carry[0].dtype, size=length, element_shape=tf.TensorShape([batch, width]))
        for width in output_widths
    )

    def body(t, carry, writers):
        index = length - 1 - t if reverse else t
        step_inputs = tuple(None if r is None else r.read(index) for r in readers)
        carry, outputs = step(step_inputs, carry)
        return t + 1, carry, tuple(w.write(index, o) for w, o in zip(writers, outputs))

    _, carry, writers = tf.while_loop(
        lambda t, *_: t < length, body, (tf.constant(0), tuple(carry), writers), maximum_iterations=length
    )
    return carry, tuple(w.stack() for w in writers)


def _keep_if_masked(mask_t, new, old):
    """`new` on real steps and `old` on masked ones: Keras carries states over masked steps."""
    return new if mask_t is None else tf.where(mask_t, new, old)


def _split_by_mask(mask_t, grad):
    """Splits a state gradient into the part through the cell and the part skipping a masked step."""
    if mask_t is None:
        return grad, None
    zeros = tf.zeros_like(grad)
    return tf.where(mask_t, grad, zeros), tf.where(mask_t, zeros, grad)


def _plus(tensor, skipped):
    return tensor if skipped is None else tensor + skipped


def _zeros_if_none(grad, like):
    return tf.zeros_like(like) if grad is None else grad


def _before_each_step(initial, sequence):
    """`[initial, sequence[0], ..., sequence[-2]]`: the value each step starts from."""
    return tf.concat([initial[None], sequence[:-1]], axis=0)


def _recurrent_kernel_grad(previous_outputs, recurrent_grads):
    """`sum_t h_{t-1}^T @ recurrent_grads_t` as one matmul over all time steps."""
    units, width = previous_outputs.shape[-1], recurrent_grads.shape[-1]
    return tf.matmul(
        tf.reshape(previous_outputs, [-1, units]), tf.reshape(recurrent_grads, [-1, width]), transpose_a=True
    )


# (pass function, compiled, what its traces cannot share) -> its tf.function, made on first use.
# One per kernel shape and dtype, with or without a mask: a function shared by layers of several
# sizes would relax the kernel's shape too (the passes read the number of units from it), and
# traces of other dtypes or mask kinds would count as retracing.
GRAPH_FUNCTIONS = {}


def _graph_function(pass_function, compiled, trace_kind):
    key = (pass_function, compiled, trace_kind)
    if key not in GRAPH_FUNCTIONS:
        # autograph off: the passes branch on Python values (a mask or None) while tracing.
        GRAPH_FUNCTIONS[key] = tf.function(
            pass_function, jit_compile=compiled, reduce_retracing=not compiled, autograph=False
        )
    return GRAPH_FUNCTIONS[key]


def _maybe_compiled(pass_function, compiled):
    """`pass_function`, or its XLA-compiled twin when `compiled` (see the module docstring).

    In a graph being traced, the uncompiled pass becomes part of it. Called eagerly (e.g. a
    model called on batches of several lengths), it runs as one graph function whose traces
    generalize over the number of steps, so each new length is neither traced nor compiled again
    (which XLA would do) and the loop does not run op by op.

    Each pass has an explicit gradient (the recurrence's custom gradient calls the backward pass),
    so its inputs are cut from the tape: a compiled function that TensorFlow itself had to be
    ready to differentiate would hand its loop's TensorLists across the XLA boundary, which
    eager TensorFlow refuses.
    """

    parameters = list(inspect.signature(pass_function).parameters)

    def run(*args):
        function = pass_function
        if compiled or tf.executing_eagerly():
            kernel, mask = args[parameters.index("recurrent_kernel")], args[parameters.index("mask")]
            function = _graph_function(pass_function, compiled, (tuple(kernel.shape), kernel.dtype, mask is None))
        return function(*(tf.stop_gradient(arg) if tf.is_tensor(arg) else arg for arg in args))

    return run


def _tanh_sigmoid(x):
    """The logistic sigmoid as `(1 + tanh(x / 2)) / 2`: XLA's CPU sigmoid costs several times its tanh."""
    return 0.5 + 0.5 * tf.tanh(0.5 * x)


def _sigmoid_of(compiled):
    """The gates' sigmoid: TensorFlow's own kernel, or the tanh form where XLA compiles the pass."""
    return _tanh_sigmoid if compiled else tf.sigmoid


def _lstm_forward(inputs, recurrent_kernel, h0, c0, mask, sigmoid):
    """The LSTM's forward pass: outputs, cell states and gates at every step (gates i, f, c, o)."""
    units = recurrent_kernel.shape[0]

    def step(step_inputs, carry):
        x, mask_t = step_inputs
        h, c = carry
        z = x + tf.matmul(h, recurrent_kernel)
        i, f, g, o = tf.split(z, 4, axis=1)
        i, f, g, o = sigmoid(i), sigmoid(f), tf.tanh(g), sigmoid(o)
        c_new = f * c + i * g
        h_new = o * tf.tanh(c_new)
        h, c = _keep_if_masked(mask_t, h_new, h), _keep_if_masked(mask_t, c_new, c)
        return (h, c), (h, c, tf.concat([i, f, g, o], axis=1))

    (h, c), (outputs, carries, gates) = _scan(step, (inputs, mask), (h0, c0), (units, units, 4 * units))
    return outputs, carries, gates, h, c


def _lstm_backward(d_outputs, d_h, d_c, recurrent_kernel, h0, c0, outputs, carries, gates, mask):
    """The LSTM's backward pass: the gradients of the inputs, recurrent kernel and initial states."""
    units = recurrent_kernel.shape[0]
    transposed_kernel = tf.transpose(recurrent_kernel)
    previous_carries = _before_each_step(c0, carries)

    def step(step_inputs, carry):
        d_output, gate, c_t, c_tm1, mask_t = step_inputs
        dh, dc = carry
        dh, dh_skipped = _split_by_mask(mask_t, dh + d_output)
        dc, dc_skipped = _split_by_mask(mask_t, dc)
        i, f, g, o = tf.split(gate, 4, axis=1)
        tanh_c = tf.tanh(c_t)
        dc = dc + dh * o * (1 - tanh_c * tanh_c)
        dz = tf.concat(
            [dc * g * i * (1 - i), dc * c_tm1 * f * (1 - f), dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)],
            axis=1,
        )
        dh = _plus(tf.matmul(dz, transposed_kernel), dh_skipped)
        return (dh, _plus(dc * f, dc_skipped)), (dz,)

    (dh0, dc0), (dz,) = _scan(
        step, (d_outputs, gates, carries, previous_carries, mask), (d_h, d_c), (4 * units,), reverse=True
    )
    return dz, _recurrent_kernel_grad(_before_each_step(h0, outputs), dz), dh0, dc0


def lstm_recurrence(inputs, recurrent_kernel, h0, c0, mask, compiled=False):
    """LSTM over time-major projected inputs `[time, batch, 4 * units]` (gates i, f, c, o)."""

    @tf.custom_gradient
    def run(inputs, recurrent_kernel, h0, c0):
        outputs, carries, gates, h, c = _maybe_compiled(_lstm_forward, compiled)(
            inputs, recurrent_kernel, h0, c0, mask, _sigmoid_of(compiled)
        )

        def backward(d_outputs, d_h, d_c):
            return _maybe_compiled(_lstm_backward, compiled)(
                _zeros_if_none(d_outputs, outputs), _zeros_if_none(d_h, h), _zeros_if_none(d_c, c),
                recurrent_kernel, h0, c0, outputs, carries, gates, mask,
            )

        return (outputs, h, c), backward

    outputs, h, c = run(inputs, recurrent_kernel, h0, c0)
    return outputs, [h, c]


def _gru_forward(inputs, recurrent_kernel, recurrent_bias, h0, mask, sigmoid):
    """The GRU's forward pass: outputs, and the gates and recurrent candidate part at every step."""
    units = recurrent_kernel.shape[0]

    def step(step_inputs, carry):
        x, mask_t = step_inputs
        (h,) = carry
        x_z, x_r, x_h = tf.split(x, 3, axis=1)
        inner = tf.matmul(h, recurrent_kernel) + recurrent_bias
        inner_z, inner_r, inner_h = tf.split(inner, 3, axis=1)
        z = sigmoid(x_z + inner_z)
        r = sigmoid(x_r + inner_r)
        candidate = tf.tanh(x_h + r * inner_h)
        h = _keep_if_masked(mask_t, z * h + (1 - z) * candidate, h)
        return (h,), (h, tf.concat([z, r, candidate, inner_h], axis=1))

    (h,), (outputs, saved) = _scan(step, (inputs, mask), (h0,), (units, 4 * units))
    return outputs, saved, h


def _gru_backward(d_outputs, d_h, recurrent_kernel, h0, outputs, saved, mask):
    """The GRU's backward pass: the gradients of the inputs, recurrent kernel and bias, and initial state."""
    units = recurrent_kernel.shape[0]
    transposed_kernel = tf.transpose(recurrent_kernel)
    previous_outputs = _before_each_step(h0, outputs)

    def step(step_inputs, carry):
        d_output, saved_t, h_tm1, mask_t = step_inputs
        (dh,) = carry
        dh, dh_skipped = _split_by_mask(mask_t, dh + d_output)
        z, r, candidate, inner_h = tf.split(saved_t, 4, axis=1)
        d_candidate = dh * (1 - z) * (1 - candidate * candidate)
        d_z = dh * (h_tm1 - candidate) * z * (1 - z)
        d_r = d_candidate * inner_h * r * (1 - r)
        d_inner = tf.concat([d_z, d_r, d_candidate * r], axis=1)
        dh = _plus(tf.matmul(d_inner, transposed_kernel) + dh * z, dh_skipped)
        return (dh,), (tf.concat([d_z, d_r, d_candidate], axis=1), d_inner)

    (dh0,), (d_inputs, d_inner) = _scan(
        step, (d_outputs, saved, previous_outputs, mask), (d_h,), (3 * units, 3 * units), reverse=True
    )
    d_bias = tf.reduce_sum(d_inner, axis=[0, 1])
    return d_inputs, _recurrent_kernel_grad(previous_outputs, d_inner), d_bias, dh0


def gru_recurrence(inputs, recurrent_kernel, recurrent_bias, h0, mask, compiled=False):
    """GRU (`reset_after=True`) over time-major projected inputs `[time, batch, 3 * units]` (gates z, r, h)."""

    @tf.custom_gradient
    def run(inputs, recurrent_kernel, recurrent_bias, h0):
        outputs, saved, h = _maybe_compiled(_gru_forward, compiled)(
            inputs, recurrent_kernel, recurrent_bias, h0, mask, _sigmoid_of(compiled)
        )

        def backward(d_outputs, d_h):
            return _maybe_compiled(_gru_backward, compiled)(
                _zeros_if_none(d_outputs, outputs), _zeros_if_none(d_h, h), recurrent_kernel, h0, outputs, saved, mask
            )

        return (outputs, h), backward

    outputs, h = run(inputs, recurrent_kernel, recurrent_bias, h0)
    return outputs, [h]


def _simple_rnn_forward(inputs, recurrent_kernel, h0, mask):
    """The tanh SimpleRNN's forward pass: the outputs at every step."""
    units = recurrent_kernel.shape[0]

    def step(step_inputs, carry):
        x, mask_t = step_inputs
        (h,) = carry
        h = _keep_if_masked(mask_t, tf.tanh(x + tf.matmul(h, recurrent_kernel)), h)
        return (h,), (h,)

    (h,), (outputs,) = _scan(step, (inputs, mask), (h0,), (units,))
    return outputs, h


def _simple_rnn_backward(d_outputs, d_h, recurrent_kernel, h0, outputs, mask):
    """The SimpleRNN's backward pass: the gradients of the inputs, recurrent kernel and initial state."""
    units = recurrent_kernel.shape[0]
    transposed_kernel = tf.transpose(recurrent_kernel)

    def step(step_inputs, carry):
        d_output, h_t, mask_t = step_inputs
        (dh,) = carry
        dh, dh_skipped = _split_by_mask(mask_t, dh + d_output)
        da = dh * (1 - h_t * h_t)
        return (_plus(tf.matmul(da, transposed_kernel), dh_skipped),), (da,)

    (dh0,), (da,) = _scan(step, (d_outputs, outputs, mask), (d_h,), (units,), reverse=True)
    return da, _recurrent_kernel_grad(_before_each_step(h0, outputs), da), dh0


def simple_rnn_recurrence(inputs, recurrent_kernel, h0, mask, compiled=False):
    """tanh SimpleRNN over time-major projected inputs `[time, batch, units]`."""

    @tf.custom_gradient
    def run(inputs, recurrent_kernel, h0):
        outputs, h = _maybe_compiled(_simple_rnn_forward, compiled)(inputs, recurrent_kernel, h0, mask)

        def backward(d_outputs, d_h):
            return _maybe_compiled(_simple_rnn_backward, compiled)(
                _zeros_if_none(d_outputs, outputs), _zeros_if_none(d_h, h), recurrent_kernel, h0, outputs, mask
            )

        return (outputs, h), backward

    outputs, h = run(inputs, recurrent_kernel, h0)
    return outputs, [h]
