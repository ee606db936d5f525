"""Child process of tests/client/test_dlq_claims.py: one replayer of a shared dead-letter queue.

``python -m kit.dlq_replay_child DB_PATH`` opens the queue, prints ``ready``, waits for a
line on stdin (so that several children start replaying at the same moment), replays every due
entry through a plain ``httpx.Client`` and prints the ids it replayed as JSON.
"""

from __future__ import annotations

import json
import sys

import httpx

from retrysafe.client.dlq import DeadLetterQueue


def main() -> None:
    queue = DeadLetterQueue(sys.argv[1], rate=1e9)
    print("ready", flush=True)
    sys.stdin.readline()
    with httpx.Client(timeout=30.0) as client:
        results = queue.replay(client)
    queue.close()
    print(json.dumps([r.id for r in results]), flush=True)


if __name__ == "__main__":
    main()
