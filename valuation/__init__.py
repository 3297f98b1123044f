"""Shapley values of fine-tuning data sources by language-model arithmetic (arXiv 2512.15765).

The rooms, from the bottom up (each imports only its own and those before it; tests/test_layers.py):
the foundation (errors, config, storage, runs, progress), games, data, lm, runtime, rewards,
training, evaluation, views, validation, jobs, report, and the command line (commands, cli).
"""

import os

# OpenMP threads that spin while waiting make torch 3-5x slower when another process shares the
# cores (the app beside a background job, two jobs at once): measured 20 s against 4 s for one
# forward pass here. Waiting passively costs nothing on an idle machine. It must be set before
# torch loads, which importing this package first ensures for the app, the CLI and background jobs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
