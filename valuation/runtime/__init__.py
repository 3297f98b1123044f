"""What a job runs on: the run read once for the job (`RunContext`), the Ray connection every
job's parallel part shares (connecting, resources, relaying progress, files as bytes), and the
libraries kept quiet inside a job.

May import: the foundation, data and lm (the context loads the split and the base model).
"""
