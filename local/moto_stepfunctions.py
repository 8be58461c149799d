"""moto's Step Functions interpreter at the cost of one execution, not of one parse per execution.

Profiled on a 600-object capped burst (py-spy, GIL samples), the twin spent its single core mostly outside the app:

- 21 % re-parsing the state machine's ASL with ANTLR at every execution start (`ExecutionWorker.
  _get_evaluation_entrypoint`). The ANTLR tree depends only on the definition, and moto's `Preprocessor` only reads
  it (no assignment to a parse context anywhere in it), so the tree is kept per definition and each execution still
  gets its own freshly built components from it: no evaluation state is shared between executions.
- 22 % building a JSONPath parser (`jsonpath_ng.ext.parse` runs PLY's yacc table construction on every call) for
  every `$.path` of every state's Parameters/ResultSelector/ResultPath. A parsed JSONPath is an immutable expression
  tree (`find`/`update` read it, they change the data), so it is kept per path string (so is ResultPath's,
  parsed by `jsonpath_ng.parse`).

And two threads per waiting execution did nothing but wait:
- `Program.eval` ran the program on a new thread and joined it with the state machine's `TimeoutSeconds` (each app
  workflow has one: the pipeline's run timeout). The program now runs on the execution's own thread, and one deadline
  thread for all executions times out those past their `TimeoutSeconds` as moto's join did: the program is marked
  timed out and the execution ends TIMED_OUT at once, while the state it was in unwinds (or, waiting on a token,
  stays parked) as moto's abandoned program thread did. Map iterations, Parallel branches (frames) and synchronous
  Express executions keep moto's thread.
- `ExecutionState._evaluate_with_timeout` ran each state on a new thread and waited for it with the state's
  `TimeoutSeconds`. A `.waitForTaskToken` task without `HeartbeatSeconds` (the app's `AcquireRunSlot`) now runs on
  the execution's thread, and the deadline thread wakes its token's wait at the state's deadline
  (`evaluate_waiting_task`). Other states keep moto's thread.
So an execution waiting for its run slot holds one thread (moto's interpreter is recursive: parking it without one
would need another interpreter).

Both caches are bounded, and `install`/`uninstall` are idempotent like the other hooks.
"""

from __future__ import annotations

import copy
import functools
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from antlr4 import CommonTokenStream, InputStream
from moto.stepfunctions.parser.asl.antlr.runtime.ASLLexer import ASLLexer
from moto.stepfunctions.parser.asl.antlr.runtime.ASLParser import ASLParser
from moto.stepfunctions.parser.asl.component.common.path import result_path
from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import EvalTimeoutError
from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent
from moto.stepfunctions.parser.asl.component.program.program import Program
from moto.stepfunctions.parser.asl.parse.asl_parser import (
    AmazonStateLanguageParser,
    ASLParserException,
    SyntaxErrorListener,
)
from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor
from moto.stepfunctions.parser.asl.utils import json_path
from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker, SyncExecutionWorker

LOG = logging.getLogger("twin.sfn")
_ORIGINALS: dict[str, Any] = {}
DEFINITIONS_KEPT = 64  # distinct state machine definitions whose parse trees are kept (a deployment has a handful)
PATHS_KEPT = 4096  # distinct JSONPath strings kept parsed


@functools.lru_cache(maxsize=DEFINITIONS_KEPT)
def _tree(definition: str) -> Any:
    """The ANTLR parse tree of `definition` (moto's `AmazonStateLanguageParser.parse`, up to the tree); raises
    ASLParserException on a syntax error, as moto does (an exception is not cached: the next call parses again)."""
    errors = SyntaxErrorListener()  # type: ignore[no-untyped-call]
    parser = ASLParser(CommonTokenStream(ASLLexer(InputStream(definition))))
    parser.removeErrorListeners()
    parser.addErrorListener(errors)
    tree = parser.state_machine()  # type: ignore[no-untyped-call]
    if errors.errors:
        raise ASLParserException(errors=errors.errors)
    return tree


def _parse(definition: str) -> tuple[EvalComponent, Any]:
    """moto's parse, with the tree kept: fresh components from the kept tree."""
    tree = _tree(definition)
    return Preprocessor().visit(tree), tree


@functools.lru_cache(maxsize=PATHS_KEPT)
def _json_path(path: str) -> Any:
    """`jsonpath_ng.ext.parse`, kept per path (the interpreter's paths: Parameters, InputPath, OutputPath..)."""
    return _ORIGINALS["jsonpath_parse"](path)


@functools.lru_cache(maxsize=PATHS_KEPT)
def _result_path(path: str) -> Any:
    """`jsonpath_ng.parse`, kept per path (ResultPath)."""
    return _ORIGINALS["result_path_parse"](path)


class _Deadlines:
    """One daemon thread that calls each scheduled function at its deadline (time.monotonic), unless cancelled."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, list[Callable[[], None] | None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def at(self, deadline: float, call: Callable[[], None]) -> list[Callable[[], None] | None]:
        entry: list[Callable[[], None] | None] = [call]  # cancelled: set to [None]
        with self._wake:
            heapq.heappush(self._heap, (deadline, next(self._order), entry))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="twin-sfn-deadlines", daemon=True)
                self._thread.start()
            self._wake.notify()
        return entry

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._wake.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, _, entry = heapq.heappop(self._heap)
            call = entry[0]
            if call is not None:
                try:
                    call()
                except Exception:  # one execution's timeout must not stop the others'
                    LOG.exception("timing out an execution failed")


_DEADLINES = _Deadlines()


class ExecutionEnded(BaseException):
    """Unwinds an execution's own thread from the token it waited on once the execution ended (stopped, timed out): a
    BaseException, so no state's Retry or Catch handles it and no state event follows; the program then writes the
    execution's end event (`local.patches._program_eval_body`)."""


def wake_waiting(env: Any) -> None:
    """Wake the task token wait of the execution `env` (if its thread waits on one), after the execution ended: its
    thread unwinds and ends, where moto's stayed parked for the state's `TimeoutSeconds` (a year by default)."""
    waiting = getattr(env, "_twin_waiting", None)
    if waiting is not None:
        waiting.interrupt_all()


_RUNNING = threading.local()  # the ExecutionWorker whose `_execution_logic` runs on this thread


def _execution_logic(self: ExecutionWorker) -> None:
    _RUNNING.worker = self
    # named after its execution (py-spy dumps, logs): the thread runs the execution's program, waits included
    threading.current_thread().name = f"sfn-execution {self._evaluation_details.execution_details.name}"
    try:
        _ORIGINALS["execution_logic"](self)
    finally:
        _RUNNING.worker = None


def _time_out(worker: ExecutionWorker, env: Any) -> None:
    """What moto did when its join timed out (`env.set_timed_out()`, then the worker reports the end), if the program
    still runs; the worker reports again when its program returns, which the twin's `terminated` hook ignores."""
    with env._state_mutex:  # an RLock: the program cannot end between the test and the change
        if not env.is_running():
            return
        env.set_timed_out()
    worker._execution_communication.terminated()
    wake_waiting(env)


def _program_eval(self: Program, env: Any) -> None:
    """`Program.eval` on the execution's own thread; its `TimeoutSeconds` kept by the shared deadline thread."""
    worker = getattr(_RUNNING, "worker", None)
    if worker is None or isinstance(worker, SyncExecutionWorker) or env.is_frame() or worker.env is not env:
        # a Map iteration, Parallel branch, test state or synchronous Express execution (its caller must get its
        # answer at the timeout): moto's thread
        _ORIGINALS["program_eval"](self, env)
        return
    entry = None
    if self.timeout_seconds is not None:
        entry = _DEADLINES.at(time.monotonic() + self.timeout_seconds.timeout_seconds, lambda: _time_out(worker, env))
    try:
        env.next_state_name = self.start_at.start_at_name
        EvalComponent.eval(self, env)
    except ExecutionEnded:
        pass  # the execution ended while a task waited on its token: reported already (`_time_out`, StopExecution)
    finally:
        if entry is not None:
            entry[0] = None


def evaluate_waiting_task(state: Any, env: Any) -> None:
    """`ExecutionState._evaluate_with_timeout` of a `.waitForTaskToken` task without `HeartbeatSeconds`, on the state's
    own thread: moto ran the task on a second thread and waited for it with the state's `TimeoutSeconds`. Here the
    shared deadline thread wakes the token's wait at the deadline (counted from the task's start, as AWS counts it),
    so a waiting execution holds one thread, not two. Raises EvalTimeoutError at the deadline as moto's wait did (the
    caller marks the token timed out); everything after the wait is moto's, line for line."""
    state.timeout.eval(env=env)
    timeout_seconds: int = env.stack.pop()
    frame = env.open_frame()
    frame.states.reset(input_value=env.states.get_input())
    frame.stack = copy.deepcopy(env.stack)
    token = (env.states.context_object.context_object_data.get("Task") or {}).get("Token")
    endpoint = env.callback_pool_manager.get(token) if token else None
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        if endpoint is not None:
            endpoint.interrupt_all()

    entry = _DEADLINES.at(time.monotonic() + timeout_seconds, expire)
    own_thread = not env.is_frame() and endpoint is not None  # the execution's thread (a Map iteration's is moto's)
    if own_thread:
        env._twin_waiting = endpoint  # what `wake_waiting` interrupts when the execution ends
        if not env.is_running():  # it ended before the line above: no one will wake the wait
            endpoint.interrupt_all()  # type: ignore[union-attr]
    failure: Exception | None = None
    try:
        state._eval_execution(frame)
    except Exception as error:
        failure = error
    finally:
        entry[0] = None
        if own_thread:
            env._twin_waiting = None
        frame.set_ended()
        env.close_frame(frame)
    if own_thread and not env.is_running():
        raise ExecutionEnded()
    if expired.is_set():
        raise EvalTimeoutError()
    if failure is not None:
        raise failure
    _state_output(state, env, frame.stack[-1])


def _state_output(state: Any, env: Any, output: Any) -> None:
    """What moto's `_evaluate_with_timeout` does with the task's output, line for line."""
    env.stack.append(output)
    if not state._is_language_query_jsonpath():
        env.states.set_result(output)
    if state.assign_decl:
        state.assign_decl.eval(env=env)
    if state.result_selector:
        state.result_selector.eval(env=env)
    if state.result_path:
        state.result_path.eval(env)
    else:
        env.states.reset(input_value=env.stack.pop())


def install() -> None:
    """Patch moto's Step Functions interpreter (idempotent)."""
    _ORIGINALS.setdefault("parse", AmazonStateLanguageParser.__dict__["parse"])
    _ORIGINALS.setdefault("jsonpath_parse", json_path.parse)  # type: ignore[attr-defined]
    _ORIGINALS.setdefault("result_path_parse", result_path.parse)  # type: ignore[attr-defined]
    _ORIGINALS.setdefault("program_eval", Program.eval)
    _ORIGINALS.setdefault("execution_logic", ExecutionWorker._execution_logic)
    ExecutionWorker._execution_logic = _execution_logic  # type: ignore[method-assign]
    AmazonStateLanguageParser.parse = staticmethod(_parse)  # type: ignore[method-assign]
    json_path.parse = _json_path  # type: ignore[attr-defined]
    result_path.parse = _result_path  # type: ignore[attr-defined]
    Program.eval = _program_eval  # type: ignore[method-assign]


def uninstall() -> None:
    if not _ORIGINALS:
        return
    AmazonStateLanguageParser.parse = _ORIGINALS["parse"]  # type: ignore[method-assign]
    json_path.parse = _ORIGINALS["jsonpath_parse"]  # type: ignore[attr-defined]
    result_path.parse = _ORIGINALS["result_path_parse"]  # type: ignore[attr-defined]
    Program.eval = _ORIGINALS["program_eval"]  # type: ignore[method-assign]
    ExecutionWorker._execution_logic = _ORIGINALS["execution_logic"]  # type: ignore[method-assign]
