"""Interoperability with other libraries' checkpoints (docs/interop.md).

``seqlab.load(folder)`` reads a Hugging Face transformers folder through
``load_transformers``; ``save_transformers`` writes a seqlab language model as one.
"""

from seqlab.interop.hf import (
    FAMILIES,
    InteropError,
    is_transformers_folder,
    load_transformers,
    save_transformers,
)

__all__ = ["FAMILIES", "InteropError", "is_transformers_folder", "load_transformers",
           "save_transformers"]
