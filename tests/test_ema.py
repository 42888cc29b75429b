"""The mean teacher: the update formula, buffers, warm-up, exact resume."""
import io
import math

import pytest
import torch
from torch import nn

from adapt.pseudo.ema import ModelEMA


def tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 2))


def train_step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 8, 8, generator=g)
    model.train()
    loss = model(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_update_is_the_exponential_moving_average():
    student = tiny()
    ema = ModelEMA(student, decay=0.9)
    start = {n: p.detach().clone() for n, p in ema.module.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert ema.update(student) == pytest.approx(0.9)
    for n, p in ema.module.named_parameters():
        expected = 0.9 * start[n] + 0.1 * dict(student.named_parameters())[n]
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-6)
        assert not p.requires_grad
    assert ema.updates == 1 and not ema.module.training


def test_the_teacher_converges_to_a_fixed_student_and_does_not_alias_it():
    student = tiny()
    ema = ModelEMA(student, decay=0.5)
    with torch.no_grad():
        for p in student.parameters():
            p.fill_(3.0)
    for _ in range(60):
        ema.update(student)
    for p in ema.module.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 3.0))
    with torch.no_grad():
        next(student.parameters()).fill_(-7.0)
    assert next(ema.module.parameters()).max() == pytest.approx(3.0)


def test_buffers_follow_the_student():
    student = tiny()
    ema = ModelEMA(student, decay=0.99)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    for step in range(3):
        train_step(student, opt, step)
        ema.update(student)
    bn_s, bn_t = student[1], ema.module[1]
    torch.testing.assert_close(bn_t.running_mean, bn_s.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn_t.running_var, bn_s.running_var, rtol=0, atol=0)
    assert int(bn_t.num_batches_tracked) == 3
    # while the weights lag behind
    assert not torch.allclose(bn_t.weight, bn_s.weight)


def test_warm_up_decay():
    ema = ModelEMA(tiny(), decay=0.999, tau=100.0)
    assert ema.current_decay() == pytest.approx(0.999 * (1 - math.exp(-1 / 100)))
    assert ema.current_decay(2000) == pytest.approx(0.999, rel=1e-8)
    ema.update(tiny(1))
    assert ema.current_decay() == pytest.approx(0.999 * (1 - math.exp(-2 / 100)))
    with pytest.raises(ValueError):
        ModelEMA(tiny(), decay=1.5)


def test_resume_continues_bit_exactly_and_loads_weights_only():
    student = tiny()
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    ema = ModelEMA(student, decay=0.9, tau=5.0)
    for step in range(2):
        train_step(student, opt, step)
        ema.update(student)
    buf = io.BytesIO()
    torch.save({"ema": ema.state_dict(), "student": student.state_dict(),
                "opt": opt.state_dict()}, buf)
    for step in range(2, 4):
        train_step(student, opt, step)
        ema.update(student)
    straight = {k: v.clone() for k, v in ema.module.state_dict().items()}

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    student2 = tiny(5)
    student2.load_state_dict(saved["student"])
    opt2 = torch.optim.SGD(student2.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(saved["opt"])
    ema2 = ModelEMA(tiny(7), decay=0.9, tau=5.0)
    ema2.load_state_dict(saved["ema"])
    assert ema2.updates == 2
    for step in range(2, 4):
        train_step(student2, opt2, step)
        ema2.update(student2)
    for k, v in ema2.module.state_dict().items():
        assert torch.equal(v, straight[k]), k


def test_a_different_model_is_refused():
    ema = ModelEMA(tiny())
    with pytest.raises(ValueError, match="differ"):
        ema.update(nn.Linear(2, 2))
    with pytest.raises(KeyError):
        ema.load_state_dict({"module": {}})
