"""LoRA and the MoLE block adapter (METHODS.md §1).

``MoLEMLP`` WRAPS a transformer block's MLP (kept as ``base_mlp``, never copied) and computes, with
y = ln_2(x) (the block calls ``mlp(ln_2(x))``)::

    MLP(y) + SharedLoRA(y) + sum_i g_i(y) * LoRA_i(y),      g = router(y) (per token)

[paper]: shared LoRA + separate LoRA experts in parallel to the whole MLP of the deeper blocks, per-token
router. [ours]: softmax router without bias, optional top-k (softmax over the kept logits), optional
Switch-style load-balancing loss, LoRA B initialised to zero (so a fresh detector equals the frozen backbone),
scale = alpha / rank.

Two numerically equivalent forward paths:

* unfused (training, and the "naive" reference): the MLP, then each LoRA and expert in a Python loop;
* fused [ours] (inference): ``c_fc`` concatenated with [A_shared; A_1..A_E; W_router] -> ONE GEMM yields the
  MLP hidden, every adapter hidden and the router logits; the activation runs (in place) on the MLP part only,
  the gate scales the expert columns (in place); ``[c_proj | s*B_shared | s_1*B_1 .. s_E*B_E]`` -> ONE GEMM
  over the concatenated, gated hidden. An adapted block costs the same two GEMMs as a plain MLP with a
  slightly larger inner size. The first GEMM's output is padded with zero rows to a multiple of
  ``FUSED_ALIGN`` columns; the second GEMM reads the activated/gated hidden as a strided view of it (no
  concatenation copy; with autograd on, a differentiable concatenation is used instead, so the fused path also
  trains). Fused weights are built from the current parameters and cached; the cache key is every source
  tensor's (data_ptr, version), so an optimizer step, ``load_state_dict`` or ``.to()`` rebuilds them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

Mode = Literal["unfused", "fused", "disabled"]
FUSED_ALIGN = 16  # pad the fused first GEMM's output width to a multiple of this many elements [ours]


class LoRA(nn.Module):
    """Low-rank branch d_in -> r -> d_out: ``scale * up(down(y))``. Composes two ``nn.Linear`` (no bias);
    ``up`` starts at zero [ours, as in LoRA/peft]."""

    def __init__(self, d_in: int, d_out: int, rank: int, scale: float = 1.0) -> None:
        super().__init__()
        self.rank = rank
        self.scale = float(scale)
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(y)) * self.scale


def _act_inplace(act: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Apply the MLP's activation to `h` in place when the activation allows it (GELU, QuickGELU)."""
    if isinstance(act, nn.GELU):
        return torch._C._nn.gelu_(h, approximate=act.approximate)
    if type(act).__name__ == "QuickGELU":  # open_clip.transformer.QuickGELU: x * sigmoid(1.702 x)
        return h.mul_(torch.mul(h, 1.702).sigmoid_())
    return h.copy_(act(h))


class MoLEMLP(nn.Module):
    """Mixture of Low-rank Experts around one block MLP (an open_clip ``mlp``: c_fc -> act -> c_proj)."""

    def __init__(
        self,
        base_mlp: nn.Module,
        *,
        shared_rank: int,
        expert_ranks: list[int],
        lora_alpha: float | None = None,
        top_k: int | None = None,
        load_balance: bool = False,
    ) -> None:
        super().__init__()
        for name in ("c_fc", "c_proj"):
            if not isinstance(getattr(base_mlp, name, None), nn.Linear):
                raise TypeError(f"MoLEMLP needs an MLP with nn.Linear '{name}' (open_clip layout)")
        self.base_mlp = base_mlp
        d_in = base_mlp.c_fc.in_features
        d_out = base_mlp.c_proj.out_features

        def scale(r: int) -> float:
            return 1.0 if lora_alpha is None else lora_alpha / r

        self.shared = LoRA(d_in, d_out, shared_rank, scale(shared_rank)) if shared_rank > 0 else None
        self.experts = nn.ModuleList(LoRA(d_in, d_out, r, scale(r)) for r in expert_ranks)
        self.router = nn.Linear(d_in, len(expert_ranks), bias=False)
        self.top_k = top_k
        self.load_balance = load_balance
        self.mode: Mode = "unfused"
        self.last_aux_loss: torch.Tensor | None = None
        self._fused_key: tuple | None = None
        self._fused: tuple[torch.Tensor, ...] | None = None
        # column -> expert index for the gated adapter columns (shared columns are not gated)
        self.register_buffer(
            "_col_expert",
            torch.repeat_interleave(
                torch.arange(len(expert_ranks)), torch.tensor(expert_ranks), output_size=sum(expert_ranks)
            ),
            persistent=False,
        )

    # ------------------------------------------------------------------ routing
    @property
    def loras(self) -> list[LoRA]:
        """The shared LoRA (when there is one), then the experts: the fused weights' column order."""
        return ([self.shared] if self.shared is not None else []) + list(self.experts)

    def gates(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-token gates from router logits (..., E): softmax, or softmax over the top-k logits."""
        logits = logits.float()
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kept, idx = logits.topk(self.top_k, dim=-1)
            masked = torch.full_like(logits, float("-inf")).scatter(-1, idx, kept)
            gates = masked.softmax(dim=-1)
        else:
            gates = logits.softmax(dim=-1)
        if self.load_balance and torch.is_grad_enabled():
            self.last_aux_loss = self._balance_loss(logits, gates)
        return gates

    def _balance_loss(self, logits: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Switch-Transformer load-balancing loss E * sum_i f_i * P_i (f_i: share of tokens whose top
        expert is i, P_i: mean router probability) [ours]; 1.0 when perfectly balanced."""
        e = logits.shape[-1]
        probs = logits.softmax(dim=-1).reshape(-1, e)
        top1 = gates.reshape(-1, e).argmax(dim=-1)
        frac = torch.bincount(top1, minlength=e).to(probs.dtype) / top1.numel()
        return e * (frac * probs.mean(dim=0)).sum()

    # ------------------------------------------------------------------ forward
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "disabled":
            return self.base_mlp(y)
        if self.mode == "fused":
            return self._forward_fused(y)
        return self._forward_unfused(y)

    def _forward_unfused(self, y: torch.Tensor) -> torch.Tensor:
        """Reference form: MLP(y) + SharedLoRA(y) + sum_i g_i(y) * LoRA_i(y) (a per-expert loop)."""
        out = self.base_mlp(y)
        if self.shared is not None:
            out = out + self.shared(y)
        g = self.gates(self.router(y)).to(out.dtype)
        for i, expert in enumerate(self.experts):
            out = out + g[..., i : i + 1] * expert(y)
        return out

    # fused ------------------------------------------------------------
    def _build_fused(self) -> tuple[torch.Tensor, ...]:
        fc, proj = self.base_mlp.c_fc, self.base_mlp.c_proj
        rows = [fc.weight, *(lo.down.weight for lo in self.loras), self.router.weight]
        n_rows = sum(r.shape[0] for r in rows)
        pad = -n_rows % FUSED_ALIGN  # zero rows: aligned row stride for the 2nd GEMM
        if pad:
            rows.append(fc.weight.new_zeros(pad, fc.in_features))
        w_in = torch.cat(rows, dim=0)
        zeros_in = fc.weight.new_zeros(w_in.shape[0] - fc.out_features)
        b_fc = fc.bias if fc.bias is not None else fc.weight.new_zeros(fc.out_features)
        b_in = torch.cat([b_fc, zeros_in])
        w_out = torch.cat([proj.weight, *(lo.up.weight * lo.scale for lo in self.loras)], dim=1)
        b_out = proj.bias if proj.bias is not None else proj.weight.new_zeros(proj.out_features)
        return w_in, b_in, w_out, b_out

    def fused_weights(self) -> tuple[torch.Tensor, ...]:
        """(W_in, b_in, W_out, b_out) of the fused form (nn.Linear layout: out x in). Cached when grad is off
        (rebuilt whenever a source tensor changed); rebuilt with autograd when grad is on, so the fused path
        also trains."""
        sources = list(self.parameters())  # the MLP's, the router's and every LoRA's
        if torch.is_grad_enabled() and any(p.requires_grad for p in sources):
            return self._build_fused()
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        if self._fused is None or key != self._fused_key:
            with torch.no_grad():
                self._fused = tuple(w.contiguous() for w in self._build_fused())
            self._fused_key = key
        return self._fused

    def invalidate_fused(self) -> None:
        self._fused, self._fused_key = None, None

    def _forward_fused(self, y: torch.Tensor) -> torch.Tensor:
        w_in, b_in, w_out, b_out = self.fused_weights()
        hidden = self.base_mlp.c_fc.out_features
        r_shared = self.shared.rank if self.shared is not None else 0
        r_total = w_out.shape[1] - hidden
        lead = y.shape[:-1]
        y2 = y.reshape(-1, y.shape[-1])
        z = torch.addmm(b_in.to(y2.dtype), y2, w_in.to(y2.dtype).t())  # [MLP hidden | adapters | router]
        h = z[:, :hidden]
        a_experts = z[:, hidden + r_shared : hidden + r_total]
        g = self.gates(z[:, hidden + r_total : hidden + r_total + len(self.experts)]).to(z.dtype)
        gcols = g.index_select(1, self._col_expert)
        if z.requires_grad:
            act = _act_module(self.base_mlp)(h)
            inner = torch.cat([act, z[:, hidden : hidden + r_shared], a_experts * gcols], dim=1)
        else:
            _act_inplace(_act_module(self.base_mlp), h)
            a_experts.mul_(gcols)
            inner = z[:, : hidden + r_total]  # a strided view: the second GEMM reads it without a copy
        out = torch.addmm(b_out.to(inner.dtype), inner, w_out.to(inner.dtype).t())
        return out.reshape(*lead, out.shape[-1])


def _act_module(mlp: nn.Module) -> nn.Module:
    """The activation module of an open_clip MLP (the Sequential's middle child)."""
    children = [m for name, m in mlp.named_children() if name not in ("c_fc", "c_proj")]
    if len(children) != 1:
        raise TypeError("MoLEMLP expects an MLP of exactly c_fc -> activation -> c_proj")
    return children[0]
