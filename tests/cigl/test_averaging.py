"""Weight-and-mask averaging, BN recalibration and prediction averaging (spec: "WMA")."""

import copy

import pytest
import torch
from torch import nn

from cigl_bayes.predictive import EnsemblePredictive, log_predict
from cigl_bayes.cigl import RandomMask, SnapshotAveraging, SnapshotEnsemble, WeightAverager, batches_of, recalibrate_batchnorm
from cigl_bayes.sparse import SparseNet



def mlp_bn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 3))


def conv_bn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.BatchNorm1d(5, momentum=0.3)
    )


# --------------------------------------------------------------------------- WeightAverager
def test_weight_averager_is_arithmetic_mean():
    module = mlp_bn()
    avg = WeightAverager(module)
    names = [n for n, _ in module.named_parameters()]
    g = torch.Generator().manual_seed(0)
    snaps = []
    for i in range(9):
        snap = {n: 3 * torch.randn(p.shape, generator=g) + i for n, p in module.named_parameters()}
        snaps.append(snap)
        avg.fold(snap)
        assert avg.count == i + 1
        params = dict(avg.averaged.named_parameters())
        for n in names:
            mean = torch.stack([s[n] for s in snaps]).mean(0)
            torch.testing.assert_close(params[n], mean, rtol=0, atol=1e-6)
    # the source module is untouched, the copy does not require grad
    assert all(not p.requires_grad for p in avg.averaged.parameters())
    assert not torch.equal(dict(module.named_parameters())[names[0]], dict(avg.averaged.named_parameters())[names[0]])


def test_weight_averager_missing_key_and_state_dict():
    avg = WeightAverager(mlp_bn())
    with pytest.raises(KeyError):
        avg.fold({"0.weight": torch.zeros(12, 6)})
    snap = {n: torch.full_like(p, 2.0) for n, p in avg.averaged.named_parameters()}
    avg.fold(snap)
    other = WeightAverager(mlp_bn(1))
    other.load_state_dict(copy.deepcopy(avg.state_dict()))
    assert other.count == 1
    more = {n: torch.full_like(p, 5.0) for n, p in avg.averaged.named_parameters()}
    avg.fold(more)
    other.fold(more)
    for a, b in zip(avg.averaged.parameters(), other.averaged.parameters()):
        assert torch.equal(a, b) and torch.allclose(a, torch.full_like(a, 3.5))


# --------------------------------------------------------------------------- BN recalibration
def _record_bn_inputs(model):
    records, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            records[name] = []
            handles.append(m.register_forward_pre_hook(lambda mod, inp, name=name: records[name].append(inp[0].detach().clone())))
    return records, handles


def _channel_stats(x):
    """Per-channel mean and unbiased variance over every dim but 1."""
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dims), x.var(dims, unbiased=True)


@pytest.mark.parametrize("train_before", [False, True])
def test_recalibrate_single_batch_exact_stats(train_before):
    """One batch: running_mean / running_var == exact mean / unbiased variance of the BN inputs."""
    model = conv_bn()
    model.train(train_before)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.fill_(7.0)  # stale statistics must be discarded
            m.running_var.fill_(9.0)
    momenta = [m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    records, handles = _record_bn_inputs(model)
    x = torch.randn(64, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 + 1
    assert recalibrate_batchnorm(model, [x]) is True
    for h in handles:
        h.remove()
    bns = dict((n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    for name, bn in bns.items():
        (inp,) = records[name]
        mean, var = _channel_stats(inp)
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
        assert int(bn.num_batches_tracked) == 1
    assert [m.momentum for m in bns.values()] == momenta == [0.1, 0.3]
    assert model.training == train_before


def test_recalibrate_many_batches_cumulative_average():
    """Several equal batches: running_mean == exact mean over the pass; running_var == the equal-weight
    average of the per-batch unbiased variances (torch's momentum=None cumulative average, as SWA's
    update_bn). NB: this is not the whole-pass unbiased variance (it omits the between-batch part)."""
    model = mlp_bn()
    records, handles = _record_bn_inputs(model)
    x = torch.randn(60, 6, generator=torch.Generator().manual_seed(1))
    assert recalibrate_batchnorm(model, batches_of(x, 15))
    for h in handles:
        h.remove()
    bn = model[1]
    inputs = records["1"]
    assert len(inputs) == 4 and int(bn.num_batches_tracked) == 4
    whole = torch.cat(inputs)
    torch.testing.assert_close(bn.running_mean, whole.mean(0), rtol=1e-5, atol=1e-6)
    per_batch_var = torch.stack([b.var(0, unbiased=True) for b in inputs]).mean(0)
    torch.testing.assert_close(bn.running_var, per_batch_var, rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and model.training


def test_recalibrate_without_bn_returns_false():
    model = nn.Sequential(nn.Linear(3, 2))
    assert recalibrate_batchnorm(model, [torch.randn(4, 3)]) is False


def test_batches_of():
    x = torch.arange(10)
    assert [b.tolist() for b in batches_of(x, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# --------------------------------------------------------------------------- SnapshotAveraging
def _train_epoch(net, opt, data):
    net.train()
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def _data(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def _setup(random_mask=None):
    net = SparseNet(mlp_bn(), density=0.4, random_mask=random_mask, seed=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    bn_x = torch.randn(32, 6, generator=torch.Generator().manual_seed(9))
    return net, opt, bn_x


def _check_sparse(sa, net):
    params = dict(sa.weights.averaged.named_parameters())
    for name, m, c in zip(net.weight_names, net.support.layers(), net.support.counts):
        assert torch.all(params[name][~m] == 0)
        assert int(torch.count_nonzero(params[name])) <= c


def test_snapshot_averaging_weights_mode():
    """Folds only from start_epoch on; average == mean of masked snapshots; exactly as sparse as M;
    BN statistics recomputed on bn_inputs; the live model is left untouched."""
    net, opt, bn_x = _setup()
    sa = SnapshotAveraging(net, start_epoch=3, bn_inputs=bn_x, batch_size=64)
    data = _data()
    snaps = []
    for epoch in range(6):
        _train_epoch(net, opt, data)
        if epoch >= 3:
            snaps.append({k: v.detach().clone() for k, v in net.masked_parameters(sample=False).items()})
        live_state = copy.deepcopy(net.state_dict())
        sa.on_epoch_end(epoch)
        assert sa.count == max(0, epoch - 2)
        for k, v in net.state_dict().items():
            assert torch.equal(v, live_state[k])
    avg = sa.weights.averaged
    params = dict(avg.named_parameters())
    for name in params:
        torch.testing.assert_close(params[name], torch.stack([s[name] for s in snaps]).mean(0), rtol=0, atol=1e-6)
    _check_sparse(sa, net)
    for name, c in zip(net.weight_names, net.support.counts):
        assert int(torch.count_nonzero(params[name])) == c  # no random mask: exactly the support
    # BN statistics of the averaged model: exact mean / unbiased var of its BN inputs on bn_x (one batch)
    bn_in = bn_x @ params["0.weight"].T + params["0.bias"]
    torch.testing.assert_close(avg[1].running_mean, bn_in.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(avg[1].running_var, bn_in.var(0, unbiased=True), rtol=1e-5, atol=1e-6)
    assert avg[1].momentum == 0.1


def test_snapshot_averaging_samples_random_mask():
    """sample_mask=True: snapshots are W * M * Z * scale with a fresh Z (the paper's WMA)."""
    net, opt, bn_x = _setup(RandomMask(drop_rate=0.3, seed=1))
    sa = SnapshotAveraging(net, start_epoch=0, bn_inputs=bn_x, sample_mask=True)
    data = _data(1)
    expected, masks = [], []
    for epoch in range(4):
        _train_epoch(net, opt, data)
        sa.on_epoch_end(epoch)
        e = net.last_sampled_mask.clone()
        masks.append(e)
        snap = {n: p.detach().clone() for n, p in net.module.named_parameters()}
        for name, w, view in zip(net.weight_names, net.weights(), net.support.layer_views(e)):
            snap[name] = (w * view).detach()
        expected.append(snap)
    assert not torch.equal(masks[0], masks[1])
    params = dict(sa.weights.averaged.named_parameters())
    for name in params:
        torch.testing.assert_close(params[name], torch.stack([s[name] for s in expected]).mean(0), rtol=0, atol=1e-6)
    _check_sparse(sa, net)


@pytest.mark.parametrize("rescale", [True, False])
def test_snapshot_averaging_expected_mask(rescale):
    """sample_mask=False: snapshots use E[Z*scale] (M, or keep*M without rescaling)."""
    net, opt, bn_x = _setup(RandomMask(drop_rate=0.25, rescale=rescale, seed=1))
    sa = SnapshotAveraging(net, start_epoch=0, bn_inputs=bn_x, sample_mask=False)
    _train_epoch(net, opt, _data(2))
    sa.on_epoch_end(0)
    params = dict(sa.weights.averaged.named_parameters())
    factor = 1.0 if rescale else 0.75
    for name, w, m in zip(net.weight_names, net.weights(), net.support.layers()):
        torch.testing.assert_close(params[name], w.detach() * m * factor, rtol=0, atol=0)


def test_snapshot_averaging_predictions_mode():
    """mode="predictions": a snapshot ensemble whose predictive is the mean of the snapshot
    probabilities (eval mode, W*M), on inputs never seen during training."""
    net, opt, bn_x = _setup()
    xt = torch.randn(20, 6, generator=torch.Generator().manual_seed(5))
    sa = SnapshotAveraging(net, start_epoch=2, bn_inputs=bn_x, mode="predictions", batch_size=8)
    assert sa.weights is None
    data = _data(3)
    probs = []
    for epoch in range(5):
        _train_epoch(net, opt, data)
        if epoch >= 2:
            ref = copy.deepcopy(net.module).eval()
            params = dict(ref.named_parameters())
            with torch.no_grad():
                for name, m in zip(net.weight_names, net.support.layers()):
                    params[name].mul_(m)
                probs.append(ref(xt).softmax(-1))
        sa.on_epoch_end(epoch)
        assert net.module.training  # mode restored
    assert sa.count == 3
    mean = log_predict(EnsemblePredictive(sa.ensemble.members), xt).exp()
    torch.testing.assert_close(mean, torch.stack(probs).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean.sum(-1), torch.ones(20), rtol=0, atol=1e-6)
    assert not torch.allclose(probs[0], probs[-1])  # the snapshots really differ
    restored = SnapshotAveraging(net, start_epoch=2, bn_inputs=bn_x, mode="predictions")
    restored.load_state_dict(sa.state_dict())
    torch.testing.assert_close(log_predict(EnsemblePredictive(restored.ensemble.members), xt).exp(), mean, rtol=0, atol=0)


def test_snapshot_ensemble_keeps_buffers_of_their_time():
    """A member keeps the BN statistics the module had when the snapshot was taken."""
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ensemble = SnapshotEnsemble(module)
    ensemble.add(dict(module.named_parameters()))
    module.train()(torch.randn(16, 3) * 5)  # moves the running statistics
    ensemble.add(dict(module.named_parameters()))
    first, second = (m[1].running_var for m in ensemble.members)
    assert torch.equal(first, torch.ones(4)) and not torch.equal(second, first)
    assert ensemble.count == 2 and not any(p.requires_grad for m in ensemble.members for p in m.parameters())


def test_snapshot_averaging_state_dict_and_invalid_mode():
    net, opt, bn_x = _setup()
    sa = SnapshotAveraging(net, start_epoch=0, bn_inputs=bn_x)
    sa.on_epoch_end(0)
    sa2 = SnapshotAveraging(net, start_epoch=0, bn_inputs=bn_x)
    sa2.load_state_dict(copy.deepcopy(sa.state_dict()))
    assert sa2.count == 1
    for a, b in zip(sa.weights.averaged.state_dict().values(), sa2.weights.averaged.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError):
        SnapshotAveraging(net, start_epoch=0, bn_inputs=bn_x, mode="ensemble")


def test_snapshot_averaging_plain_module():
    """A plain nn.Module (no SparseNet): snapshots are its parameters."""
    model = mlp_bn()
    sa = SnapshotAveraging(model, start_epoch=1, bn_inputs=torch.randn(10, 6))
    sa.on_epoch_end(0)
    assert sa.count == 0
    sa.on_epoch_end(1)
    for a, b in zip(model.parameters(), sa.weights.averaged.parameters()):
        assert torch.equal(a, b)


def test_training_batches_cover_every_row_once_shuffled_and_transformed():
    from cigl_bayes.cigl import training_batches

    x = torch.arange(50, dtype=torch.float32).view(50, 1)
    batches = list(training_batches(x, 16, seed=3))
    rows = torch.cat(batches).view(-1)
    assert sorted(rows.tolist()) == list(range(50)) and not torch.equal(rows, x.view(-1))
    assert torch.equal(torch.cat(list(training_batches(x, 16, seed=3))), torch.cat(batches))  # seeded
    shifted = torch.cat(list(training_batches(x, 16, seed=3, transform=lambda b, g: b + 100)))
    assert torch.equal(shifted, torch.cat(batches) + 100)


def test_bn_recalibration_sees_between_class_variance_on_class_sorted_data():
    """Regression: on class-sorted inputs, consecutive slices are one class each and their batch
    variances miss the between-class spread; the recalibration pass shuffles, so the running
    variance matches the whole set's."""
    torch.manual_seed(0)
    classes = torch.arange(4).repeat_interleave(64)  # sorted by class, as split indices are
    x = (classes.float() * 3.0).unsqueeze(1) + torch.randn(256, 1)
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    sa = SnapshotAveraging(net, start_epoch=0, bn_inputs=x, batch_size=64)
    sa.on_epoch_end(0)
    running = float(sa.weights.averaged[1].running_var)
    assert running == pytest.approx(float(x.var()), rel=0.1)
    consecutive = float(torch.stack([x[i:i + 64].var() for i in range(0, 256, 64)]).mean())
    assert consecutive < 0.2 * running  # what slicing in order would have given


def test_bn_recalibration_applies_the_training_transform():
    torch.manual_seed(0)
    x = torch.randn(128, 3)
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    sa = SnapshotAveraging(net, start_epoch=0, bn_inputs=x, batch_size=32, bn_transform=lambda b, g: b + 10.0)
    sa.on_epoch_end(0)
    plain = SnapshotAveraging(net, start_epoch=0, bn_inputs=x + 10.0, batch_size=32)
    plain.on_epoch_end(0)
    torch.testing.assert_close(sa.weights.averaged[1].running_mean, plain.weights.averaged[1].running_mean)


def test_several_snapshots_per_epoch_evenly_spaced():
    """snapshots_per_epoch=k folds after steps round((i+1) S/k) - 1 of each averaging epoch: the
    average is the mean of exactly those snapshots, and BN is recomputed once per epoch."""
    net, opt, bn_x = _setup()
    steps = 6
    sa = SnapshotAveraging(net, start_epoch=1, bn_inputs=bn_x, sample_mask=False, snapshots_per_epoch=3, steps_per_epoch=steps)
    assert sa.fold_steps == {1, 3, 5}
    data, taken = _data(4, n=steps), []
    for epoch in range(3):
        for step, (x, y) in enumerate(data):
            _train_epoch(net, opt, [(x, y)])
            sa.on_step_end(epoch, step)
            if epoch >= 1 and step in (1, 3, 5):
                taken.append({k: v.detach().clone() for k, v in net.masked_parameters(sample=False).items()})
        sa.on_epoch_end(epoch)
    assert sa.count == 6 == len(taken)
    for name, param in sa.weights.averaged.named_parameters():
        torch.testing.assert_close(param, torch.stack([t[name] for t in taken]).mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="snapshots per epoch"):
        SnapshotAveraging(net, start_epoch=1, bn_inputs=bn_x, snapshots_per_epoch=7, steps_per_epoch=steps)


# --------------------------------------------------------------------------- lazy BN recalibration, any loader
def _counting(monkeypatch) -> list[int]:
    """Count calls of the recalibration pass SnapshotAveraging runs."""
    import cigl_bayes.cigl.averaging as averaging_module

    calls, original = [], averaging_module.recalibrate_batchnorm

    def counted(model, batches, device=None):
        calls.append(1)
        return original(model, batches, device)

    monkeypatch.setattr(averaging_module, "recalibrate_batchnorm", counted)
    return calls


@pytest.mark.parametrize("as_tuples", [True, False])
def test_recalibrate_matches_torch_update_bn(as_tuples):
    """Same running statistics as torch.optim.swa_utils.update_bn (cumulative average, momentum
    None), momenta and the training flag restored; batches may be tensors or (x, y) tuples."""
    from torch.optim.swa_utils import update_bn

    ours, theirs = conv_bn(), conv_bn()
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(n, 3, 6, 6, generator=g) * 2 + 1 for n in (7, 16, 3, 16)]
    batches = [(x, torch.zeros(x.shape[0])) for x in xs] if as_tuples else xs
    ours.eval()
    theirs.eval()
    assert recalibrate_batchnorm(ours, batches)
    update_bn(batches, theirs)
    for (name, a), b in zip(ours.named_buffers(), theirs.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert not ours.training and ours[1].momentum == 0.1 and ours[5].momentum == 0.3
    assert ours[1].num_batches_tracked == len(xs)


def _averaging_run(net, opt, averagings, epochs=5, steps=4, read_each_epoch=()):
    """Train ``net`` and drive every SnapshotAveraging in ``averagings`` from the same run."""
    data = _data(5, n=steps)
    for epoch in range(epochs):
        for step, (x, y) in enumerate(data):
            _train_epoch(net, opt, [(x, y)])
            for sa in averagings:
                sa.on_step_end(epoch, step)
        for sa in averagings:
            sa.on_epoch_end(epoch)
        for sa in read_each_epoch:
            sa.averaged_model()  # today's eager behaviour: BN recomputed after every epoch's folds


@pytest.mark.parametrize("source", ["bn_inputs", "bn_loader"])
def test_lazy_recalibration_runs_once_and_equals_eager(source, monkeypatch):
    """Over a whole averaging run (3 epochs x 2 snapshots) BN is recomputed once, when the average
    is first read, and the result equals recalibrating after every fold (the old eager path)."""
    net, opt, bn_x = _setup(RandomMask(drop_rate=0.2, seed=3))
    kwargs = {"bn_inputs": bn_x, "batch_size": 8} if source == "bn_inputs" else {"bn_loader": [(b, None) for b in bn_x.split(8)]}
    lazy, eager = (SnapshotAveraging(net, 2, sample_mask=False, snapshots_per_epoch=2, steps_per_epoch=4, seed=5, **kwargs)
                   for _ in range(2))
    calls = _counting(monkeypatch)
    _averaging_run(net, opt, [lazy, eager], read_each_epoch=[eager])
    assert len(calls) == 3  # the eager reference: after each of the 3 averaging epochs
    assert lazy.count == eager.count == 6 and lazy.bn_pending
    model = lazy.averaged_model()
    assert len(calls) == 4 and not lazy.bn_pending
    assert lazy.averaged_model() is model is lazy.weights.averaged and len(calls) == 4  # no second pass
    for (name, a), b in zip(model.state_dict().items(), eager.averaged_model().state_dict().values()):
        assert torch.equal(a, b), name
    assert model[1].num_batches_tracked == 4  # the recomputed statistics, not the training ones


def test_reading_weights_averaged_goes_through_the_lazy_path(monkeypatch):
    net, opt, bn_x = _setup()
    sa = SnapshotAveraging(net, 0, bn_inputs=bn_x)
    calls = _counting(monkeypatch)
    _averaging_run(net, opt, [sa], epochs=2)
    assert calls == []
    stats = sa.weights.averaged[1].running_mean.clone()  # existing callers' attribute
    assert len(calls) == 1
    expected = copy.deepcopy(sa.weights._averaged)
    from cigl_bayes.cigl import training_batches

    recalibrate_batchnorm(expected, training_batches(bn_x, sa.batch_size, sa.seed + sa.count))
    assert torch.equal(stats, expected[1].running_mean)


def test_state_records_pending_recalibration_and_resumes_identically(monkeypatch):
    net, opt, bn_x = _setup()
    sa = SnapshotAveraging(net, 1, bn_inputs=bn_x, batch_size=16)
    _averaging_run(net, opt, [sa], epochs=3)
    pending = copy.deepcopy(sa.state_dict())
    assert pending["bn_pending"] is True
    restored = SnapshotAveraging(net, 1, bn_inputs=bn_x, batch_size=16)
    restored.load_state_dict(pending)
    for a, b in zip(restored.averaged_model().state_dict().values(), sa.averaged_model().state_dict().values()):
        assert torch.equal(a, b)
    done = copy.deepcopy(sa.state_dict())
    assert done["bn_pending"] is False
    calls = _counting(monkeypatch)
    again = SnapshotAveraging(net, 1, bn_inputs=bn_x, batch_size=16)
    again.load_state_dict(done)
    for a, b in zip(again.averaged_model().state_dict().values(), sa.averaged_model().state_dict().values()):
        assert torch.equal(a, b)
    assert calls == []  # the checkpoint already held the recomputed statistics
    old_format = {k: v for k, v in done.items() if k != "bn_pending"}  # checkpoints written before lazy BN
    again.load_state_dict(old_format)
    assert not again.bn_pending


def test_bn_data_arguments_are_checked():
    net, _, bn_x = _setup()
    with pytest.raises(ValueError, match="not both"):
        SnapshotAveraging(net, 0, bn_inputs=bn_x, bn_loader=[bn_x])
    sa = SnapshotAveraging(net, 0)
    sa.on_epoch_end(0)
    with pytest.raises(ValueError, match="bn_loader="):
        sa.averaged_model()
    plain = SnapshotAveraging(nn.Sequential(nn.Linear(6, 3)), 0)  # no BN: no data needed
    plain.on_epoch_end(0)
    assert isinstance(plain.averaged_model(), nn.Sequential)
    ensemble = SnapshotAveraging(net, 0, bn_inputs=bn_x, mode="predictions")
    with pytest.raises(ValueError, match="mode='weights'"):
        ensemble.averaged_model()


def test_bn_loader_accepts_a_dataloader():
    """A torch DataLoader of (x, y) pairs gives the same statistics as the same batches as tensors."""
    from torch.utils.data import DataLoader, TensorDataset

    net, opt, bn_x = _setup()
    loader = DataLoader(TensorDataset(bn_x, torch.zeros(32)), batch_size=8, shuffle=False)
    from_loader = SnapshotAveraging(net, 0, bn_loader=loader)
    from_list = SnapshotAveraging(net, 0, bn_loader=list(bn_x.split(8)))
    _averaging_run(net, opt, [from_loader, from_list], epochs=1)
    for a, b in zip(from_loader.averaged_model().buffers(), from_list.averaged_model().buffers()):
        assert torch.equal(a, b)
