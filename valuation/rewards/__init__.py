"""Judging replies: reward models, and the judgements that need none.

    models.py         Bradley-Terry heads on frozen features, bootstrap heads, hub classifiers
    cards.py          what a trained reward model is worth: its card, accuracy with an interval, near chance
    store.py          each objective's reward model, trained on the run's reward split and cached in it
    job.py            the rewards job
    heldout.py        reward-free utilities: held-out preference accuracy and margin of every coalition

May import: the foundation, games, data, lm and runtime.
"""
