"""Composition: blocks -> backbones -> task heads."""
