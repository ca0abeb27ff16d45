"""Parameter groups: SSM parameters get ssm_lr and no weight decay; 1-D parameters no decay."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.config import ConfigError, ModelConfig, TaskInfo, TrainConfig
from seqlab.models import build_model
from seqlab.train.optim import make_tx, param_groups, schedule

INFO = TaskInfo("classify", n_classes=3, vocab_size=11, input_dim=None, max_length=32)


def _model(norm="batch"):
    cfg = ModelConfig(mixer="s4d", d_model=8, n_layers=1, mixer_args={"d_state": 4}, norm=norm)
    return build_model(cfg, INFO, rngs=nnx.Rngs(0))


def test_groups_of_s4d_model():
    groups = param_groups(_model())
    by_name = {"/".join(k): g for k, g in groups.items()}
    ssm = sorted(k for k, g in by_name.items() if g == "ssm")
    # every SSM parameter of the S4D layer, and nothing else
    assert ssm and all("mixer" in k for k in ssm)
    assert any(k.endswith("log_dt") for k in ssm)
    # norm parameters (BatchNorm scale/bias) are never decayed: the LRA-reference trap
    norm_keys = [k for k in by_name if "norm" in k]
    assert norm_keys and all(by_name[k] == "no_decay" for k in norm_keys)
    assert by_name["embed/embedding"] == "decay"
    assert by_name["head/kernel"] == "decay" and by_name["head/bias"] == "no_decay"


def test_ssm_group_gets_its_lr_and_no_decay():
    model = _model(norm="layer")
    cfg = TrainConfig(lr=0.1, ssm_lr=0.01, weight_decay=0.5, warmup_steps=0, steps=10)
    opt = nnx.Optimizer(model, make_tx(model, cfg), wrt=nnx.Param)
    before = {k: np.array(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    opt.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
    # zero gradients: only the decoupled weight decay moves parameters, lr(0) = peak
    after = {k: np.array(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    groups = param_groups(model)
    decayed = 0
    for path, v in before.items():
        if groups[tuple(map(str, path))] == "decay":
            assert_close(after[path], v * (1 - 0.1 * 0.5), rtol=1e-5, atol=1e-7)
            decayed += 1
        else:
            np.testing.assert_array_equal(after[path], v)
    assert decayed >= 3


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, steps=110, end_lr_ratio=0.1)
    s = schedule(1.0, cfg)
    assert float(s(0)) == 0.0 and float(s(5)) == 0.5 and float(s(10)) == 1.0
    assert_close(float(s(60)), 0.1 + 0.9 * 0.5, rtol=1e-5)
    assert_close(float(s(110)), 0.1, rtol=1e-5)
    assert isinstance(make_tx(_model(), TrainConfig(grad_clip=1.0)), optax.GradientTransformation)


def test_each_group_moves_at_its_lr():
    # Adam's first step with gradient 1 moves every parameter by exactly its group's lr
    model = _model(norm="layer")
    cfg = TrainConfig(lr=0.1, ssm_lr=0.01, weight_decay=0.0, warmup_steps=0, steps=10)
    opt = nnx.Optimizer(model, make_tx(model, cfg), wrt=nnx.Param)
    before = {k: np.array(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    opt.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
    after = {k: np.array(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    for path, v in before.items():
        lr = 0.01 if param_groups(model)[tuple(map(str, path))] == "ssm" else 0.1
        assert_close(v - after[path], lr, rtol=1e-4)


def _params(model):
    return {tuple(map(str, k)): np.array(v[...])
            for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_train_only_freezes_the_rest_then_starts_its_schedule():
    """train_only {steps: 2, params: [head]}: two steps move only the head; at step 3 the rest
    takes Adam's *first* step (moment and schedule untouched while frozen): exactly its lr after
    warm-up step 0 -> lr 0 for warmup_steps=1, so the released group moves 0 at step 3 and lr at
    step 4, while the head is already past its warm-up."""
    model = _model(norm="layer")
    cfg = TrainConfig(lr=0.1, ssm_lr=0.01, weight_decay=0.0, warmup_steps=1, steps=100,
                      end_lr_ratio=1.0, train_only={"steps": 2, "params": ["head"]})
    opt = nnx.Optimizer(model, make_tx(model, cfg), wrt=nnx.Param)
    history = [_params(model)]
    for _ in range(4):
        opt.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
        history.append(_params(model))
    head = [k for k in history[0] if k[0] == "head"]
    rest = [k for k in history[0] if k[0] != "head"]
    assert head and rest
    moved = [{k for k in history[0] if not np.array_equal(history[i + 1][k], history[i][k])}
             for i in range(4)]
    assert moved[0] == set()  # step 1: lr(0) = 0 for everyone (warm-up)
    assert moved[1] == set(head)  # step 2: the head alone, at lr 0.1
    for k in head:
        assert_close(history[1][k] - history[2][k], 0.1, rtol=1e-4)
    assert moved[2] == set(head)  # step 3: the rest's own count is 0: lr(0) = 0
    assert moved[3] == set(head) | set(rest)  # step 4: the rest's first real step
    for k in rest:
        lr = 0.01 if param_groups(model)[k] == "ssm" else 0.1
        assert_close(history[3][k] - history[4][k], lr, rtol=1e-4)
        np.testing.assert_array_equal(history[3][k], history[0][k])


def test_train_only_errors_name_the_fix():
    with pytest.raises(ConfigError, match="needs train.train_only.params"):
        TrainConfig(train_only={"steps": 5})
    with pytest.raises(ConfigError, match=r"match no parameter.*as in backbone"):
        make_tx(_model(), TrainConfig(train_only={"steps": 5, "params": ["wq_idx"]}))
