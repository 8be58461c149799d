"""The twin's own log: `<workdir>/logs/twin.log`, so its console carries only human lines.

Records still propagate to the root logger (a test run's log capture sees them); the demo and `local up` configure
no root handler, and with these handlers in place Python's last-resort stderr handler stays silent.

What goes there, and why not to the console:

- moto's loggers (`moto.*`): its Step Functions interpreter logs an ERROR line for every failure event of an
  execution (`Exception=FailureEventException, Error=…`), including the failures a workflow catches on purpose
  (a Lambda task's error, an EMR step failing); AWS does not print those anywhere either: they are the
  execution's history.
- werkzeug (moto's HTTP server): request lines, and `Error on request:` with a traceback when a request handler
  raises (a 500: a twin or moto bug).
- the twin's own loggers (`twin.*`): warnings about deliveries, schedules, functions that failed.
- uncaught exceptions of the twin's threads (Python would print their tracebacks on stderr).

A twin-internal error (ERROR and above from werkzeug or the twin, an uncaught thread exception) still reaches the
console, as ONE line naming the file that has the full traceback. moto's ERROR lines do not (see above).
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any

INTERNAL = ("twin", "werkzeug")  # loggers whose ERRORs are twin-internal errors: one console line each
QUIET = ("moto",)  # loggers whose lines only go to the file


class _OneLine(logging.Handler):
    """ERROR and above, as one line on the console (stderr at the time of the record) naming the full log."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.ERROR)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            first = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else record.name
            sys.stderr.write(f"twin: internal error ({record.name}): {first[:200]} (full traceback: {self.path})\n")
        except Exception:  # never let the console line break the twin
            self.handleError(record)


class TwinLog:
    """Installed by `Twin.start`, removed by `Twin.stop` (loggers and the thread hook as they were)."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "logs" / "twin.log"
        self._saved: list[tuple[logging.Logger, int]] = []
        self._handlers: list[tuple[logging.Logger, logging.Handler]] = []
        self._saved_hook: Any = None

    def install(self) -> TwinLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(self.path, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
        console = _OneLine(self.path)
        for name in (*INTERNAL, *QUIET):
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.level))
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
            self._add(logger, file_handler)
            if name in INTERNAL:
                self._add(logger, console)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line per request
        self._saved_hook = threading.excepthook
        threading.excepthook = self._thread_exception
        return self

    def _add(self, logger: logging.Logger, handler: logging.Handler) -> None:
        logger.addHandler(handler)
        self._handlers.append((logger, handler))

    def _thread_exception(self, args: Any) -> None:
        thread = args.thread.name if args.thread is not None else "?"
        logging.getLogger("twin.threads").error(
            "thread %s died: %s: %s", thread, args.exc_type.__name__, args.exc_value,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )  # fmt: skip

    def uninstall(self) -> None:
        for logger, handler in self._handlers:
            logger.removeHandler(handler)
            handler.close()
        self._handlers.clear()
        for logger, level in self._saved:
            logger.setLevel(level)
        self._saved.clear()
        if self._saved_hook is not None:
            threading.excepthook = self._saved_hook
            self._saved_hook = None
