"""What the user reads, the same for the pages, the report and the command line.

    snapshot.py       a run read once per page draw (or report): each file on first use
    values.py         each target's values with the run's config; what is drawn; what a value says
    caveats.py        the run's caveats as typed records, rendered by every face
    figures.py        every chart, built once
    convergence.py    values on the first k prompts: the intervals narrowing
    lesson.py         the Learn page's lesson on the run's own game
    playground.py     the Playground's columns, streamed and scored

May import: every room below it (foundation to evaluation).
"""
