"""The ack/credit window of a frame stream: every transition, with time passed in."""

from __future__ import annotations

import pytest

from services.streaming.window import (
    MAX_GAPS,
    TRANSITIONS,
    AckWindow,
    CreditExceeded,
    Event,
    IllegalTransition,
    State,
    Verdict,
)

T0 = 100.0


def opened(window: int = 4, durable: int = 0) -> AckWindow:
    w = AckWindow(window=window, ack_delay_s=0.01)
    assert w.open(durable, T0) == window
    return w


def test_frames_are_acked_only_once_settled_and_in_sequence_order():
    w = opened()
    assert [w.receive(s, T0) for s in (1, 2, 3)] == [Verdict.ACCEPT] * 3
    assert w.take_ack(T0 + 1) is None  # nothing settled yet
    w.settle(2, T0)
    assert w.acked_through == 0  # 1 is still in flight
    w.settle(1, T0)
    assert w.acked_through == 2
    ack = w.take_ack(T0 + 1)
    assert ack is not None
    assert ack.acked_through == 2
    assert ack.credit_grant == 2


def test_acks_are_coalesced_until_the_delay_passes_while_frames_are_in_flight():
    w = opened()
    w.receive(1, T0)
    w.receive(2, T0)
    w.settle(1, T0)
    assert w.next_deadline() == pytest.approx(T0 + 0.01)
    assert w.take_ack(T0 + 0.005) is None
    ack = w.take_ack(T0 + 0.01)
    assert ack is not None
    assert ack.acked_through == 1
    assert w.take_ack(T0 + 1) is None


def test_the_last_frame_in_flight_is_acked_without_the_coalescing_delay():
    w = opened()
    w.receive(1, T0)
    w.receive(2, T0)
    w.settle(1, T0)
    w.settle(2, T0 + 0.001)  # nothing more to wait for: due at once, not at T0 + 0.01
    assert w.next_deadline() == pytest.approx(T0 + 0.001)
    ack = w.take_ack(T0 + 0.001)
    assert ack is not None
    assert ack.acked_through == 2


def test_credit_never_lets_more_than_the_window_be_outstanding():
    w = opened(window=2)
    w.receive(1, T0)
    w.receive(2, T0)
    with pytest.raises(CreditExceeded):
        w.receive(3, T0)
    w.settle(1, T0)
    ack = w.take_ack(T0 + 1)
    assert ack is not None
    assert ack.credit_grant == 1
    assert w.credit + w.in_flight == 2


def test_sequences_at_or_below_the_durable_mark_are_duplicates():
    w = opened(durable=10)
    assert w.receive(9, T0) is Verdict.DUPLICATE
    assert w.receive(10, T0) is Verdict.DUPLICATE
    assert w.receive(11, T0) is Verdict.ACCEPT
    ack = w.take_ack(T0 + 1)
    assert ack is not None
    assert ack.duplicates == (9, 10)
    assert ack.acked_through == 10


def test_a_sequence_below_one_in_flight_is_out_of_order_and_reported_as_rejected():
    w = opened()
    w.receive(5, T0)
    assert w.receive(4, T0) is Verdict.OUT_OF_ORDER
    w.reject_unpublished(4, 10, "sequence 4 is not above 5", T0)
    ack = w.take_ack(T0 + 1)
    assert ack is not None
    assert ack.rejections == ((4, 10, "sequence 4 is not above 5"),)


def test_a_skipped_frame_arriving_after_its_successor_was_acked_is_out_of_order_not_a_duplicate():
    w = opened(durable=3)
    assert w.receive(5, T0) is Verdict.ACCEPT  # 4 skipped
    w.settle(5, T0)
    assert w.take_ack(T0 + 1) is not None
    assert w.acked_through == 5
    assert w.receive(4, T0 + 2) is Verdict.OUT_OF_ORDER  # never published: must not be acked
    assert w.receive(5, T0 + 2) is Verdict.DUPLICATE  # a copy of a settled frame
    assert w.receive(3, T0 + 2) is Verdict.DUPLICATE  # at or below the mark the stream opened from


def test_forgotten_gaps_make_every_sequence_up_to_them_out_of_order():
    w = opened(window=4 * MAX_GAPS, durable=0)
    for sequence in range(2, 2 * MAX_GAPS + 6, 2):  # every odd one skipped: 2 runs more than remembered
        assert w.receive(sequence, T0) is Verdict.ACCEPT
        w.settle(sequence, T0)
    assert w.receive(1, T0) is Verdict.OUT_OF_ORDER  # its run was forgotten
    assert w.receive(2, T0) is Verdict.OUT_OF_ORDER  # below a forgotten run: never acked blindly
    assert w.receive(2 * MAX_GAPS, T0) is Verdict.DUPLICATE  # still remembered as received
    assert w.receive(2 * MAX_GAPS + 1, T0) is Verdict.OUT_OF_ORDER


def test_rejections_settle_frames_and_are_reported_once():
    w = opened()
    w.receive(1, T0)
    w.settle(1, T0, rejection=(2, "not a jpeg"))
    first = w.take_ack(T0 + 1)
    assert first is not None
    assert first.acked_through == 1
    assert first.rejections == ((1, 2, "not a jpeg"),)
    assert w.take_ack(T0 + 2) is None


def test_backpressure_withholds_credit_and_is_reported():
    w = opened(window=2)
    w.receive(1, T0)
    w.set_backpressure(True, T0)
    w.settle(1, T0)
    ack = w.take_ack(T0 + 1)
    assert ack is not None
    assert ack.backpressure
    assert ack.credit_grant == 0
    w.set_backpressure(False, T0 + 2)
    ack = w.take_ack(T0 + 3)
    assert ack is not None
    assert not ack.backpressure
    assert ack.credit_grant == 1


def test_draining_grants_no_credit_but_settles_what_is_in_flight():
    w = opened(window=2)
    w.receive(1, T0)
    w.drain(T0)
    assert w.state is State.DRAINING
    w.settle(1, T0)
    ack = w.take_ack(T0, force=True)
    assert ack is not None
    assert ack.acked_through == 1
    assert ack.credit_grant == 0
    assert w.settled
    w.close()
    assert w.state is State.CLOSED


def test_events_outside_the_transition_table_raise():
    w = AckWindow(window=2)
    with pytest.raises(IllegalTransition):
        w.receive(1, T0)
    w.open(0, T0)
    with pytest.raises(IllegalTransition):
        w.open(0, T0)
    with pytest.raises(IllegalTransition):
        w.settle(7, T0)  # never received
    w.close()
    with pytest.raises(IllegalTransition):
        w.drain(T0)


def test_the_table_covers_closing_from_every_state():
    assert all((state, Event.CLOSE) in TRANSITIONS for state in State)
