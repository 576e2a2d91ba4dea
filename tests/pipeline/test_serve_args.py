"""``ogpo serve`` argument checks: fast, nothing is started."""

from __future__ import annotations

from pipeline.cli import main


def test_negative_worker_counts_fail_in_one_line_and_start_nothing(tmp_path, capsys):
    home = tmp_path / "home"
    rc = main(["serve", "--home", str(home), "--repo", str(tmp_path), "--gpu-workers", "-1"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "worker counts must be >= 0" in err and "--gpu-workers -1" in err
    assert not home.exists()
