"""The command line's commands beyond the jobs, one module each with `configure(parser)` and
`run(args) -> int` (`cli.py` lists them).

May import: every room.
"""
