"""A producer process for the reliability tests: emits violations into a sink target, then closes it.

usage: python ingest_worker.py TARGET SPEC_JSON — SPEC: {"keys": [...], "repeat": n, "same_place": bool,
"delay": seconds between emits}. Prints {"emitted": n, "pending": left in the spool} on exit.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]  # this checkout first, then the test helpers

from servetest import make_violation  # noqa: E402  (after the path set-up above)

from pipeline.cases import open_sink  # noqa: E402


def main() -> None:
    target, spec = sys.argv[1], json.loads(sys.argv[2])
    sink = open_sink(target)
    emitted = 0
    for repeat in range(spec.get("repeat", 1)):
        for key in spec["keys"]:
            place = {} if spec.get("same_place") else {"source_id": f"cam-{key}"}
            sink.emit(make_violation(key=key, score=0.5 + 0.1 * repeat, state="ended" if repeat else "open", **place))
            emitted += 1
            time.sleep(spec.get("delay", 0))
    sink.close()
    pending = sink.pending() if hasattr(sink, "pending") else 0
    print(json.dumps({"emitted": emitted, "pending": pending}), flush=True)


if __name__ == "__main__":
    main()
