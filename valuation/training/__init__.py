"""The train job: one DPO LoRA adapter per source (and per training seed).

    settings.py       the job's settings and presets
    pairs.py          what training reads of a source under the prompt length cap, and the dropped-pairs warning
    dpo.py            one adapter trained by DPO, with its seed and record: by TRL on every layer, or
    top_layers.py     on the top layers over the frozen trunk: the trunk and reference once per pair
    verdicts.py       did each adapter learn? its margin on pairs of its own source it never trained on
    cluster.py        a Ray task per adapter
    job.py            the job: what to train, each adapter saved whole, then every adapter judged
    progress.py       a train job as the app reads it: progress, curves, the adapters table

May import: the foundation, games, data, lm, runtime and rewards (`judged`, for the verdicts).
"""
