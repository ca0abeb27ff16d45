"""Pure functional cores: no parameters, no state, no I/O; jit/vmap/grad-safe."""
