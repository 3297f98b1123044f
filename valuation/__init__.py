"""Shapley values of fine-tuning data sources by language-model arithmetic (arXiv 2512.15765)."""

import os

# OpenMP threads that spin while waiting make torch 3-5x slower when another process shares the
# cores (the app beside a background job, two jobs at once): measured 20 s against 4 s for one
# forward pass here. Waiting passively costs nothing on an idle machine. It must be set before
# torch loads, which importing this package first ensures for the app, the CLI and background jobs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
