"""The dispatcher holds messages no subscription matches yet (persistent-session resume) unacked."""

from __future__ import annotations

from derbus.bus.base import Dispatcher, RawMessage
from derbus.testing import wait_for


async def test_message_before_its_subscription_is_held_unacked_then_delivered() -> None:
    dispatcher = Dispatcher()
    dispatcher.start()
    acked: list[str] = []
    got: list[str] = []

    async def handle(message: RawMessage) -> None:
        got.append(message.topic)

    # what a resumed session delivers right at CONNECT, before the service subscribed again
    dispatcher.put(RawMessage("r/s1/telemetry/pcc/meter", b"1", 1), lambda: acked.append("meter"))
    dispatcher.put(RawMessage("r/s1/telemetry/pv/pv", b"2", 1), lambda: acked.append("pv"))
    await dispatcher.join(5)
    assert (got, acked) == ([], [])
    dispatcher.add("r/+/telemetry/+/meter", 1, handle)
    await wait_for(lambda: acked == ["meter"], 5, message="meter delivered and acked")
    assert got == ["r/s1/telemetry/pcc/meter"]
    assert len(dispatcher.unmatched) == 1  # the pv message waits for its own subscription
    dispatcher.add("r/+/telemetry/+/pv", 1, handle)
    await wait_for(lambda: acked == ["meter", "pv"], 5, message="pv delivered and acked")
    await dispatcher.stop()


async def test_held_messages_are_bounded() -> None:
    dispatcher = Dispatcher(max_unmatched=2)
    dispatcher.start()
    for i in range(3):
        dispatcher.put(RawMessage(f"t/{i}", b"x", 1), None)
    await dispatcher.join(5)
    assert [m.topic for m, _, _ in dispatcher.unmatched] == ["t/1", "t/2"]
    await dispatcher.stop()
