"""What the end-to-end benchmark records beside the wall time: the machine, and the host memory of a
stage's process tree and the GPUs sampled in a thread while it runs (``benchmarks/e2e.py``)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any, Callable


def gpu_readers() -> tuple[Callable[[], list[dict[str, Any]]], Callable[[], dict[int, float]]] | None:
    """(per-device sample, per-process memory MiB) readers through NVML or nvidia-smi; None without a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not handles:
            return None

        def devices() -> list[dict[str, Any]]:
            out = []
            for h in handles:
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                out.append({"util": float(util.gpu), "mem_mib": mem.used / 2**20})
            return out

        def processes() -> dict[int, float]:
            used: dict[int, float] = {}
            for h in handles:
                try:
                    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
                except pynvml.NVMLError:
                    continue
                for p in procs:
                    if p.usedGpuMemory is not None:
                        used[p.pid] = used.get(p.pid, 0.0) + p.usedGpuMemory / 2**20
            return used

        return devices, processes
    except Exception:  # noqa: BLE001 - no NVML library or no driver: try nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None

    def smi_devices() -> list[dict[str, Any]]:
        out = subprocess.run([smi, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return [{"util": float(u), "mem_mib": float(m)} for u, m in
                (line.split(",") for line in out.strip().splitlines() if "," in line)]

    def smi_processes() -> dict[int, float]:
        out = subprocess.run([smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        used: dict[int, float] = {}
        for line in out.strip().splitlines():
            try:
                pid, mem = (x.strip() for x in line.split(","))
                used[int(pid)] = used.get(int(pid), 0.0) + float(mem)
            except ValueError:
                continue
        return used

    try:
        if not smi_devices():
            return None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return smi_devices, smi_processes


@dataclass
class Sampler:
    """Polls host memory of a process tree and the GPUs in a thread while a stage runs."""

    interval: float
    gpu: tuple[Callable[[], list[dict[str, Any]]], Callable[[], dict[int, float]]] | None
    root_pid: int | None = None
    rss_peak_mib: float = 0.0
    procs_peak: int = 0
    util: list[float] = field(default_factory=list)
    mem_peak_mib: float = 0.0
    proc_mem_peak_mib: float = 0.0
    baseline_mib: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self.root_pid = pid
        if self.gpu is not None:
            try:
                self.baseline_mib = sum(d["mem_mib"] for d in self.gpu[0]())
            except Exception:  # noqa: BLE001 - a failed read only loses that figure
                self.baseline_mib = 0.0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _tree(self) -> list[Any]:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            procs = self._tree()
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    continue
            self.rss_peak_mib = max(self.rss_peak_mib, rss / 2**20)
            self.procs_peak = max(self.procs_peak, len(procs))
            if self.gpu is not None:
                try:
                    devs = self.gpu[0]()
                    self.util.append(sum(d["util"] for d in devs) / max(len(devs), 1))
                    self.mem_peak_mib = max(self.mem_peak_mib, sum(d["mem_mib"] for d in devs) - self.baseline_mib)
                    pids = {p.pid for p in procs}
                    mine = sum(m for pid, m in self.gpu[1]().items() if pid in pids)
                    self.proc_mem_peak_mib = max(self.proc_mem_peak_mib, mine)
                except Exception:  # noqa: BLE001
                    pass
            self._stop.wait(self.interval)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host_rss_tree_peak_mib": round(self.rss_peak_mib, 1),
                               "processes_peak": self.procs_peak}
        if self.gpu is not None:
            out.update({
                "gpu_util_mean_pct": round(sum(self.util) / len(self.util), 1) if self.util else None,
                "gpu_util_max_pct": max(self.util) if self.util else None,
                "gpu_samples": len(self.util),
                "gpu_mem_peak_above_baseline_mib": round(self.mem_peak_mib, 1),
                "gpu_mem_peak_stage_processes_mib": round(self.proc_mem_peak_mib, 1) or None,
            })
        return out


def machine() -> dict[str, Any]:
    """Host, CPU, memory, Python, torch and GPU names."""
    info: dict[str, Any] = {"host": platform.node(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import torch   # versions only: no CUDA context in this process (it would hold GPU memory all run long)

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    info["gpus"] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout
            info["gpus"] = [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return info
