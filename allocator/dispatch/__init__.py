"""Dispatch: the server loads jobs' images, runs them in worker processes and keeps results.

::

    commands   the command family (load_image, start_run, run_status, stop_run, fetch_results)
    upload     raw image bytes into a temporary file, hashed off the event loop
    topology   a job's chip network with the machine's faults, in job coordinates
    pool       worker processes, the run queue, memory and wall-time limits
    worker     the worker process itself (runs `machine_models.Executor`)
    storage    one folder per job: record, image, snapshots of results and state
    settings   the ``[dispatch]`` configuration table
    metrics    Prometheus metrics of runs, workers and uploads
"""
