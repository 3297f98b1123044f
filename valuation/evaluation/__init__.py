"""The evaluate job: every coalition's utilities on held-out prompts, direct or pooled.

    settings.py       the job's settings and presets
    store.py          the one owner of <run>/evaluation: every path, reader and writer under it
    importance.py     the pooled maths: proposal, targets, self-normalised weights, ESS
    estimators.py     the direct and pooled estimators, chunk by chunk (shards)
    seeds.py          the game again under further training seeds
    cluster.py        a pool of Ray workers for chunks of prompts
    job.py            the job: which coalitions, which prompts, what it costs, the run through, and the
                      reward-free utilities written with it

May import: the foundation, games, data, lm, runtime and rewards.
"""
