"""``ocellus``'s dispatcher: the train commands come from the task table."""

from __future__ import annotations

import pytest

from cli.main import COMMANDS, main
from models.tasks import TASKS


def test_every_task_has_a_train_command_naming_its_training_module() -> None:
    trains = {words[1]: module for words, (module, *_) in COMMANDS.items()
              if words[0] == "train"}
    assert trains == {name: task.train for name, task in TASKS.items()}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_train_help_is_the_tasks_own_parser(task: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["train", task, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ocellus train {task} ") and "--data" in out
