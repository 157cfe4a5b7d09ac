"""DropSchedule: update steps and the cosine-decayed drop fraction (spec: dT, T_end, alpha_t)."""

import math

import pytest

from cigl_bayes.sparse import DropSchedule


@pytest.mark.parametrize("end, every", [(1000, 100), (750, 100), (30, 7), (10, 1), (5, 10)])
def test_is_update_exactly_at_multiples_before_end(end, every):
    s = DropSchedule(end_step=end, update_every=every)
    got = [t for t in range(2 * end + 2 * every) if s.is_update(t)]
    assert got == [t for t in range(every, end, every)]
    assert not s.is_update(0)
    assert not s.is_update(end)  # strict: t < T_end


def test_no_updates_when_end_is_zero():
    s = DropSchedule(end_step=0, update_every=1)
    assert not any(s.is_update(t) for t in range(10))
    assert s.fraction(0) == 0.0


@pytest.mark.parametrize("alpha0", [0.3, 0.5, 1.0, 0.0])
def test_fraction_cosine(alpha0):
    end = 1000
    s = DropSchedule(end_step=end, update_every=100, drop_fraction=alpha0)
    assert s.fraction(0) == pytest.approx(alpha0)
    assert s.fraction(end // 2) == pytest.approx(alpha0 / 2)
    assert s.fraction(end) == pytest.approx(0.0, abs=1e-15)
    assert s.fraction(end + 500) == pytest.approx(0.0, abs=1e-15)  # clamped after T_end
    for t, c in [(250, (1 + math.sqrt(0.5)) / 2), (750, (1 - math.sqrt(0.5)) / 2), (100, (1 + math.cos(math.pi / 10)) / 2)]:
        assert s.fraction(t) == pytest.approx(alpha0 * c, rel=1e-12, abs=1e-15)
    # monotone non-increasing
    values = [s.fraction(t) for t in range(0, end + 1, 50)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_fraction_default_alpha0_is_spec_value():
    s = DropSchedule(end_step=100)
    assert s.drop_fraction == 0.3 and s.update_every == 100
    assert s.fraction(0) == pytest.approx(0.3)
    assert s.fraction(25) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))


@pytest.mark.parametrize("total", [1000, 1001, 1003, 7, 0, 97_750])
def test_for_run_end_step(total):
    s = DropSchedule.for_run(total)
    assert s.end_step == int(0.75 * total)
    assert (s.update_every, s.drop_fraction) == (100, 0.3)
    s2 = DropSchedule.for_run(total, update_every=7, drop_fraction=0.5, end_fraction=0.5)
    assert (s2.end_step, s2.update_every, s2.drop_fraction) == (int(0.5 * total), 7, 0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"end_step": 100, "update_every": 0},
        {"end_step": 100, "update_every": -3},
        {"end_step": 100, "drop_fraction": -0.1},
        {"end_step": 100, "drop_fraction": 1.5},
        {"end_step": 100, "drop_fraction": float("nan")},
        {"end_step": -1},
    ],
)
def test_invalid_args_raise(kwargs):
    with pytest.raises(ValueError):
        DropSchedule(**kwargs)


@pytest.mark.parametrize("end_fraction", [-0.1, 1.01])
def test_for_run_invalid_end_fraction(end_fraction):
    with pytest.raises(ValueError):
        DropSchedule.for_run(1000, end_fraction=end_fraction)


def test_frozen():
    s = DropSchedule(end_step=10)
    with pytest.raises(Exception):
        s.end_step = 5
