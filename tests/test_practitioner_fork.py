"""TVM and fork-started processes: DataLoader workers forked after TVM ran in the parent survive.

numba's default threading layer on Linux is GNU OpenMP, whose pool makes every later fork() abort
the child ("fork() called from a process already using GNU OpenMP"); purify asks numba for a
fork-safe layer before its first launch (``purify._tv_numba.choose_threading_layer``). Each check
runs in a fresh interpreter, because the layer is chosen once per process and a crash there must
not take pytest down; the timeout bounds a hang.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

_TIMEOUT_S = 240  # imports, the kernel load and a few worker start-ups on a loaded 2-core machine


def _run(script: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}  # test purify's own choice
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO_ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=_TIMEOUT_S)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def test_dataloader_workers_forked_after_tvm_purify():
    # The report: one purify() call in the parent, then fork-started workers whose dataset applies TVMinimize.
    proc = _run("""
        import numba, torch
        from torch.utils.data import DataLoader, Dataset
        import purify
        from purify.tv import TVMinimize, tv_minimize

        torch.set_num_threads(1)  # what DataLoader gives its workers: the reference runs the same kernel setup
        xs = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        masks = (torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(1)) < 0.3).float()
        purify.purify(torch.rand(1, 3, 32, 32), device="cpu")   # numba starts its thread pool here
        expected = tv_minimize(xs, weight=0.1, mask=masks)

        class Images(Dataset):
            def __len__(self):
                return len(xs)

            def __getitem__(self, i):
                return TVMinimize(weight=0.1, mask=masks[i:i + 1])(xs[i:i + 1])[0]

        loader = DataLoader(Images(), batch_size=2, num_workers=2, multiprocessing_context="fork")
        got = torch.cat(list(loader))
        # One plane per thread and no cross-plane reductions: the batch of 8 and the workers' pairs run the
        # same per-plane computation on one thread each, so the results are equal bit for bit.
        assert torch.equal(got, expected), float((got - expected).abs().max())
        assert not torch.equal(got, xs)
        print("LAYER", numba.threading_layer())
    """)
    layer = proc.stdout.split("LAYER")[-1].strip()
    assert layer in ("tbb", "workqueue"), layer


@pytest.mark.parametrize("how", ["env", "config"])
def test_an_explicit_threading_layer_is_respected(how):
    pytest.importorskip("numba.np.ufunc.omppool", reason="numba's OpenMP layer does not load here")
    set_in_code = "numba.config.THREADING_LAYER = 'omp'" if how == "config" else ""
    proc = _run(f"""
        import numba, torch
        {set_in_code}
        from purify import tv_minimize
        tv_minimize(torch.rand(1, 3, 8, 8))
        print("LAYER", numba.threading_layer())
    """, **({"NUMBA_THREADING_LAYER": "omp"} if how == "env" else {}))
    assert proc.stdout.split("LAYER")[-1].strip() == "omp"


def test_fork_waits_for_a_launch_in_flight():
    # A child forked while another thread holds the launch lock would inherit it held and hang on its
    # first TVM call; purify makes fork() wait until the launch is over. The order of the two events is
    # asserted (the holder's release is recorded before it releases); a regression also hangs the child.
    _run("""
        import os, threading, time
        import torch
        from purify import tv

        tv.tv_minimize(torch.rand(1, 3, 8, 8))
        held, released = threading.Event(), {}

        def hold():
            with tv._NUMBA_LAUNCH:
                held.set()
                time.sleep(0.3)  # a launch in flight
                released["at"] = time.monotonic()

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            ok = tv.tv_minimize(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)
            os._exit(0 if ok else 1)
        forked_at = time.monotonic()
        holder.join()
        if forked_at < released["at"]:
            os.kill(pid, 9)
            raise SystemExit("fork() did not wait for the launch in flight")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
    """)
