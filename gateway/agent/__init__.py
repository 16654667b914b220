"""The per-host background process that `gateway serve` starts beside gunicorn.

Serving workers hand it their outcome rows over a local unix datagram socket (`channel`), and it
writes them in batches (spooling while the database is down) and drives the rollout controller
once per host (`main`), so that neither competes with requests for a worker's GIL.
"""
