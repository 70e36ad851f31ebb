"""First run: ``purify-export`` says what it is doing, step by step, and while the long trace runs."""

from __future__ import annotations

import threading

import pytest
import torch

pytest.importorskip("onnxruntime")

import serving.export as export  # noqa: E402
from serving.onnx_graph import ExportReport  # noqa: E402


@pytest.fixture
def stubbed(tmp_path, monkeypatch):
    """The export's work replaced by stubs: the steps and their order are what is tested."""
    lines: list[str] = []
    beat = threading.Event()

    def say(message: str, *, error: bool = False) -> None:
        lines.append(message)
        if "still tracing and verifying" in message:
            beat.set()

    def fake_export_onnx(model, path, images, **kwargs):
        lines.append("<export_onnx>")
        # A delay this test never outlives: the point is that a heartbeat line comes while it runs.
        assert beat.wait(timeout=120), "no heartbeat during the export"
        return ExportReport(path, 1e-6, len(images), (len(images), 1), ("CPUExecutionProvider",), 1000)

    monkeypatch.setattr(export, "_say", say)
    monkeypatch.setattr(export, "HEARTBEAT_S", 0.01)
    monkeypatch.setattr(export, "build_defended_model", lambda cfg: (torch.nn.Identity(), ("a", "b")))
    monkeypatch.setattr(export, "_real_images", lambda cfg, data_dir, n: torch.rand(n, 3, 32, 32))
    monkeypatch.setattr(export, "export_onnx", fake_export_onnx)
    return lines, beat


def test_export_prints_each_step_in_order(stubbed, tmp_path):
    stubbed, _ = stubbed
    assert export.main(["-o", str(tmp_path / "m.onnx"), "--n", "4"]) == 0
    steps = [line for line in stubbed if line.startswith("[")]
    assert [s[:5] for s in steps] == ["[1/3]", "[2/3]", "[3/3]"]
    assert "building the defended model (tvm -> small_cnn_cifar10 -> softmax)" in steps[0]
    assert "loading 4 CIFAR-10 test images" in steps[1]
    assert "tracing" in steps[2] and "in one pass" in steps[2] and "TVM's iterations are unrolled" in steps[2]
    order = [stubbed.index(s) for s in steps] + [stubbed.index("<export_onnx>")]
    assert order == sorted(order)
    assert any(line.startswith("      ... still tracing and verifying (") for line in stubbed)
    assert stubbed[-1].startswith(f"wrote {tmp_path / 'm.onnx'}")


def test_library_call_stays_silent_without_progress(stubbed, tmp_path):
    from serving.config import DEFAULT_CONFIG, load_config

    lines, beat = stubbed
    beat.set()                                    # no heartbeat is expected: let the stub return at once
    export.export_config(load_config(DEFAULT_CONFIG), tmp_path / "m.onnx", n_images=2)
    assert lines == ["<export_onnx>"]             # the library call printed nothing
