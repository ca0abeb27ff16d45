"""Token-task loss masking against numpy: labels -1 and padded positions carry no loss.

Reference: loss = sum_{b,t} w_b m_{b,t} [y_{b,t} >= 0] CE(logits_{b,t}, y_{b,t}) / (the same
sum of weights), with CE(z, y) = logsumexp(z) - z_y, computed in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _assert import assert_close
from flax import nnx

from seqlab.config import MeshConfig, ModelConfig, TaskInfo
from seqlab.models import build_model
from seqlab.train.sharding import make_mesh, state_shardings
from seqlab.train.steps import loss_and_counts, make_eval_step, make_train_step

VOCAB = 7


def token_loss_ref(logits, labels, mask, weights):
    """-> (mean loss, loss_sum, correct, count), float64 loops."""
    logits = np.asarray(logits, np.float64)
    loss_sum = correct = count = 0.0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            y = labels[b, t]
            if y < 0 or not mask[b, t]:
                continue
            z = logits[b, t]
            lse = z.max() + np.log(np.sum(np.exp(z - z.max())))
            loss_sum += weights[b] * (lse - z[y])
            correct += weights[b] * float(np.argmax(z) == y)
            count += weights[b]
    return loss_sum / max(count, 1.0), loss_sum, correct, count


def _batch(seed=0, b=3, t=6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, VOCAB, (b, t))
    labels[0, [1, 4]] = -1  # ignored targets at real positions
    mask = np.ones((b, t), bool)
    mask[1, 4:] = False  # padding (its labels are valid ids: the mask alone must drop them)
    mask[2, 2:] = False
    labels[2, 3] = -1
    return {"inputs": rng.integers(0, VOCAB, (b, t)), "mask": mask, "labels": labels,
            "weights": np.array([1.0, 0.5, 2.0])}


def test_loss_and_counts_matches_numpy():
    batch = _batch()
    logits = np.random.default_rng(1).standard_normal((3, 6, VOCAB)) * 2
    loss, sums = jax.jit(loss_and_counts)(jnp.asarray(logits, jnp.float32),
                                          jax.tree.map(jnp.asarray, batch))
    want = token_loss_ref(logits, batch["labels"], batch["mask"], batch["weights"])
    assert_close(loss, want[0], rtol=1e-5)
    for name, w in zip(("loss_sum", "correct", "count"), want[1:], strict=True):
        assert_close(sums[name], w, rtol=1e-5, err_msg=name)


def test_train_and_eval_steps_use_the_masked_token_loss():
    info = TaskInfo(task="token", n_classes=VOCAB, vocab_size=VOCAB, input_dim=None,
                    max_length=6, causal=True)
    cfg = ModelConfig(mixer="mha", d_model=8, n_layers=1, mixer_args={"n_heads": 2}, ffn="mlp")
    model = build_model(cfg, info, rngs=nnx.Rngs(0))
    batch = jax.tree.map(jnp.asarray, _batch(2))
    model.eval()
    logits = jax.jit(lambda m: m(batch["inputs"], batch["mask"]))(model)
    want = token_loss_ref(logits, np.asarray(batch["labels"]), np.asarray(batch["mask"]),
                          np.asarray(batch["weights"]))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    shardings = state_shardings(state, make_mesh(MeshConfig()))
    eval_sums = make_eval_step(nnx.split(model)[0])(nnx.state(model), batch)
    _, metrics = make_train_step(graphdef, shardings)(jax.device_put(state, shardings), batch)
    assert_close(metrics["loss"], want[0], rtol=1e-5)
    for name, w in zip(("loss_sum", "correct", "count"), want[1:], strict=True):
        assert_close(metrics[name], w, rtol=1e-5, err_msg=name)
        assert_close(eval_sums[name], w, rtol=1e-5, err_msg=name)
