"""SuperGLUE and GLUE for users with the Hugging Face hub: declared as data in hub_benchmarks.toml
(the suite file's ``[task.NAME]`` format), registered here under their names."""

from __future__ import annotations

from pathlib import Path

from peft_bench import TASKS, tasks_from_file

for _name, _spec in tasks_from_file(Path(__file__).with_name("hub_benchmarks.toml")).items():
    TASKS.add(_name, _spec)
