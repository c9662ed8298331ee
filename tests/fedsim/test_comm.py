import pickle

from fedsim.comm import Ledger, RoundTraffic, simulated_link_seconds


def test_ledger_accumulates_and_is_a_value() -> None:
    empty = Ledger()
    one = empty.record(RoundTraffic(0, down={1: 10, 2: 10}, up={1: 10}))
    two = one.record(RoundTraffic(1, down={3: 5}, up={3: 5}))
    assert empty.total_bytes == 0  # unchanged
    assert (one.total_down, one.total_up, one.total_bytes) == (20, 10, 30)
    assert two.total_bytes == 40
    assert [r.round for r in two.rounds] == [0, 1]


def test_per_client_rows_and_pickle() -> None:
    traffic = RoundTraffic(4, down={2: 8, 1: 8}, up={1: 8})
    assert traffic.per_client() == [
        {"round": 4, "client": 1, "down": 8, "up": 8},
        {"round": 4, "client": 2, "down": 8, "up": 0},
    ]
    assert pickle.loads(pickle.dumps(traffic)).bytes_up == 8


def test_link_time() -> None:
    assert simulated_link_seconds(1_000_000, 8.0) == 1.0
