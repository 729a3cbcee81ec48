"""The task graph executor: dependency order, lane limits, failures, growth while running,
timeouts that abandon a hung task, and tasks added from another thread while it runs."""

from __future__ import annotations

import threading
import time

import pytest

from inference_utils.dag import (
    DependencyFailed,
    TaskGraph,
    TaskTimeout,
    UnschedulableTasks,
)


class Gauge:
    """Counts tasks in flight, overall and per lane, and keeps the maxima.

    A task holds its worker until every expected peak has been reached (or ``patience``
    seconds pass), so the peaks do not depend on how fast a loaded machine starts threads: a
    correct executor reaches them at once, one that under-schedules times out short of them.
    """

    def __init__(self, expect: dict[str, int], patience: float = 10.0) -> None:
        self.cond = threading.Condition()
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.expect = expect
        self.patience = patience

    def _reached(self) -> bool:
        return all(self.peak.get(k, 0) >= n for k, n in self.expect.items())

    def task(self, lane: str, value=None):
        def run(*_):
            with self.cond:
                for k in (lane, "*"):
                    self.now[k] = self.now.get(k, 0) + 1
                    self.peak[k] = max(self.peak.get(k, 0), self.now[k])
                self.cond.notify_all()
                self.cond.wait_for(self._reached, timeout=self.patience)
            time.sleep(0.005)  # room for an executor that oversteps a cap to show it
            with self.cond:
                for k in (lane, "*"):
                    self.now[k] -= 1
            return value

        return run


def test_results_flow_along_dependencies_in_order() -> None:
    graph = TaskGraph(max_workers=4)
    order: list[str] = []

    def step(name, fn):
        def run(*args):
            order.append(name)
            return fn(*args)

        return run

    graph.add("c", step("c", lambda a, b: a + b), deps=["a", "b"])  # added before its inputs
    graph.add("a", step("a", lambda: 2))
    graph.add("b", step("b", lambda a: a * 10), deps=["a"])
    graph.add("d", step("d", lambda c, a, c2: (c, a, c2)), deps=["c", "a", "c"])
    outcome = graph.run()
    assert outcome.results == {"a": 2, "b": 20, "c": 22, "d": (22, 2, 22)}
    assert order.index("a") < order.index("b") < order.index("c") < order.index("d")
    assert outcome.errors == {}


def test_lanes_cap_their_own_concurrency_and_not_the_others() -> None:
    expect = {"slow": 2, "fast": 4, "*": 6}  # fast: the six workers minus the slow lane's two
    gauge = Gauge(expect)
    graph = TaskGraph(max_workers=6, lanes={"slow": 2})
    for i in range(8):
        graph.add(("slow", i), gauge.task("slow"), lane="slow")
        graph.add(("fast", i), gauge.task("fast"), lane="fast")
    outcome = graph.run()
    assert len(outcome.results) == 16
    assert gauge.peak == expect


def test_a_blocked_lane_does_not_stall_another() -> None:
    released = threading.Event()
    graph = TaskGraph(max_workers=4, lanes={"a": 1, "b": 1})
    graph.add("wait", lambda: released.wait(timeout=10), lane="a")
    graph.add("queued", lambda: "ran", lane="a")
    graph.add("release", released.set, lane="b")
    outcome = graph.run()
    assert outcome["wait"] is True  # released by lane b while lane a was full
    assert outcome["queued"] == "ran"


def test_a_failure_fails_its_dependents_only() -> None:
    errors: list = []

    def boom():
        raise OSError("tool server down")

    graph = TaskGraph(max_workers=2, on_error=lambda g, k, e: errors.append(k))
    graph.add("bad", boom)
    graph.add("child", lambda x: x, deps=["bad"])
    graph.add("grandchild", lambda x: x, deps=["child"])
    graph.add("good", lambda: 1)
    graph.add("after_good", lambda x: x + 1, deps=["good"])
    outcome = graph.run()
    assert outcome.results == {"good": 1, "after_good": 2}
    assert isinstance(outcome.errors["bad"], OSError)
    child = outcome.errors["grandchild"]
    assert isinstance(child, DependencyFailed) and child.dependency == "child"
    assert "tool server down" in str(child)
    assert sorted(errors) == ["bad", "child", "grandchild"]
    with pytest.raises(OSError):
        outcome["bad"]


def test_on_done_grows_the_graph_while_it_runs() -> None:
    def route(graph: TaskGraph, key, result) -> None:
        if key[1] == "plan":
            role = "caller" if result % 2 else "summarizer"
            graph.add((key[0], role), lambda r=result: r * 100, deps=[key], lane=role)

    graph = TaskGraph(max_workers=3, lanes={"caller": 1, "summarizer": 1}, on_done=route)
    for i in range(6):
        graph.add((i, "plan"), lambda i=i: i, lane="planner")
    outcome = graph.run()
    follow = {k: v for k, v in outcome.results.items() if k[1] != "plan"}
    assert follow == {(i, "caller" if i % 2 else "summarizer"): i * 100 for i in range(6)}


def test_tasks_added_after_their_dependency_failed_fail_too() -> None:
    def boom():
        raise ValueError("bad plan")

    def late(graph, key, error):
        if key == "plan":
            graph.add("follow", lambda x: x, deps=["plan"])

    graph = TaskGraph(on_error=late)
    graph.add("plan", boom)
    outcome = graph.run()
    assert isinstance(outcome.errors["follow"], DependencyFailed)


@pytest.mark.parametrize(
    "tasks",
    [
        [("a", ["missing"])],
        [("a", ["b"]), ("b", ["a"])],
        [("a", []), ("b", ["c"]), ("c", ["b"])],
    ],
    ids=["missing", "cycle", "cycle-beside-a-good-task"],
)
def test_unschedulable_tasks_are_named(tasks) -> None:
    graph = TaskGraph()
    for key, deps in tasks:
        graph.add(key, lambda *a: 0, deps=deps)
    with pytest.raises(UnschedulableTasks, match="can never run") as info:
        graph.run()
    assert "'b'" in str(info.value) or "'a'" in str(info.value)


def test_bad_arguments_are_refused() -> None:
    graph = TaskGraph()
    graph.add("x", lambda: 0)
    with pytest.raises(ValueError, match="already added"):
        graph.add("x", lambda: 1)
    with pytest.raises(ValueError, match="at least 1"):
        TaskGraph(max_workers=0)
    with pytest.raises(ValueError, match="at least 1"):
        TaskGraph(lanes={"a": 0})
    with pytest.raises(ValueError, match="timeout must be positive"):
        graph.add("y", lambda: 0, timeout=0)


# Every wait below is bounded: a hung task waits on ``release`` (set when the test ends), and
# each run must return well within BOUND seconds of a 0.2 s timeout.
BOUND = 10.0


@pytest.fixture
def release():
    event = threading.Event()
    yield event
    event.set()  # lets the abandoned threads finish


def test_a_task_past_its_timeout_fails_and_its_thread_is_abandoned(release) -> None:
    threads: list[threading.Thread] = []

    def hang():
        threads.append(threading.current_thread())
        release.wait(timeout=30)
        return "too late"

    graph = TaskGraph(max_workers=1)  # the one worker hangs: the others need a new thread
    graph.add("hang", hang, timeout=0.2)
    graph.add("after", lambda: "ran")
    graph.add("child", lambda x: x, deps=["hang"])
    start = time.monotonic()
    outcome = graph.run()
    assert time.monotonic() - start < BOUND
    assert isinstance(outcome.errors["hang"], TaskTimeout)
    assert "timed out after 0.2 s" in str(outcome.errors["hang"])
    assert isinstance(outcome.errors["child"], DependencyFailed)
    assert outcome.results == {"after": "ran"}
    assert threads[0].is_alive() and threads[0].daemon  # never joined, never blocks exit
    release.set()
    threads[0].join(timeout=BOUND)
    assert not threads[0].is_alive()  # it leaves once its call returns


def test_a_timeout_counts_from_when_the_task_starts() -> None:
    graph = TaskGraph(max_workers=1)
    graph.add("first", lambda: time.sleep(1.5) or "slept")
    graph.add("second", lambda: "ran", timeout=0.5)  # waits 1.5 s for the one worker
    outcome = graph.run()
    assert outcome.errors == {}
    assert outcome.results == {"first": "slept", "second": "ran"}


def test_tasks_added_from_another_thread_while_a_streaming_graph_runs() -> None:
    graph = TaskGraph(max_workers=2, streaming=True)
    first_ran, third_ran = threading.Event(), threading.Event()
    graph.add("first", lambda: first_ran.set() or 1)
    runner = threading.Thread(target=graph.run)
    runner.start()
    assert first_ran.wait(timeout=BOUND)  # ran before the rest of the graph exists
    graph.add("second", lambda x: x + 1, deps=["first"])
    graph.add("third", lambda x: third_ran.set() or x * 10, deps=["second"])
    assert third_ran.wait(timeout=BOUND)
    runner.join(timeout=0.2)
    assert runner.is_alive()  # every task is done, but it waits for close()
    graph.close()
    runner.join(timeout=BOUND)
    assert not runner.is_alive()
    assert graph.outcome.results == {"first": 1, "second": 2, "third": 20}


def test_a_streaming_graph_closed_with_a_missing_dependency_is_unschedulable() -> None:
    graph = TaskGraph(streaming=True)
    graph.add("orphan", lambda x: x, deps=["never"])
    threading.Timer(0.1, graph.close).start()
    with pytest.raises(UnschedulableTasks, match="'orphan'"):
        graph.run()


def test_a_failing_callback_ends_the_run_without_waiting_for_running_tasks(release) -> None:
    def explode(graph, key, result):
        raise RuntimeError("callback broke")

    graph = TaskGraph(max_workers=2, on_done=explode)
    graph.add("slow", lambda: release.wait(timeout=30))
    graph.add("quick", lambda: 1)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="callback broke"):
        graph.run()
    assert time.monotonic() - start < BOUND


@pytest.mark.parametrize("keep_results", [True, False])
def test_a_dependency_that_fails_while_another_is_running(keep_results: bool) -> None:
    """c depends on a (fails at once) and b (finishes later): c fails with a's error once,
    and b's late success neither crashes the scheduler nor starts c."""

    def bad() -> None:
        raise OSError("a broke")

    errors: dict = {}
    graph = TaskGraph(keep_results=keep_results, on_error=lambda _g, k, e: errors.setdefault(k, e))
    graph.add("a", bad)
    graph.add("b", lambda: time.sleep(0.2) or "b")
    graph.add("c", lambda a, b: "never", deps=("a", "b"))
    graph.add("d", lambda b: b + "+d", deps=("b",))
    done: dict = {}
    graph.on_done = lambda _g, key, value: done.setdefault(key, value)
    graph.run()
    assert done == {"b": "b", "d": "b+d"}
    assert isinstance(errors["c"], DependencyFailed) and errors["c"].dependency == "a"


def test_a_long_lived_graph_forgets_finished_work() -> None:
    """With keep_results=False a dependent still gets its dependencies' results, and once
    everything has run the graph holds nothing: no task, no result, no error."""
    graph = TaskGraph(max_workers=4, keep_results=False)
    seen: dict = {}
    graph.on_done = lambda _g, key, value: seen.__setitem__(key, value)
    for k in range(2000):
        graph.add(("x", k), lambda k=k: k)
        graph.add(("y", k), lambda x: x * 2, deps=[("x", k)])
    graph.add("bad", lambda: 1 / 0)
    graph.add("after_bad", lambda x: x, deps=["bad"])
    outcome = graph.run()
    assert all(seen[("y", k)] == 2 * k for k in range(2000))
    assert outcome.results == {} and outcome.errors == {}
    assert not graph._tasks and not graph._readers and not graph._missing
    with pytest.raises(ValueError, match="forgets finished tasks"):
        graph.add("late", lambda x: x, deps=[("x", 0)])


def test_cancel_starts_nothing_more_and_lets_the_running_finish() -> None:
    """A failure that cancels the graph (as the judges do when a judge fails for good): the
    tasks running then finish, none not yet started runs, and run() returns."""
    ran: list[int] = []
    lock = threading.Lock()

    def work(k: int) -> int:
        if k == 3:
            raise OSError("the judge is gone")
        time.sleep(0.01)
        with lock:
            ran.append(k)
        return k

    errors: list = []
    graph = TaskGraph(max_workers=2, keep_results=False)
    graph.on_error = lambda g, key, error: (errors.append(key), g.cancel())
    for k in range(200):
        graph.add(k, lambda k=k: work(k))
    start = time.monotonic()
    graph.run()
    assert errors == [3] and graph.cancelled
    assert len(ran) < 20, "tasks kept starting after the cancel"
    assert time.monotonic() - start < 30
    graph.add("late", lambda: ran.append(-1))  # dropped: the graph is cancelled
    assert -1 not in ran
