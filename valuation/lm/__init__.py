"""The language models: the base model and its tokenizer, one LoRA adapter per source on it, and
the coalition models built from them by log-probability arithmetic.

    models.py         base models (embedded, tiny, hub, path)
    tokens.py         conversations through the chat template; prompts cut to their end
    adapters.py       adapters stored in the run, loaded together on one base
    forward.py        one locked forward pass at a time: padding, the mixed-adapter pass, rows through every layer
    arithmetic.py     the coalition sampler: one mixed-adapter forward pass per decoding step
    scoring.py        teacher-forced log-likelihoods of fixed replies under any combined model
    trunk.py          the frozen lower layers once per sequence, the top layers on top, and their cache
    merging.py        the weight-space merge ablation
    synthetic.py      random adapters for tests and benchmarks

May import: the foundation, games (the coalition vocabulary) and data (its message type).
"""
