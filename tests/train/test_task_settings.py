"""The `tasks` config section -> `TaskSettings`."""

import pytest

from configs.pretrain import get_config
from uniter_jax.train.datasets import configured_datasets, stream_schedule
from uniter_jax.train.inputs import task_settings

VOCAB = {"mask_id": 103, "cls_id": 101, "sep_id": 102, "pad_id": 0, "random_range": [999, 28996]}


def test_every_configured_value_arrives():
    section = get_config("base").tasks
    section.gather_sigmas, section.wra_iterations = 3.5, 17
    section.wra_solver, section.wra_beta = "ipot", 0.7
    settings = task_settings(section, VOCAB)
    assert (settings.mask_id, settings.special_ids, settings.random_range) == (
        103,
        (101, 102, 0),
        (999, 28996),
    )
    names = ("mask_prob", "gather_sigmas", "wra_weight", "wra_epsilon", "wra_iterations")
    for name in (*names, "wra_solver", "wra_beta"):
        assert getattr(settings, name) == section[name], name


def test_a_key_left_out_takes_the_default_and_an_unknown_key_is_an_error():
    section = get_config("base").tasks
    del section["gather_sigmas"]
    assert task_settings(section, VOCAB).gather_sigmas == 5.0
    section.max_masked_fraction = 0.3  # the key gather_sigmas replaced
    with pytest.raises(ValueError, match=r"unknown keys \['max_masked_fraction'\]"):
        task_settings(section, VOCAB)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("wra_solver", "emd", "tasks.wra_solver must be one of"), ("wra_beta", 0.0, "wra_beta")],
)
def test_bad_wra_settings_are_named(key, value, message):
    section = get_config("tiny").tasks
    section[key] = value
    with pytest.raises(ValueError, match=message):
        task_settings(section, VOCAB)


def mix_schedule(config):
    return stream_schedule(configured_datasets(config), config.tasks)[0]


def test_the_mix_schedule_comes_from_the_tasks_section():
    config = get_config("tiny")
    section = config.tasks
    assert mix_schedule(config).first_steps == 0  # the mix from the start by default
    section.first_steps = 3000
    section.first_mix = {"itm": 1.0, "mlm": 0.0}
    schedule = mix_schedule(config)
    assert (schedule.first, schedule.first_steps) == ({"itm": 1.0}, 3000)
    assert schedule.at(2999) == {"itm": 1.0} and schedule.at(3000) == dict(schedule.mix)
    assert mix_schedule(config).second_steps == 0  # no second phase by default
    section.second_steps = 1500
    schedule = mix_schedule(config)
    assert (schedule.second, schedule.second_steps) == ({"mrc": 1.0}, 1500)  # MRC alone
    assert schedule.at(3000) == {"mrc": 1.0} and schedule.at(4500) == dict(schedule.mix)
    task_settings(section, VOCAB)  # the schedule's keys are not unknown task settings
    section.first_mix = {"nsp": 1.0}
    with pytest.raises(ValueError, match="unknown tasks"):
        mix_schedule(config)
