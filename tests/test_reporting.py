"""Tests for sparserl.reporting: CSV layout and crash-safe resume, TensorBoard events, console progress."""

import io
import math
import struct

from sparserl.reporting import MetricsWriter, ProgressPrinter, read_csv


def read_lines(path):
    return path.read_text().splitlines()


def test_header_and_exact_values_round_trip(tmp_path):
    writer = MetricsWriter(tmp_path, seed=3)
    writer.write(10, {"train/episode_return": 0.1 + 0.2, "loss/td": 1e-17})
    writer.write(20, {"train/episode_return": 1 / 3, "loss/td": 2.5})
    writer.close()

    assert read_lines(tmp_path / "metrics.csv")[0] == "step,seed,train/episode_return,loss/td"
    rows = read_csv(tmp_path / "metrics.csv")
    assert rows == [
        {"step": 10, "seed": 3, "train/episode_return": 0.1 + 0.2, "loss/td": 1e-17},
        {"step": 20, "seed": 3, "train/episode_return": 1 / 3, "loss/td": 2.5},
    ]
    assert isinstance(rows[0]["step"], int) and isinstance(rows[0]["seed"], int)


def test_train_and_eval_go_to_separate_files(tmp_path):
    writer = MetricsWriter(tmp_path, seed=0)
    writer.write(5, {"train/episode_return": 1.0})
    writer.write(5, {"eval/episode_return": 2.0}, kind="eval")
    writer.close()

    assert read_csv(tmp_path / "metrics.csv") == [{"step": 5, "seed": 0, "train/episode_return": 1.0}]
    assert read_csv(tmp_path / "eval.csv") == [{"step": 5, "seed": 0, "eval/episode_return": 2.0}]


def test_new_key_mid_run_extends_header_and_keeps_old_rows(tmp_path):
    writer = MetricsWriter(tmp_path, seed=0)
    writer.write(1, {"loss/td": 0.5})
    writer.write(2, {"loss/td": 0.25, "redo/recycled": 4.0})
    writer.write(3, {"redo/recycled": 1.0})
    writer.close()

    assert read_lines(tmp_path / "metrics.csv") == [
        "step,seed,loss/td,redo/recycled",
        "1,0,0.5,",
        "2,0,0.25,4.0",
        "3,0,,1.0",
    ]
    assert not list(tmp_path.glob("*.tmp"))


def test_nan_is_written_as_empty_cell_and_read_back_as_nan(tmp_path):
    writer = MetricsWriter(tmp_path, seed=0)
    writer.write(1, {"train/episode_return": float("nan"), "loss/td": 1.0})
    writer.close()

    assert read_lines(tmp_path / "metrics.csv")[1] == "1,0,,1.0"
    (row,) = read_csv(tmp_path / "metrics.csv")
    assert math.isnan(row["train/episode_return"])


def test_resume_drops_rows_after_checkpoint_and_partial_last_line(tmp_path):
    writer = MetricsWriter(tmp_path, seed=1)
    for step in (100, 200, 300):
        writer.write(step, {"loss/td": step / 7})
    writer.close()
    with open(tmp_path / "metrics.csv", "a") as metrics_file:
        metrics_file.write("400,1,0.12")  # A row cut short by a kill.

    writer = MetricsWriter(tmp_path, seed=1, resume_step=200)
    assert [row["step"] for row in read_csv(tmp_path / "metrics.csv")] == [100, 200]
    writer.write(300, {"loss/td": 9.0})
    writer.close()

    assert read_csv(tmp_path / "metrics.csv") == [
        {"step": 100, "seed": 1, "loss/td": 100 / 7},
        {"step": 200, "seed": 1, "loss/td": 200 / 7},
        {"step": 300, "seed": 1, "loss/td": 9.0},
    ]


def test_fresh_start_truncates_existing_csvs(tmp_path):
    writer = MetricsWriter(tmp_path, seed=0)
    writer.write(1, {"loss/td": 1.0, "loss/old": 2.0})
    writer.write(1, {"eval/episode_return": 3.0}, kind="eval")
    writer.close()

    writer = MetricsWriter(tmp_path, seed=0)
    writer.write(1, {"loss/td": 5.0})
    writer.close()

    assert read_lines(tmp_path / "metrics.csv") == ["step,seed,loss/td", "1,0,5.0"]
    assert read_csv(tmp_path / "eval.csv") == []


def _scalars(event_file) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in a TensorBoard event file (TFRecords of `Event` protos: a length, its
    CRC, the data, the data's CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    data, scalars, offset = event_file.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = Event.FromString(data[offset + 12:offset + 12 + length])
        scalars += [(event.step, value.tag, value.simple_value) for value in event.summary.value]
        offset += 12 + length + 4
    return scalars


def test_tensorboard_gets_every_finite_scalar_of_a_row_at_its_step(tmp_path):
    writer = MetricsWriter(tmp_path, seed=0)
    writer.write(1, {"train/episode_return": 1.5, "loss/td": float("nan")})
    writer.write(2, {"train/episode_return": 2.5, "loss/td": 0.25})
    writer.write(2, {"eval/episode_return": 7.0}, kind="eval")
    writer.close()

    [event_file] = tmp_path.glob("events.out.tfevents*")
    assert _scalars(event_file) == [(1, "train/episode_return", 1.5), (2, "train/episode_return", 2.5),
                                    (2, "loss/td", 0.25), (2, "eval/episode_return", 7.0)]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_printer_throttles_and_formats_line():
    clock = FakeClock()
    stream = io.StringIO()
    printer = ProgressPrinter("dqn CartPole-v1", total_steps=50_000, interval_seconds=10.0, stream=stream,
                              clock=clock)
    metrics = {"sps": 3150.0, "train/episode_return": 187.345, "sparsity/total": 0.9,
               "dormant/0.1/total": 0.123}

    printer.update(1_000, metrics)
    clock.now = 9.9
    printer.update(2_000, metrics)
    assert stream.getvalue() == ""

    clock.now = 10.0
    printer.update(12_000, metrics)
    clock.now = 15.0
    printer.update(13_000, metrics)
    assert stream.getvalue().splitlines() == [
        "[dqn CartPole-v1] step 12,000/50,000 (24%) | 3,150 sps | return 187.3 | sparsity 0.900"
        " | dormant(0.1) 0.12 | eta 0:00:12"
    ]

    clock.now = 16.0
    printer.update(50_000, {}, final=True)
    assert stream.getvalue().splitlines()[-1] == "[dqn CartPole-v1] step 50,000/50,000 (100%)"


def test_progress_printer_reads_multi_network_metrics_and_measures_rate():
    clock = FakeClock()
    stream = io.StringIO()
    printer = ProgressPrinter("sac Hopper-v5", total_steps=1_000, stream=stream, clock=clock)
    printer.update(0, {})
    clock.now = 10.0
    printer.update(100, {"sparsity/actor/dense_0": 0.5, "sparsity/actor/total": 0.8,
                         "dormant/0.1/critic/total": float("nan"), "dormant/0.1/actor/total": 0.25})

    assert stream.getvalue() == (
        "[sac Hopper-v5] step 100/1,000 (10%) | sparsity 0.800 | dormant(0.1) 0.25 | eta 0:01:30\n")


def test_progress_printer_prints_a_labelled_line_per_group():
    stream = io.StringIO()
    printer = ProgressPrinter("dqn gymnax:CartPole-v1", total_steps=1_000, stream=stream, clock=FakeClock())
    printer.update_groups(1_000, {"sparsity 0.5": {"train/episode_return": 20.0},
                                  "sparsity 0.9": {"train/episode_return": 10.0}}, final=True)
    assert stream.getvalue().splitlines() == [
        "[dqn gymnax:CartPole-v1 sparsity 0.5] step 1,000/1,000 (100%) | return 20.0",
        "[dqn gymnax:CartPole-v1 sparsity 0.9] step 1,000/1,000 (100%) | return 10.0"]
