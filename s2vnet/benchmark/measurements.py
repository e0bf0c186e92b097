"""What the benchmark measures (``tools/benchmark.py``), one measurement per process.

Every measurement runs in a fresh process (``spawn``), so that its peak memory is its own: process
RSS high-water mark on CPU (``VmHWM``), ``torch.cuda.max_memory_allocated`` on GPU. Inside it,
the model is built with a fixed seed (random weights unless ``MODEL.WEIGHTS`` is set), the
synthetic volume is a CT phantom of the requested size, warm-up runs are discarded and the median
of the timed repeats is reported.

Random weights rarely predict any class with the confidence the hand-over needs, which would make
propagation look free. Unless trained weights are given, the S2VNet measurements therefore lower
the hand-over threshold to 0: every foreground class a query predicts is tracked from slice to
slice, an upper bound on the cost of propagation. The number of live tracks is reported.
"""
import contextlib
import statistics
import time
from dataclasses import replace
from typing import Dict, List, Optional

import numpy as np
import torch

from s2vnet.benchmark.timing import alternating_runs, synchronize, timed_runs


# ------------------------------------------------------------------ set-up inside a measurement process
def _setup(options: Dict) -> Dict:
    import s2vnet  # noqa: F401
    from s2vnet.config import load_config
    from s2vnet.data.intensity import normalize_intensity
    from s2vnet.data.phantom import generate_phantom

    torch.set_num_threads(options["threads"])
    overrides = list(options["opts"]) + ["MODEL.DEVICE", options["device"], "TEST.SLICE_BATCH_SIZE", str(options["slice_batch"])]
    cfg = load_config(options["config_file"], overrides)
    if options.get("volume_file"):  # made once by write_volume_file for a series of measurements
        with np.load(options["volume_file"]) as saved:
            volume, labels = saved["volume"], saved["labels"]
    else:
        phantom = generate_phantom(0, (options["slices"], options["height"], options["width"]))
        volume, labels = normalize_intensity(phantom.image.astype(np.float32), "CT"), phantom.labels
    return {"cfg": cfg, "volume": volume, "labels": labels, "device": torch.device(options["device"])}


def write_volume_file(path, slices: int, height: int, width: int) -> None:
    """Write the phantom every measurement would make (seed 0, normalised) to ``path`` (.npz), so that
    a series of measurements can load it (option ``volume_file``) instead of each generating it again:
    a 200 x 512 x 512 phantom takes about 13 s to make on one CPU core, and a second to load."""
    from s2vnet.data.intensity import normalize_intensity
    from s2vnet.data.phantom import generate_phantom

    phantom = generate_phantom(0, (slices, height, width))
    np.savez(path, volume=normalize_intensity(phantom.image.astype(np.float32), "CT"), labels=phantom.labels)


def _predictor(cfg, worst_case_tracks: bool):
    from s2vnet.inference import load_predictor

    torch.manual_seed(0)
    predictor = load_predictor(cfg, require_weights=False)
    if worst_case_tracks and not cfg.MODEL.WEIGHTS:
        predictor.model.propagation = replace(predictor.model.propagation, score_threshold=0.0)
    return predictor


class _TrackCounter:
    """Counts live identity tracks per decoded slice (wraps the predictor's hand-over)."""

    def __init__(self, predictor):
        self.counts: List[int] = []
        original = predictor.continue_tracks

        def counting(outputs, tracks, spawn_new):
            result = original(outputs, tracks, spawn_new)
            self.counts.append(len(result))
            return result

        predictor.continue_tracks = counting


def measure(kind: str, options: Dict) -> Dict:
    """Run one measurement (in the current process) and return its record."""
    setup = _setup(options)
    cfg, volume, device = setup["cfg"], setup["volume"], setup["device"]
    warmup, repeats = options["warmup"], options["repeats"]
    record: Dict[str, object] = {"kind": kind, "slices": int(volume.shape[0]), "height": int(volume.shape[1]), "width": int(volume.shape[2])}

    if kind in ("s2vnet", "baseline"):
        predictor = _predictor(cfg, worst_case_tracks=True)
        if kind == "baseline":  # the paper's "Baseline": the same weights, no association between slices
            predictor.model.propagation = replace(predictor.model.propagation, enabled=False)
        counter = _TrackCounter(predictor)
        with torch.inference_mode():
            record.update(timed_runs(lambda: predictor.predict_automatic(volume), device, warmup, repeats))
        record["mean_live_tracks"] = float(np.mean(counter.counts)) if counter.counts else 0.0
        pairs = options.get("pairs", repeats)  # alternating pairs timed below (0: none)
        if kind == "baseline" and pairs:  # propagation's cost: passes with and without it, alternately, in this process
            def automatic_pass(propagation: bool) -> None:
                predictor.model.propagation = replace(predictor.model.propagation, enabled=propagation)
                predictor.predict_automatic(volume)

            with torch.inference_mode():
                record["paired_s2vnet_s"], record["paired_baseline_s"] = alternating_runs(
                    lambda: automatic_pass(True), lambda: automatic_pass(False), device, pairs
                )
    elif kind == "click_round":
        from s2vnet.data.clicks import initial_clicks
        from s2vnet.inference.session import InteractiveSession

        predictor = _predictor(cfg, worst_case_tracks=True)
        session = InteractiveSession(predictor, volume)  # encodes once; not timed
        clicks = initial_clicks(setup["labels"], list(range(1, predictor.model.num_classes)))
        encoder_calls = predictor.encoder_calls

        def one_round():
            for click in clicks:
                session.click(click.z, click.y, click.x, click.label)
            session.run()
            session.undo()

        record.update(timed_runs(one_round, device, warmup, repeats))
        record["clicks_per_round"] = len(clicks)
        record["encoder_calls_during_rounds"] = predictor.encoder_calls - encoder_calls
        # The round's cost relative to an automatic pass, timed alternately in this process.
        with torch.inference_mode():
            paired_round, paired_automatic = alternating_runs(
                one_round, lambda: predictor.predict_automatic(volume), device, options.get("pairs", repeats)
            )
        record["paired_round_s"], record["paired_automatic_s"] = paired_round, paired_automatic
    elif kind in ("encoder_batched", "encoder_single"):
        predictor = _predictor(cfg, worst_case_tracks=False)
        batch = predictor.slice_batch_size if kind == "encoder_batched" else 1
        order = list(range(volume.shape[0]))

        def encode_all():
            for start in range(0, len(order), batch):
                predictor.encode_slices(volume, order[start : start + batch])

        with torch.inference_mode():
            record.update(timed_runs(encode_all, device, warmup, repeats))
        record["slice_batch_size"] = batch
    elif kind == "swin_unetr":
        record.update(_measure_swin_unetr(cfg, volume, device, options))
    elif kind == "dynunet":
        record.update(_measure_dynunet(cfg, volume, device, options))
    elif kind == "train_step":
        record.update(_measure_train_step(cfg, setup, options))
    elif kind == "profile":
        record.update(_profile_modules(cfg, volume, device))
    elif kind == "data_pipeline":
        record.update(_measure_data_pipeline(cfg, options))
    else:
        raise ValueError(f"unknown measurement {kind!r}")
    record["seconds_per_slice"] = record["median_s"] / record["slices"] if "median_s" in record else None
    record["volumes_per_minute"] = 60.0 / record["median_s"] if record.get("median_s") else None
    return record


def _measure_swin_unetr(cfg, volume: np.ndarray, device: torch.device, options: Dict) -> Dict:
    """The paper's 3D counterpart: MONAI's SwinUNETR (feature size 48) with MONAI's sliding-window
    inference (96^3 windows, overlap 0.5), on the same volume."""
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    network = SwinUNETR(in_channels=1, out_channels=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, feature_size=48, spatial_dims=3).to(device).eval()
    # Intensities scaled to [0, 1] as MONAI's CT recipes do.
    tensor = torch.from_numpy(volume).float().div(255.0)
    return _time_sliding_window(network, tensor, (96, 96, 96), "constant", device, options, cfg.TEST.AMP_DTYPE)


# nnU-Net's 3d_fullres plan for abdominal CT, the 3D U-Net most users would train instead. These are
# the numbers nnU-Net v2's default planner (nnunetv2 2.8.1, ExperimentPlanner / nnUNetPlans, 8 GB
# target) gives for a dataset of WORD-sized CTs: median 200 x 512 x 512 voxels at 3 x 0.78 x 0.78 mm
# (z, y, x), 16 organs. We follow that plan rather than a rounder patch such as 96 x 160 x 160
# because it is what `nnUNetv2_plan_and_preprocess` would configure for WORD: the planner gives the
# same plan for WORD's own 0.98 mm in-plane spacing and for 2.5 mm slices.
NNUNET_PATCH_SIZE = (64, 192, 160)
NNUNET_KERNEL_SIZES = ((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
NNUNET_STRIDES = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
NNUNET_FILTERS = (32, 64, 128, 256, 320, 320)  # 32 doubled per stage, capped at 320


def _measure_dynunet(cfg, volume: np.ndarray, device: torch.device, options: Dict) -> Dict:
    """nnU-Net's default 3D U-Net (plain convolutions, instance norm, leaky ReLU) as MONAI's DynUNet,
    with nnU-Net's inference: sliding windows at its patch size, 50 % overlap, Gaussian weighting.

    Deep supervision is off (nnU-Net uses it only in training). Not timed: nnU-Net's resampling to
    the plan's spacing (the volume is taken to be at it already) and its test-time mirroring, which
    by default runs every window 8 times (all axis flips): this is a lower bound on nnU-Net's cost.
    """
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    network = DynUNet(
        spatial_dims=3, in_channels=1, out_channels=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        kernel_size=NNUNET_KERNEL_SIZES, strides=NNUNET_STRIDES, upsample_kernel_size=NNUNET_STRIDES[1:],
        filters=NNUNET_FILTERS, norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}), deep_supervision=False, res_block=False,
    ).to(device).eval()
    # nnU-Net z-scores CT intensities (its CTNormalization, with the dataset's foreground statistics).
    tensor = torch.from_numpy(volume).float()
    tensor = (tensor - tensor.mean()) / tensor.std().clamp_min(1e-6)
    return _time_sliding_window(network, tensor, NNUNET_PATCH_SIZE, "gaussian", device, options, cfg.TEST.AMP_DTYPE)


def _time_sliding_window(
    network: torch.nn.Module, volume: torch.Tensor, patch_size, blend: str, device: torch.device, options: Dict, amp_dtype: str = "bfloat16"
) -> Dict:
    """Time MONAI's sliding-window inference of a 3D ``network`` (windows of ``patch_size``, overlap
    0.5, ``blend`` "constant" or "gaussian") over ``volume`` and the argmax of its scores. Windows
    run 4 to a batch on GPU, one at a time on CPU; on GPU in autocast to ``amp_dtype`` (TEST.AMP_DTYPE, as
    S2VNet's passes; "float32": none). Option ``patch_size`` replaces the window (the GPU check's dry
    run uses toy windows)."""
    from monai.inferers import sliding_window_inference

    patch_size = tuple(options.get("patch_size") or patch_size)
    # MONAI's axis order is (D, H, W) = our (z, y, x).
    tensor = volume[None, None].to(device)
    batch = 4 if device.type == "cuda" else 1
    autocast_dtype = getattr(torch, amp_dtype) if device.type == "cuda" and amp_dtype != "float32" else None

    def precision():
        return torch.autocast("cuda", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()

    def run():
        with torch.inference_mode(), precision():
            return sliding_window_inference(tensor, patch_size, batch, network, overlap=0.5, mode=blend).argmax(1)

    if device.type == "cuda":  # kernels load and cuDNN picks its algorithms on first use: not in a timed pass
        with torch.inference_mode(), precision():
            network(torch.rand((batch, 1) + patch_size, device=device))
    result = timed_runs(run, device, options["warmup"], options["repeats"])
    result["parameters_m"] = sum(p.numel() for p in network.parameters()) / 1e6
    result["patch_size"] = list(patch_size)
    return result


def _measure_train_step(cfg, setup: Dict, options: Dict) -> Dict:
    """Clips per second of full training steps (forward, backward, optimizer) at a given crop size."""
    from detectron2.modeling import build_model

    import s2vnet.modeling  # noqa: F401
    from s2vnet.data.clip_mapper import instances_from_sem_seg
    from s2vnet.engine.trainer import autocast_supported, build_optimizer

    size, batch = options["train_size"], options["train_batch"]
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    volume, labels = setup["volume"], setup["labels"]
    foreground = np.flatnonzero(labels.reshape(labels.shape[0], -1).max(1) > 0)
    start = int(foreground[len(foreground) // 2]) if len(foreground) else 0
    start = min(start, volume.shape[0] - 3)
    clips = []
    for _ in range(batch):
        image = torch.nn.functional.interpolate(torch.from_numpy(volume[start : start + 3]).float()[None], size=(size, size), mode="bilinear")[0]
        label = torch.nn.functional.interpolate(torch.from_numpy(labels[start : start + 3]).float()[None], size=(size, size), mode="nearest")[0].long()
        clips.append({"image": image.round().to(torch.uint8), "sem_seg": label, "instances": [instances_from_sem_seg(s, 255) for s in label]})

    # Mixed precision as S2VNetTrainer decides it (SOLVER.AMP.*): fp16 with a gradient scaler, bf16 without.
    amp_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.SOLVER.AMP.DTYPE]
    amp = cfg.SOLVER.AMP.ENABLED and autocast_supported(cfg.MODEL.DEVICE, amp_dtype)
    scaler = torch.amp.GradScaler(setup["device"].type, enabled=amp and amp_dtype == torch.float16)

    def step():
        with torch.autocast(setup["device"].type, dtype=amp_dtype, enabled=amp):
            losses = model(clips)
        optimizer.zero_grad()
        scaler.scale(sum(losses.values())).backward()
        scaler.step(optimizer)
        scaler.update()

    result = timed_runs(step, setup["device"], options["warmup"], options["repeats"])
    result["amp_dtype"] = cfg.SOLVER.AMP.DTYPE if amp else "float32"
    result["clips_per_second"] = batch / result["median_s"]
    result["train_size"], result["train_batch"] = size, batch
    result["parameters_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return result


def _profile_modules(cfg, volume: np.ndarray, device: torch.device) -> Dict:
    """Where the time of one automatic pass goes: seconds in each top-level module."""
    predictor = _predictor(cfg, worst_case_tracks=True)
    model = predictor.model
    totals: Dict[str, float] = {}
    starts: Dict[str, float] = {}

    def hooks(name):
        def pre(*_):
            synchronize(device)
            starts[name] = time.perf_counter()

        def post(*_):
            synchronize(device)
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - starts[name]

        return pre, post

    modules = {"backbone": model.backbone, "pixel_decoder": model.pixel_decoder, "transformer_decoder": model.decoder}
    if model.aggregator is not None:
        modules["aggregator"] = model.aggregator
    handles = []
    for name, module in modules.items():
        pre, post = hooks(name)
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    # The pixel decoder is called through forward_features, not forward: time it explicitly.
    original = model.pixel_decoder.forward_features

    def timed_forward_features(features):
        synchronize(device)
        start = time.perf_counter()
        result = original(features)
        synchronize(device)
        totals["pixel_decoder"] = totals.get("pixel_decoder", 0.0) + time.perf_counter() - start
        return result

    model.pixel_decoder.forward_features = timed_forward_features
    with torch.inference_mode():
        predictor.predict_automatic(volume)  # warm-up
        totals.clear()
        start = time.perf_counter()
        predictor.predict_automatic(volume)
        synchronize(device)
        total = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    totals["other (hand-over, score maps, resizing, Python)"] = total - sum(totals.values())
    return {"median_s": total, "modules_s": totals}


def _measure_data_pipeline(cfg, options: Dict) -> Dict:
    """The prepare step on ``data_volumes`` phantom volumes (the volume size of the run), and the
    time to load one training clip from the cache (memory map + LSJ + flip + masks)."""
    import tempfile
    from pathlib import Path

    from s2vnet.data.clip_mapper import ClipDatasetMapper
    from s2vnet.data.phantom import write_phantom_dataset
    from s2vnet.data.prepare import PreparedVolume, PrepareJob, case_cache_dir, prepare_jobs

    count, workers = options["data_volumes"], options["data_workers"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "Dataset_Bench"
        write_phantom_dataset(root, num_train=count, seed=0, shape=(options["slices"], options["height"], options["width"]), workers=workers)
        images = sorted((root / "imagesTr").glob("*_0000.nii.gz"))
        jobs = [
            PrepareJob(p.name[: -len("_0000.nii.gz")], str(p), str(root / "labelsTr" / p.name.replace("_0000", "")), "CT", 8,
                       str(case_cache_dir(Path(tmp) / "cache", root, p)))
            for p in images
        ]
        start = time.perf_counter()
        report = prepare_jobs(jobs, workers=workers, progress=False)
        prepare_seconds = time.perf_counter() - start
        if report.failed:
            raise RuntimeError(f"prepare failed: {report.failed}")
        cfg = cfg.clone()
        cfg.defrost()
        cfg.INPUT.IMAGE_SIZE = min(cfg.INPUT.IMAGE_SIZE, options["height"] * 2)
        mapper = ClipDatasetMapper(cfg, True)
        volumes = [PreparedVolume(job.case_dir) for job in jobs]
        np.random.seed(0)
        loads = []
        for i in range(200):
            start = time.perf_counter()
            mapper.clip_from_volume(volumes[i % len(volumes)])
            loads.append(time.perf_counter() - start)
    return {"prepare_volumes": count, "prepare_workers": workers, "prepare_seconds": prepare_seconds,
            "clip_load_ms_median": 1000 * statistics.median(loads), "clip_load_ms_p95": 1000 * float(np.percentile(loads, 95)),
            "clip_size": cfg.INPUT.IMAGE_SIZE}


def _measure_into(connection, kind: str, options: Dict) -> None:
    try:
        connection.send(("ok", measure(kind, options)))
    except BaseException as error:  # report it to the parent, which names the measurement
        import traceback

        connection.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))
    finally:
        connection.close()


def run_in_subprocess(kind: str, options: Dict, timeout_s: Optional[float] = None) -> Dict:
    """Run :func:`measure` in a fresh ``spawn`` process and return its record.

    A plain (non-daemonic) process rather than a pool worker: the data-pipeline measurement starts
    prepare workers of its own, which a daemonic pool worker may not do. With ``timeout_s``, a
    measurement still running after that many seconds is killed and :class:`TimeoutError` raised.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_measure_into, args=(sender, kind, options))
    process.start()
    sender.close()
    try:
        if timeout_s is not None and not receiver.poll(timeout_s):  # poll is also True when it died
            process.kill()
            process.join()
            raise TimeoutError(f"measurement {kind!r} overran its budget of {timeout_s:.0f} s and was stopped")
        status, payload = receiver.recv()
    except EOFError:  # it died without reporting (killed, out of memory)
        status, payload = "error", None
    process.join()
    if payload is None:
        payload = f"the measurement process died (exit code {process.exitcode})"
    if status != "ok":
        raise RuntimeError(f"measurement {kind!r} failed: {payload}")
    return payload
