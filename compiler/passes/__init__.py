"""Graph passes, one module each, every one a pure function `Graph -> Graph`; `dln.compiler.pipeline`
runs them in order (`horizontal`, which merges products sharing an operand, before autodiff)."""
