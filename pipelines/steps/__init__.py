"""The pipeline's steps, one module each: read the step's input files, call the domain code, write outputs.

These plain functions on paths and JSON-able values are what the KFP components
in ``pipelines.kfp_components`` call, with the artifact paths KFP hands them.
Tests run every step without KFP, and each component body compiled into the
pipeline YAML stays one import and one call. A task runs one step in a fresh
process, so each step module imports only what its step needs (ingest never
pays for importing MLflow or matplotlib); this package imports none of them.
"""

from pipelines.steps.task_process import begin_task_startup

begin_task_startup()
