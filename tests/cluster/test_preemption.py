"""A preemption notice from Ray makes `electra pretrain` save a checkpoint before the node goes.

Ray 2.60 tells a training run that its node will be taken away when the node is drained with reason
preemption (what a node does itself when its `ray start --block` gets SIGTERM, as from Kubernetes deleting the
pod; `ray drain-node` is the same request by hand). The notice is a drain of the only node of a cluster, so this test has a head of its own: the session's
head and local Ray are shared by other tests, and a draining node takes no new work.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from pipelines.pretrain import checkpoint as checkpoints
from tests.cluster.conftest import RAY_CLI, VENV_BIN, start_head, stop_head
from tests.pipelines.conftest import make_sentences

pytestmark = pytest.mark.slow  # a head node of its own and a 2-worker run: 100-170 s measured

# The notice landed at step 43 in one run here (the drain command's start-up, then Train's 0.5 s poll).
MAX_STEPS = 150
CHECKPOINT_EVERY = 120  # the run's own checkpoints: steps 120 and 150; a notice before 120 adds one


def test_a_preemption_notice_saves_a_checkpoint_before_the_node_goes(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="rayp-", dir="/tmp"))
    cluster, head = start_head(root)
    driver = None
    try:
        # Train's watcher asks Ray for draining nodes every 5 s; every half second here keeps the run short.
        env = cluster.subprocess_env(RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S="0.5")
        (tmp_path / "corpus.txt").write_text("\n".join(make_sentences(2000)) + "\n")
        electra = str(VENV_BIN / "electra")
        prepared = subprocess.run([electra, "prepare", "--input", str(tmp_path / "corpus.txt"), "--output",
                                   str(tmp_path / "data"), "--seq-len", "32", "--vocab-size", "400"],
                                  env=env, capture_output=True, text=True, timeout=300)
        assert prepared.returncode == 0, prepared.stderr[-3000:]

        driver = subprocess.Popen(
            [electra, "pretrain", "--data", str(tmp_path / "data"), "--storage", str(tmp_path / "runs"),
             "--name", "spot", "--preset", "tiny", "--workers", "2", "--global-batch-size", "8",
             "--micro-batch-size", "4", "--max-steps", str(MAX_STEPS), "--checkpoint-every", str(CHECKPOINT_EVERY),
             "--keep-checkpoints", "3", "--set", "log_every=1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        training = threading.Event()

        def read_output():
            for line in driver.stdout:
                lines.append(line)
                if re.search(r"step +3 +loss", line):
                    training.set()

        reader = threading.Thread(target=read_output, daemon=True)
        reader.start()
        assert training.wait(timeout=400), "".join(lines)[-4000:]
        # What a spot instance's reclaim looks like to Ray: the node drains for preemption with a deadline.
        drained = subprocess.run([str(RAY_CLI), "drain-node", "--address", cluster.gcs_address,
                                  "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim",
                                  "--deadline-remaining-seconds", "600"],
                                 env=env, capture_output=True, text=True, timeout=60)
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert driver.wait(timeout=600) == 0, "".join(lines)[-4000:]
        reader.join(timeout=10)
    finally:
        if driver is not None and driver.poll() is None:  # a failed wait above: the run is not left behind
            driver.kill()
        stop_head(head)
        shutil.rmtree(root, ignore_errors=True)

    output = "".join(lines)
    notice = re.search(r"preemption notice: saving a checkpoint at step (\d+)", output)
    assert notice, output[-4000:]
    step = int(notice.group(1))
    assert 3 < step < CHECKPOINT_EVERY  # saved on the notice, not on the run's schedule
    saved = [uri.rsplit("/", 1)[-1] for uri in checkpoints.list_checkpoints(str(tmp_path / "runs" / "spot"))]
    assert checkpoints.directory_name(step) in saved
    assert output.count("preemption notice") == 1  # once per notice, not at every later step
