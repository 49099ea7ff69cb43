"""Scale-out: a recipe runs under ``accelerate launch`` with two CPU processes (gloo) and saves one output."""

from __future__ import annotations

import json
import time

import pytest

from alignscope.models import load_model
from alignscope.training import SafetySFTConfig, launch, launch_command, write_chat_jsonl
from alignscope.training.chat_data import ChatRecord


def test_launch_command_uses_torchrun_mode_on_cpu(tmp_path):
    cmd = launch_command("safety-sft", tmp_path / "c.json", num_processes=2)
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[-3:] == ["alignscope.training", "safety-sft", str(tmp_path / "c.json")]
    with_config = launch_command("sppft", "c.json", 4, accelerate_config="acc.yaml")
    assert (
        with_config[with_config.index("--config_file") + 1] == "acc.yaml" and "--multi_gpu" not in with_config
    )


@pytest.mark.slow
def test_two_cpu_processes_train_and_save(tmp_path, tiny_dir):
    records = [
        ChatRecord(
            [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "I'm sorry."}]
        )
        for i in range(8)
    ]
    data = write_chat_jsonl(tmp_path / "chat.jsonl", records)
    out = tmp_path / "run"
    cfg = SafetySFTConfig(
        model=str(tiny_dir),
        out=str(out),
        data=str(data),
        max_steps=2,
        batch_size=2,
        progress=False,
        save_steps=1,
    )
    start = time.perf_counter()
    proc = launch("safety-sft", cfg, num_processes=2, env={"OMP_NUM_THREADS": "1"})
    elapsed = time.perf_counter() - start
    assert "trained safety-sft: 2 steps" in proc.stdout, proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2
    # two processes with two examples each per step: the run saw 8 examples in 2 steps (one epoch)
    assert metrics["epochs"] == pytest.approx(1.0)
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_dir)
    assert load_model(str(out / "adapter")).generate([[{"role": "user", "content": "hi"}]])
    print(f"2-process launch took {elapsed:.1f} s")
