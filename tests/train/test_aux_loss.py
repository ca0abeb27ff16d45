"""Auxiliary losses in the train step (``sow(nnx.Intermediate, "aux_loss", v)``) and DSA's
indexer training through the trainer: dense warm-up, then sparse, one compiled step."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.config import Config, MeshConfig, ModelConfig, TaskInfo, TrainConfig
from seqlab.train.run import make_trainer
from seqlab.train.sharding import make_mesh, shard_batch, state_shardings
from seqlab.train.steps import forward_with_aux, make_eval_step, make_train_step


@contextlib.contextmanager
def count_compiles():
    """Yields a list that collects one entry per XLA compilation inside the block."""
    seen = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


class Sower(nnx.Module):
    """Sows ``const + alpha * sum(w**2)`` as aux_loss (and a decoy under another name)."""

    def __init__(self, *, const: float, alpha: float, shape: tuple[int, ...], enabled: bool):
        self.const, self.alpha, self.enabled = const, alpha, enabled
        self.shape = shape

    def __call__(self, w: jax.Array) -> None:
        if self.enabled:
            value = self.const + self.alpha * jnp.sum(w**2)
            self.sow(nnx.Intermediate, "aux_loss", jnp.broadcast_to(value, self.shape))
            self.sow(nnx.Intermediate, "other", 100.0 * value)


class Toy(nnx.Module):
    """Mean-pooled token embedding -> linear classifier; its sower runs twice per call."""

    def __init__(self, *, rngs: nnx.Rngs, enabled: bool = True, shape: tuple[int, ...] = ()):
        self.embed = nnx.Embed(5, 4, rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)
        self.sower = Sower(const=0.375, alpha=0.25, shape=shape, enabled=enabled)

    def __call__(self, inputs, mask, inputs2=None, mask2=None):
        h = (self.embed(inputs) * mask[..., None]).mean(1)
        self.sower(self.head.kernel[...])
        self.sower(self.head.kernel[...])
        return self.head(h)


def _toy_step(**kw):
    model = Toy(rngs=nnx.Rngs(0), **kw)
    optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    shardings = state_shardings(state, make_mesh(MeshConfig()))
    return make_train_step(graphdef, shardings), jax.device_put(state, shardings), graphdef


TOY_BATCH = {
    "inputs": jnp.array([[1, 2, 3, 0], [4, 4, 1, 2]]),
    "mask": jnp.array([[True, True, True, False], [True] * 4]),
    "labels": jnp.array([2, 0]),
    "weights": jnp.ones(2),
}


def test_train_step_adds_sown_aux_losses_and_their_gradients():
    step, state, graphdef = _toy_step()
    plain_step, plain_state, _ = _toy_step(enabled=False)
    w0 = np.asarray(state[0]["head"]["kernel"].get_value())
    structure = jax.tree.structure(state)
    new, m = step(state, TOY_BATCH)
    plain_new, pm = plain_step(plain_state, TOY_BATCH)
    aux = 2 * (0.375 + 0.25 * np.sum(w0**2))  # two calls, each one scalar; the decoy ignored
    assert_close(m["aux_loss"], aux, rtol=1e-6)
    assert float(pm["aux_loss"]) == 0.0
    assert_close(m["loss"] - pm["loss"], aux, rtol=1e-6)
    assert float(m["loss_sum"]) == float(pm["loss_sum"])  # the task loss alone is unchanged
    # sgd(0.5): the aux gradient 2 * 2 * alpha * w is added to the task gradient
    w1 = np.asarray(new[0]["head"]["kernel"].get_value())
    w1_plain = np.asarray(plain_new[0]["head"]["kernel"].get_value())
    assert_close(w1 - w1_plain, -0.5 * 4 * 0.25 * w0, rtol=1e-5, atol=1e-7)
    # no Intermediate is left in the state: same structure, the step does not recompile
    assert jax.tree.structure(new) == structure
    assert not nnx.to_flat_state(nnx.state(nnx.merge(graphdef, new), nnx.Intermediate))
    with count_compiles() as compiles:
        new, _ = step(new, TOY_BATCH)
    assert not compiles
    # the eval step discards whatever is sown
    sums = make_eval_step(nnx.split(Toy(rngs=nnx.Rngs(0)))[0])(new[0], TOY_BATCH)
    assert set(sums) == {"loss_sum", "correct", "count"}


def test_non_scalar_aux_loss_is_an_error():
    step, state, _ = _toy_step(shape=(2,))
    with pytest.raises(ValueError, match="sower/aux_loss: an aux_loss must be a scalar"):
        step(state, TOY_BATCH)


def _indexer_steps(state) -> list[int]:
    return [int(v.get_value()) for p, v in nnx.to_flat_state(state) if p[-1] == "indexer_step"]


def _with(state, indexer_from, step: int):
    """``state`` with the indexer parameters of ``indexer_from`` and every counter at ``step``."""
    donor = dict(nnx.to_flat_state(indexer_from))
    flat = []
    for path, v in nnx.to_flat_state(state):
        if path[-1] == "indexer_step":
            v = v.replace(jnp.asarray(step, jnp.int32))
        elif any(name in path for name in ("wq_idx", "wk_idx", "w_idx")):
            v = donor[path]
        flat.append((path, v))
    return nnx.from_flat_state(flat)


def test_dsa_indexer_trains_through_the_trainer():
    """A period-5 token task (the next token is the one 4 positions back) trained for 12
    dense warm-up steps, then 18 sparse steps, through the Trainer's compiled train step. The KL is
    then measured against the trained model's own attention: with the trained indexer it is far
    below the KL with the initial indexer, for both objectives (eq. 3 dense, eq. 4 sparse)."""
    vocab, length, period, warm, steps = 8, 24, 5, 12, 30
    info = TaskInfo("token", n_classes=vocab, vocab_size=vocab, input_dim=None,
                    max_length=length, causal=True)
    mixer_args = {"base": "mha", "n_heads": 2, "topk": 4, "index_heads": 2,
                  "index_head_dim": 8, "block_size": 8, "indexer_warmup_steps": warm}
    cfg = Config(
        model=ModelConfig(mixer="dsa", d_model=16, n_layers=1, mixer_args=mixer_args,
                          norm="layer", ffn="none"),
        train=TrainConfig(steps=steps, batch_size=8, lr=0.02, warmup_steps=0,
                          weight_decay=0.0, seed=0),
        mesh=MeshConfig(data=2),
    )
    run = make_trainer(cfg, info)
    initial = jax.tree.map(jnp.copy, run.state[0])  # the train step donates its input
    rng = np.random.default_rng(0)

    def batch():
        seq = np.tile(rng.integers(0, vocab, (8, period)), (1, length // period + 2))
        return {"inputs": seq[:, :length], "mask": np.ones((8, length), bool),
                "labels": seq[:, 1 : length + 1], "weights": np.ones(8, np.float32)}

    structure = jax.tree.structure(run.state)
    kl = []
    with jax.set_mesh(run.mesh):
        for i in range(steps):
            with count_compiles() as compiles:
                run.state, m = run.train_step(run.state, shard_batch(batch(), run.mesh))
                kl.append(float(m["aux_loss"]))
            assert not compiles or i == 0, f"step {i} compiled again"  # both stages, one step
        assert jax.tree.structure(run.state) == structure
        assert _indexer_steps(run.state[0]) == [steps]
        held_out = shard_batch(batch(), run.mesh)
        sums = run.eval_step(run.state[0], held_out)
        model = nnx.merge(run.model_graphdef, run.state[0])
        model.eval()
        # eval mode touches no variable (else this closure would raise a TraceContextError)
        logits = jax.jit(lambda: model(held_out["inputs"], held_out["mask"]))()

        @jax.jit
        def sown_kl(state):
            m = nnx.merge(run.model_graphdef, state)
            m.train()
            return forward_with_aux(m, held_out)[1]

        final = run.state[0]
        measured = {
            (stage, indexer): float(sown_kl(_with(final, source, step)))
            for stage, step in (("dense", 0), ("sparse", warm))
            for indexer, source in (("initial", initial), ("trained", final))
        }
    assert _indexer_steps(run.state[0]) == [steps]
    assert np.isfinite(float(sums["loss_sum"])) and logits.shape == (8, length, vocab)
    assert all(np.isfinite(k) and k > 0 for k in kl), kl
    print("KL per step:", np.round(kl, 3).tolist(), "held-out KL:", measured)
    # The index keys' LayerNorm (DeepSeek-V3.2's Indexer) slows the first steps: after 30 steps
    # the KL is ~0.65x its initial value; an indexer that does not learn stays at 1.0x.
    for stage in ("dense", "sparse"):
        assert measured[stage, "trained"] < 0.75 * measured[stage, "initial"], measured


def test_dsa_warm_up_with_train_only_freezes_everything_but_the_indexer():
    """DeepSeek-V3.2's dense warm-up: ``train.train_only`` for the warm-up steps updates the
    indexer's W_qI, W_kI, W_w alone (the rest bitwise unchanged); the next step moves the rest."""
    vocab, length, warm = 8, 16, 3
    info = TaskInfo("token", n_classes=vocab, vocab_size=vocab, input_dim=None,
                    max_length=length, causal=True)
    mixer_args = {"base": "mla", "n_heads": 2, "kv_lora_rank": 8, "topk": 4, "index_heads": 2,
                  "index_head_dim": 8, "block_size": 8, "indexer_warmup_steps": warm}
    indexer = ("wq_idx", "wk_idx", "w_idx")
    cfg = Config(
        model=ModelConfig(mixer="dsa", d_model=16, n_layers=1, mixer_args=mixer_args,
                          norm="layer", ffn="mlp"),
        train=TrainConfig(steps=10, batch_size=4, lr=0.01, warmup_steps=0, seed=0,
                          train_only={"steps": warm, "params": indexer}),
    )
    run = make_trainer(cfg, info)
    rng = np.random.default_rng(1)

    def params():
        flat = nnx.to_flat_state(nnx.state(nnx.merge(run.model_graphdef, run.state[0]),
                                           nnx.Param))
        return {"/".join(map(str, k)): np.array(v[...]) for k, v in flat}

    def step():
        x = rng.integers(0, vocab, (4, length + 1))
        batch = {"inputs": x[:, :-1], "labels": x[:, 1:], "mask": np.ones((4, length), bool),
                 "weights": np.ones(4, np.float32)}
        with jax.set_mesh(run.mesh):
            run.state, _ = run.train_step(run.state, shard_batch(batch, run.mesh))

    before = params()
    for _ in range(warm):
        step()
    warmed = params()
    changed = {k for k in before if not np.array_equal(before[k], warmed[k])}
    is_indexer = {k for k in before if any(n in k.split("/") for n in indexer)}
    assert is_indexer and changed == is_indexer, sorted(changed ^ is_indexer)
    step()
    released = params()
    assert all(not np.array_equal(warmed[k], released[k]) for k in before if k not in is_indexer)
