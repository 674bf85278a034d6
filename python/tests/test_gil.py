"""The GIL is released while reading, segmenting and scoring: other Python threads run
meanwhile. The model here is the threshold test double with a fixed delay per batch
(``run --test-segmenter threshold:2:MS``): its time is sleep, so the checks do not depend on
how many cores the machine has or how loaded it is."""

from __future__ import annotations

import threading
import time

import numpy as np

import sdseg_volume as sv

DELAY_MS = 150


def slow_model():
    # demo pipeline, 24 slices, 8 per batch: 3 batches of DELAY_MS.
    return sv.Model(quiet=True, batch_size=8, _test_segmenter=f"threshold:2:{DELAY_MS}")


def test_another_thread_runs_while_a_volume_is_segmented(demo_volume):
    model = slow_model()
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.002)

    t = threading.Thread(target=ticker)
    t.start()
    try:
        start = time.monotonic()
        model.segment(demo_volume, progress=False)
        end = time.monotonic()
    finally:
        stop.set()
        t.join()
    inside = [x for x in ticks if start + 0.05 < x < end - 0.05]
    # Held GIL: no tick inside the call. Released: one every few ms.
    assert end - start > 3 * DELAY_MS / 1000 * 0.9
    assert len(inside) > 20, f"{len(inside)} ticks in {end - start:.2f} s"


def test_two_threads_segment_concurrently(demo_volume):
    models = [slow_model(), slow_model()]
    t0 = time.monotonic()
    models[0].segment(demo_volume, progress=False)
    one = time.monotonic() - t0

    results = [None, None]

    def work(i):
        results[i] = models[i].segment(demo_volume, progress=False)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    two = time.monotonic() - t0
    assert np.array_equal(results[0].labels, results[1].labels)
    # Serially two volumes take 2x one; concurrently about 1x.
    assert two < 1.8 * one, f"two concurrent {two:.2f} s vs one {one:.2f} s"


def test_progress_runs_on_a_worker_thread_during_the_call(demo_volume):
    model = slow_model()
    main = threading.get_ident()
    seen = []
    model.segment(demo_volume, progress=lambda c, d, n: seen.append((threading.get_ident(), d, time.monotonic())))
    assert seen and all(ident != main for ident, _, _ in seen)
    # Calls spread over the run (one per batch), not bunched at the end.
    times = [t for _, _, t in seen]
    assert times[-1] - times[1] > DELAY_MS / 1000
