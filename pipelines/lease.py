"""A lease on a pipeline's storage, so that two runs of the same pipeline (two firings of a schedule, a user
and a cron job) never write the same outputs at once.

The lease is a small JSON file, ROOT/_lease.json: who holds it and until when. The holder renews it from a
background thread; a lease whose holder died expires after `ttl_s` and is then taken over with a warning.
Taking it is an exclusive create on local disks; on object stores (no exclusive create through fsspec) it is
write-then-read-back after a settle delay: of two runs that write at nearly the same time, both read the
same last writer, so exactly one goes on.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from electra_core import storage
from pipelines.errors import InputError

LEASE_FILE = "_lease.json"
# Exit status of a run refused because another holds the lease: EX_TEMPFAIL, "try again later" to schedulers.
LEASE_HELD_EXIT_STATUS = 75


class LeaseHeld(InputError):
    """Another run holds the pipeline's lease."""

    exit_status = LEASE_HELD_EXIT_STATUS


class Lease:
    """Context manager: `with Lease(root, ttl_s): ...` holds ROOT/_lease.json for the block's duration."""

    def __init__(self, root: str, ttl_s: float = 900.0, settle_s: float = 1.0, log=print):
        self.uri = storage.join(root, LEASE_FILE)
        self.ttl_s = ttl_s
        self.settle_s = settle_s
        self.log = log
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # --- the record ----------------------------------------------------------------------------------------

    def _record(self) -> str:
        now = time.time()
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "acquired_at": now, "expires_at": now + self.ttl_s}) + "\n"

    def read(self) -> dict | None:
        try:
            return json.loads(storage.read_text(self.uri))
        except FileNotFoundError:
            return None
        except ValueError:
            return {"owner": "?", "expires_at": 0.0}  # a torn write: treated as expired

    # --- taking, renewing, giving back ----------------------------------------------------------------------

    def acquire(self) -> None:
        current = self.read()
        if current is not None and current.get("owner") != self.owner:
            if current.get("expires_at", 0.0) > time.time():
                raise self._held(current)
            self.log(f"warning: taking over an expired lease on {self.uri} (held by {current.get('owner')}, "
                     "which stopped renewing it)")
        if current is None and "://" not in self.uri:
            self._create_exclusively()
        else:
            storage.write_text(self.uri, self._record())
            time.sleep(self.settle_s)
            holder = self.read()
            if holder is None or holder.get("owner") != self.owner:
                raise self._held(holder or {})
        self._renewer = threading.Thread(target=self._renew_until_stopped, name="lease-renewer", daemon=True)
        self._renewer.start()

    def _create_exclusively(self) -> None:
        path = self.uri.removeprefix("file://")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise self._held(self.read() or {}) from None
        with os.fdopen(descriptor, "w") as handle:
            handle.write(self._record())

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                holder = self.read()
                if holder is not None and holder.get("owner") != self.owner:
                    self.log(f"warning: the lease on {self.uri} was taken by {holder.get('owner')}")
                    return
                storage.write_text(self.uri, self._record())
            except OSError as error:  # a storage hiccup: try again at the next renewal
                self.log(f"warning: could not renew the lease on {self.uri}: {error}")

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        holder = self.read()
        if holder is not None and holder.get("owner") == self.owner:
            storage.delete(self.uri)

    def _held(self, holder: dict) -> LeaseHeld:
        expires = holder.get("expires_at")
        until = f" until {time.strftime('%H:%M:%S', time.localtime(expires))} unless renewed" if expires else ""
        return LeaseHeld(f"{self.uri}: another run of this pipeline is in progress (held by {holder.get('owner', '?')}"
                         f"{until}); refusing to start a second one")

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
