"""extract.py on a tiny detector: every stage is timed and the stages find the step's regions."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import extract  # noqa: E402
from tiny_detector import TINY_DETECTOR, tiny_extract  # noqa: E402

# Seconds to a minute of compiling; the slow tier (CI runs it).
pytestmark = pytest.mark.slow

TINY = TINY_DETECTOR
CONFIG = tiny_extract(pre_nms_top_n=200, post_nms_top_n=40)


def test_tiny_run_reports_every_stage():
    result = extract.measure(
        ("80x60", "70x50"),
        ("float32",),
        batch_size=2,
        warmup=0,
        repeats=1,
        detector_config=TINY,
        extract_config=CONFIG,
    )
    json.dumps(result)  # the script prints it as JSON
    assert set(result["cases"]) == {"80x60/float32", "70x50/float32"}
    # Both land in one bucket: the second reuses the first's programs.
    assert [c["bucket"] for c in result["cases"].values()] == [[64, 96], [64, 96]]
    for case in result["cases"].values():
        assert set(case["stages"]) == {"backbone_rpn", "proposals", "roi_heads", "select"}
        assert case["images_per_s"] > 0 and case["host"]["ms_per_image"] > 0
        assert all(s["median_s"] > 0 for s in case["stages"].values())
        # The stages, run over the batch, keep as many regions as the per-image step.
        assert case["stage_regions_per_image"] == case["regions_per_image"]
        assert all(3 <= n <= 10 for n in case["regions_per_image"])


def test_parse_size_is_width_by_height():
    assert extract.parse_size("640x480") == (480, 640)
