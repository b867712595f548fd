"""Where a stage computes and in what precision: the one place that turns `hardware:` into the
settings torch, transformers' Trainer / TRL and vLLM each want. No other module names a device or
a dtype; stages resolve a Placement once and hand it to the components they call.

    auto  -> cuda + bfloat16 when torch sees a GPU (float16 on cards without bf16), else cpu + float32

Training keeps float32 master weights and autocasts to the dtype (what Trainer's `bf16=True` does);
inference (vLLM, the transformers fallbacks, PRM scoring) loads the weights in the dtype.
"""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from components.config_sections import HardwareConfig


def cpu_threads() -> int:
    """Threads for torch's CPU compute: OMP_NUM_THREADS where it is set (the cap OpenMP and torch
    follow, and what a machine shared with other work should set), else every core this process may
    run on (torch's own default ignores the affinity mask). Tiny matmuls on 2 threads of 2 busy cores
    ran 5-10x slower than on 1 (measured here), so sharing machines is where the cap matters."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, len(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda" | "cpu"
    dtype: str  # "bfloat16" | "float16" | "float32"
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    gradient_checkpointing: bool = False
    group_by_length: bool = False
    packing: bool = False  # training batches padding-free (components/models/packing.py)
    fused_loss: bool = False  # a causal LM's training loss through TRL's chunked LM head
    attention: str = "sdpa"  # transformers' attn_implementation

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    @property
    def mixed_precision(self) -> bool:
        return self.dtype != "float32"

    def autocast(self):
        """The context a hand-written training step runs in: autocast to the dtype, or nothing."""
        import contextlib

        import torch

        if not self.mixed_precision:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=self.torch_dtype)

    def trainer_args(self) -> dict:
        """transformers.TrainingArguments / trl.SFTConfig fields."""
        return {"use_cpu": not self.cuda, "bf16": self.dtype == "bfloat16", "fp16": self.dtype == "float16",
                "gradient_checkpointing": self.gradient_checkpointing}

    def vllm_args(self, kv_cache_bytes: int) -> dict:
        """vllm.LLM engine arguments. On CPU the KV cache is sized in bytes (else vLLM takes ~11 GiB)
        and CUDA graphs do not exist; on a GPU vLLM sizes the cache from its memory share and
        captures CUDA graphs (enforce_eager=False)."""
        if not self.cuda:
            return {"dtype": self.dtype, "enforce_eager": True, "kv_cache_memory_bytes": kv_cache_bytes}
        return {"dtype": self.dtype, "enforce_eager": False, "gpu_memory_utilization": self.gpu_memory_utilization,
                "tensor_parallel_size": self.tensor_parallel_size}

    def load_args(self) -> dict:
        """from_pretrained arguments for an inference model (moved with `.to(placement.device)`)."""
        return {"dtype": self.torch_dtype, "attn_implementation": self.attention}

    def train_load_args(self) -> dict:
        """from_pretrained arguments for weights to train: float32 masters, whatever the compute dtype
        (bf16 weights would lose small updates; autocast runs the matmuls in the dtype)."""
        import torch

        return {"dtype": torch.float32, "attn_implementation": self.attention}


CPU = Placement("cpu", "float32")  # the default of components called outside a stage (tests, notebooks)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve(hw: HardwareConfig, cuda: bool | None = None) -> Placement:
    """The placement `hw` means on this machine (`cuda`: whether a GPU is seen; asked when None)."""
    cuda = cuda_available() if cuda is None else cuda
    if hw.device == "cuda" and not cuda:
        raise RuntimeError("hardware.device is cuda but torch sees no CUDA device "
                           "(torch.cuda.is_available() is False): install a CUDA build of torch, or set hardware.device=auto")
    device = "cuda" if hw.device == "cuda" or (hw.device == "auto" and cuda) else "cpu"
    dtype = hw.dtype
    if dtype == "auto":
        dtype = ("bfloat16" if _bf16_supported() else "float16") if device == "cuda" else "float32"
    if device == "cpu" and dtype == "float16":
        raise RuntimeError("hardware.dtype float16 on the CPU: torch has no fast float16 kernels there; "
                           "use float32 (or bfloat16)")
    attention = _attention(device, dtype) if hw.attention == "auto" else hw.attention
    # auto: packed where the attention runs a packed row in time and memory linear in its length
    packing = hw.packing == "on" or (hw.packing == "auto" and attention not in ("sdpa", "eager"))
    fused_loss = hw.fused_loss == "on" or (hw.fused_loss == "auto" and device == "cuda")
    return Placement(device, dtype, hw.gpu_memory_utilization, hw.tensor_parallel_size, hw.gradient_checkpointing,
                     hw.group_by_length, packing, fused_loss, attention)


def _attention(device: str, dtype: str) -> str:
    """FlashAttention where it is installed and can run (CUDA, 16-bit compute): it reads a packed row
    by its position ids (varlen kernels), in memory and time linear in its length. FlashAttention-2
    is a source build (no binary wheel); flash-attn-4 a pure wheel for Hopper and Blackwell cards.
    Else torch's sdpa, which runs a packed row through a block-diagonal mask."""
    if device != "cuda" or dtype == "float32":
        return "sdpa"
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_4_available

    import torch

    if is_flash_attn_2_available():
        return "flash_attention_2"
    if is_flash_attn_4_available() and torch.cuda.get_device_capability()[0] >= 9:
        return "flash_attention_4"
    return "sdpa"


def _bf16_supported() -> bool:
    import torch

    if not torch.cuda.is_available():  # the policy asked for without a GPU (tests): bf16, as on any recent card
        return True
    return torch.cuda.is_bf16_supported()  # False on pre-Ampere cards: float16 there


def data_parallel_size() -> int:
    """How many processes train together: torchrun's WORLD_SIZE (execution.train_processes), else 1."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def per_process_batch(batch_size: int) -> int:
    """Each data-parallel process's share of a batch: batch sizes in the config are global, so a run
    takes the same optimizer steps on the same amount of data however many processes train it."""
    n = data_parallel_size()
    if batch_size % n:
        raise ValueError(f"a batch size of {batch_size} does not split over execution.train_processes={n} "
                         f"processes: use a multiple of {n}")
    return batch_size // n


def peak_memory() -> dict:
    """Peak memory of this process so far: resident set (MiB), and GPU memory torch allocated (MiB)
    when CUDA was used. A stage in its own child process reports its own peak."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    import sys

    torch = sys.modules.get("torch")  # never import torch just to ask
    used_gpu = torch is not None and torch.cuda.is_initialized()
    out["used_gpu"] = float(used_gpu)
    if used_gpu:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out
