"""An emulator of the Haiqu Jobs API, for tests, benchmarks and demos.

    HAIQU_API_KEY=secret python -m logbook.emulator [--host 127.0.0.1] [--port N]

It serves ``POST /jobs``, ``GET /jobs/{job_id}`` and
``GET /experiments/{experiment_id}/jobs/{job_hash}`` from memory (or
``--state-file``), checks the key (``HAIQU_API_KEY`` query parameter or
``authorization`` header, raw or "Bearer"), answers 422 like FastAPI, never
de-duplicates, and moves jobs from Submitted through Queued and Running to Done
over ``--progress-seconds``.  Admin routes need no key:

    GET  /_admin/stats    requests per route, jobs_created, unique_jobs, duplicates
    GET  /_admin/faults   the live faults (see ``faults.Faults``)
    POST /_admin/faults   override some fault fields; returns all of them
    DELETE /_admin/faults clear the faults
    POST /_admin/reset    forget jobs, counters and faults
    GET  /_admin/jobs     every stored job, duplicates included

It needs the ``emulator`` extra (aiohttp).
``logbook.emulator.testing.EmulatorProcess`` starts it as a real subprocess and
drives its admin routes with the standard library only, so importing this
package must not import aiohttp.
"""

from __future__ import annotations
