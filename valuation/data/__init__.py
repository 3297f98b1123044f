"""The preference data: pairs by source from HH-RLHF, UltraFeedback or a user's table, the seeded
split disjoint by prompt, and choosing a run's sources (their names checked, the choice recorded).

    preferences.py    loading pairs by source, and each dataset's default reward objectives
    splits.py         the split, recorded pair by pair in split.json and read back
    sources.py        describing sources, checking their names, recording the choice in the run

May import: the foundation.
"""
