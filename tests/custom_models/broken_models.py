"""Factories that misbehave in each way ipa must name clearly."""

from __future__ import annotations


def raises(variant, device, weights):
    raise RuntimeError("no GPU in this replica")


def wrong_count(variant, device, weights):
    return lambda items: [{"label": 0}]


def not_json(variant, device, weights):
    return lambda items: [object() for _ in items]


def no_boxes(variant, device, weights):
    return lambda items: [{"label": 0} for _ in items]


def returns_a_number(variant, device, weights):
    return 42


def fails_on_large_images(variant, device, weights):
    """Serves the small warm-up image, then fails on a real photo: a model error while serving."""

    def serve(images):
        if max(im.shape[0] for im in images) > 100:
            raise ValueError(f"image of {images[0].shape[0]} rows is too large for this model")
        return [{"label": 0} for _ in images]

    return serve


NOT_A_FACTORY = 42


def slow_to_load(variant, device, weights):
    """Takes 10 s to load (a big checkpoint), then classifies as the histogram model does."""
    import time

    from hist_models import classifier

    time.sleep(10)
    return classifier("hist-s", device, weights)
