"""Checkpoints: the pipeline and the alert engine's open incidents, saved so a restart
resumes warm. Three promises:

- **Never stall ingestion.** ``Checkpointer.start`` forks: the child pickles a
  copy-on-write image of the process and writes it while the parent goes on reading
  frames (the fork itself costs milliseconds; the child's pages are copied only as the
  parent changes them, so a checkpoint can cost up to the state's size in memory for its
  duration). ``save_checkpoint`` (the same writer, in-process) is for tools and tests.
- **Never run a stranger's file.** The file is ``MAGIC``, an HMAC-SHA256 of the rest,
  then the pickle. The key is ``checkpoint.key`` in the state directory (32 random bytes,
  mode 0600, made at first start). A file whose MAC does not verify is refused with one
  log line and the daemon starts cold; it is never unpickled. Files are created 0600.
- **Atomic.** The child writes ``checkpoint.<pid>.tmp``, fsyncs, renames over
  ``checkpoint.pickle``: a crash or a kill leaves the previous checkpoint or the new one.
  Leftover temporary files of a killed writer are removed at the next start.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
import signal
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import msgspec
import structlog

from monitor.config import Config
from monitor.pipeline import Pipeline

log = structlog.get_logger("perpwatch.checkpoint")
CHECKPOINT = "checkpoint.pickle"
KEY = "checkpoint.key"
MAGIC = b"PWCKPT3\n"
FORMAT = 3  # bumped when the pickled state's shape changes (2: the exposure graph; 3: signed file)
_MAC_LEN = 32


def state_dir(cfg: Config) -> Path:
    return Path(cfg.daemon.state_dir) if cfg.daemon.state_dir else Path(cfg.store.path).parent


def fingerprint(cfg: Config) -> str:
    """Detector settings, tick and format: a checkpoint made under others is not resumed.
    (Exposure-graph thresholds are not in it: they are re-applied to a restored graph.)"""
    key = [cfg.detectors, cfg.daemon.tick.ms, FORMAT]
    return hashlib.blake2b(msgspec.json.encode(key), digest_size=8).hexdigest()


class Restored(NamedTuple):
    pipeline: Pipeline
    sinks: dict[str, Any]  # what each sink's snapshot() returned, by sink class name


def sink_snapshots(sinks: list) -> dict[str, Any]:
    """The sinks that keep state worth resuming (the alert engine's incidents)."""
    return {type(s).__name__: s.snapshot() for s in sinks if hasattr(s, "snapshot")}


def checkpoint_key(directory: Path) -> bytes:
    """The state directory's MAC key, made (0600) on first use."""
    path = directory / KEY
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


class _MacWriter:
    """A write-only file wrapper that feeds an HMAC with every byte written."""

    def __init__(self, f: BinaryIO, mac: hmac.HMAC) -> None:
        self.f, self.mac = f, mac

    def write(self, b) -> int:
        self.mac.update(b)
        return self.f.write(b)


def _write(path: Path, key: bytes, doc: dict) -> None:
    tmp = path.with_name(f"checkpoint.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + bytes(_MAC_LEN))
            mac = hmac.new(key, digestmod=hashlib.sha256)
            pickle.dump(doc, _MacWriter(f, mac), protocol=pickle.HIGHEST_PROTOCOL)
            f.seek(len(MAGIC))
            f.write(mac.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a crash leaves the old checkpoint or the new one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _document(cfg: Config, pipeline: Pipeline, sinks: dict[str, Any] | None) -> dict:
    return {"fingerprint": fingerprint(cfg), "pipeline": pipeline.checkpoint(), "sinks": sinks or {}}


def _prepare(cfg: Config, pipeline: Pipeline, sinks: dict[str, Any] | None) -> tuple[Path, bytes, dict]:
    """What a writer needs: the checkpoint's path (its directory made, 0700), the MAC key and
    the document (referencing the live objects: pickle it before they change)."""
    d = state_dir(cfg)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d / CHECKPOINT, checkpoint_key(d), _document(cfg, pipeline, sinks)


def save_checkpoint(cfg: Config, pipeline: Pipeline, sinks: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint in this process (blocking)."""
    path, key, doc = _prepare(cfg, pipeline, sinks)
    _write(path, key, doc)
    return path


class Checkpointer:
    """At most one checkpoint writer (a forked child) at a time; ``poll`` reaps it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pid: int | None = None
        self._err_r: int | None = None
        self.written = 0
        self.failed = 0
        self.skipped = 0  # asked while the previous writer was still running
        self.last_error = ""

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, pipeline: Pipeline, sinks: dict[str, Any]) -> bool:
        """Fork a writer of the current state; False (counted) if one is still running."""
        if self.pid is not None and not self.poll():
            self.skipped += 1
            return False
        path, key, doc = _prepare(self.cfg, pipeline, sinks)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: write, report an error on the pipe, never return
            code = 0
            try:
                os.close(r)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent's stop must not tear the file
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                _write(path, key, doc)
            except BaseException as e:  # noqa: BLE001 - everything is reported to the parent
                code = 1
                try:
                    os.write(w, f"{type(e).__name__}: {e}"[:500].encode())
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self._err_r = pid, r
        return True

    def poll(self) -> bool:
        """True when no writer is running any more (reaped now or before)."""
        if self.pid is None:
            return True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 1 << 8
        if pid == 0:
            return False
        error = b""
        if self._err_r is not None:
            try:
                error = os.read(self._err_r, 1000)
            finally:
                os.close(self._err_r)
        self.pid, self._err_r = None, None
        if os.waitstatus_to_exitcode(status) == 0:
            self.written += 1
        else:
            self.failed += 1
            self.last_error = error.decode("utf-8", "replace") or f"writer exited {os.waitstatus_to_exitcode(status)}"
            log.warning("checkpoint_failed", error=self.last_error)
        return True


def clean_leftovers(directory: Path) -> None:
    """Temporary files of a writer that was killed mid-write (the checkpoint itself is intact)."""
    for p in directory.glob("checkpoint.*.tmp"):
        try:
            pid = int(p.name.split(".")[1])
            os.kill(pid, 0)  # a writer still running (a previous stop's child): leave it
        except (ValueError, ProcessLookupError):
            p.unlink(missing_ok=True)
        except PermissionError:
            pass


def load_checkpoint(cfg: Config) -> Restored | None:
    d = state_dir(cfg)
    path = d / CHECKPOINT
    if not path.exists():
        return None
    clean_leftovers(d)
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + _MAC_LEN)
            if len(head) < len(MAGIC) + _MAC_LEN or not head.startswith(MAGIC):
                log.warning("checkpoint_refused", path=str(path),
                            reason="not a signed perpwatch checkpoint (older format or another file); starting cold")
                return None
            mac = hmac.new(checkpoint_key(d), digestmod=hashlib.sha256)
            while chunk := f.read(1 << 20):
                mac.update(chunk)
            if not hmac.compare_digest(mac.digest(), head[len(MAGIC):]):
                log.warning("checkpoint_refused", path=str(path),
                            reason="its MAC does not verify with checkpoint.key (not written by this daemon, "
                                   "or damaged); starting cold, the file is not read")
                return None
            f.seek(len(MAGIC) + _MAC_LEN)
            snap = pickle.load(f)
        if not isinstance(snap, dict) or "pipeline" not in snap:
            raise ValueError("not a checkpoint document")
    except Exception as e:  # a damaged or incompatible file: start cold, say why
        log.warning("checkpoint_unreadable", path=str(path), error=f"{type(e).__name__}: {e}"[:200])
        return None
    if snap.get("fingerprint") != fingerprint(cfg):
        log.info("checkpoint_ignored", path=str(path), reason="detector settings or checkpoint format changed")
        return None
    try:
        pipeline = Pipeline.restore(snap["pipeline"])
        pipeline.state.exposure.configure(**cfg.alerts.exposure.graph_params())
    except Exception as e:
        log.warning("checkpoint_unreadable", path=str(path), error=f"{type(e).__name__}: {e}"[:200])
        return None
    log.info("checkpoint_restored", path=str(path))
    return Restored(pipeline, snap.get("sinks") or {})
