"""logbook: a local-first job logbook with sync for quantum jobs."""
