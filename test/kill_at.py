"""Run a trainer's ``main`` and SIGKILL the process at one chosen moment (the resume tests).

    python test/kill_at.py MOMENT MODULE[:FUNCTION] [ARGS ...]

MODULE is imported (``training.train``) and ``MODULE.main(ARGS)`` (or FUNCTION) run; at MOMENT
the process sends itself SIGKILL, which nothing can catch or clean up after, as ``kill -9``:

* ``write:NAME:N``: the Nth ``torch.save`` or ``Path.write_bytes`` of the file NAME
  (``last.pt``), into NAME itself or into ``NAME.<suffix>`` (``last.pt.tmp``): half of its
  bytes are written and flushed to disk, then the kill;
* ``rename:NAME:N``: the Nth ``os.replace`` of a file named NAME, fully written and not yet
  renamed;
* ``call:ATTR:N``: when the Nth call of ``MODULE.ATTR`` (or of a dotted ``package.module.attr``)
  returns (its effects are in memory, nothing has been saved since);
* ``none``: no kill.

Moments count from this process's start, so a resumed run counts afresh.
"""

from __future__ import annotations

import importlib
import io
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _name(target: object) -> str:
    return Path(str(getattr(target, "name", target))).name


def install(moment: str, module: object) -> None:
    if moment == "none":
        return
    kind, name, count = moment.split(":")
    count = int(count)
    seen = 0

    def due(target_name: str, tmp_too: bool = False) -> bool:
        nonlocal seen
        if target_name != name and not (tmp_too and target_name.startswith(name + ".")):
            return False
        seen += 1
        return seen == count

    if kind == "write":
        import torch

        real_save = torch.save

        def save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if not due(_name(f), tmp_too=True):
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            if hasattr(f, "write"):
                f.write(data[:len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            else:
                with open(f, "wb") as out:
                    out.write(data[:len(data) // 2])
            _die()

        torch.save = save
        real_write_bytes = Path.write_bytes

        def write_bytes(self, data):  # noqa: ANN001, ANN202 - ultralytics writes its last.pt so
            if not due(self.name, tmp_too=True):
                return real_write_bytes(self, data)
            with open(self, "wb") as out:
                out.write(bytes(data)[:len(data) // 2])
                out.flush()
                os.fsync(out.fileno())
            _die()

        Path.write_bytes = write_bytes
    elif kind == "rename":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if due(_name(src)):
                _die()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif kind == "call":  # ATTR of MODULE, or a dotted module.attr
        owner_name, _, attr = name.rpartition(".")
        owner = importlib.import_module(owner_name) if owner_name else module
        real = getattr(owner, attr)

        def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            result = real(*args, **kwargs)
            if due(name):
                _die()
            return result

        setattr(owner, attr, wrapped)
    else:
        raise SystemExit(f"unknown moment {moment!r}")


def main() -> int:
    moment, target, *args = sys.argv[1:]
    module_name, _, function = target.partition(":")
    module = importlib.import_module(module_name)
    install(moment, module)
    return getattr(module, function or "main")(args)


if __name__ == "__main__":
    sys.exit(main())
