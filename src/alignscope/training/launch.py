"""Multi-process training with ``accelerate launch``.

Every recipe is a plain function over a config, so a launch only has to hand each process the recipe name and
the config: ``python -m alignscope.training RECIPE CONFIG.json`` does that (the JSON holds the config's
fields), and :func:`launch_command` builds the ``accelerate launch`` line around it.

On a CPU-only machine accelerate starts several processes (gloo backend) only in its multi-GPU mode: the
command therefore passes ``--multi_gpu`` for ``num_processes > 1`` (``--cpu`` would go through ``mpirun``).
GPU users pass an accelerate config file (``accelerate config``) and/or a DeepSpeed JSON via the recipe
config's ``deepspeed`` field.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from alignscope.training.config import TrainConfig
from alignscope.training.engine import TrainingError


def launch_command(
    recipe: str,
    config_json: str | os.PathLike[str],
    num_processes: int = 2,
    accelerate_config: str | os.PathLike[str] | None = None,
    main_process_port: int | None = None,
) -> list[str]:
    """The ``accelerate launch`` argv that runs ``recipe`` with the config in ``config_json`` on
    ``num_processes`` processes (``recipe`` may be ``finetune-attack``)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config is not None:
        cmd += ["--config_file", str(accelerate_config)]
    else:
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--num_processes", str(num_processes)]
    if accelerate_config is None and num_processes > 1:
        cmd.append("--multi_gpu")
    if main_process_port is not None:
        cmd += ["--main_process_port", str(main_process_port)]
    cmd += ["-m", "alignscope.training", recipe, str(config_json)]
    return cmd


def launch(
    recipe: str,
    config: TrainConfig,
    num_processes: int = 2,
    accelerate_config: str | os.PathLike[str] | None = None,
    main_process_port: int | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``recipe`` under ``accelerate launch`` and wait for it; returns the finished process (its output in
    ``stdout``/``stderr``). ``config.out`` must be set: every process writes to that run directory.

    Raises:
        TrainingError: the launch failed; the message ends with the processes' last output lines.
    """
    if config.out is None:
        raise ValueError("a launched run needs config.out (every process writes to the same run directory)")
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"__class__": type(config).__name__, **asdict(config)}, f)
        path = f.name
    try:
        cmd = launch_command(recipe, path, num_processes, accelerate_config, main_process_port)
        run_env = {**os.environ, **(env or {})}
        src = str(Path(__file__).resolve().parents[2])  # make the package importable in the workers as here
        run_env["PYTHONPATH"] = os.pathsep.join(p for p in (src, run_env.get("PYTHONPATH", "")) if p)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env)
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise TrainingError(
            f"accelerate launch of {recipe} failed (exit {proc.returncode}); last output:\n{tail}"
        )
    return proc
