"""The console a person watches: short lines, the headline results, nothing else."""

from __future__ import annotations

from pathlib import Path

from mmssl_jax import reporting


def test_console_line_shows_step_loss_accuracy_throughput_and_eta():
    metrics = {"loss": 1.23456, "accuracy/nt_xent/image1-image2": 0.4531, "grad_norm": 3.0}
    line = reporting.console_line(120, 3000, metrics, examples_per_second=5123.4, eta_seconds=3725,
                                  accuracy_key="accuracy/nt_xent/image1-image2")
    assert line == "step  120/3000  loss 1.235  acc 45.3%  5,123 ex/s  ETA 1:02:05"
    assert "acc" not in reporting.console_line(1, 10, metrics, examples_per_second=1, eta_seconds=1)


def test_summary_lines_carry_the_headline_results_only():
    metrics = {
        "loss": 0.8, "accuracy/clip/image-text": 0.721, "grad_norm": 2.0,
        "eval/shapes/linear_probe/top1": 0.426, "eval/shapes/linear_probe/top5": 0.9,
        "eval/shapes/linear_probe/l2": 1e-3, "eval/shapes/knn/k20_top1": 0.321, "eval/shapes/knn/k200_top1": 0.3,
        "eval/coco/retrieval/i2t_r@1": 0.47, "eval/coco/retrieval/t2i_r@1": 0.355,
        "eval/coco/retrieval/i2t_r@5": 0.8, "eval/coco/ablation/removed/retrieval/i2t_r@1": 0.0,
        "eval/seconds": 12.0,
    }
    assert reporting.eval_headline(metrics) == (
        "coco: i2t R@1 47.0%, t2i R@1 35.5% | shapes: probe 42.6%, kNN-20 32.1%")
    line = reporting.final_line("clip", 300, metrics, Path("runs/x"), accuracy_key="accuracy/clip/image-text")
    assert line == ("Finished clip at step 300: loss 0.8, acc 72.1% | coco: i2t R@1 47.0%, t2i R@1 35.5% | "
                    "shapes: probe 42.6%, kNN-20 32.1%. All metrics: runs/x/summary.json")
    assert reporting.format_eval_summary("Step 3 evaluation", {"eval/seconds": 1.0}) == (
        "Step 3 evaluation: no headline metric")
