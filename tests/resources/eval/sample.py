"""A small toolkit for scheduling jobs on a pool of workers.

This module was written for the tokenpress evaluation text. It defines a job model, a priority queue,
a least-recently-used cache, a tiny expression language for job conditions, and a simulator that runs
jobs on workers and reports statistics. Names defined near the top are used again much later, so a
language model needs long-range context to predict the later parts well.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple


class SchedulerError(Exception):
    """Raised when the scheduler is asked to do something impossible."""


class ParseError(SchedulerError):
    """Raised by the condition parser with the position of the bad token."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.position = position


@dataclass(order=True)
class Job:
    """One unit of work. Jobs are ordered by priority, then by submission order."""

    priority: int
    sequence: int
    name: str = field(compare=False)
    duration: float = field(compare=False, default=1.0)
    requires: Tuple[str, ...] = field(compare=False, default=())
    condition: Optional[str] = field(compare=False, default=None)
    attempts: int = field(compare=False, default=0)
    max_attempts: int = field(compare=False, default=3)

    def can_retry(self) -> bool:
        return self.attempts < self.max_attempts

    def describe(self) -> str:
        deps = ", ".join(self.requires) if self.requires else "none"
        return (f"Job(name={self.name!r}, priority={self.priority}, duration={self.duration:.2f}, "
                f"requires={deps}, attempts={self.attempts}/{self.max_attempts})")


@dataclass
class Worker:
    """A worker runs one job at a time and remembers what it has done."""

    name: str
    speed: float = 1.0
    busy_until: float = 0.0
    completed: List[str] = field(default_factory=list)
    failures: int = 0

    def is_idle(self, now: float) -> bool:
        return self.busy_until <= now

    def run(self, job: Job, now: float) -> float:
        if not self.is_idle(now):
            raise SchedulerError(f"worker {self.name} is busy until {self.busy_until:.2f}")
        finish = now + job.duration / self.speed
        self.busy_until = finish
        return finish


class PriorityQueue:
    """A binary heap of jobs with lazy deletion and stable ordering."""

    def __init__(self) -> None:
        self._heap: List[Job] = []
        self._removed: set = set()
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._heap) - len(self._removed)

    def push(self, name: str, priority: int, **kwargs) -> Job:
        job = Job(priority=priority, sequence=next(self._counter), name=name, **kwargs)
        heapq.heappush(self._heap, job)
        return job

    def remove(self, job: Job) -> None:
        self._removed.add(job.sequence)

    def pop(self) -> Job:
        while self._heap:
            job = heapq.heappop(self._heap)
            if job.sequence in self._removed:
                self._removed.discard(job.sequence)
                continue
            return job
        raise SchedulerError("pop from an empty queue")

    def peek(self) -> Optional[Job]:
        while self._heap and self._heap[0].sequence in self._removed:
            self._removed.discard(heapq.heappop(self._heap).sequence)
        return self._heap[0] if self._heap else None

    def __iter__(self) -> Iterator[Job]:
        return iter(sorted(j for j in self._heap if j.sequence not in self._removed))


class LRUCache:
    """A least-recently-used cache with a fixed capacity and hit statistics."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._data: "OrderedDict[str, object]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, default: object = None) -> object:
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return self._data[key]
        self.misses += 1
        return default

    def put(self, key: str, value: object) -> None:
        if key in self._data:
            self._data.move_to_end(key)
        self._data[key] = value
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)


# ---------------------------------------------------------------------------------------------------
# A tiny expression language for job conditions, e.g. "load < 0.8 and (hour >= 9 or urgent)".
# ---------------------------------------------------------------------------------------------------

TOKEN_PATTERN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][A-Za-z_0-9]*)|(?P<op><=|>=|==|!=|[<>()+\-*/]))")

KEYWORDS = {"and", "or", "not", "true", "false"}


@dataclass
class Token:
    kind: str
    text: str
    position: int


def tokenize(source: str) -> List[Token]:
    """Splits a condition into tokens; raises ParseError on anything it does not understand."""
    tokens: List[Token] = []
    position = 0
    while position < len(source):
        if source[position:].strip() == "":
            break
        match = TOKEN_PATTERN.match(source, position)
        if match is None:
            raise ParseError(f"unexpected character {source[position]!r}", position)
        group = match.lastgroup
        text = match.group(group)
        kind = "keyword" if group == "name" and text in KEYWORDS else group
        tokens.append(Token(kind, text, match.start(group)))
        position = match.end()
    tokens.append(Token("end", "", len(source)))
    return tokens


class Node:
    """Base class of the condition syntax tree."""

    def evaluate(self, env: Dict[str, float]) -> float:
        raise NotImplementedError

    def names(self) -> Iterable[str]:
        return ()


@dataclass
class Number(Node):
    value: float

    def evaluate(self, env: Dict[str, float]) -> float:
        return self.value


@dataclass
class Name(Node):
    name: str

    def evaluate(self, env: Dict[str, float]) -> float:
        if self.name == "true":
            return 1.0
        if self.name == "false":
            return 0.0
        if self.name not in env:
            raise SchedulerError(f"unknown variable {self.name!r} in condition")
        return float(env[self.name])

    def names(self) -> Iterable[str]:
        return () if self.name in KEYWORDS else (self.name,)


@dataclass
class Unary(Node):
    op: str
    operand: Node

    def evaluate(self, env: Dict[str, float]) -> float:
        value = self.operand.evaluate(env)
        if self.op == "not":
            return 0.0 if value else 1.0
        if self.op == "-":
            return -value
        raise SchedulerError(f"bad unary operator {self.op}")

    def names(self) -> Iterable[str]:
        return self.operand.names()


@dataclass
class Binary(Node):
    op: str
    left: Node
    right: Node

    def evaluate(self, env: Dict[str, float]) -> float:
        if self.op == "and":
            return 1.0 if self.left.evaluate(env) and self.right.evaluate(env) else 0.0
        if self.op == "or":
            return 1.0 if self.left.evaluate(env) or self.right.evaluate(env) else 0.0
        a = self.left.evaluate(env)
        b = self.right.evaluate(env)
        if self.op == "+":
            return a + b
        if self.op == "-":
            return a - b
        if self.op == "*":
            return a * b
        if self.op == "/":
            if b == 0:
                raise SchedulerError("division by zero in condition")
            return a / b
        if self.op == "<":
            return 1.0 if a < b else 0.0
        if self.op == "<=":
            return 1.0 if a <= b else 0.0
        if self.op == ">":
            return 1.0 if a > b else 0.0
        if self.op == ">=":
            return 1.0 if a >= b else 0.0
        if self.op == "==":
            return 1.0 if a == b else 0.0
        if self.op == "!=":
            return 1.0 if a != b else 0.0
        raise SchedulerError(f"bad binary operator {self.op}")

    def names(self) -> Iterable[str]:
        yield from self.left.names()
        yield from self.right.names()


PRECEDENCE = {"or": 1, "and": 2, "<": 3, "<=": 3, ">": 3, ">=": 3, "==": 3, "!=": 3, "+": 4, "-": 4, "*": 5, "/": 5}


class Parser:
    """A precedence-climbing parser for conditions."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.index = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expect(self, text: str) -> Token:
        token = self.current
        if token.text != text:
            raise ParseError(f"expected {text!r} but found {token.text or 'the end'!r}", token.position)
        return self.advance()

    def parse(self) -> Node:
        node = self.parse_expression(0)
        if self.current.kind != "end":
            raise ParseError(f"unexpected {self.current.text!r}", self.current.position)
        return node

    def parse_expression(self, min_precedence: int) -> Node:
        left = self.parse_unary()
        while True:
            token = self.current
            precedence = PRECEDENCE.get(token.text)
            if precedence is None or precedence <= min_precedence:
                return left
            self.advance()
            right = self.parse_expression(precedence)
            left = Binary(token.text, left, right)

    def parse_unary(self) -> Node:
        token = self.current
        if token.text == "not":
            self.advance()
            return Unary("not", self.parse_unary())
        if token.text == "-":
            self.advance()
            return Unary("-", self.parse_unary())
        return self.parse_primary()

    def parse_primary(self) -> Node:
        token = self.advance()
        if token.kind == "number":
            return Number(float(token.text))
        if token.kind in ("name", "keyword") and token.text not in ("and", "or", "not"):
            return Name(token.text)
        if token.text == "(":
            node = self.parse_expression(0)
            self.expect(")")
            return node
        raise ParseError(f"unexpected {token.text or 'end of input'!r}", token.position)


def compile_condition(source: str, cache: Optional[LRUCache] = None) -> Node:
    """Parses a condition once; a cache makes repeated conditions free."""
    if cache is not None:
        node = cache.get(source)
        if node is not None:
            return node  # type: ignore[return-value]
    node = Parser(source).parse()
    if cache is not None:
        cache.put(source, node)
    return node


# ---------------------------------------------------------------------------------------------------
# Dependency graph and the simulator.
# ---------------------------------------------------------------------------------------------------


def topological_order(jobs: Dict[str, Job]) -> List[str]:
    """Orders job names so that every job comes after the jobs it requires (Kahn's algorithm)."""
    indegree: Dict[str, int] = {name: 0 for name in jobs}
    dependents: Dict[str, List[str]] = defaultdict(list)
    for name, job in jobs.items():
        for dep in job.requires:
            if dep not in jobs:
                raise SchedulerError(f"job {name!r} requires unknown job {dep!r}")
            indegree[name] += 1
            dependents[dep].append(name)
    ready = sorted(name for name, degree in indegree.items() if degree == 0)
    order: List[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for other in dependents[name]:
            indegree[other] -= 1
            if indegree[other] == 0:
                ready.append(other)
        ready.sort()
    if len(order) != len(jobs):
        stuck = sorted(name for name, degree in indegree.items() if degree > 0)
        raise SchedulerError(f"dependency cycle among {', '.join(stuck)}")
    return order


@dataclass
class Event:
    time: float
    worker: str
    job: str
    kind: str  # "start", "finish" or "fail"


@dataclass
class Report:
    makespan: float
    events: List[Event]
    utilisation: Dict[str, float]
    retries: int
    cache_hit_rate: float

    def summary(self) -> str:
        lines = [f"makespan: {self.makespan:.2f}", f"retries: {self.retries}",
                 f"condition cache hit rate: {self.cache_hit_rate:.0%}"]
        for worker, share in sorted(self.utilisation.items()):
            lines.append(f"  {worker}: {share:.0%} busy")
        return "\n".join(lines)


class Simulator:
    """Runs jobs on workers in simulated time, honouring priorities, dependencies and conditions."""

    def __init__(self, workers: List[Worker], environment: Optional[Dict[str, float]] = None,
                 failure: Optional[Callable[[Job, Worker], bool]] = None) -> None:
        if not workers:
            raise SchedulerError("at least one worker is needed")
        self.workers = workers
        self.environment = dict(environment or {})
        self.failure = failure or (lambda job, worker: False)
        self.queue = PriorityQueue()
        self.jobs: Dict[str, Job] = {}
        self.cache = LRUCache(capacity=64)
        self.events: List[Event] = []
        self.done: set = set()
        self.retries = 0

    def submit(self, name: str, priority: int = 0, duration: float = 1.0, requires: Iterable[str] = (),
               condition: Optional[str] = None, max_attempts: int = 3) -> Job:
        if name in self.jobs:
            raise SchedulerError(f"job {name!r} was already submitted")
        if condition is not None:
            compile_condition(condition, self.cache)  # fail early on a bad condition
        job = self.queue.push(name, priority, duration=duration, requires=tuple(requires),
                              condition=condition, max_attempts=max_attempts)
        self.jobs[name] = job
        return job

    def ready(self, job: Job) -> bool:
        if any(dep not in self.done for dep in job.requires):
            return False
        if job.condition is None:
            return True
        node = compile_condition(job.condition, self.cache)
        return bool(node.evaluate(self.environment))

    def idle_worker(self, now: float) -> Optional[Worker]:
        idle = [w for w in self.workers if w.is_idle(now)]
        if not idle:
            return None
        return max(idle, key=lambda w: (w.speed, -len(w.completed)))

    def run(self, until: float = math.inf) -> Report:
        topological_order(self.jobs)  # validates the dependency graph before anything runs
        now = 0.0
        running: List[Tuple[float, str, str]] = []
        waiting: List[Job] = []
        while (len(self.queue) or running or waiting) and now <= until:
            for job in list(waiting):
                if self.ready(job):
                    waiting.remove(job)
                    self.queue.push(job.name, job.priority, duration=job.duration, requires=job.requires,
                                    condition=job.condition, attempts=job.attempts, max_attempts=job.max_attempts)
            while len(self.queue):
                worker = self.idle_worker(now)
                if worker is None:
                    break
                job = self.queue.pop()
                if not self.ready(job):
                    waiting.append(job)
                    continue
                job.attempts += 1
                finish = worker.run(job, now)
                self.events.append(Event(now, worker.name, job.name, "start"))
                heapq.heappush(running, (finish, worker.name, job.name))
            if not running:
                if waiting and not len(self.queue):
                    names = ", ".join(sorted(j.name for j in waiting))
                    raise SchedulerError(f"jobs can never run: {names}")
                continue
            finish, worker_name, job_name = heapq.heappop(running)
            now = finish
            worker = next(w for w in self.workers if w.name == worker_name)
            job = self.jobs[job_name]
            if self.failure(job, worker):
                worker.failures += 1
                self.events.append(Event(now, worker.name, job.name, "fail"))
                if job.can_retry():
                    self.retries += 1
                    self.queue.push(job.name, job.priority - 1, duration=job.duration, requires=job.requires,
                                    condition=job.condition, attempts=job.attempts, max_attempts=job.max_attempts)
                else:
                    raise SchedulerError(f"job {job.name!r} failed {job.attempts} times")
            else:
                worker.completed.append(job.name)
                self.done.add(job.name)
                self.events.append(Event(now, worker.name, job.name, "finish"))
        return self.report(now)

    def report(self, now: float) -> Report:
        busy: Dict[str, float] = defaultdict(float)
        started: Dict[Tuple[str, str], float] = {}
        for event in self.events:
            key = (event.worker, event.job)
            if event.kind == "start":
                started[key] = event.time
            elif key in started:
                busy[event.worker] += event.time - started.pop(key)
        utilisation = {w.name: (busy[w.name] / now if now else 0.0) for w in self.workers}
        return Report(makespan=now, events=list(self.events), utilisation=utilisation,
                      retries=self.retries, cache_hit_rate=self.cache.hit_rate())


# ---------------------------------------------------------------------------------------------------
# Statistics over many simulated runs.
# ---------------------------------------------------------------------------------------------------


def mean(values: List[float]) -> float:
    if not values:
        raise ValueError("mean of an empty list")
    return sum(values) / len(values)


def variance(values: List[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1)


def percentile(values: List[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of an empty list")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[int(rank)]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class LinearCongruential:
    """A deterministic pseudo-random generator so that simulations are reproducible."""

    MODULUS = 2 ** 31 - 1
    MULTIPLIER = 48271

    def __init__(self, seed: int) -> None:
        self.state = seed % self.MODULUS or 1

    def next_int(self) -> int:
        self.state = (self.state * self.MULTIPLIER) % self.MODULUS
        return self.state

    def random(self) -> float:
        return self.next_int() / self.MODULUS

    def choice(self, items: List[str]) -> str:
        return items[self.next_int() % len(items)]

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()


def build_pipeline(simulator: Simulator, rng: LinearCongruential, stages: int, width: int) -> List[str]:
    """Submits a layered pipeline: every job of a stage requires one or two jobs of the previous stage."""
    previous: List[str] = []
    names: List[str] = []
    for stage in range(stages):
        current: List[str] = []
        for index in range(width):
            name = f"stage{stage}_job{index}"
            requires: List[str] = []
            if previous:
                requires.append(rng.choice(previous))
                if rng.random() < 0.5:
                    other = rng.choice(previous)
                    if other not in requires:
                        requires.append(other)
            condition = None
            if rng.random() < 0.3:
                condition = "load < 0.9 and (hour >= 8 or urgent)"
            simulator.submit(name, priority=stage, duration=rng.uniform(0.5, 3.0), requires=requires,
                             condition=condition)
            current.append(name)
            names.append(name)
        previous = current
    return names


def simulate_many(runs: int, seed: int = 7, workers: int = 3, stages: int = 4, width: int = 5,
                  failure_rate: float = 0.1) -> Dict[str, float]:
    """Runs the pipeline many times with different random durations and failures."""
    makespans: List[float] = []
    retries: List[float] = []
    hit_rates: List[float] = []
    for run in range(runs):
        rng = LinearCongruential(seed + run)
        pool = [Worker(f"w{i}", speed=1.0 + 0.25 * i) for i in range(workers)]
        simulator = Simulator(pool, environment={"load": 0.5, "hour": 10, "urgent": 0},
                              failure=lambda job, worker: rng.random() < failure_rate)
        build_pipeline(simulator, rng, stages, width)
        report = simulator.run()
        makespans.append(report.makespan)
        retries.append(float(report.retries))
        hit_rates.append(report.cache_hit_rate)
    return {
        "runs": float(runs),
        "makespan_mean": mean(makespans),
        "makespan_stdev": math.sqrt(variance(makespans)),
        "makespan_p50": percentile(makespans, 50),
        "makespan_p95": percentile(makespans, 95),
        "retries_mean": mean(retries),
        "cache_hit_rate_mean": mean(hit_rates),
    }


# ---------------------------------------------------------------------------------------------------
# Formatting helpers and a command line entry point.
# ---------------------------------------------------------------------------------------------------


def format_table(rows: List[Dict[str, object]], columns: List[str]) -> str:
    """Formats rows as a plain text table with aligned columns."""
    widths = {column: len(column) for column in columns}
    cells: List[List[str]] = []
    for row in rows:
        line: List[str] = []
        for column in columns:
            value = row.get(column, "")
            text = f"{value:.3f}" if isinstance(value, float) else str(value)
            widths[column] = max(widths[column], len(text))
            line.append(text)
        cells.append(line)
    header = "  ".join(column.ljust(widths[column]) for column in columns)
    rule = "  ".join("-" * widths[column] for column in columns)
    body = ["  ".join(text.rjust(widths[column]) for text, column in zip(line, columns)) for line in cells]
    return "\n".join([header, rule, *body])


def timeline(events: List[Event], width: int = 60) -> str:
    """Draws one line per worker with a character per time slice: '#' busy, 'x' failed, '.' idle."""
    if not events:
        return ""
    end = max(event.time for event in events)
    scale = width / end if end else 1.0
    rows: Dict[str, List[str]] = defaultdict(lambda: ["."] * width)
    started: Dict[Tuple[str, str], float] = {}
    for event in events:
        key = (event.worker, event.job)
        if event.kind == "start":
            started[key] = event.time
            continue
        begin = started.pop(key, event.time)
        mark = "#" if event.kind == "finish" else "x"
        for slot in range(int(begin * scale), min(width, int(math.ceil(event.time * scale)))):
            rows[event.worker][slot] = mark
    return "\n".join(f"{worker:>4} |{''.join(cells)}|" for worker, cells in sorted(rows.items()))


def parse_arguments(argv: List[str]) -> Dict[str, float]:
    """A very small argument parser: --name value pairs with numeric values."""
    options: Dict[str, float] = {"runs": 20, "seed": 7, "workers": 3, "stages": 4, "width": 5, "failure_rate": 0.1}
    index = 0
    while index < len(argv):
        flag = argv[index]
        if not flag.startswith("--"):
            raise SchedulerError(f"expected an option, got {flag!r}")
        key = flag[2:].replace("-", "_")
        if key not in options:
            raise SchedulerError(f"unknown option {flag}; known: {', '.join(sorted(options))}")
        if index + 1 >= len(argv):
            raise SchedulerError(f"option {flag} needs a value")
        options[key] = float(argv[index + 1])
        index += 2
    return options


def main(argv: Optional[List[str]] = None) -> int:
    import sys

    try:
        options = parse_arguments(list(sys.argv[1:] if argv is None else argv))
        stats = simulate_many(int(options["runs"]), seed=int(options["seed"]), workers=int(options["workers"]),
                              stages=int(options["stages"]), width=int(options["width"]),
                              failure_rate=options["failure_rate"])
    except SchedulerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = [{"statistic": key, "value": value} for key, value in stats.items()]
    print(format_table(rows, ["statistic", "value"]))
    rng = LinearCongruential(int(options["seed"]))
    pool = [Worker(f"w{i}", speed=1.0 + 0.25 * i) for i in range(int(options["workers"]))]
    simulator = Simulator(pool, environment={"load": 0.5, "hour": 10, "urgent": 0},
                          failure=lambda job, worker: rng.random() < options["failure_rate"])
    build_pipeline(simulator, rng, int(options["stages"]), int(options["width"]))
    report = simulator.run()
    print()
    print(report.summary())
    print(timeline(report.events))
    return 0


# ---------------------------------------------------------------------------------------------------
# Self-checks, run with `python sample.py --self-test`.
# ---------------------------------------------------------------------------------------------------


def check_parser() -> None:
    env = {"load": 0.5, "hour": 10, "urgent": 0}
    assert compile_condition("load < 0.8").evaluate(env) == 1.0
    assert compile_condition("load < 0.8 and hour >= 12").evaluate(env) == 0.0
    assert compile_condition("load < 0.8 and (hour >= 12 or not urgent)").evaluate(env) == 1.0
    assert compile_condition("2 + 3 * 4 == 14").evaluate(env) == 1.0
    assert compile_condition("-(2 - 5) / 3").evaluate(env) == 1.0
    assert sorted(compile_condition("load < 1 or hour > urgent").names()) == ["hour", "load", "urgent"]
    for bad in ["load <", "(load", "load $ 2", "and load"]:
        try:
            compile_condition(bad)
        except ParseError as error:
            assert error.position >= 0
        else:
            raise AssertionError(f"{bad!r} should not parse")


def check_queue_and_cache() -> None:
    queue = PriorityQueue()
    first = queue.push("a", 2)
    queue.push("b", 1)
    queue.push("c", 1)
    queue.remove(first)
    assert [queue.pop().name for _ in range(len(queue))] == ["b", "c"]
    cache = LRUCache(capacity=2)
    cache.put("x", 1)
    cache.put("y", 2)
    cache.get("x")
    cache.put("z", 3)
    assert "y" not in cache and "x" in cache and "z" in cache
    assert cache.hit_rate() == 1.0


def check_simulator() -> None:
    pool = [Worker("w0"), Worker("w1", speed=2.0)]
    simulator = Simulator(pool, environment={"load": 0.5, "hour": 10, "urgent": 0})
    simulator.submit("fetch", priority=0, duration=2.0)
    simulator.submit("parse", priority=1, duration=1.0, requires=["fetch"])
    simulator.submit("index", priority=1, duration=3.0, requires=["fetch"], condition="hour >= 9")
    simulator.submit("publish", priority=2, duration=1.0, requires=["parse", "index"])
    report = simulator.run()
    assert simulator.done == {"fetch", "parse", "index", "publish"}
    assert report.makespan > 0
    assert topological_order(simulator.jobs)[0] == "fetch"
    try:
        broken = Simulator([Worker("w0")])
        broken.submit("a", requires=["b"])
        broken.submit("b", requires=["a"])
        broken.run()
    except SchedulerError as error:
        assert "cycle" in str(error)
    else:
        raise AssertionError("a cycle must be reported")


def check_statistics() -> None:
    assert mean([1.0, 2.0, 3.0]) == 2.0
    assert variance([1.0, 2.0, 3.0]) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 95) == 5.0
    rng = LinearCongruential(42)
    values = [rng.random() for _ in range(1000)]
    assert 0.4 < mean(values) < 0.6
    stats = simulate_many(5, seed=3)
    assert stats["runs"] == 5.0 and stats["makespan_mean"] > 0


def self_test() -> int:
    checks = [check_parser, check_queue_and_cache, check_simulator, check_statistics]
    for check in checks:
        check()
        print(f"ok  {check.__name__}")
    print(f"{len(checks)} checks passed")
    return 0


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--self-test"]:
        sys.exit(self_test())
    sys.exit(main())
