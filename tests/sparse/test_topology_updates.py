"""TopologyUpdater in a real training loop (SGD Nesterov + weight decay), checked after every step.

Update steps are verified against a brute-force reference computed here: drop the k smallest
|w| among the active weights (k = ceil(alpha_t * nnz_l)) and grow the k largest |dL/dW_eff|
among the positions not kept, with the dense gradient taken from an independent deep copy of
the model run on the same batch. The network uses tanh (no dead units) so that there are no
ties at the selection boundaries; the test asserts this before comparing.
"""

import copy
import math

import pytest
import torch
from torch import nn

from cigl_bayes.cigl import RandomMask
from cigl_bayes.sparse import DropSchedule, SparseNet, TopologyUpdater


STEPS = 30
SCHEDULE = DropSchedule(end_step=24, update_every=3, drop_fraction=0.3)
DENSITY = 0.3


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32),
        nn.Tanh(),
        nn.Linear(32, 5),  # ERK makes this layer dense at density 0.3
    )


def batches(n=STEPS, seed=123):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(n)]


BATCHES = batches()


def make(rule, model_seed=0, mask_seed=0, updater_seed=0, random_mask=None):
    net = SparseNet(tiny_model(model_seed), density=DENSITY, random_mask=random_mask, seed=mask_seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    updater = TopologyUpdater(net, opt, SCHEDULE, rule=rule, seed=updater_seed)
    return net, opt, updater


def momenta(opt, net):
    return [opt.state[w]["momentum_buffer"].clone() if "momentum_buffer" in opt.state.get(w, {}) else None for w in net.weights()]


def reference_dense_grads(net, flat_mask, x, y):
    """dL/dW_eff from a plain deep copy whose weights are W * E (E = mask used in the forward)."""
    ref = copy.deepcopy(net.module)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, view in zip(net.weight_names, net.support.layer_views(flat_mask)):
            params[name].mul_(view)
    ref.zero_grad()
    nn.functional.cross_entropy(ref(x), y).backward()
    return [params[name].grad.detach().clone() for name in net.weight_names]


def expected_rigl_support(before_mask, before_w, dense_grad, k):
    """Brute force: keep all but the k smallest |w| active, grow top-k |grad| among the not-kept."""
    active = torch.nonzero(before_mask.flatten()).flatten()
    wabs = before_w.flatten().abs()[active]
    order = torch.argsort(wabs)
    sorted_w = wabs[order]
    assert k < active.numel() and sorted_w[k - 1] < sorted_w[k], "tie at the drop boundary"
    kept = active[order[k:]]
    dropped = active[order[:k]]
    eligible = torch.ones(before_mask.numel(), dtype=torch.bool)
    eligible[kept] = False
    cand = torch.nonzero(eligible).flatten()
    scores = dense_grad.flatten().abs()[cand]
    sorder = torch.argsort(scores, descending=True)
    ss = scores[sorder]
    assert ss[k - 1] > ss[k], "tie at the grow boundary"
    grown = cand[sorder[:k]]
    new = torch.zeros(before_mask.numel(), dtype=torch.bool)
    new[kept] = True
    new[grown] = True
    return new.view_as(before_mask), set(dropped.tolist()), set(grown.tolist())


def run_and_check(rule, random_mask=None, updater_seed=0):
    """Train STEPS steps; assert every invariant after every step. Returns the support history."""
    net, opt, updater = make(rule, random_mask=random_mask, updater_seed=updater_seed)
    counts = list(net.support.counts)
    numels = net.support.numels
    dense_layers = [i for i, (c, n) in enumerate(zip(counts, numels)) if c == n]
    assert dense_layers == [3] and len(dense_layers) < len(counts)
    history = []
    swapped_total = 0
    regrown_dropped = 0
    for t, (x, y) in enumerate(BATCHES):
        assert updater.step == t
        due = rule != "static" and SCHEDULE.is_update(t)
        assert net.capture_dense_grad == (rule == "rigl" and SCHEDULE.is_update(t))
        before_w = [w.detach().clone() for w in net.weights()]
        before_mask = [m.clone() for m in net.support.layers()]
        before_mom = momenta(opt, net)
        before_other = {n: p.detach().clone() for n, p in net.module.named_parameters() if n not in net.weight_names}

        net.train()
        net.last_sampled_mask = None
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        used = net.last_sampled_mask if net.last_sampled_mask is not None else net.support.flat.float()
        dense_grads = reference_dense_grads(net, used, x, y) if (due and rule == "rigl") else None

        do_step = updater()
        assert do_step == (not due)
        if do_step:
            opt.step()

        after_mask = net.support.layers()
        after_mom = momenta(opt, net)
        # ---- invariants after every step
        for layer, (w, m, c) in enumerate(zip(net.weights(), after_mask, counts)):
            assert int(m.sum()) == c, f"step {t} layer {layer}: nnz changed"
            assert torch.all(w[~m] == 0), f"step {t} layer {layer}: weight off support"
            if after_mom[layer] is not None:
                assert torch.all(after_mom[layer][~m] == 0), f"step {t} layer {layer}: momentum off support"
        for layer in dense_layers:
            assert bool(after_mask[layer].all())
        assert net.support.counts == counts
        assert torch.equal(net.support.active_indices(), torch.nonzero(net.support.flat).flatten())

        if not due:
            for b, a in zip(before_mask, after_mask):
                assert torch.equal(b, a)
        else:
            # optimizer step skipped: every parameter unchanged except zeroing at changed positions
            for n, p in net.module.named_parameters():
                if n not in net.weight_names:
                    assert torch.equal(p, before_other[n])
            alpha = SCHEDULE.fraction(t)
            for layer, w in enumerate(net.weights()):
                bm, am, bw = before_mask[layer], after_mask[layer], before_w[layer]
                if layer in dense_layers:
                    assert torch.equal(w, bw)  # dense layers untouched
                    if before_mom[layer] is not None:
                        assert torch.equal(after_mom[layer], before_mom[layer])
                    continue
                k = math.ceil(alpha * counts[layer])
                assert k > 0
                survivors = bm & am
                newly = am & ~bm
                assert int(newly.sum()) <= k
                # positions active before and after keep their values; all others are 0
                assert torch.equal(w[survivors], bw[survivors])
                assert torch.all(w[~survivors] == 0)
                assert torch.all(w[newly] == 0)
                if before_mom[layer] is not None:
                    assert torch.equal(after_mom[layer][survivors], before_mom[layer][survivors])
                    assert torch.all(after_mom[layer][~survivors] == 0)
                if rule == "rigl":
                    want, dropped, grown = expected_rigl_support(bm, bw, dense_grads[layer], k)
                    assert torch.equal(am, want), f"step {t} layer {layer}: RigL support differs from brute force"
                    regrown_dropped += len(dropped & grown)
                else:  # SET: the same drop rule, random growth among the not-kept
                    active = torch.nonzero(bm.flatten()).flatten()
                    order = torch.argsort(bw.flatten().abs()[active])
                    kept = active[order[k:]]
                    assert bool(am.flatten()[kept].all())
                    assert int(am.flatten()[kept].sum()) == counts[layer] - k
                swapped_total += int(newly.sum())
        history.append(net.support.flat.clone())
    n_updates = sum(SCHEDULE.is_update(t) for t in range(STEPS)) if rule != "static" else 0
    assert updater.updates_done == n_updates
    if rule != "static":
        assert swapped_total > 0  # the topology really moved
    return history, regrown_dropped


@pytest.mark.parametrize("rule", ["rigl", "set"])
def test_training_loop_invariants_and_rule(rule):
    history, _ = run_and_check(rule)
    assert not torch.equal(history[0], history[-1])


def test_rigl_with_random_mask_uses_dense_grad_of_masked_forward():
    """CigL setting (Z active in train mode): RigL grows by the dense grad of W*M*Z*scale."""
    run_and_check("rigl", random_mask=RandomMask(drop_rate=0.1, seed=3))


def test_static_never_changes_mask():
    history, _ = run_and_check("static")
    assert all(torch.equal(h, history[0]) for h in history)


def test_set_growth_random_but_reproducible():
    a, _ = run_and_check("set", updater_seed=11)
    b, _ = run_and_check("set", updater_seed=11)
    c, _ = run_and_check("set", updater_seed=12)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[-1], c[-1])


def test_no_update_at_or_after_end_step():
    assert [t for t in range(STEPS) if SCHEDULE.is_update(t)] == [3, 6, 9, 12, 15, 18, 21]


def _train(net, opt, updater, start, stop):
    for t in range(start, stop):
        x, y = BATCHES[t]
        net.train()
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        if updater():
            opt.step()


@pytest.mark.parametrize("rule", ["rigl", "set"])
def test_updater_state_dict_resume_reproduces_next_update(rule):
    """Save net/optimizer/updater before an update; a fresh trio loaded from it reproduces the run."""
    net, opt, updater = make(rule, updater_seed=5)
    _train(net, opt, updater, 0, 8)  # updates at 3 and 6 done; next at 9
    saved = (copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict()), copy.deepcopy(updater.state_dict()))
    _train(net, opt, updater, 8, 16)  # updates at 9, 12, 15
    net2, opt2, updater2 = make(rule, model_seed=9, mask_seed=9, updater_seed=99)
    net2(BATCHES[0][0])  # populate caches from the other support
    net2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    updater2.load_state_dict(saved[2])
    assert updater2.step == 8 and updater2.updates_done == 2
    _train(net2, opt2, updater2, 8, 16)
    assert updater2.updates_done == updater.updates_done == 5
    assert torch.equal(net2.support.flat, net.support.flat)
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_invalid_rule_raises():
    net = SparseNet(tiny_model(), density=DENSITY)
    with pytest.raises(ValueError):
        TopologyUpdater(net, None, SCHEDULE, rule="snip")


def test_update_without_optimizer_and_rigl_needs_capture():
    """update() works without an optimizer; RigL without a captured gradient raises clearly."""
    net = SparseNet(tiny_model(), density=DENSITY)
    upd = TopologyUpdater(net, None, SCHEDULE, rule="set")
    upd.update(0.3)
    assert [int(m.sum()) for m in net.support.layers()] == net.support.counts
    rigl = TopologyUpdater(net, None, SCHEDULE, rule="rigl")
    with pytest.raises(RuntimeError):
        rigl.update(0.3)
