"""The maths: coalitions, utility tables, exact Shapley and Banzhaf values and interactions,
permutation Monte Carlo, intervals over prompts (and reward heads and training seeds), the axioms,
and `value_sources`, which puts them together for one table.

    coalitions.py     what a coalition is, its name, the arithmetic formula, the 'auto' method rule
    utility_table.py  measured utilities as a game; seeds averaged, objectives combined
    shapley.py        exact values over all 2^n coalitions, and the result type
    sampling.py       permutation Monte Carlo with stopping rules
    intervals.py      exact values with bootstrap or t intervals
    axioms.py         efficiency, symmetry, dummy and additivity, checked on given values
    values.py         a table's Shapley values with intervals, Banzhaf values and interactions

May import: the foundation (errors, config), numpy and pandas; never a model library.
"""
