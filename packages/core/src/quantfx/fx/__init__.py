"""FX graph mode machinery: tracer, pattern matching, and the fuse / prepare / convert passes."""
