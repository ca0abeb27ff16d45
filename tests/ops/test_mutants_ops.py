"""Op behaviour that mutation testing (scripts/mutation.py) found unchecked."""

import numpy as np
import pytest

from seqlab.ops import hippo


@pytest.mark.parametrize("measure", ["legs", "legt", "lagt", "fout"])
def test_hippo_measure_compared_by_value(measure):
    """A measure read from a config file is a string built at run time, not the interned
    literal: ``transition`` must compare by value (``==``), not identity."""
    built = "".join(list(measure))
    assert built is not measure
    for got, want in zip(hippo.transition(built, 6), hippo.transition(measure, 6), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(hippo.rank_correction(built, 6),
                                  hippo.rank_correction(measure, 6))
