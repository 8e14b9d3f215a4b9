"""The curves command: reads runs' metrics.jsonl, draws one line per run, writes the PNG atomically."""

import json

import pytest

from fibpolicy.plot import frame_grid, main, plot_runs, read_metrics, series


def _run(tmp_path, name, scores):
    run = tmp_path / name
    run.mkdir()
    rows = [{"step": 10 * i, "train/loss": 1.0 / (i + 1), "epoch": i} for i in range(1, 6)]
    rows += [{"step": 100 * (i + 1), "epoch": i, "wall_time_s": 60.0 * (i + 1), "val/loss": 0.5 / (i + 1),
              "test/mean_score": s} for i, s in enumerate(scores)]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 99, "train/lo'  # a torn last line
    (run / "metrics.jsonl").write_text(text)
    return run


def test_series_reads_steps_and_minutes_and_skips_torn_lines(tmp_path):
    rows = read_metrics(_run(tmp_path, "a", [0.1, 0.4]))
    assert series(rows, "test/mean_score") == ([100.0, 200.0], [0.1, 0.4])
    assert series(rows, "test/mean_score", x="minutes") == ([1.0, 2.0], [0.1, 0.4])
    assert len(series(rows, "train/loss")[0]) == 5


def test_plot_writes_a_png_with_one_line_per_run(tmp_path, capsys):
    a, b = _run(tmp_path, "a", [0.1, 0.4]), _run(tmp_path, "b", [0.2, 0.3, 0.5])
    out = tmp_path / "curves.png"
    main([str(a), str(b), "--out", str(out), "--labels", "fib", "dense"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_plot_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_runs([tmp_path / "missing"], tmp_path / "x.png")
    run = _run(tmp_path, "a", [0.1])
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        plot_runs([run], tmp_path / "x.png", labels=["a", "b"])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing"), "--out", str(tmp_path / "y.png")])
    assert not (tmp_path / "y.png").exists()


def test_frame_grid_tiles_a_rollout_video(tmp_path):
    import numpy as np

    from fibpolicy.data import write_mp4

    frames = np.zeros((12, 32, 32, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(12)[:, None, None] * 20
    video = write_mp4(frames, tmp_path / "ep.mp4", fps=10)
    out = frame_grid(video, tmp_path / "grid.png", n_frames=4, columns=2)
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        main(["--frames", str(video), str(tmp_path), "--out", str(tmp_path / "x.png")])  # both: refused
    with pytest.raises(SystemExit):
        main(["--frames", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "x.png")])


def test_table_has_a_row_per_evaluation_with_samples_per_second(tmp_path, capsys):
    run = _run(tmp_path, "a", [0.1, 0.4])
    (run / "config.yaml").write_text("training:\n  trainer:\n    batch_size: 64\n")
    main([str(run), "--table", "--labels", "lift"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| run | step | epoch | minutes | samples/s | test mean score")
    # step 200 after 120 s at batch 64: 106.7 samples/s
    assert lines[2:] == ["| lift | 100 | 0 | 1.0 | 107 | 0.100 |  |  |  |  |", "| lift | 200 | 1 | 2.0 | 107 | 0.400 |  |  |  |  |"]
