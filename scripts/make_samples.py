"""Write the demo's result files into samples/ (run from the repo root).

The Qiskit sample is real ``Result.to_dict()`` output of BasicSimulator, so the
demo exercises the same mapping a user's saved results would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def qiskit_bell_result() -> dict:
    """A Bell circuit on BasicSimulator, seeded so the file is stable apart from job_id."""
    from qiskit import QuantumCircuit
    from qiskit.providers.basic_provider import BasicSimulator

    qc = QuantumCircuit(2, 2, name="bell")
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    result = BasicSimulator().run(qc, shots=256, seed_simulator=42).result()
    # default=str: numpy scalars and enums that to_dict() leaves in place.
    return json.loads(json.dumps(result.to_dict(), default=str))


def main() -> int:
    (SAMPLES / "invalid").mkdir(parents=True, exist_ok=True)
    bell_job = {
        "experiment_id": "demo",
        "name": "bell (hand-written)",
        "device_id": "basic_simulator",
        "results": json.dumps({"00": 503, "11": 521}),
        "shots": json.dumps([1024]),
        "status": "Done",
        "job_type": "User local job",
        "metrics": {"fidelity": 0.98},
    }
    (SAMPLES / "bell_job.json").write_text(json.dumps(bell_job, indent=2) + "\n")
    (SAMPLES / "qiskit_bell_result.json").write_text(
        json.dumps(qiskit_bell_result(), indent=1) + "\n"
    )
    lines = [
        {
            "experiment_id": "demo",
            "name": f"sweep depth {d}",
            "device_id": "basic_simulator",
            "results": {"00": 500 - 10 * d, "11": 500 + 10 * d},
            "shots": [1000],
            "metrics": {"depth": d},
        }
        for d in range(1, 5)
    ]
    (SAMPLES / "batch.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (SAMPLES / "invalid" / "not_a_job.json").write_text(
        json.dumps({"experiment_id": "demo", "status": "Finished", "results": "{not json"}) + "\n"
    )
    print(f"wrote samples to {SAMPLES}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
