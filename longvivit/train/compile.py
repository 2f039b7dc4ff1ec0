"""Regional compilation (model.compile): torch.compile on each transformer block's forward,
not on the whole model, as torchtitan does. The blocks of a tower are alike, so one compiled
graph serves all of them (parameters are graph inputs, not constants: dynamo's
inline_inbuilt_nn_modules, on by default), and the stem, pooling, loss and DeepSpeed stay
eager.

    compile_blocks(model)   # before deepspeed.initialize (engine.build_engine)

Under ZeRO-3 each block is made a ZeRO-3 leaf module (deepspeed.utils.set_z3_leaf_module):
DeepSpeed then registers its gather/release hooks on the block only, not on the block's
norms, attention and linears, so the compiled forward holds no DeepSpeed code. Hooks
inside it were what failed before: DeepSpeed's post-forward hook is not
torch.compiler.disable'd (0.19.8), dynamo traced it and guarded on the depth of its module
stack, and recompiled at every depth until its recompile limit. The block's own hooks run
around the compiled forward in nn.Module.__call__, which is why the forward is compiled and
not the module (nn.Module.compile would compile __call__, hooks and all). A leaf block
gathers all of its parameters at once, the granularity FSDP-per-block training uses. The
leaf flag is read by ZeRO-3 alone: stages 0-2 just run the compiled forward.

Activation checkpointing (run_blocks) wraps the block's __call__, so a checkpointed block
recomputes through the same compiled forward. Inside it, the MLP's ActivationLinear keeps
what it keeps in eager (its input, not the activation of it) through a checkpoint dynamo
can trace (transformer.py), so a compiled block saves as many bytes for backward as an
eager one and the memory planner's count holds. Equal losses to eager:
tests/test_train_compile.py (2 ranks, ZeRO-3), tests/test_train_compile_blocks.py (the
model's variants, gradients and saved bytes).
"""
from __future__ import annotations

import torch
from torch import nn

from longvivit.model.transformer import Block


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """Compile the forward of every transformer Block in `model` (FactorizedBlock included)
    and make each a ZeRO-3 leaf module; returns how many. Call before deepspeed.initialize:
    ZeRO-3 registers its hooks there, reading the leaf flag."""
    from deepspeed.utils import set_z3_leaf_module  # slow import: only where a run compiles

    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        set_z3_leaf_module(block, True)
        block.forward = torch.compile(block.forward, backend=backend)
    return len(blocks)


__all__ = ["compile_blocks"]
