"""The GPU readiness check behind ``scripts/gpu_check.sh`` (docs/gpu.md).

On one GPU, within a wall-time limit (8 minutes by default), in this order:

1. ``environment``: the interpreter, PyTorch, CUDA and the GPUs, in a fresh process; a kernel must run;
2. ``install``: what the machine cannot import is installed from the prepared wheels
   (``scripts/gpu_wheels.sh``) into a folder of its own, then every module is imported in a fresh process;
3. ``gpu_tests``: the tests marked ``gpu`` (``tests/test_gpu.py``), in a pytest process;
4. ``volume``: one WORD-sized synthetic CT (200 x 512 x 512), made once for every measurement;
5. the paper's Table 5, one measurement per process (:mod:`s2vnet.benchmark.measurements`): S2VNet,
   the Baseline, SwinUNETR and the nnU-Net-style DynUNet in bf16, a click round, a training step at
   the paper's batch, then the same models in fp32.

Every step has a budget in seconds, and none may run past the limit: a step still running at its
budget (or at the limit) is stopped and reported as overrun; a step that no longer fits is reported
as not run. The most telling steps come first, so a slow GPU loses the fp32 rows, not the tests.
The report (one JSON, one Markdown table) is rewritten after every step, so a check killed from
outside still leaves what it measured. The exit status is 1 if any step failed, overran or did not
run. The targets of the paper and of the issue are judged on a GPU only, and reported: a target
missed is a finding about the code, not a broken check, and does not change the exit status.

``device="cpu", tiny=True`` is the dry run of the test suite: the same steps at toy sizes.
"""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from s2vnet.utils.atomic import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
JSON_NAME, MARKDOWN_NAME = "gpu_check.json", "gpu_check.md"

#: Modules the check imports, and the distribution that brings each. Those the machine lacks are
#: installed from the wheels folder with ``--no-deps``: pb1-detectron2's metadata pins versions
#: (black, iopath < 0.1.10, hydra-core) that nothing here needs, and the folder has no index to
#: resolve them. A GPU machine of the issue's kind has torch, timm, scipy, opencv and the small ones.
REQUIRED_MODULES: Dict[str, str] = {
    "torch": "torch", "numpy": "numpy", "scipy": "scipy", "timm": "timm", "cv2": "opencv-python-headless",
    "PIL": "pillow", "yaml": "pyyaml", "tqdm": "tqdm", "tabulate": "tabulate", "cloudpickle": "cloudpickle",
    "portalocker": "portalocker", "pytest": "pytest", "einops": "einops",
    "detectron2": "pb1-detectron2", "fvcore": "fvcore", "iopath": "iopath", "yacs": "yacs", "termcolor": "termcolor",
    "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime", "pycocotools": "pycocotools", "nibabel": "nibabel",
    "monai": "monai",
}
#: Imported in a fresh process once installed: a Detectron2 built without the offline patch, or a
#: wheel for another Python, fails here rather than in the middle of a measurement.
IMPORT_CHECK = (
    "import s2vnet, detectron2.modeling, detectron2.data.transforms, detectron2.engine, fvcore, iopath, yacs, omegaconf, "
    "pycocotools.mask, nibabel, monai.networks.nets, monai.inferers, einops, timm, scipy.ndimage, cv2"
)

# Targets on a GPU (the issue's, from the paper's Table 5 on one A100).
TARGET_VOLUMES_PER_MINUTE = 2.33
TARGET_PEAK_GB = 14.0
TARGET_PROPAGATION_OVERHEAD_PCT = 5.0
TARGET_SPEEDUP_VS_SWIN_UNETR = 11.0
TARGET_MEMORY_RATIO_VS_SWIN_UNETR = 0.6
TARGET_CLICK_ROUND_PCT = 10.0

PASSED, FAILED, OVERRAN, NOT_RUN, SKIPPED = "passed", "failed", "overran", "not run", "skipped"
BAD_STATUSES = (FAILED, OVERRAN, NOT_RUN)
REPORT_RESERVE_S = 5.0  # kept back from the time limit for the last report
_PROBE_MARK = "S2VNET_ENVIRONMENT"  # starts the environment probe's line of JSON among its other output


class StepTimeout(Exception):
    """A step ran past its budget and was stopped."""


@dataclass(frozen=True)
class CheckSizes:
    """What the check runs on: the synthetic volume, the slices per encoder batch, the training clips."""

    slices: int
    height: int
    width: int
    slice_batch: int
    train_size: int
    train_batch: int
    min_step_s: float  # a step is not started with less time than this left (unless its budget is smaller)


#: A WORD test volume's size and the paper's training batch (8 clips of 3 x 512 x 512, §4.1).
PAPER_SIZES = CheckSizes(slices=200, height=512, width=512, slice_batch=16, train_size=512, train_batch=8, min_step_s=20.0)
#: The dry run's: the smallest phantom, the test suite's clip size.
TINY_SIZES = CheckSizes(slices=8, height=64, width=64, slice_batch=4, train_size=64, train_batch=2, min_step_s=1.0)


@dataclass(frozen=True)
class Measurement:
    """One row of the Table 5 measurements: a measurement kind in one precision, with its repeats."""

    name: str  # step name
    kind: str  # kind of s2vnet.benchmark.measurements.measure
    model: str  # how the table names it
    precision: str  # "bfloat16" or "float32": TEST.AMP_DTYPE (inference) or SOLVER.AMP.DTYPE (training)
    budget_s: float
    warmup: int = 1
    repeats: int = 1
    pairs: int = 0  # alternating pairs (baseline: with/without propagation; click round: round/pass)
    patch_size: Optional[Tuple[int, int, int]] = None  # the 3D references' window, if not theirs

    def config_overrides(self) -> List[str]:
        if self.kind == "train_step":
            return ["SOLVER.AMP.ENABLED", str(self.precision != "float32"), "SOLVER.AMP.DTYPE", self.precision]
        return ["TEST.AMP_DTYPE", self.precision]


def measurement_plan(on_gpu: bool, tiny: bool) -> List[Measurement]:
    """The measurements in the order they run: the default GPU precision (bf16) first, with the
    paired timings the targets need, then fp32. On CPU inference is fp32 only (the predictor's rule),
    so each model is measured once there. Budgets are for an A100-class GPU at the paper's sizes,
    with room: a pass of S2VNet is expected to take 5-20 s there, a SwinUNETR or DynUNet pass
    10-60 s, a training step 1-3 s, and each process needs about 10 s to start and build its model."""
    default = "bfloat16" if on_gpu else "float32"
    short = "bf16" if on_gpu else "fp32"
    plan = [
        Measurement(f"s2vnet_{short}", "s2vnet", "S2VNet automatic", default, 90, warmup=1, repeats=2),
        Measurement(f"baseline_{short}", "baseline", "Baseline (propagation off)", default, 150, warmup=1, repeats=1, pairs=2),
        Measurement(f"swin_unetr_{short}", "swin_unetr", "SwinUNETR (96^3 windows)", default, 120, warmup=0, repeats=1),
        Measurement(f"dynunet_{short}", "dynunet", "DynUNet (nnU-Net 3d_fullres)", default, 120, warmup=0, repeats=1),
        Measurement(f"click_round_{short}", "click_round", "one click round", default, 150, warmup=1, repeats=2, pairs=2),
        Measurement("train_step_bf16", "train_step", "training step", "bfloat16", 90, warmup=1, repeats=3),
    ]
    if on_gpu:
        plan += [
            Measurement("s2vnet_fp32", "s2vnet", "S2VNet automatic", "float32", 120, warmup=1, repeats=1),
            Measurement("baseline_fp32", "baseline", "Baseline (propagation off)", "float32", 120, warmup=1, repeats=1),
            Measurement("swin_unetr_fp32", "swin_unetr", "SwinUNETR (96^3 windows)", "float32", 150, warmup=0, repeats=1),
            Measurement("dynunet_fp32", "dynunet", "DynUNet (nnU-Net 3d_fullres)", "float32", 150, warmup=0, repeats=1),
        ]
    if tiny:  # one timed run each, toy windows: the dry run checks that every step works, not the numbers
        toy_windows = {"swin_unetr": (32, 64, 64), "dynunet": (16, 64, 64)}  # multiples of each network's total stride
        plan = [replace(m, warmup=0, repeats=1, pairs=min(m.pairs, 1), patch_size=toy_windows.get(m.kind)) for m in plan]
    return plan


#: The steps before the measurements, with their budgets.
FIRST_STEPS = {"environment": 60.0, "install": 90.0, "gpu_tests": 180.0, "volume": 60.0}


@dataclass
class CheckSettings:
    output_dir: Path
    device: str = "cuda"
    tiny: bool = False
    config_file: str = "configs/word/s2vnet_swinb.yaml"
    wheels_dir: Path = REPO / "gpu_wheels"
    site_dir: Path = Path(tempfile.gettempdir()) / "s2vnet-gpu-check-site"  # never under output_dir: it is copied back
    time_limit_s: float = 480.0
    budgets: Dict[str, float] = field(default_factory=dict)  # step name -> seconds, overriding the defaults
    only: Sequence[str] = ()  # run only these tests/measurement steps (the first steps always run)
    skip: Sequence[str] = ()
    threads: int = 0  # CPU threads of each measurement (0: all)
    python: str = sys.executable

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def sizes(self) -> CheckSizes:
        return TINY_SIZES if self.tiny else PAPER_SIZES


@dataclass
class StepResult:
    name: str
    status: str
    seconds: float = 0.0
    budget_s: float = 0.0
    detail: str = ""


@dataclass
class GpuTestResult:
    name: str
    outcome: str  # passed, failed, error, skipped
    seconds: float
    message: str = ""


@dataclass
class TargetResult:
    name: str
    goal: str
    value: Optional[float]
    met: Optional[bool]  # None: not judged (on CPU, or a measurement missing)
    note: str = ""


@dataclass
class CheckReport:
    settings: Dict[str, object]
    started: str
    environment: Dict[str, object] = field(default_factory=dict)
    steps: List[StepResult] = field(default_factory=list)
    tests: List[GpuTestResult] = field(default_factory=list)
    gpu_tests_output: str = ""
    measurements: Dict[str, Dict[str, object]] = field(default_factory=dict)  # step name -> record
    targets: List[TargetResult] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return not any(step.status in BAD_STATUSES for step in self.steps)

    def to_dict(self) -> Dict[str, object]:
        return dict(asdict(self), passed=self.passed)


# ------------------------------------------------------------------ running things with a budget
@dataclass
class CommandResult:
    returncode: Optional[int]
    output: str
    seconds: float
    timed_out: bool


def run_command(args: Sequence[str], timeout_s: float, env: Optional[Dict[str, str]] = None, cwd: Path = REPO) -> CommandResult:
    """Run ``args`` with stdout and stderr together, killing it and everything it started (its
    process group) after ``timeout_s``: pytest's DDP workers die with it."""
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(cwd), start_new_session=True)
        try:
            returncode: Optional[int] = process.wait(timeout=max(timeout_s, 0.1))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode, timed_out = None, True
        log.seek(0)
        output = log.read()
    return CommandResult(returncode, output, time.monotonic() - start, timed_out)


def _tail(text: str, characters: int = 4000) -> str:
    return text if len(text) <= characters else "..." + text[-characters:]


def _failure(output: str) -> str:
    """A failed command's output for a report: its last line (the error, after a traceback) first,
    since the Markdown table shows a step's first line, then the end of the output."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return f"{lines[-1] if lines else '(no output)'}\n{_tail(output, 1500)}"


def child_environment(settings: CheckSettings) -> Dict[str, str]:
    """The environment of every process the check starts: the installed wheels and this tree first
    on the path (the tree's s2vnet, never an installed copy), the gpu tests told what to run on."""
    env = dict(os.environ)
    path = [str(settings.site_dir), str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    env["PYTHONUNBUFFERED"] = "1"
    env["S2VNET_GPU_CHECK_DEVICE"] = settings.device
    env["S2VNET_GPU_CHECK_CONFIG"] = str((REPO / settings.config_file).resolve())
    env["S2VNET_GPU_CHECK_TINY"] = "1" if settings.tiny else "0"
    return env


# ------------------------------------------------------------------ step 1: environment
def probe_environment(device: str) -> Dict[str, object]:
    """What the check runs on (called in a fresh process: a broken driver cannot hang the check).

    Raises:
        RuntimeError: ``device`` is CUDA and no kernel can run on it.
    """
    import platform

    import torch

    info: Dict[str, object] = {
        "python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda, "cpu_count": os.cpu_count(), "platform": platform.platform(),
    }
    if not device.startswith("cuda"):
        return info
    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} ({sys.executable}) sees no CUDA GPU: a CPU-only build, or no driver")
    info["gpus"] = [
        {"name": p.name, "memory_gb": round(p.total_memory / 1e9, 1), "capability": f"{p.major}.{p.minor}"}
        for p in (torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count()))
    ]
    info["cudnn"] = torch.backends.cudnn.version()
    info["bf16_supported"] = torch.cuda.is_bf16_supported()
    info["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    x = torch.randn(512, 512, device=device)
    info["kernel_check"] = float((x @ x).abs().sum().item()) > 0  # a launch, a copy back and a synchronisation
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        info["driver"] = None
    return info


def _environment_step(settings: CheckSettings, report: CheckReport, timeout_s: float) -> str:
    code = f"import json, sys; from s2vnet.benchmark.gpu_check import probe_environment; print({_PROBE_MARK!r}, json.dumps(probe_environment(sys.argv[1])))"
    result = run_command([settings.python, "-c", code, settings.device], timeout_s, child_environment(settings))
    if result.timed_out:
        raise StepTimeout(f"the environment probe did not finish in {timeout_s:.0f} s (a hung driver?)")
    if result.returncode != 0:
        raise RuntimeError(f"the environment probe failed: {_failure(result.output)}")
    lines = [line for line in result.output.splitlines() if line.startswith(_PROBE_MARK)]  # not warnings printed around it
    report.environment = json.loads(lines[-1][len(_PROBE_MARK):])
    gpus = report.environment.get("gpus") or []
    return ", ".join(g["name"] for g in gpus) if gpus else f"no GPU used ({settings.device})"


# ------------------------------------------------------------------ step 2: install
def missing_distributions(modules: Dict[str, str]) -> List[str]:
    """The distributions of ``modules`` (module -> distribution) this interpreter cannot import."""
    import importlib.util

    missing = []
    for module, distribution in modules.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(distribution)
    return list(dict.fromkeys(missing))


def install_wheels(python: str, wheels_dir: Path, site_dir: Path, distributions: Sequence[str], timeout_s: float) -> CommandResult:
    """``pip install --no-index --no-deps --find-links wheels_dir --target site_dir distributions``:
    nothing from the network, nothing written into the machine's own environment."""
    site_dir.mkdir(parents=True, exist_ok=True)
    args = [python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--disable-pip-version-check", "--no-input", "-q",
            "--upgrade", "--find-links", str(wheels_dir), "--target", str(site_dir), *distributions]
    return run_command(args, timeout_s)


def _install_step(settings: CheckSettings, report: CheckReport, timeout_s: float) -> str:
    import importlib

    start = time.monotonic()
    missing = missing_distributions(REQUIRED_MODULES)
    detail = "nothing to install"
    if missing:
        if not settings.wheels_dir.is_dir():
            raise RuntimeError(f"{', '.join(missing)} missing and no wheels folder {settings.wheels_dir}: run scripts/gpu_wheels.sh first (docs/gpu.md)")
        result = install_wheels(settings.python, settings.wheels_dir, settings.site_dir, missing, timeout_s)
        if result.timed_out:
            raise StepTimeout(f"pip did not finish in {timeout_s:.0f} s")
        if result.returncode != 0:
            raise RuntimeError(f"pip could not install {' '.join(missing)} from {settings.wheels_dir}: {_failure(result.output)}")
        importlib.invalidate_caches()
        detail = f"installed {' '.join(missing)} into {settings.site_dir}"
    result = run_command([settings.python, "-c", IMPORT_CHECK], timeout_s - (time.monotonic() - start), child_environment(settings))
    if result.timed_out:
        raise StepTimeout("the import check did not finish in the step's budget")
    if result.returncode != 0:
        raise RuntimeError(f"after the install, an import fails: {_failure(result.output)}")
    return detail


# ------------------------------------------------------------------ step 3: the gpu tests
def read_junit(path: Path) -> List[GpuTestResult]:
    """The test cases of a pytest ``--junitxml`` file."""
    results = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "").strip()
                break
        results.append(GpuTestResult(case.get("name", "?"), outcome, float(case.get("time", 0.0)), _tail(message, 1000)))
    return results


def _gpu_tests_step(settings: CheckSettings, report: CheckReport, timeout_s: float) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "gpu_tests.xml"
        args = [settings.python, "-m", "pytest", "tests/test_gpu.py", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        selected = [name for name in settings.only if name.startswith("test_")]
        if selected:
            args += ["-k", " or ".join(selected)]
        result = run_command(args, timeout_s, child_environment(settings))
        report.gpu_tests_output = _tail(result.output)
        report.tests = read_junit(junit) if junit.is_file() else []
    if result.timed_out:
        raise StepTimeout(f"the gpu tests did not finish in {timeout_s:.0f} s")
    counts = {outcome: sum(t.outcome == outcome for t in report.tests) for outcome in ("passed", "failed", "error", "skipped")}
    summary = ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)
    if result.returncode != 0:
        bad = [t.name for t in report.tests if t.outcome in ("failed", "error")]
        raise RuntimeError(f"pytest exit {result.returncode}: {summary or 'no test ran'}; {', '.join(bad)}")
    return summary


# ------------------------------------------------------------------ steps 4-5: the volume and the measurements
def _base_options(settings: CheckSettings, volume_file: Path) -> Dict[str, object]:
    sizes = settings.sizes
    return {
        "config_file": str((REPO / settings.config_file).resolve()), "device": settings.device,
        "threads": settings.threads or os.cpu_count() or 1, "slice_batch": sizes.slice_batch,
        "slices": sizes.slices, "height": sizes.height, "width": sizes.width, "volume_file": str(volume_file),
        "train_size": sizes.train_size, "train_batch": sizes.train_batch,
    }


def _measurement_step(measurement: Measurement, base: Dict[str, object], report: CheckReport, timeout_s: float) -> str:
    from s2vnet.benchmark.measurements import run_in_subprocess

    options = dict(base, opts=measurement.config_overrides(), warmup=measurement.warmup, repeats=measurement.repeats, pairs=measurement.pairs,
                   patch_size=measurement.patch_size)
    try:
        record = run_in_subprocess(measurement.kind, options, timeout_s=timeout_s)
    except TimeoutError as error:
        raise StepTimeout(str(error)) from None
    record.update(model=measurement.model, precision=measurement.precision)
    report.measurements[measurement.name] = record
    if "clips_per_second" in record:
        return f"{record['clips_per_second']:.2f} clips/s, peak {_gb(record['peak_mb']):.1f} GB"
    per = "round" if measurement.kind == "click_round" else "pass"
    return f"{record['median_s']:.2f} s per {per}, peak {_gb(record['peak_mb']):.1f} GB"


def _gb(megabytes: float) -> float:
    """MiB (the measurements' unit) -> GB (10^9 bytes, the paper's unit)."""
    return megabytes * 2**20 / 1e9


# ------------------------------------------------------------------ the targets
def judge_targets(measurements: Dict[str, Dict[str, object]], on_gpu: bool) -> List[TargetResult]:
    """The issue's targets, from the measurements that exist. Judged on a GPU only: on CPU the same
    ratios are reported (the issue asks for them), with ``met`` None."""
    targets: List[TargetResult] = []

    def add(name: str, goal: str, value: Optional[float], met: bool, note: str = "") -> None:
        targets.append(TargetResult(name, goal, value, met if (on_gpu and value is not None) else None, note))

    for short, precision in (("bf16", "bfloat16"), ("fp32", "float32")):
        ours, swin, dyn = (measurements.get(f"{kind}_{short}") for kind in ("s2vnet", "swin_unetr", "dynunet"))
        if ours is None:
            continue
        volumes = ours.get("volumes_per_minute")
        add(f"S2VNet volumes/min ({precision})", f">= {TARGET_VOLUMES_PER_MINUTE}", volumes,
            volumes is not None and volumes >= TARGET_VOLUMES_PER_MINUTE, "on an A100-class GPU or better")
        peak = _gb(ours["peak_mb"])
        add(f"S2VNet peak memory, GB ({precision})", f"<= {TARGET_PEAK_GB:g}", peak, peak <= TARGET_PEAK_GB,
            "torch.cuda.max_memory_allocated" if on_gpu else "process RSS high-water mark")
        for reference, label, judged in ((swin, "SwinUNETR", True), (dyn, "DynUNet", False)):
            if reference is None:
                continue
            speedup = reference["median_s"] / ours["median_s"]
            memory = ours["peak_mb"] / reference["peak_mb"]
            if judged:
                add(f"speed-up over {label} ({precision})", f">= {TARGET_SPEEDUP_VS_SWIN_UNETR:g}x", speedup,
                    speedup >= TARGET_SPEEDUP_VS_SWIN_UNETR, "paper: 11.1x")
                add(f"memory / {label} ({precision})", f"<= {TARGET_MEMORY_RATIO_VS_SWIN_UNETR:g}", memory,
                    memory <= TARGET_MEMORY_RATIO_VS_SWIN_UNETR, "paper: 0.61")
            else:  # what users pick instead: reported, no target
                targets.append(TargetResult(f"speed-up over {label} ({precision})", "report", speedup, None))
                targets.append(TargetResult(f"memory / {label} ({precision})", "report", memory, None))
    for short in ("bf16", "fp32"):
        baseline = measurements.get(f"baseline_{short}")
        if baseline and baseline.get("paired_baseline_s"):
            overhead = 100.0 * (baseline["paired_s2vnet_s"] / baseline["paired_baseline_s"] - 1.0)
            add(f"propagation overhead over the Baseline, % ({short})", f"< {TARGET_PROPAGATION_OVERHEAD_PCT:g}", overhead,
                overhead < TARGET_PROPAGATION_OVERHEAD_PCT, "passes with and without it, alternately in one process")
        click = measurements.get(f"click_round_{short}")
        if click and click.get("paired_automatic_s"):
            share = 100.0 * click["paired_round_s"] / click["paired_automatic_s"]
            add(f"click round / automatic pass, % ({short})", f"< {TARGET_CLICK_ROUND_PCT:g}", share, share < TARGET_CLICK_ROUND_PCT,
                f"{click.get('clicks_per_round')} clicks, alternately in one process")
    return targets


# ------------------------------------------------------------------ the report
def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report_markdown(report: CheckReport) -> str:
    """The Markdown report: verdict, steps, tests, Table 5 side by side, training, targets, environment."""
    env = report.environment
    gpus = ", ".join(g["name"] for g in env.get("gpus", [])) or f"no GPU ({report.settings.get('device')})"
    sizes = report.settings.get("sizes", {})
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# GPU check: {verdict}",
        "",
        f"{gpus}; torch {env.get('torch', '?')} (CUDA {env.get('cuda_runtime') or '-'}, driver {env.get('driver') or '-'}), "
        f"Python {env.get('python', '?')}; started {report.started}, {report.wall_s:.0f} s of the {report.settings.get('time_limit_s')} s limit.",
        "",
        "## Steps",
        "",
        "| step | status | seconds | budget | detail |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.budget_s:.0f} | {s.detail.splitlines()[0][:300] if s.detail else ''} |" for s in report.steps]
    lines += ["", "## Tests marked gpu", ""]
    if report.tests:
        lines += ["| test | result | seconds | message |", "|---|---|---|---|"]
        lines += [f"| {t.name} | {t.outcome} | {t.seconds:.1f} | {t.message.splitlines()[0][:200] if t.message else ''} |" for t in report.tests]
    else:
        lines.append("(none ran)")
    volume = f"{sizes.get('slices')} x {sizes.get('height')} x {sizes.get('width')}"
    lines += [
        "", f"## Table 5 side by side (synthetic CT, {volume} voxels)", "",
        "| model | precision | volumes/min | s/volume | peak GB | time / S2VNet | memory / S2VNet |", "|---|---|---|---|---|---|---|",
    ]
    for name, record in report.measurements.items():
        if record.get("kind") == "train_step":
            continue
        short = name.rsplit("_", 1)[-1]
        ours = report.measurements.get(f"s2vnet_{short}", {})
        time_ratio = record["median_s"] / ours["median_s"] if ours.get("median_s") else None
        memory_ratio = record["peak_mb"] / ours["peak_mb"] if ours.get("peak_mb") else None
        is_round = record.get("kind") == "click_round"  # a round is no volume: its time is per round
        lines.append(
            f"| {record['model']} | {record['precision']} | {'-' if is_round else _fmt(record.get('volumes_per_minute'))} | "
            f"{_fmt(record['median_s'])}{' per round' if is_round else ''} | "
            f"{_fmt(_gb(record['peak_mb']), 1)} | {_fmt(time_ratio)} | {_fmt(memory_ratio)} |"
        )
    training = [r for r in report.measurements.values() if r.get("kind") == "train_step"]
    lines += ["", "## Training", ""]
    if training:
        lines += ["| clips x slices x size | precision | clips/s | s/step | peak GB | parameters (M) |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {r['train_batch']} x 3 x {r['train_size']}^2 | {r.get('amp_dtype', r['precision'])} | {_fmt(r['clips_per_second'])} | "
            f"{_fmt(r['median_s'])} | {_fmt(_gb(r['peak_mb']), 1)} | {_fmt(r['parameters_m'], 1)} |"
            for r in training
        ]
    else:
        lines.append("(not measured)")
    lines += ["", "## Targets", "", "| target | goal | value | result | note |", "|---|---|---|---|---|"]
    for t in report.targets:
        result = {True: "met", False: "MISSED", None: "reported"}[t.met]
        lines.append(f"| {t.name} | {t.goal} | {_fmt(t.value)} | {result} | {t.note} |")
    if not report.settings.get("on_gpu"):
        lines += ["", "On CPU the targets are reported, not judged: they are set for a GPU."]
    lines += ["", "## Environment", "", "```", json.dumps(env, indent=1), "```", ""]
    return "\n".join(lines)


def write_report(report: CheckReport, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / JSON_NAME, report.to_dict())
    write_text_atomic(output_dir / MARKDOWN_NAME, report_markdown(report))


# ------------------------------------------------------------------ the check
def run_check(settings: CheckSettings) -> CheckReport:
    """Run every step within the time limit, rewriting the report after each; return the report."""
    start = time.monotonic()
    deadline = start + settings.time_limit_s
    sizes = settings.sizes
    plan = measurement_plan(settings.on_gpu, settings.tiny)
    report = CheckReport(
        settings={
            "device": settings.device, "on_gpu": settings.on_gpu, "tiny": settings.tiny, "config_file": settings.config_file,
            "time_limit_s": settings.time_limit_s, "sizes": asdict(sizes), "plan": [asdict(m) for m in plan],
            "wheels_dir": str(settings.wheels_dir), "only": list(settings.only), "skip": list(settings.skip),
        },
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if str(settings.site_dir) not in sys.path:  # wheels installed by an earlier run, or by this one (spawned
        sys.path.insert(0, str(settings.site_dir))  # measurement processes inherit sys.path)

    def wanted(name: str) -> bool:
        return (not settings.only or name in settings.only) and name not in settings.skip

    def run_step(name: str, default_budget: float, function: Callable[[float], str], needs: Sequence[str] = ()) -> StepResult:
        budget = settings.budgets.get(name, default_budget)
        left = deadline - time.monotonic() - REPORT_RESERVE_S
        failed_needs = [s.name for s in report.steps if s.name in needs and s.status in BAD_STATUSES]
        if failed_needs:
            step = StepResult(name, NOT_RUN, 0.0, budget, f"needs {', '.join(failed_needs)}, which did not pass")
        elif left < min(sizes.min_step_s, budget):
            step = StepResult(name, NOT_RUN, 0.0, budget, f"not started: {max(left, 0):.0f} s of the {settings.time_limit_s:.0f} s limit left")
        else:
            timeout = min(budget, left)
            logger.info("%s (budget %.0f s) ...", name, timeout)
            step_start = time.monotonic()
            try:
                detail = function(timeout)
                seconds = time.monotonic() - step_start
                status = OVERRAN if seconds > timeout + 1.0 else PASSED  # steps run in this process cannot be stopped
                if status == OVERRAN:
                    detail = f"took {seconds:.0f} s of a {timeout:.0f} s budget; {detail}"
            except StepTimeout as error:
                status, detail = OVERRAN, f"stopped at {timeout:.0f} s ({'its budget' if timeout == budget else 'the time limit'}): {error}"
            except Exception as error:  # a failed step is reported, and the check goes on with the others
                status, detail = FAILED, f"{type(error).__name__}: {error}"
            step = StepResult(name, status, time.monotonic() - step_start, budget, detail)
            log = logger.info if status == PASSED else logger.error
            log("%s: %s in %.1f s: %s", name, status, step.seconds, (detail or "").splitlines()[0] if detail else "")
        report.steps.append(step)
        report.targets = judge_targets(report.measurements, settings.on_gpu)
        report.wall_s = time.monotonic() - start
        write_report(report, settings.output_dir)
        return step

    def skipped(name: str, why: str) -> None:
        report.steps.append(StepResult(name, SKIPPED, 0.0, settings.budgets.get(name, 0.0), why))

    run_step("environment", FIRST_STEPS["environment"], lambda t: _environment_step(settings, report, t))
    run_step("install", FIRST_STEPS["install"], lambda t: _install_step(settings, report, t), needs=["environment"])
    tests_wanted = wanted("gpu_tests") or any(name.startswith("test_") for name in settings.only)
    if tests_wanted:
        run_step("gpu_tests", FIRST_STEPS["gpu_tests"], lambda t: _gpu_tests_step(settings, report, t), needs=["environment", "install"])
    else:
        skipped("gpu_tests", "not selected (--only/--skip)")
    selected = [m for m in plan if wanted(m.name)]
    work = Path(tempfile.mkdtemp(prefix="s2vnet-gpu-check-"))
    try:
        volume_file = work / "volume.npz"
        if selected:
            def make_volume(_timeout: float) -> str:
                from s2vnet.benchmark.measurements import write_volume_file

                write_volume_file(volume_file, sizes.slices, sizes.height, sizes.width)
                return f"{sizes.slices} x {sizes.height} x {sizes.width}, {volume_file.stat().st_size / 1e6:.0f} MB"

            run_step("volume", FIRST_STEPS["volume"], make_volume, needs=["environment", "install"])
        else:
            skipped("volume", "no measurement selected")
        base = _base_options(settings, volume_file)
        for measurement in plan:
            if measurement in selected:
                run_step(measurement.name, measurement.budget_s, lambda t, m=measurement: _measurement_step(m, base, report, t),
                         needs=["environment", "install", "volume"])
            else:
                skipped(measurement.name, "not selected (--only/--skip)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.wall_s = time.monotonic() - start
    write_report(report, settings.output_dir)
    return report
