"""Cache entries that several processes may build at once (two commands on one ``$ALIGNSCOPE_CACHE``).

Every entry is written to a private temporary path next to its final place and renamed into place in one
atomic step, so a reader sees either nothing or the whole entry, never a half-written one, and no process
writes into another's temporary files:

* :func:`build_dir` makes a directory entry (a dequantised model, a converted Whisper, a virtualenv) once: it
  takes a file lock, builds into a private temporary directory unless another process finished the entry
  while it waited, and renames the result into place. Later callers return at once.
* :func:`atomic_file` writes one file (a WAV, an encoder-feature tensor, a manifest) through a private
  temporary file. Such files are small and deterministic, so two processes that make the same one at the same
  time both succeed and the last rename wins with identical content; callers that want the work done once take
  :func:`lock` around the whole batch (as :func:`alignscope.speech.spoken.suites.speak_suite` does per directory).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock

log = logging.getLogger("alignscope.cache")

__all__ = ["atomic_file", "build_dir", "lock"]


def lock(path: str | os.PathLike[str], timeout: float = -1) -> FileLock:
    """An inter-process lock for ``path``, held through the hidden file ``.<name>.lock`` next to it
    (``timeout`` in seconds, -1: wait as long as it takes). The lock is released when its process dies, so a
    killed build never blocks the next one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(p.with_name(f".{p.name}.lock")), timeout=timeout)


def build_dir(
    target: str | os.PathLike[str],
    build: Callable[[Path], None],
    ready: Callable[[Path], bool] | None = None,
) -> Path:
    """Make the directory ``target`` once across processes and return it.

    Args:
        target: the final directory.
        build: fills the (empty, existing) temporary directory it is given with the entry's files.
        ready: whether a directory at ``target`` is a finished entry (default: it exists). A ``target`` that
            exists but is not ready (left by an older, non-atomic version) is replaced.

    Returns at once when ``target`` is ready. Otherwise waits for the lock, checks again (another process may
    have finished meanwhile), removes temporary directories that killed builders left behind, builds into a
    fresh private temporary directory and renames it to ``target``. If ``build`` raises, its temporary
    directory is removed and nothing appears at ``target``.
    """
    final = Path(target)
    is_ready = ready or (lambda p: p.is_dir())
    if is_ready(final):
        return final
    with lock(final):
        if is_ready(final):
            return final
        for stale in final.parent.glob(f".{final.name}.*.tmp"):  # only the lock holder builds: these are dead
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            build(tmp)
            if final.exists():  # an unfinished entry from an older version: move it aside, then drop it
                old = final.with_name(f".{final.name}.{os.getpid()}.old.tmp")
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("cached %s", final)
    return final


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a private temporary path next to ``path``; when the block ends without an error, the file written
    there replaces ``path`` atomically (else it is removed)::

        with atomic_file(out / "clip.wav") as tmp:
            soundfile.write(tmp, samples, 16000, format="WAV")
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
