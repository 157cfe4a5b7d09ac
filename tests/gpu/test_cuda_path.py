"""CUDA path: masks, random masks, updates and the training loop stay on the device, with no
host synchronisation inside a training step. Skipped without a GPU."""

import pytest
import torch
import torch.nn.functional as F

from cigl_bayes.cigl import RandomMask
from cigl_bayes.models import build_model
from cigl_bayes.sparse import DropSchedule, SparseNet, TopologyUpdater
from cigl_bayes.train import build_sgd

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("rule", ["rigl", "set"])
def test_cigl_steps_and_updates_without_host_sync(rule):
    device = torch.device("cuda")
    torch.manual_seed(0)
    net = SparseNet(build_model("cnn", (1, 8, 8), 10).to(device), 0.1, random_mask=RandomMask(0.1))
    optimizer = build_sgd(net, 0.05)
    updater = TopologyUpdater(net, optimizer, DropSchedule(end_step=100, update_every=2), rule)
    x = torch.randn(64, 1, 8, 8, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    net.support.active_indices()  # first computation may sync; later ones come from updates
    for step in range(6):
        if step > 0:  # step 0 creates optimizer state and caches; later steps must not sync
            torch.cuda.set_sync_debug_mode("error")
        try:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            if updater():
                optimizer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert updater.updates_done >= 2
    for mask, count, weight in zip(net.support.layers(), net.support.counts, net.weights()):
        assert int(mask.sum()) == count
        assert torch.count_nonzero(weight[~mask]) == 0
