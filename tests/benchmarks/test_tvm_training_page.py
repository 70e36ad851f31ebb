"""The seed-000 page's reading: verdicts from the worst-case intervals, pending rows named."""

from types import SimpleNamespace

from benchmarks.tvm_training import READING_PAIRS, _change, _reading


def _res(acc: float, lo: float, hi: float, clean: float = 0.9, transfer: float | None = None) -> dict:
    worst = {"accuracy": acc, "ci_low": lo, "ci_high": hi}
    return {"clean": clean, "budgets": {"linf": {"worst": worst, "transfer": transfer, "flags": []}}}


def test_change_is_judged_by_the_intervals():
    base = _res(0.07, 0.04, 0.11)
    assert _change(base, _res(0.30, 0.24, 0.37)).startswith("higher")
    assert _change(base, _res(0.00, 0.00, 0.02)).startswith("lower")
    assert _change(base, _res(0.10, 0.06, 0.15)).startswith("no measurable change")


def test_reading_quotes_both_rows_and_marks_pending_ones():
    board = {rid: None for pair in READING_PAIRS for rid in pair[:2]}
    board["tvm"] = {"row": SimpleNamespace(name="TVM"), "res": _res(0.07, 0.042, 0.114, 0.675, transfer=0.43)}
    board["tvm-aug-tvm"] = {"row": SimpleNamespace(name="TVM aug"), "res": _res(0.2, 0.15, 0.26, 0.88, transfer=0.6)}
    lines = _reading(board)
    assert len(lines) == len(READING_PAIRS)
    (measured,) = [ln for ln in lines if "`tvm` → `tvm-aug-tvm`" in ln]
    assert "clean 67.5 → 88.0 %" in measured and "transfer 43.0 → 60.0 %" in measured
    assert "7.0 [4.2, 11.4] → 20.0 [15.0, 26.0]" in measured and measured.endswith("higher (the intervals do not overlap).")
    assert sum("pending" in ln for ln in lines) == len(READING_PAIRS) - 1
