"""Evaluation numbers do not depend on how ensemble members and images are batched."""
from tests.eval.runner import assert_metrics_close, eval_args, metrics, run_eval


def test_sample_rows_do_not_change_metrics(eval_root, exports, tmp_path):
    a, b = tmp_path / "rows1", tmp_path / "all"
    run_eval(eval_args(exports, eval_root / "test", a, "--sample-rows", "1", "--max-samples", "6"))
    run_eval(eval_args(exports, eval_root / "test", b, "--max-samples", "6"))
    ma, mb = metrics(a), metrics(b)
    assert ma["num_samples"] == 6 and "crps" in ma["diffusion"]
    assert_metrics_close(ma, mb)
