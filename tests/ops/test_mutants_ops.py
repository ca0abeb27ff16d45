"""Op behaviour that mutation testing (scripts/mutation.py) found unchecked."""

import jax.numpy as jnp
import pytest
from _assert import assert_close

from seqlab.ops import hippo, ssd


@pytest.mark.parametrize("measure", ["legs", "legt", "lagt", "fout"])
def test_hippo_measure_compared_by_value(measure):
    """A measure read from a config file is a string built at run time, not the interned
    literal: ``transition`` must compare by value (``==``), not identity."""
    built = "".join(list(measure))
    assert built is not measure
    for got, want in zip(hippo.transition(built, 6), hippo.transition(measure, 6), strict=True):
        assert_close(got, want)
    assert_close(hippo.rank_correction(built, 6),
                                  hippo.rank_correction(measure, 6))


def test_quasiseparable_rejects_dt_bw_of_another_shape():
    """dt_bw shorter than dt_fw (a tuple that compares below it) is an error, not truncated."""
    b, t, h, p, g, n = 1, 4, 2, 2, 1, 2
    z = jnp.zeros
    with pytest.raises(ValueError, match="one shape"):
        ssd.quasiseparable(z((b, t, h, p)), z((b, t, h)), z((b, t - 1, h)), z((h,)),
                           z((b, t, g, n)), z((b, t, g, n)), z((b, t, g, n)), z((b, t, g, n)),
                           z((b, t, h)))
