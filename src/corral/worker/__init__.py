"""Templates and workers. First of all, uvicorn's package is registered without its command line (see
`uvicorn_init`): whatever worker module imports uvicorn next gets its server, not click and a reloader."""

from corral.worker.uvicorn_init import defer_package_init

defer_package_init()
