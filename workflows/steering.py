"""What every long-running pairdb workflow lets an operator do while it copies: pause, resume, throttle.

Ring changes and repairs are steered the same way, by the `temporal` CLI (signals)
and by the coordinator's RPCs (updates, which answer yes or no); both read and
publish a MigrationState.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from pairdb.kernel import migration as m
    from pairdb.kernel.migration import TERMINAL


class Steering:
    """Signals and updates over self._state; the workflow publishes the change (_publish)."""

    _state: m.MigrationState
    # How refusals name what is steered.
    _noun = "the migration"

    def _publish(self) -> None:
        raise NotImplementedError

    @workflow.signal
    def pause(self) -> None:
        self._state.paused = True
        self._publish()

    @workflow.signal
    def resume(self) -> None:
        self._state.paused = False
        self._publish()

    @workflow.signal
    def set_throttle(self, keys_per_second: int) -> None:
        self._state.throttle_keys_per_second = max(0, int(keys_per_second))
        self._publish()

    @workflow.update(name=m.UPDATE_THROTTLE)
    def change_throttle(self, keys_per_second: int) -> int:
        self.set_throttle(keys_per_second)
        return self._state.throttle_keys_per_second

    @change_throttle.validator
    def _validate_throttle(self, keys_per_second: int) -> None:
        if keys_per_second < 0:
            raise ApplicationError("throttle must be 0 (unlimited) or a positive number of keys per second")

    @workflow.update(name=m.UPDATE_PAUSE)
    def set_paused(self, paused: bool) -> bool:
        self._state.paused = paused
        self._publish()
        return paused

    @set_paused.validator
    def _validate_pause(self, paused: bool) -> None:
        self._refuse_if_ended()

    def _refuse_if_ended(self) -> None:
        if self._state.status in TERMINAL:
            raise ApplicationError(f"{self._noun} is {self._state.status}")
