"""Validation: does the coalition arithmetic hold on this run? The paper's checks as one job.

The method's claim: a coalition built by adding log-probabilities,

    log pi_S = sum_{l in S} log pi_l + (1 - |S|) log pi_0 - log Z,

behaves like a model trained on S's data. DPO's optimum is pi = pi_ref exp(r / beta) / Z, so under
*sequential* DPO (train on a; then on b with the a-model as the reference) the rewards add and the
arithmetic is exact at convergence. Training on the pooled data is what a practitioner would do,
and it is not the same thing: two sources with the same preferences give r pooled but 2r by
arithmetic. The experiments, one module each (inputs.py holds what they share):

    sequential   trained.py    arithmetic vs sequential DPO in both orders: KL per token, utility gaps, order gap
    pooled       trained.py    arithmetic vs one adapter trained on the pooled data; Shapley by each method
    epochs       trained.py    the sequential comparison after 1, 2, 4 (, 8) epochs: error against training
    accuracy     accuracy.py   held-out preference accuracy of all 2^n coalitions of the run's own adapters,
                               from n+1 teacher-forced passes per pair: a cheap, exact utility
    scaling      scaling.py    8 sources: exact Shapley over 256 coalitions vs permutation Monte Carlo

Utilities here are teacher-forced (`lm.scoring`), never sampled. Held-out pairs are those of the
split's eval part, disjoint by prompt from every training pair, responses cut to `response_tokens`.
Results go to <run>/validation/<folder>/ (settings.json records the settings that made them);
job.py runs the experiments, results.py reads them for the page and the report. Every adapter and
file is written atomically and skipped when present, so a killed job resumes.

May import: the foundation, games, data, lm, runtime, rewards and training.
"""
