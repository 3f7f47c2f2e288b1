from infrastructure.restart import RestartBackoff


def test_delay_doubles_on_each_quick_failure_up_to_the_cap():
    backoff = RestartBackoff(base_s=1, cap_s=8, stable_after_s=60)
    delays = [backoff.delay_after_exit(started_at=0, now=1) for _ in range(6)]
    assert delays == [1, 2, 4, 8, 8, 8]


def test_a_stable_run_resets_the_backoff():
    backoff = RestartBackoff(base_s=1, cap_s=30, stable_after_s=60)
    for _ in range(4):
        backoff.delay_after_exit(started_at=0, now=1)
    assert backoff.delay_after_exit(started_at=100, now=161) == 1
