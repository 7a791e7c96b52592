"""The integration tier: real sockets, proxies, TLS and inotify, inside the test process.

Unit tests (``tests/unit``) stay in the process and reach for no kernel
facility (their conftest refuses network sockets and observer threads);
end-to-end tests (``tests/e2e``) run real ``logbook`` processes.
"""
