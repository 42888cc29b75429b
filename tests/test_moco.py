"""MoCo: InfoNCE value, pointer wrap, momentum update, no gradient into the keys, the batch
check, and identical queues across two gloo ranks."""
import textwrap

import pytest
import torch
import torch.nn.functional as F

import train
from models.dsfd.net import DSFD
from adapt.hla.moco import MoCo
from tests.helpers import ROOT, run_script
from tests.ssl_helpers import ssl_overrides


def make_moco(K=8, m=0.99, seed=0):
    torch.set_num_threads(1)                                # tiny maths: one thread is quicker
    torch.manual_seed(seed)
    net = DSFD(width=0.125)
    return net, MoCo(net, net.source_channels, dim=16, K=K, m=m, T=0.07)


def images(n, seed, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 50


def test_state_dict_has_the_reference_keys_only():
    net, moco = make_moco()
    keys = list(moco.state_dict())
    assert keys[:2] == ["queue", "queue_ptr"]               # the reference's order
    assert {k.split(".")[0] for k in keys} == {"queue", "queue_ptr", "encoder_k", "head_q",
                                               "head_k"}
    enc = {k.removeprefix("encoder_k.") for k in keys if k.startswith("encoder_k.")}
    assert enc == {k for k in net.state_dict() if k.split(".")[0] in
                   ("vgg", "L2Normof1", "L2Normof2", "L2Normof3", "extras")}
    assert len(keys) == 115
    assert torch.allclose(moco.queue.norm(dim=1), torch.ones(6, 8))          # unit columns
    for name, p in moco.encoder_k.state_dict().items():                      # a copy of net
        assert torch.equal(p, net.state_dict()[name])


def test_infonce_matches_a_hand_computation_and_the_queue_pointer_wraps():
    net, moco = make_moco(K=8)
    im_q, im_k = images(4, 1), images(4, 2)
    queue0 = moco.queue.clone()
    loss = moco(im_q, im_k)
    with torch.no_grad():                                   # written out from the paper
        k = [F.normalize(z, dim=1) for z in moco.head_k(moco.encoder_k(im_k))]
        expected = 0.0
        for level, z in enumerate(moco.head_q(net.features(im_q))):
            q = F.normalize(z, dim=1)
            logits = torch.cat([(q * k[level]).sum(1, keepdim=True), q @ queue0[level]], 1)
            expected += F.cross_entropy(logits / 0.07, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(loss, expected, atol=1e-4)
    assert moco.queue_ptr.tolist() == [4] * 6
    step1 = torch.stack(k, 1)                               # [4, 6, dim]
    assert torch.allclose(moco.queue[:, :, 0:4], step1.permute(1, 2, 0), atol=1e-6)
    assert torch.equal(moco.queue[:, :, 4:], queue0[:, :, 4:])
    moco(im_q, images(4, 3))
    assert moco.queue_ptr.tolist() == [0] * 6                # 8 keys written: wrapped
    moco(im_q, images(4, 4))
    assert moco.queue_ptr.tolist() == [4] * 6
    assert not torch.allclose(moco.queue[:, :, 0:4], step1.permute(1, 2, 0))   # overwritten
    # a pointer that is not a multiple of the batch (a head file trained with another batch)
    moco.queue_ptr.fill_(6)
    moco(im_q, images(4, 5))
    keys = moco.keys(images(4, 5)).permute(1, 2, 0)                # [6, dim, 4]
    assert torch.allclose(moco.queue[:, :, [6, 7, 0, 1]], keys, atol=1e-6)
    assert moco.queue_ptr.tolist() == [2] * 6


def test_momentum_update_moves_keys_by_one_minus_m_times_the_gap():
    net, moco = make_moco(m=0.9)
    with torch.no_grad():
        for p in list(net.parameters()) + list(moco.head_q.parameters()):
            p.add_(torch.randn_like(p))
    before_k = {k: v.clone() for k, v in moco.state_dict().items()}
    q_state = {**{f"encoder_k.{k}": v for k, v in net.state_dict().items()},
               **{f"head_k.{k}": v for k, v in moco.head_q.state_dict().items()}}
    moco._momentum_update_key_encoder()
    after = moco.state_dict()
    moved = 0
    for name, old in before_k.items():
        if name.startswith(("encoder_k.", "head_k.")):
            expected = old + (1 - 0.9) * (q_state[name] - old)
            assert torch.allclose(after[name], expected, atol=1e-6, rtol=1e-6), name
            moved += 1
    assert moved == 41 + 36


def test_no_gradient_reaches_the_key_encoder_or_key_head():
    net, moco = make_moco()
    loss = moco(images(2, 1), images(2, 2))
    loss.backward()
    assert all(p.grad is None and not p.requires_grad
               for p in list(moco.encoder_k.parameters()) + list(moco.head_k.parameters()))
    assert all(p.grad is not None for p in moco.head_q.parameters())
    assert net.vgg[0].weight.grad is not None and net.vgg[0].weight.grad.abs().sum() > 0


def test_queue_length_must_be_a_multiple_of_the_batch(tmp_path):
    net, moco = make_moco(K=8)
    with pytest.raises(ValueError, match="SSL.MOCO_K"):
        moco(images(3, 1), images(3, 2))
    with pytest.raises(ValueError, match="SSL.MOCO_K.*SSL.BATCH_SIZE=3"):     # at start
        train.main(ssl_overrides(tmp_path / "no_data", tmp_path, **{"SSL.BATCH_SIZE": 3}))


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as td
    sys.path.insert(0, {root!r})
    from models.dsfd.net import DSFD
    from adapt.hla.moco import MoCo
    td.init_process_group("gloo")
    rank = td.get_rank()
    torch.manual_seed(0)                                     # the same model on both ranks
    net = DSFD(width=0.125)
    moco = MoCo(net, net.source_channels, dim=16, K=12, m=0.9)
    with torch.no_grad():                                    # a query net ahead of the keys
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    enc0 = {{k: v.clone() for k, v in moco.encoder_k.state_dict().items()}}
    gen = torch.Generator().manual_seed(100 + rank)          # different images per rank
    keys = []
    for step in range(3):
        im_q, im_k = (torch.randn(2, 3, 32, 32, generator=gen) * 50 for _ in "qk")
        moco(im_q, im_k).backward()
        keys.append(moco.keys(im_k))                         # the keys this step enqueued
    torch.save({{"queue": moco.queue, "ptr": moco.queue_ptr, "keys": torch.stack(keys),
                 "enc0": enc0, "enc": moco.encoder_k.state_dict(),
                 "net": {{k: v for k, v in net.state_dict().items()}}}},
               {out!r} + f"/rank{{rank}}.pt")
    td.destroy_process_group()
""")


def test_queues_identical_across_two_gloo_ranks_and_hold_both_ranks_keys(tmp_path):
    script = tmp_path / "moco_ddp.py"
    script.write_text(DDP_SCRIPT.format(root=str(ROOT), out=str(tmp_path)))
    res = run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                      str(script)], timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["queue"], r1["queue"]) and torch.equal(r0["ptr"], r1["ptr"])
    assert r0["ptr"].tolist() == [0] * 6                     # 3 steps x 4 keys = K = 12
    for step in range(3):                                    # rank 0's 2 keys, then rank 1's
        gathered = torch.cat([r0["keys"][step], r1["keys"][step]])          # [4, 6, dim]
        block = r0["queue"][:, :, 4 * step:4 * step + 4]                     # [6, dim, 4]
        assert torch.allclose(block, gathered.permute(1, 2, 0), atol=1e-5), step
    assert not torch.equal(r0["keys"][0], r1["keys"][0])
    # the momentum update really happened, identically on both ranks: 3 steps of m = 0.9
    name = "vgg.0.weight"
    expected = r0["net"][name] + 0.9 ** 3 * (r0["enc0"][name] - r0["net"][name])
    assert torch.allclose(r0["enc"][name], expected, atol=1e-6)
    assert torch.equal(r0["enc"][name], r1["enc"][name])
