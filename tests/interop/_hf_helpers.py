"""Shared steps of the transformers interop tests: tiny random transformers models saved with
``save_pretrained``, loaded by seqlab, compared on logits and greedy decoding.

torch and transformers come with the ``test`` extra; without them the tests skip, saying so.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="interop tests need torch (pip install seqlab[test])")
transformers = pytest.importorskip(
    "transformers", reason="interop tests need transformers (pip install seqlab[test])")

RTOL = 1e-4  # the bar: relative Frobenius error of float32 logits


def perturb(model, scale: float = 0.1, seed: int = 0) -> None:
    """Add scale * N(0, 1) to every parameter, so that parameters transformers initialises to
    constants (norm weights, biases, A_log, D, ...) differ and a wrong mapping shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def save_tiny(cls, config, folder, *, seed: int = 0, scale: float = 0.1):
    """A random ``cls(config)`` in float32 eval mode, perturbed, saved to ``folder``."""
    torch.manual_seed(seed)
    model = cls(config).float().eval()
    perturb(model, scale, seed)
    model.save_pretrained(folder)
    return model


def rel_err(a, b) -> float:
    """||a - b||_F / ||b||_F in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """transformers' logits [batch, length, vocab] of int tokens (mask: 1 = real token)."""
    kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask.astype(np.int64))}
    with torch.no_grad():
        return model(torch.tensor(tokens), **kwargs).logits.float().numpy()


def hf_greedy(model, prompt: np.ndarray, n: int) -> np.ndarray:
    """transformers' greedy continuation: [batch, prompt + n] tokens."""
    with torch.no_grad():
        out = model.generate(torch.tensor(prompt), attention_mask=torch.ones(prompt.shape,
                             dtype=torch.long), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
    return out.numpy()


def random_tokens(vocab: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape)


def padding_mask(shape: tuple[int, int]) -> np.ndarray:
    """Left padding in row 0 (its first 5 positions; transformers' generation layout), right
    padding in row 1 (from position 15): True = real token."""
    mask = np.ones(shape, bool)
    mask[0, :5] = False
    mask[1, 15:] = False
    return mask


def padded_logits_error(hf, model, vocab: int) -> float:
    """rel_err of seqlab's and transformers' logits at the real positions of
    :func:`padding_mask` on [2, 21] tokens."""
    tokens = random_tokens(vocab, (2, 21), seed=1)
    mask = padding_mask(tokens.shape)
    return rel_err(np.asarray(model(tokens, mask))[mask], hf_logits(hf, tokens, mask)[mask])


def assert_greedy_equal(hf, model, vocab: int, n: int = 12, seed: int = 2) -> None:
    """seqlab's greedy continuation of a [2, 7] prompt equals transformers'."""
    import seqlab

    prompt = random_tokens(vocab, (2, 7), seed=seed)
    np.testing.assert_array_equal(np.asarray(seqlab.generate(model, prompt, n, temperature=0)),
                                  hf_greedy(hf, prompt, n))
