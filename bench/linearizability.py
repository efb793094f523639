"""A linearizability checker for one read/write register (one key of the store).

The chaos harness records, per key, every put, delete and read with its invocation and completion
time. At QUORUM the store promises that the key behaves like a single atomic register: every
operation appears to take effect at one instant between its start and its end. ``check_register``
decides whether some such order of the operations explains every value that was read.

It is the search of Wing & Gong with Lowe's memoization, as used by Knossos and Porcupine: walk the
call/return events in time order, linearize any operation whose call precedes the first pending
return, backtrack when a return is reached with its operation still pending, and remember every
(set of linearized operations, register value) already explored so that no state is searched twice.
Two rules, each shown sound and complete where it is applied, cut the search further: a pending read
that the current value satisfies is linearized at once, and an indeterminate write only right before a
read of its value.

Writes whose outcome is unknown (a timeout, UNAVAILABLE) are indeterminate: they may take effect at
any point after their start, or never. They get no return event, so they never force anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WRITE = "write"
READ = "read"

# How many possible values an explanation lists before eliding the rest.
_SHOWN_VALUES = 4


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on the key.

    value: for a write, the value written (None = delete); for a read, the value returned (None = absent).
    end: None only for an indeterminate write.
    """

    id: int
    kind: str
    value: bytes | None
    start: float
    end: float | None


@dataclass(frozen=True)
class Verdict:
    """The checker's answer.

    explanation: when not linearizable, which operation could not be placed and why ("" otherwise).
    culprits: ids of the operations the explanation involves.
    exhausted: the search gave up at max_states; the result is unknown (linearizable is then True).
    """

    linearizable: bool
    explanation: str = ""
    culprits: tuple[int, ...] = ()
    exhausted: bool = False


def check_register(
    ops: Sequence[Operation], initial: bytes | None = None, max_states: int = 2_000_000
) -> Verdict:
    """Whether the history of one register is linearizable, starting from the value initial.

    An operation that ended strictly before another started must be linearized first; operations whose
    intervals touch (equal timestamps) count as concurrent. max_states bounds the search's memo.
    """
    for op in ops:
        if op.kind not in (READ, WRITE):
            raise ValueError(f"op #{op.id}: unknown kind {op.kind!r}")
        if op.end is None and op.kind == READ:
            raise ValueError(f"read #{op.id} has no end; failed reads must be dropped before checking")
        if op.end is not None and op.end < op.start:
            raise ValueError(f"op #{op.id} ends before it starts")

    written = {op.value for op in ops if op.kind == WRITE}
    read_values = {op.value for op in ops if op.kind == READ}
    for op in sorted(ops, key=lambda o: o.start):
        # No order can explain a value nobody wrote; say so plainly instead of searching.
        if op.kind == READ and op.value != initial and op.value not in written:
            what = "which no write wrote" if op.value is not None else "but the key was never deleted"
            return Verdict(False, f"read #{op.id} returned {op.value!r}, {what}", (op.id,))

    # An indeterminate write whose value no read returned can always be linearized last (or never), so
    # it constrains nothing; dropping it keeps the search small. Deletes are kept when some read
    # returned None, since one of them may be what that read saw.
    kept = [op for op in ops if not (op.kind == WRITE and op.end is None and op.value not in read_values)]
    return _Search(kept, initial, max_states).run()


class _Search:
    """The memoized depth-first search over one history, with arrays instead of objects for speed."""

    def __init__(self, ops: list[Operation], initial: bytes | None, max_states: int) -> None:
        self.ops = ops
        self.initial = initial
        self.max_states = max_states
        n = len(ops)

        # Register values interned as small ints, so a memo key is one int.
        ids: dict[bytes | None, int] = {initial: 0}
        self.value_of = [ids.setdefault(op.value, len(ids)) for op in ops]
        self.values: list[bytes | None] = list(ids)
        self.is_write = [op.kind == WRITE for op in ops]
        self.indeterminate = [op.end is None for op in ops]

        # Events in time order; at equal times calls come first, so touching intervals overlap.
        events: list[tuple[float, int, int]] = []
        for i, op in enumerate(ops):
            events.append((op.start, 0, i))
            if op.end is not None:
                events.append((op.end, 1, i))
        events.sort()

        # Entry 0 is the head of a circular doubly linked list over entries 1..len(events).
        size = len(events) + 1
        self.next = [(e + 1) % size for e in range(size)]
        self.prev = [(e - 1) % size for e in range(size)]
        self.op_of = [-1] * size
        self.is_call = [False] * size
        self.match = [0] * size  # a call's return entry, 0 when it has none
        call_entry = [0] * n
        for e, (_, is_return, i) in enumerate(events, start=1):
            self.op_of[e] = i
            if is_return:
                self.match[call_entry[i]] = e
            else:
                self.is_call[e] = True
                call_entry[i] = e
        self.returns = sum(op.end is not None for op in ops)

        # Indeterminate writes of the same value are interchangeable, and the earlier-started one can
        # stand in wherever a later one could: only linearize one after its predecessor, so the search
        # does not try every subset of them.
        self.predecessor_bit = [0] * n
        last_of_value: dict[int, int] = {}
        for _, _, i in sorted((op.start, 0, i) for i, op in enumerate(ops) if op.end is None):
            if self.is_write[i]:
                if self.value_of[i] in last_of_value:
                    self.predecessor_bit[i] = 1 << last_of_value[self.value_of[i]]
                last_of_value[self.value_of[i]] = i

    def run(self) -> Verdict:
        n = len(self.ops)
        nxt, prv, op_of, is_call, match = self.next, self.prev, self.op_of, self.is_call, self.match
        value_of, is_write, indeterminate, predecessor_bit = (
            self.value_of,
            self.is_write,
            self.indeterminate,
            self.predecessor_bit,
        )
        max_states = self.max_states

        linearized = 0
        state = 0
        remaining = self.returns
        # (call entry linearized, register value before it, whether it was forced, readable before it)
        stack: list[tuple[int, int, bool, int]] = []
        seen: set[int] = set()
        # The furthest return any explored path got stuck at, and the register values there.
        stuck_at = 0
        stuck_values: set[int] = set()

        entry = nxt[0]
        readable = 0  # bitmask of the values some pending read (with its call reached) returned
        fresh = True  # a state whose pending ops have not been scanned yet
        while remaining:
            forced = False
            if fresh:
                fresh = False
                # A pending read that the current value satisfies can go first: moving it to the front
                # of any linearization from here breaks no real-time order (all ops that ended before
                # it started are linearized already) and changes no value. So it is the only choice
                # worth trying, and reads never need to be tried in other orders.
                readable = 0
                entry = nxt[0]
                while is_call[entry]:
                    i = op_of[entry]
                    if not is_write[i]:
                        if value_of[i] == state:
                            forced = True
                            break
                        readable |= 1 << value_of[i]
                    entry = nxt[entry]
                if not forced:
                    entry = nxt[0]
            if not forced:
                # The next write, up to the first pending return, that leads somewhere unexplored.
                # Reads are skipped: none fits the current value, or it would have been forced.
                while is_call[entry]:
                    i = op_of[entry]
                    v = value_of[i]
                    if is_write[i] and (
                        not indeterminate[i]
                        # An indeterminate write only matters if a read sees it before anything
                        # overwrites it; else it can be left out. So it goes in only where it changes
                        # the value to one that a pending read returned (which is then forced next),
                        # and only after its predecessor (see __init__).
                        or (
                            v != state
                            and readable >> v & 1
                            and (not predecessor_bit[i] or linearized & predecessor_bit[i])
                        )
                    ):
                        if (linearized | (1 << i) | (v << n)) not in seen:
                            break
                    entry = nxt[entry]
            if is_call[entry]:
                i = op_of[entry]
                v = value_of[i]
                now_linearized = linearized | (1 << i)
                key = now_linearized | (v << n)
                if key not in seen:
                    seen.add(key)
                    if len(seen) > max_states:
                        return Verdict(
                            True,
                            f"search gave up after {max_states} states: linearizability unknown",
                            exhausted=True,
                        )
                    stack.append((entry, state, forced, readable))
                    linearized, state = now_linearized, v
                    # Lift the call and its return out of the list.
                    nxt[prv[entry]] = nxt[entry]
                    prv[nxt[entry]] = prv[entry]
                    ret = match[entry]
                    if ret:
                        nxt[prv[ret]] = nxt[ret]
                        prv[nxt[ret]] = prv[ret]
                        remaining -= 1
                    fresh = True
                    continue
                # A forced read into a state already explored (and so failed): this state fails too.
            else:
                # A return with its op pending, and nothing else left to try before it from here.
                if entry > stuck_at:
                    stuck_at, stuck_values = entry, {state}
                elif entry == stuck_at:
                    stuck_values.add(state)
            # Backtrack to the latest choice that has alternatives left; forced reads have none.
            while True:
                if not stack:
                    return self._explain(op_of[stuck_at], stuck_values)
                entry, state, forced, readable = stack.pop()
                linearized ^= 1 << op_of[entry]
                # Put the call and its return back, in the reverse order of lifting them.
                ret = match[entry]
                if ret:
                    nxt[prv[ret]] = ret
                    prv[nxt[ret]] = ret
                    remaining += 1
                nxt[prv[entry]] = entry
                prv[nxt[entry]] = entry
                if not forced:
                    break
            entry = nxt[entry]
        return Verdict(True)

    def _explain(self, stuck: int, possible: set[int]) -> Verdict:
        """One line on the op no explored order could get past, and the values possible there.

        Each value is followed by where it came from: the latest write of it that had started by then.
        """
        op = self.ops[stuck]
        end = op.end
        assert end is not None  # only an op with a return can hold the search up

        def sourced(value: bytes | None) -> tuple[float, str, int | None]:
            """When its source started, the value with its source, and the source's id."""
            source = self._source(value, end)
            if source is None and value == self.initial:
                return float("-inf"), f"{value!r} (initial)", None
            note = ""
            if source is None:
                # Only a read's own value can lack a writer that started in time (check_register
                # ruled out values nobody wrote).
                source = self._source(value, float("inf"))
                assert source is not None
                note = ", started after the read ended"
            return source.start, f"{value!r} ({_describe(source)}{note})", source.id

        # Oldest source first; when there are many, the newest ones are the telling ones.
        values = sorted(sourced(self.values[v]) for v in possible)
        shown = ", ".join(text for _, text, _ in values[-_SHOWN_VALUES:])
        if len(values) > _SHOWN_VALUES:
            shown = f"{len(values) - _SHOWN_VALUES} older, {shown}"
        culprits = [op.id]
        if op.kind == READ:
            _, returned, writer = sourced(op.value)
            culprits += [writer] if writer is not None else []
            explanation = (
                f"read #{op.id} returned {returned} but at that point only {{{shown}}} were possible"
            )
        else:
            # Unreachable as far as the search goes (a write always fits), but stay informative.
            explanation = (
                f"{_describe(op)} could not be placed before it returned; possible then: {{{shown}}}"
            )
        culprits += [i for _, _, i in values if i is not None]
        return Verdict(False, explanation, tuple(dict.fromkeys(culprits)))

    def _source(self, value: bytes | None, before: float) -> Operation | None:
        """The latest-started write of value that started no later than before."""
        writes = [op for op in self.ops if op.kind == WRITE and op.value == value and op.start <= before]
        return max(writes, key=lambda op: op.start, default=None)


def _describe(op: Operation) -> str:
    if op.kind == READ:
        return f"read #{op.id}"
    return f"{'delete' if op.value is None else 'write'} #{op.id}"
