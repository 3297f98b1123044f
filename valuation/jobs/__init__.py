"""Running the jobs: the registry (each job's config, presets and function; the command a job
is; running it here or launching it in the background), background processes and the run's lock,
command-line flags from a config and back, and the shipped demo run.

May import: every room below it (foundation to validation).
"""
