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
from typing import Dict, List

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
    phantom = generate_phantom(0, (options["slices"], options["height"], options["width"]))
    volume = normalize_intensity(phantom.image.astype(np.float32), "CT")
    return {"cfg": cfg, "volume": volume, "labels": phantom.labels, "device": torch.device(options["device"])}


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
        if kind == "baseline":  # propagation's cost: passes with and without it, alternately, in this process
            def automatic_pass(propagation: bool) -> None:
                predictor.model.propagation = replace(predictor.model.propagation, enabled=propagation)
                predictor.predict_automatic(volume)

            with torch.inference_mode():
                record["paired_s2vnet_s"], record["paired_baseline_s"] = alternating_runs(
                    lambda: automatic_pass(True), lambda: automatic_pass(False), device, repeats
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
            paired_round, paired_automatic = alternating_runs(one_round, lambda: predictor.predict_automatic(volume), device, repeats)
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
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    network = SwinUNETR(in_channels=1, out_channels=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, feature_size=48, spatial_dims=3).to(device).eval()
    # MONAI's axis order is (D, H, W) = our (z, y, x); intensities scaled to [0, 1] as MONAI's CT recipes do.
    tensor = torch.from_numpy(volume).float().div(255.0)[None, None].to(device)
    batch = 4 if device.type == "cuda" else 1

    def run():
        with torch.inference_mode(), (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()):
            return sliding_window_inference(tensor, (96, 96, 96), batch, network, overlap=0.5).argmax(1)

    result = timed_runs(run, device, options["warmup"], options["repeats"])
    result["parameters_m"] = sum(p.numel() for p in network.parameters()) / 1e6
    return result


def _measure_train_step(cfg, setup: Dict, options: Dict) -> Dict:
    """Clips per second of full training steps (forward, backward, optimizer) at a given crop size."""
    from detectron2.modeling import build_model

    import s2vnet.modeling  # noqa: F401
    from s2vnet.data.clip_mapper import instances_from_sem_seg
    from s2vnet.engine.trainer import build_optimizer

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

    def step():
        losses = model(clips)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    result = timed_runs(step, setup["device"], options["warmup"], options["repeats"])
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


def run_in_subprocess(kind: str, options: Dict) -> Dict:
    """Run :func:`measure` in a fresh ``spawn`` process and return its record.

    A plain (non-daemonic) process rather than a pool worker: the data-pipeline measurement starts
    prepare workers of its own, which a daemonic pool worker may not do.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_measure_into, args=(sender, kind, options))
    process.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:  # it died without reporting (killed, out of memory)
        status, payload = "error", None
    process.join()
    if payload is None:
        payload = f"the measurement process died (exit code {process.exitcode})"
    if status != "ok":
        raise RuntimeError(f"measurement {kind!r} failed: {payload}")
    return payload
