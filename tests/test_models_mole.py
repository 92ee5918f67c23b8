"""MoLE numerics on the tiny configs: fused == unfused, LoRA by hand, what trains and what stays frozen."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.models import DetectorConfig, create_detector
from pipeline.models.checks import randomize_adapters, rel_err
from pipeline.models.mole import MoLEMLP


def _tiny(**mole_overrides) -> DetectorConfig:
    cfg = DetectorConfig.load("tiny-mole")
    if mole_overrides:
        cfg = DetectorConfig.parse({**cfg.model_dump(), "mole": {**cfg.mole.model_dump(), **mole_overrides}})
    return cfg


def _mlp(d: int = 32, hidden: int = 128, act: nn.Module | None = None) -> nn.Sequential:
    from collections import OrderedDict

    return nn.Sequential(
        OrderedDict(
            [("c_fc", nn.Linear(d, hidden)), ("gelu", act or nn.GELU()), ("c_proj", nn.Linear(hidden, d))]
        )
    )


@pytest.mark.parametrize("top_k", [None, 1, 2])
def test_fused_equals_unfused_detector(top_k):
    torch.manual_seed(0)
    det = create_detector(_tiny(top_k=top_k), pretrained=None, generators=["gan", "diffusion"])
    randomize_adapters(det, seed=1)
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        det.set_fused(False)
        ref = det(x)
        det.set_fused(True)
        fused = det(x)
        det.set_mole_mode("disabled")
        frozen = det(x)
    for name in ("features", "logit", "gen_logits"):
        assert rel_err(getattr(fused, name), getattr(ref, name)) <= 1e-5, name
    # the adapters are non-trivial: without them the features differ clearly
    assert rel_err(frozen.features, ref.features) > 1e-2


@pytest.mark.parametrize("act", [nn.GELU(), None])
def test_fused_module_quickgelu_and_gelu(act):
    from open_clip.transformer import QuickGELU

    torch.manual_seed(0)
    mod = MoLEMLP(_mlp(act=act or QuickGELU()), shared_rank=4, expert_ranks=[2, 3, 5], top_k=2)
    with torch.no_grad():
        for p in mod.parameters():
            p.normal_(0, 0.3)
    y = torch.randn(2, 7, 32)
    with torch.no_grad():
        mod.mode = "unfused"
        ref = mod(y)
        mod.mode = "fused"
        out = mod(y)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-5


def test_one_expert_constant_gate_is_plain_lora():
    """One expert, no shared LoRA: softmax over one logit = gate 1, so the block is MLP(y) + LoRA(y);
    reference by hand: x @ W.T + b, plus scale * (x @ A.T) @ B.T."""
    torch.manual_seed(0)
    base = _mlp()
    mod = MoLEMLP(base, shared_rank=0, expert_ranks=[4], lora_alpha=8.0)
    lora = mod.experts[0]
    assert lora.scale == 2.0
    with torch.no_grad():
        lora.up.weight.normal_(0, 0.5)
        mod.router.weight.normal_(0, 1.0)
    x = torch.randn(5, 32)
    a, b = lora.down.weight, lora.up.weight
    with torch.no_grad():
        h = torch.nn.functional.gelu(x @ base.c_fc.weight.T + base.c_fc.bias)
        expected = h @ base.c_proj.weight.T + base.c_proj.bias + 2.0 * (x @ a.T) @ b.T
        for mode in ("unfused", "fused"):
            mod.mode = mode
            assert torch.allclose(mod(x), expected, rtol=1e-5, atol=1e-6), mode


def test_lora_b_starts_at_zero_so_fresh_detector_equals_frozen_backbone():
    det = create_detector(_tiny(), pretrained=None)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = det(x).features
        det.set_mole_mode("disabled")
        assert torch.equal(det(x).features, ref)


def test_topk_gates_keep_k_experts():
    mod = MoLEMLP(_mlp(), shared_rank=2, expert_ranks=[2, 2, 2, 2], top_k=2)
    g = mod.gates(torch.randn(10, 4))
    assert torch.allclose(g.sum(-1), torch.ones(10))
    assert ((g > 0).sum(-1) == 2).all()


def test_load_balance_loss_exposed_for_trainer():
    det = create_detector(_tiny(load_balance=True), pretrained=None)
    randomize_adapters(det)
    det.train()
    det(torch.randn(2, 3, 96, 96))
    aux = det.aux_loss()
    assert aux.requires_grad and aux.item() >= 1.0 - 1e-6  # E * sum f_i P_i >= 1 (1 = balanced)
    aux.backward()
    assert all(m.router.weight.grad is not None for m in det.mole_modules())


def test_only_adapters_and_heads_train_and_frozen_parts_stay_unchanged():
    torch.manual_seed(0)
    det = create_detector(_tiny(), pretrained=None, generators=["a"])
    trainable = {n for n, p in det.named_parameters() if p.requires_grad}
    assert trainable == set(det.adapter_param_names()) | set(det.head_param_names())
    assert all(
        (".shared." in n or ".experts." in n or ".router." in n or n.startswith("head_")) for n in trainable
    )
    frozen_before = {n: p.detach().clone() for n, p in det.named_parameters() if not p.requires_grad}
    train_before = {n: p.detach().clone() for n, p in det.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in det.parameters() if p.requires_grad], lr=1e-2)
    det.train()
    out = det(torch.randn(4, 3, 96, 96))
    loss = nn.functional.binary_cross_entropy_with_logits(out.logit, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    loss = loss + nn.functional.cross_entropy(out.gen_logits, torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    for n, p in det.named_parameters():
        if n in frozen_before:
            assert p.grad is None and torch.equal(p, frozen_before[n]), n
    changed = [
        n for n, p in det.named_parameters() if n in train_before and not torch.equal(p, train_before[n])
    ]
    # every LoRA B (zero at init) and every head moves after one step
    assert any(".up." in n for n in changed) and "head_fake.weight" in changed


def test_fused_cache_rebuilds_after_an_optimizer_step():
    torch.manual_seed(0)
    det = create_detector(_tiny(), pretrained=None)
    randomize_adapters(det)
    x = torch.randn(2, 3, 96, 96)
    det.set_fused(True)
    with torch.no_grad():
        det(x)  # builds the cache
        for m in det.mole_modules():
            m.experts[0].up.weight.add_(0.1)  # in place, like an optimizer step
        fused = det(x).features
        det.set_fused(False)
        ref = det(x).features
    assert rel_err(fused, ref) <= 1e-5


def test_fused_path_trains_with_autograd():
    """With grad enabled the fused weights are rebuilt with autograd: gradients equal the unfused ones."""
    torch.manual_seed(0)
    det = create_detector(_tiny(), pretrained=None)
    randomize_adapters(det)
    x = torch.randn(2, 3, 96, 96)
    grads = {}
    for fused in (False, True):
        det.zero_grad()
        det.set_fused(fused)
        out = det(x)
        (out.logit.sum() + out.gen_logits.square().sum()).backward()
        grads[fused] = {n: p.grad.clone() for n, p in det.named_parameters() if p.requires_grad}
    for n, g in grads[False].items():
        assert rel_err(grads[True][n], g) <= 1e-4, n
