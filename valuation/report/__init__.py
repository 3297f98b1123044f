"""A run in one self-contained HTML file: what was asked and how, the sources, the training and
whether each adapter learned, the reward models, the Shapley values with their intervals and
caveats, the validation, a few generations, and the commands that reproduce the run.

    python -m valuation report --run runs/NAME [--out file.html]     (default: <run>/report.html)

The file opens offline in any browser and fetches nothing: plotly.js is embedded once, with the
first chart, the other charts are fragments that reuse it, there is no web font and no MathJax,
and a Content-Security-Policy tells the browser to refuse any request. The charts are the Shapley
page's own (`views.figures`), and so are the caveats (`views.caveats`).

Honesty rules, the dashboard's: every number shown as a finding carries its interval; a reward model
at chance is said in words, and its Shapley values are neither drawn nor tabulated; values whose
interval spans zero, adapters indistinguishable from the base and the single training seed are said
where they matter. All text is escaped (`html.escape`).

The parts: `document` puts the report together from the run read once (`views.snapshot`), `html`
holds the markup and the page shell, `sections` describes the run, `findings` holds the values and
caveats, `validation` how far the method holds, and `reproduce` the commands.

May import: every room below it (foundation to jobs).
"""
